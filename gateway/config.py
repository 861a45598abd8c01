"""One TOML file -> typed, frozen settings. Errors name the file and the dotted key.

    site.toml: readers[1].antennas.3.location: unknown location 'DOKC-03'

`${NAME}` in any string is replaced from the environment (unset is an error). Secrets are
only ever read from files (`password_file`, key files), relative ones from
$CREDENTIALS_DIRECTORY when set, and never logged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from drivers.options import (
    ModbusOptions,
    ReplayOptions,
    UnknownDriver,
    driver_spec,
    upgrade_renamed_keys,
)
from gateway.confschema import (
    PARSE,
    Errors,
    build,
    check_topic_name,
    duration,
    join,
    parse_host_port,
    parse_size,
    process_count,
    read_toml,
    topic_name,
)
from gateway.engine.settings import EngineSettings, ProfileSettings

EX_CONFIG = 78  # sysexits.h: configuration error


class ConfigError(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    site: str = topic_name()
    id: str = topic_name()
    state_dir: str = field(default_factory=lambda: os.environ.get("STATE_DIRECTORY", ""))
    timezone: str = "UTC"
    shutdown_timeout_s: float = duration(10.0)
    # LLRP readers decoded in this many child processes (gateway/decoders.py); "auto": the
    # cores but one (two on two cores); 0: in the gateway process.
    decoder_processes: int | str = process_count(0)

    def __post_init__(self) -> None:
        if not self.state_dir:
            raise ValueError("state_dir: missing required key (and $STATE_DIRECTORY is not set)")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone: unknown time zone {self.timezone!r}") from None


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Turning verification off must be explicit; the daemon warns at every start.
    insecure: bool = False

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")


@dataclass(frozen=True, slots=True)
class MqttSettings:
    url: str
    topic_prefix: str = field(default="fc", metadata={PARSE: check_topic_name})
    protocol: int | str = 5
    client_id: str | None = None
    username: str | None = None
    password_file: str | None = None
    tls: TlsSettings | None = None
    keepalive_s: float = duration(30.0)
    inflight: int = 200  # PUBACK window: QoS 1 messages published and not yet acknowledged
    session_expiry_s: float = duration(7 * 24 * 3600.0)
    reconnect_max_s: float = duration(30.0)

    def __post_init__(self) -> None:
        if self.protocol not in (5, "5", "3.1.1"):
            raise ValueError(f"protocol: must be 5 or '3.1.1', got {self.protocol!r}")
        scheme = self.url.split("://", 1)[0] if "://" in self.url else ""
        if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"url: expected mqtt://HOST[:PORT] or mqtts://..., got {self.url!r}")
        if not 0 < self.inflight <= 65535:
            raise ValueError("inflight: must be between 1 and 65535")

    @property
    def tls_enabled(self) -> bool:
        return self.url.startswith(("mqtts://", "ssl://")) or self.tls is not None

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "localhost", parts.port or (8883 if self.tls_enabled else 1883)


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    max_bytes: int = field(default=2**30, metadata={PARSE: parse_size})
    when_full: Literal["drop_oldest", "drop_newest"] = "drop_oldest"
    synchronous: Literal["full", "normal"] = "full"
    commit_interval_s: float = duration(0.05)  # commit a batch at least this often...
    commit_rows: int = 500  # ...or when this many reads/messages wait


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: tuple[str, int] = field(default=("127.0.0.1", 9464), metadata={PARSE: parse_host_port})
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class LocationSettings:
    offsite: bool = False  # reads here never make a tag present (yard, trailer, street)
    biz_step: str | None = None  # GS1 CBV bizStep carried on movements into this location
    disposition: str | None = None
    profile: str | None = None  # a [profiles.NAME]; default chosen by rule (portal side vs zone)
    barcode: str | None = None  # the location label a handheld scans before a count
    sgln: str | None = None  # urn:epc:id:sgln:... for EPCIS; else a URI under [epcis] uri_prefix


@dataclass(frozen=True, slots=True)
class PortalSettings:
    outside: tuple[str, ...]  # "reader:antenna"
    inside: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AntennaSettings:
    location: str
    read_point: str | None = None
    rssi_offset_db: float = 0.0


@dataclass(frozen=True, slots=True)
class EpcisSettings:
    enabled: bool = False  # also publish each outbox batch as an EPCIS 2.0 document (stream epcis)
    uri_prefix: str = "urn:fc-edge:"  # location / read point ids without a configured sgln

    def __post_init__(self) -> None:
        from gateway.epcis import uri_prefix_problem

        if (why := uri_prefix_problem(self.uri_prefix)) is not None:
            raise ValueError(f"uri_prefix: {why}")


@dataclass(frozen=True, slots=True)
class SparkplugSettings:
    """[sparkplug]: the gateway as a Sparkplug B edge node, its devices as Sparkplug devices
    (gateway/sparkplug.py). Status and metrics only: movements stay on their own topics."""

    enabled: bool = False
    group_id: str | None = field(default=None, metadata={PARSE: check_topic_name})  # site
    edge_node_id: str | None = field(default=None, metadata={PARSE: check_topic_name})  # gw id
    # Births wait for this host application's STATE online (spBv1.0/STATE/{id}).
    primary_host_id: str | None = field(default=None, metadata={PARSE: check_topic_name})
    url: str | None = None  # the broker: [mqtt] url by default; credentials and TLS are [mqtt]'s
    client_id: str | None = None  # its own MQTT session: fc-edge-{site}-{edge_node_id}-spb
    interval_s: float = duration(1.0)  # DDATA: changed device metrics at most this often

    def __post_init__(self) -> None:
        if self.url is not None:
            MqttSettings(url=self.url)  # the same URL check as [mqtt] url ("url: ...")


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """A [[readers]] or [[equipment]] entry: common keys here, driver keys in `options`."""

    name: str
    driver: str
    antennas: Mapping[int, AntennaSettings]
    options: Any  # the driver's own Options dataclass (drivers/options.py)
    base_dir: str = "."  # the config file's folder: relative paths in options resolve here

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p


@dataclass(frozen=True, slots=True)
class Settings:
    path: str
    gateway: GatewaySettings
    mqtt: MqttSettings
    outbox: OutboxSettings
    metrics: MetricsSettings
    engine: EngineSettings
    epcis: EpcisSettings
    locations: Mapping[str, LocationSettings]
    profiles: Mapping[str, ProfileSettings]
    portals: Mapping[str, PortalSettings]
    readers: tuple[DeviceSettings, ...]
    equipment: tuple[DeviceSettings, ...]
    sparkplug: SparkplugSettings = SparkplugSettings()

    @property
    def devices(self) -> tuple[DeviceSettings, ...]:
        return self.readers + self.equipment

    @property
    def state_path(self) -> Path:
        return Path(self.gateway.state_dir)


# --- loading ---------------------------------------------------------------------------------

_TOP_LEVEL = {
    "gateway": GatewaySettings,
    "mqtt": MqttSettings,
    "outbox": OutboxSettings,
    "metrics": MetricsSettings,
    "engine": EngineSettings,
    "epcis": EpcisSettings,
    "sparkplug": SparkplugSettings,
}
_TABLES_OF = {"locations": LocationSettings, "profiles": ProfileSettings, "portals": PortalSettings}
_DEVICE_LISTS = ("readers", "equipment")
_REQUIRED = ("gateway", "mqtt", "locations")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load(path: str | os.PathLike[str]) -> Settings:
    """Read and validate a config file; raises ConfigError with every problem found."""
    path = Path(path)
    try:
        raw = read_toml(path)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    return from_dict(raw, path.name, str(path))


def from_dict(raw: dict[str, Any], label: str = "config", path: str = "") -> Settings:
    errors = Errors()
    base_dir = str(Path(path).parent) if path else "."
    raw = substitute_env(raw, "", errors)
    if errors:  # an unset variable would only cause confusing follow-up errors
        raise ConfigError([f"{label}: {line}" for line in errors.lines])
    sections: dict[str, Any] = {}
    for key in raw:
        if key not in _TOP_LEVEL and key not in _TABLES_OF and key not in _DEVICE_LISTS:
            allowed = ", ".join(sorted([*_TOP_LEVEL, *_TABLES_OF, *_DEVICE_LISTS]))
            errors.add(key, f"unknown section (allowed: {allowed})")
    for key in _REQUIRED:
        if key not in raw:
            errors.add(key, "missing required section")
    if not raw.get("readers") and not raw.get("equipment"):
        errors.add("readers", "at least one device ([[readers]] or [[equipment]]) is required")
    for key, cls in _TOP_LEVEL.items():
        sections[key] = (
            build(cls, raw.get(key, {}), key, errors)
            if key in raw or key not in (_REQUIRED)
            else None
        )
    for key, cls in _TABLES_OF.items():
        sections[key] = build_table(cls, raw.get(key, {}), key, errors)
    for key in _DEVICE_LISTS:
        sections[key] = build_devices(raw.get(key, []), key, errors, base_dir)
    if not errors:
        cross_check(sections, errors)
    if errors:
        raise ConfigError([f"{label}: {line}" for line in errors.lines])
    return Settings(path=path, **sections)


def build_table(cls: type, raw: Any, path: str, errors: Errors) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        errors.add(path, "expected a table of named entries")
        return {}
    out = {}
    for name, value in raw.items():
        try:
            check_topic_name(name)
        except ValueError as exc:
            errors.add(join(path, name), str(exc))
        item = build(cls, value, join(path, name), errors)
        if item is not None:
            out[name] = item
    return out


def build_devices(raw: Any, path: str, errors: Errors, base_dir: str) -> tuple[DeviceSettings, ...]:
    if not isinstance(raw, list):
        errors.add(path, f"expected [[{path}]] entries")
        return ()
    devices = []
    for index, entry in enumerate(raw):
        here = join(path, index)
        if not isinstance(entry, dict):
            errors.add(here, "expected a table")
            continue
        entry = dict(entry)
        name = entry.pop("name", None)
        driver = entry.pop("driver", None)
        antennas_raw = entry.pop("antennas", None)
        if name is None:
            errors.add(join(here, "name"), "missing required key")
        else:
            try:
                check_topic_name(name)
            except ValueError as exc:
                errors.add(join(here, "name"), str(exc))
        if driver is None:
            errors.add(join(here, "driver"), "missing required key")
            continue
        if not isinstance(driver, str):
            errors.add(join(here, "driver"), "expected a string")
            continue
        try:
            spec = driver_spec(driver)
        except UnknownDriver as exc:
            errors.add(join(here, "driver"), str(exc))
            continue
        if missing := spec.missing():
            needs = ", ".join(missing)
            errors.add(join(here, "driver"), f"driver {driver!r} needs {needs} (not installed)")
            continue
        if (spec.kind == "equipment") != (path == "equipment"):
            where = "[[equipment]]" if spec.kind == "equipment" else "[[readers]]"
            errors.add(join(here, "driver"), f"driver {driver!r} belongs under {where}")
            continue
        antennas: Mapping[int, AntennaSettings] = {}
        if spec.kind == "reader":
            if antennas_raw is None:
                errors.add(join(here, "antennas"), "missing required key")
            else:
                antennas = build_antennas(antennas_raw, join(here, "antennas"), errors)
        elif antennas_raw is not None:
            errors.add(join(here, "antennas"), f"driver {driver!r} has no fixed antennas")
        entry = upgrade_renamed_keys(spec, entry, here, errors)
        options = build(spec.options, entry, here, errors)
        if options is not None and isinstance(name, str) and name:
            device = DeviceSettings(name, driver, antennas, options, base_dir)
            for line in spec.check(device) if spec.check else ():
                key, sep, message = line.partition(": ")
                if sep:
                    errors.add(join(here, key), message)
                else:
                    errors.add(here, line)
            devices.append(device)
    return tuple(devices)


def build_antennas(raw: Any, path: str, errors: Errors) -> Mapping[int, AntennaSettings]:
    if not isinstance(raw, dict) or not raw:
        errors.add(path, "expected a table of antenna number -> { location = ... }")
        return {}
    out = {}
    for key, value in raw.items():
        try:
            number = int(key)
            if number < 1:
                raise ValueError
        except ValueError:
            errors.add(join(path, key), "antenna numbers are whole numbers from 1")
            continue
        antenna = build(AntennaSettings, value, join(path, key), errors)
        if antenna is not None:
            out[number] = antenna
    return out


def cross_check(s: dict[str, Any], errors: Errors) -> None:
    """Checks that span sections: every name a section uses must exist elsewhere."""
    locations: Mapping[str, LocationSettings] = s["locations"]
    profiles = s["profiles"]
    if not locations:
        errors.add("locations", "at least one location is required")
    for name, loc in locations.items():
        if loc.profile is not None and loc.profile not in profiles:
            errors.add(f"locations.{name}.profile", f"unknown profile {loc.profile!r}")
    antennas: set[str] = set()
    names: set[str] = set()
    for kind in _DEVICE_LISTS:
        for index, device in enumerate(s[kind]):
            if device.name in names:
                errors.add(f"{kind}[{index}].name", f"duplicate device name {device.name!r}")
            names.add(device.name)
            for number, antenna in device.antennas.items():
                antennas.add(f"{device.name}:{number}")
                if antenna.location not in locations:
                    errors.add(
                        f"{kind}[{index}].antennas.{number}.location",
                        f"unknown location {antenna.location!r}",
                    )
            check_device_locations(device, f"{kind}[{index}]", locations, errors)
    if s["epcis"].enabled:
        from gateway.epcis import config_problems

        for line in config_problems(locations, s["epcis"].uri_prefix):
            key, _, message = line.partition(": ")
            errors.add(key, message)
    for name, portal in s["portals"].items():
        for side in ("outside", "inside"):
            refs = getattr(portal, side)
            if not refs:
                errors.add(f"portals.{name}.{side}", "needs at least one reader:antenna")
            for i, ref in enumerate(refs):
                if ref not in antennas:
                    errors.add(
                        f"portals.{name}.{side}[{i}]",
                        f"unknown antenna {ref!r} (expected reader:antenna of a configured reader)",
                    )


def check_device_locations(
    device: DeviceSettings, path: str, locations: Mapping[str, Any], errors: Errors
) -> None:
    """Driver options that name locations (e.g. a handheld's allowed locations) must exist."""
    for f in dataclasses.fields(device.options):
        if not f.metadata.get("location_ref"):
            continue
        value = getattr(device.options, f.name)
        refs: Any = value.values() if isinstance(value, Mapping) else value
        refs = [refs] if isinstance(refs, str) else (refs or [])
        for ref in refs:
            if ref not in locations:
                errors.add(join(path, f.name.rstrip("_")), f"unknown location {ref!r}")


def substitute_env(value: Any, path: str, errors: Errors) -> Any:
    if isinstance(value, str):

        def replace(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                errors.add(path, f"environment variable ${{{name}}} is not set")
                return ""
            return os.environ[name]

        return _ENV.sub(replace, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, join(path, k), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, join(path, i), errors) for i, v in enumerate(value)]
    return value


def credential_path(path_text: str) -> Path:
    """A secret file's path: a relative name is looked up in $CREDENTIALS_DIRECTORY (systemd's
    LoadCredential=) when set, else relative to the working directory."""
    path = Path(path_text)
    if not path.is_absolute() and "CREDENTIALS_DIRECTORY" in os.environ:
        path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / path
    return path


def read_secret(path_text: str) -> str:
    """A secret from a file, stripped of its trailing newline. Never logged."""
    path = credential_path(path_text)
    value = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not value:
        raise ValueError(f"secret file {path} is empty")
    return value


# --- files the config names ------------------------------------------------------------------

# Driver options that name a file, resolved from the config file's folder (DeviceSettings.resolve).
_DEVICE_FILE_OPTIONS: Mapping[type, tuple[str, ...]] = {
    ReplayOptions: ("file",),
    ModbusOptions: ("map",),
}


def named_files(s: Settings) -> list[tuple[str, Path]]:
    """Every file the settings name, as (dotted key, path), each path resolved the way the code
    that opens it resolves it: secrets through $CREDENTIALS_DIRECTORY, the CA and certificate
    as given (ssl opens them relative to the working directory), device files from the config
    file's folder."""
    files: list[tuple[str, Path]] = []
    if s.mqtt.password_file is not None:
        files.append(("mqtt.password_file", credential_path(s.mqtt.password_file)))
    tls = s.mqtt.tls
    if tls is not None:
        if tls.ca_file is not None:
            files.append(("mqtt.tls.ca_file", Path(tls.ca_file)))
        if tls.cert_file is not None:
            files.append(("mqtt.tls.cert_file", Path(tls.cert_file)))
        if tls.key_file is not None:
            files.append(("mqtt.tls.key_file", credential_path(tls.key_file)))
    for kind in _DEVICE_LISTS:
        devices: tuple[DeviceSettings, ...] = getattr(s, kind)
        for index, device in enumerate(devices):
            for option in _DEVICE_FILE_OPTIONS.get(type(device.options), ()):
                key = join(join(kind, index), option)
                files.append((key, device.resolve(getattr(device.options, option))))
    return files


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a file (None: it can)."""
    try:
        if not path.is_file():
            return "not a regular file" if path.exists() else "no such file"
    except OSError as exc:  # a folder on the way that we may not enter, ...
        return f"cannot be looked up: {exc.strerror}"
    if not os.access(path, os.R_OK):
        return "not readable by this user"
    return None


def check_named_files(s: Settings) -> None:
    """Every file the config names exists and is readable; else ConfigError naming each key.

    `check-config` runs it, and `run` before it opens anything, so a missing password file is
    a config error naming `mqtt.password_file`, not an OSError after the outbox was opened."""
    errors = Errors()
    for key, path in named_files(s):
        if (why := file_problem(path)) is not None:
            errors.add(key, f"{path}: {why}{_credentials_hint(key, path)}")
    if errors:
        label = Path(s.path).name if s.path else "config"
        raise ConfigError([f"{label}: {line}" for line in errors.lines])


_SECRET_KEYS = ("mqtt.password_file", "mqtt.tls.key_file")  # resolved by credential_path


def _credentials_hint(key: str, path: Path) -> str:
    """A relative secret outside systemd (check-config from a shell) is looked for in the
    working directory: say where the service would look instead."""
    if key in _SECRET_KEYS and not path.is_absolute() and "CREDENTIALS_DIRECTORY" not in os.environ:
        return " (relative, and $CREDENTIALS_DIRECTORY, where the service finds it, is not set)"
    return ""


# --- warnings at start -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartWarning:
    code: str  # stable, machine-readable: /readyz lists it under "warnings"
    message: str  # for the operator: logged once at start


def start_warnings(s: Settings) -> list[StartWarning]:
    """What the config allows but an operator should know about at every start."""
    warnings = []
    host, _ = s.mqtt.host_port
    if not s.mqtt.tls_enabled and not is_loopback(host):
        warnings.append(
            StartWarning(
                "mqtt_plaintext_to_non_loopback",
                f"mqtt.url: plain MQTT to {host}, which is not this machine: anyone on the "
                "network path can read and forge messages (and the password, if any); "
                "use mqtts:// with [mqtt.tls]",
            )
        )
    return warnings


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves the machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


def summary(s: Settings) -> str:
    """The one-screen summary `check-config` prints."""
    lines = [
        f"config {s.path}: OK",
        f"  gateway   {s.gateway.site}/{s.gateway.id}  state {s.gateway.state_dir}",
        f"  mqtt      {s.mqtt.url}  protocol {s.mqtt.protocol}  prefix {s.mqtt.topic_prefix}"
        + ("  tls" if s.mqtt.tls_enabled else ""),
        f"  outbox    max {s.outbox.max_bytes} B  when full {s.outbox.when_full}"
        f"  synchronous {s.outbox.synchronous}",
        f"  locations {len(s.locations)}: {', '.join(list(s.locations)[:8])}"
        + (" ..." if len(s.locations) > 8 else ""),
        f"  portals   {len(s.portals)}: {', '.join(s.portals)}",
    ]
    for device in s.devices:
        ants = f"  antennas {len(device.antennas)}" if device.antennas else ""
        lines.append(f"  device    {device.name} ({device.driver}){ants}")
    if s.sparkplug.enabled:
        sp = s.sparkplug
        group, node = sp.group_id or s.gateway.site, sp.edge_node_id or s.gateway.id
        host = f"  primary host {sp.primary_host_id}" if sp.primary_host_id else ""
        lines.append(f"  sparkplug spBv1.0/{group}/+/{node}  {sp.url or s.mqtt.url}{host}")
    if s.metrics.enabled:
        lines.append(f"  metrics   http://{s.metrics.listen[0]}:{s.metrics.listen[1]}/metrics")
    return "\n".join(lines)
