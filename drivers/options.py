"""Which drivers exist, each one's config keys (its Options dataclass) and where its code lives.

This module is what the config loader knows of drivers: it imports no driver and no vendor
library (sllurp, pymodbus, pyserial), so `fc-edge check-config` validates every
`[[readers]]` and `[[equipment]]` entry without loading what serves it. A driver's module is
imported only to run the device (`drivers.base.driver_class`).

Adding a driver: its Options here, a `DriverSpec` in DRIVERS, its class (with `Options = ...`
and the same `kind`) in a module of its own, and its page in docs/drivers/ (a test checks that
the page names every option and that its sample config loads).

Option names follow one convention: snake_case, and a quantity ends in its unit (`_s` for
seconds, `_dbm`); a period is `<what>_interval_s`, a timeout `<what>_timeout_s`; and one thing
has one name in every driver: `tx_power_dbm`, and `reconnect_max_s` for the cap of the
reconnect backoff (as in [mqtt]). A key renamed to follow it stays readable under its old
name (DriverSpec.renamed), with a deprecation warning.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.confschema import Errors, duration, join

log = logging.getLogger("fc_edge.config")

DriverKind = Literal["reader", "handheld", "equipment"]


class Device(Protocol):
    """What a check sees of a device entry (gateway.config.DeviceSettings)."""

    @property
    def options(self) -> Any: ...

    def resolve(self, path: str) -> Path: ...


# --- replay ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    file: str  # the capture, relative to the config file
    speed: float = 1.0
    loop: bool = False  # start over at the end (demo); a looping replay keeps no cursor

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError("speed: must be positive")


# --- llrp --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LLRPOptions:
    """The [[readers]] keys of an LLRP reader (name, driver and antennas are common keys)."""

    host: str
    port: int = 5084
    tx_power_dbm: float | None = None  # None: the reader's maximum
    mode: int | None = None  # an RF ModeIdentifier from the reader's UHFC1G2RFModeTable
    session: int = 2
    tag_population: int = 4
    report_n_tags: int = 1  # TagReportData per RO_ACCESS_REPORT (LLRP ROReportSpec N)
    keepalive_s: float = duration(5.0)
    handshake_timeout_s: float = duration(10.0)
    max_clock_skew_s: float = duration(5.0)
    reconnect_max_s: float = duration(30.0)  # the longest wait between connection attempts
    close_timeout_s: float = duration(2.0)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: out of range: {self.port}")
        if self.session not in (0, 1, 2, 3):
            raise ValueError(f"session: must be 0, 1, 2 or 3, got {self.session}")
        if not 1 <= self.tag_population <= 65535:
            raise ValueError(f"tag_population: must be 1..65535, got {self.tag_population}")
        if not 0 <= self.report_n_tags <= 65535:
            raise ValueError(f"report_n_tags: must be 0..65535, got {self.report_n_tags}")
        if self.keepalive_s < 0.1:
            raise ValueError(f"keepalive_s: must be at least 0.1, got {self.keepalive_s}")


# --- tsl (handhelds) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TSLOptions:
    port: str  # a device path (/dev/rfcomm0) or a pyserial URL (socket://host:port, loop://)
    baudrate: int = 115200
    workflow: Literal["count", "returns", "find"] = "count"
    # Locations this handheld may count (empty: any location with a barcode).
    allowed_locations: tuple[str, ...] = field(default=(), metadata={"location_ref": True})
    returns_location: str | None = field(default=None, metadata={"location_ref": True})
    count_window_s: float = duration(60.0)  # a count session ends here even if held
    release_grace_s: float = duration(0.5)  # reads finishing the last round after release
    location_timeout_s: float = duration(300.0)  # a scanned location label goes stale
    dedup_window_s: float = duration(300.0)  # returns: a tag is booked once in this window
    count_part_size: int = 500  # EPCs per counts message
    tx_power_dbm: int = 29  # the reader's `.iv -o` output power
    response_timeout_s: float = duration(3.0)  # a command unanswered this long: reconnect
    probe_interval_s: float = duration(15.0)  # silence this long: ask .vr to check the link
    reconnect_max_s: float = duration(30.0)  # the longest wait between connection attempts

    def __post_init__(self) -> None:
        if not self.port:
            raise ValueError("port: must name a device or a pyserial URL")
        if self.baudrate <= 0:
            raise ValueError("baudrate: must be positive")
        if not 10 <= self.tx_power_dbm <= 29:
            raise ValueError("tx_power_dbm: TSL readers accept 10..29 dBm")
        if self.count_part_size < 1:
            raise ValueError("count_part_size: must be at least 1")
        if self.workflow == "returns" and self.returns_location is None:
            raise ValueError("returns_location: required when workflow = 'returns'")


# --- modbus ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModbusOptions:
    """Keys of an `[[equipment]]` entry with `driver = "modbus"`."""

    map: str  # register map TOML; relative to the config file's folder
    host: str | None = None  # Modbus TCP
    port: int = 502
    serial: str | None = None  # Modbus RTU: a device path or pyserial URL (rfc2217://, ...)
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "N"
    device_id: int = 1  # unit id / slave address
    interval_s: float = duration(1.0)
    stale_after_s: float = duration(10.0)  # heartbeat unchanged this long -> stale
    status_interval_s: float = duration(60.0)  # a full status event this often
    timeout_s: float = duration(1.0)  # per request
    reconnect_max_s: float = duration(30.0)  # the longest wait between connection attempts
    max_gap: int = 0  # unmapped registers a coalesced read may span (0: only adjacent ones)
    # Robot station number (or name) -> location, for the move handshake.
    stations: dict[str, str] = field(default_factory=dict, metadata={"location_ref": True})

    def __post_init__(self) -> None:
        if (self.host is None) == (self.serial is None):
            raise ValueError("give either host (Modbus TCP) or serial (Modbus RTU), not both")
        if not 0 < self.port < 65536:
            raise ValueError(f"port: out of range: {self.port}")
        if not 0 <= self.device_id <= 247:
            raise ValueError(f"device_id: must be 0..247, got {self.device_id}")
        if self.baudrate <= 0:
            raise ValueError(f"baudrate: must be positive, got {self.baudrate}")
        if not 0 <= self.max_gap <= 100:
            raise ValueError(f"max_gap: must be 0..100, got {self.max_gap}")


def check_modbus(device: Device) -> list[str]:
    """The register map is part of the config: `check-config` loads it too."""
    from drivers.modbus_map import MapError, load_map  # the map's own parser: no pymodbus

    try:
        load_map(device.resolve(device.options.map))
    except MapError as exc:
        return [f"map: {line}" for line in exc.lines]
    return []


# --- opcua ------------------------------------------------------------------------------------

OPCUA_SECURITY = ("None", "Basic256Sha256,Sign", "Basic256Sha256,SignAndEncrypt")


@dataclass(frozen=True, slots=True)
class OPCUAOptions:
    """Keys of an `[[equipment]]` entry with `driver = "opcua"`."""

    url: str  # opc.tcp://host:port[/path]
    map: str  # point map TOML (node ids); relative to the config file's folder
    security: Literal["None", "Basic256Sha256,Sign", "Basic256Sha256,SignAndEncrypt"] = "None"
    certificate_file: str | None = None  # this client's certificate (DER or PEM)
    private_key_file: str | None = None  # its key: a secret (see secret_path)
    server_certificate_file: str | None = None  # pin the server's certificate (optional)
    username: str | None = None
    password_file: str | None = None  # a secret (see secret_path)
    interval_s: float = duration(1.0)  # publishing interval; the fallback poll period
    stale_after_s: float = duration(10.0)  # heartbeat unchanged this long -> stale
    status_interval_s: float = duration(60.0)  # a full status event this often
    timeout_s: float = duration(4.0)  # per request
    subscription_timeout_s: float = duration(5.0)  # no notification this long: poll instead
    reconnect_max_s: float = duration(30.0)  # the longest wait between connection attempts
    # Robot station number (or name) -> location, for the move handshake.
    stations: dict[str, str] = field(default_factory=dict, metadata={"location_ref": True})

    def __post_init__(self) -> None:
        if not re.fullmatch(r"opc\.tcp://[^/:\s]+:\d{1,5}(/\S*)?", self.url):
            raise ValueError(f"url: expected opc.tcp://host:port, got {self.url!r}")
        for key in ("certificate_file", "private_key_file"):
            if self.security != "None" and not getattr(self, key):
                raise ValueError(f"{key}: required with security = {self.security!r}")
        if self.username is not None and self.password_file is None:
            raise ValueError("password_file: required with username (secrets come from files)")
        if self.password_file is not None and self.username is None:
            raise ValueError("username: required with password_file")


def secret_path(device: Device, path: str) -> Path:
    """A secret file (a key, a password): a relative name is looked up in
    $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when set, else in the config's folder."""
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and not Path(path).is_absolute():
        return Path(credentials) / path
    return device.resolve(path)


def opcua_files(device: Device) -> list[tuple[str, Path]]:
    """The files an OPC UA entry names, as (key, path) resolved the way the driver opens them."""
    o = device.options
    files = [("map", device.resolve(o.map))]
    for key in ("certificate_file", "server_certificate_file"):
        if getattr(o, key) is not None:
            files.append((key, device.resolve(getattr(o, key))))
    for key in ("private_key_file", "password_file"):
        if getattr(o, key) is not None:
            files.append((key, secret_path(device, getattr(o, key))))
    return files


def check_opcua(device: Device) -> list[str]:
    """The point map and every certificate, key and password file must load: `check-config`
    and `run` say which key names a missing file, before anything is opened."""
    from drivers.opcua_map import MapError, load_map  # the map's own parser: no asyncua

    problems = []
    for key, path in opcua_files(device):
        if not os.access(path, os.R_OK) or not path.is_file():
            problems.append(f"{key}: {path}: no such readable file")
    if problems:
        return problems
    try:
        load_map(device.resolve(device.options.map))
    except MapError as exc:
        return [f"map: {line}" for line in exc.lines]
    return []


# --- vda5050 ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VDA5050Options:
    """Keys of an `[[equipment]]` entry with `driver = "vda5050"`: one vehicle, observed on a
    fleet broker (its `state` and `connection` topics; nothing is ever published there)."""

    broker: str  # the fleet broker: mqtt://HOST[:PORT] (not the gateway's [mqtt] broker)
    manufacturer: str
    serial_number: str
    location: str = field(metadata={"location_ref": True})  # where a load is while on board
    # VDA 5050 nodeId -> location, for the node a pick or drop happened at.
    nodes: dict[str, str] = field(default_factory=dict, metadata={"location_ref": True})
    interface_name: str = "uagv"
    major_version: str = "v2"
    client_id: str | None = None  # the persistent session's id; default fc-edge-vda5050-{name}
    username: str | None = None
    password_file: str | None = None  # a secret (see secret_path)
    session_expiry_s: float = duration(7 * 24 * 3600.0)  # the broker keeps our queue this long
    stale_after_s: float = duration(60.0)  # no state this long -> stale (vehicles send <= 30 s)
    status_interval_s: float = duration(60.0)  # a full status event this often
    timeout_s: float = duration(5.0)  # connecting and subscribing
    reconnect_max_s: float = duration(30.0)  # the longest wait between connection attempts

    def __post_init__(self) -> None:
        if not re.fullmatch(r"mqtt://[^/:\s]+(:\d{1,5})?/?", self.broker):
            raise ValueError(f"broker: expected mqtt://HOST[:PORT], got {self.broker!r}")
        for key in ("manufacturer", "serial_number", "interface_name", "major_version"):
            if not re.fullmatch(r"[^/+#\s]+", getattr(self, key)):
                raise ValueError(f"{key}: must be a non-empty MQTT topic level (no / + # space)")
        if self.username is not None and self.password_file is None:
            raise ValueError("password_file: required with username (secrets come from files)")
        if self.password_file is not None and self.username is None:
            raise ValueError("username: required with password_file")


def check_vda5050(device: Device) -> list[str]:
    """A password file must be readable before anything is opened."""
    o = device.options
    if o.password_file is None:
        return []
    path = secret_path(device, o.password_file)
    if not os.access(path, os.R_OK) or not path.is_file():
        return [f"password_file: {path}: no such readable file"]
    return []


# --- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriverSpec:
    #: "reader" drivers need [readers.antennas]; a "handheld" sits under [[readers]] without
    #: antennas (where it is comes from the location label it scans); "equipment" drivers sit
    #: under [[equipment]].
    kind: DriverKind
    options: type  # the dataclass of the driver's own config keys
    driver: str  # "module:Class", imported only to run the device
    #: Checks that need more than the Options' types (e.g. loading a register map): error
    #: lines "key: message", key relative to the device entry. Run by the config loader.
    check: Callable[[Device], list[str]] | None = None
    #: Top-level modules the driver imports: the config loader checks they are installed
    #: (importlib.util.find_spec: found, not imported).
    requires: tuple[str, ...] = ()
    #: Keys renamed to follow the naming convention: old name -> new name. A config that
    #: still uses the old name loads, with a deprecation warning naming the new key.
    renamed: Mapping[str, str] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The required libraries that are not installed."""
        return [name for name in self.requires if importlib.util.find_spec(name) is None]


DRIVERS: dict[str, DriverSpec] = {
    "replay": DriverSpec("reader", ReplayOptions, "drivers.replay:ReplayDriver"),
    "llrp": DriverSpec(
        "reader",
        LLRPOptions,
        "drivers.llrp:LLRPDriver",
        requires=("sllurp",),
        renamed={"backoff_cap_s": "reconnect_max_s"},
    ),
    "tsl": DriverSpec(
        "handheld",
        TSLOptions,
        "drivers.tsl:TSLDriver",
        requires=("serial",),
        renamed={"output_power_dbm": "tx_power_dbm"},
    ),
    "modbus": DriverSpec(
        "equipment",
        ModbusOptions,
        "drivers.modbus:ModbusDriver",
        check=check_modbus,
        requires=("pymodbus",),
        renamed={"status_every_s": "status_interval_s"},
    ),
    "opcua": DriverSpec(
        "equipment",
        OPCUAOptions,
        "drivers.opcua:OPCUADriver",
        check=check_opcua,
        requires=("asyncua",),
    ),
    "vda5050": DriverSpec(
        "equipment",
        VDA5050Options,
        "drivers.vda5050:VDA5050Driver",
        check=check_vda5050,
        requires=("paho", "jsonschema"),
    ),
}


class UnknownDriver(LookupError):
    pass


def driver_spec(name: str) -> DriverSpec:
    try:
        return DRIVERS[name]
    except KeyError:
        known = ", ".join(sorted(DRIVERS))
        raise UnknownDriver(f"unknown driver {name!r} (known: {known})") from None


def upgrade_renamed_keys(
    spec: DriverSpec, entry: Mapping[str, Any], path: str, errors: Errors
) -> dict[str, Any]:
    """`entry` (a device's config table, at `path`) with each renamed key under its new name.

    The old name keeps an existing config working: it is read as the new key and a warning
    says which key to write instead. Both names at once is an error (which one would win?)."""
    upgraded = dict(entry)
    for old, new in spec.renamed.items():
        if old not in upgraded:
            continue
        value = upgraded.pop(old)
        if new in upgraded:
            errors.add(join(path, old), f"renamed {new}, which is given too: keep only {new}")
            continue
        upgraded[new] = value
        log.warning(
            "%s: deprecated key: write %s instead (read as %s for now)", join(path, old), new, new
        )
    return upgraded
