"""A supervised sllurp (3.0.5) driver for fixed UHF readers speaking LLRP on TCP 5084.

sllurp does the protocol (its state machine and its decoder); this module supervises it, because
sllurp alone does not survive a real site (see DESIGN.md §5):

* **A fresh `LLRPReaderClient` for every connection.** sllurp's own reconnect waits a hard-coded
  60 s and keeps a half frame from the dropped connection in its buffer, which wedges it for good.
  Reconnects are ours: `Driver.run`'s loop, with a `drivers.runtime.Backoff` that starts over
  once a session reached INVENTORYING (connect() returns only then).
* **Framing before sllurp.** `_Client.raw_data_received` cuts the byte stream into whole LLRP
  frames and hands sllurp one complete frame at a time. sllurp still decodes every frame, but a
  frame it cannot decode costs that frame only (sllurp drops the rest of a recv chunk), a broken
  header is recognised as a desynchronised stream (reconnect), and sllurp never sees a split
  header (the source of its "Too few bytes" warnings).
* **Liveness.** A supervisor task on the asyncio loop watches each session: the peer closed
  (`connection_lost`), the sllurp thread died without telling anyone (`thread_died`, e.g. a
  capabilities response without `UHFC1G2RFModeTable`), nothing decoded — no report and no
  KEEPALIVE — for 2 x keepalive_s (`liveness`), the handshake did not reach INVENTORYING within
  handshake_timeout_s (`handshake_timeout`), the frame stream lost sync (`malformed`), the
  TCP connect failed (`connect_failed`), or the reader refused us because another client holds
  it (`connection_exists`, below). Each cause is counted with `count_reconnect`.
* **Which reader.** GET_READER_CAPABILITIES names the vendor and model
  (GeneralDeviceCapabilities); the driver logs them and keeps them in `identity`. Impinj's
  extensions (custom messages and parameters) go to Impinj readers only: a Zebra FX answers
  them with an error (sllurp issues 118/119, EdgeX device-rfid-llrp-go issue 278). The driver
  requests none today; `_ProtocolClient` drops any that sllurp's config carries once the
  capabilities show another vendor, before SET_READER_CONFIG and ADD_ROSPEC are built. A
  configured RF `mode` the reader does not list (Impinj's Autoset 1002 on a Zebra) is left
  out the same way, with a warning, instead of failing every handshake.
* **A reader held by a stale client.** An LLRP reader takes one client. One that still holds
  a session of ours that died without closing (a crash, a cut cable) answers a new connection
  with READER_EVENT_NOTIFICATION ConnectionAttemptEvent "Failed (a Client initiated connection
  already exists)" and closes it (LLRP 1.0.1 §13.2.6.11). LLRP gives the newcomer no way to
  close another client's session (CLOSE_CONNECTION acts on one's own), so the takeover is to
  wait: a reader frees a session whose peer stopped answering once its own timeout for it
  expires (TCP retransmission of its KEEPALIVEs and reports, or a keepalive-ack check), and we
  retry with our backoff until it has. Each refusal counts as `connection_exists`, logged once
  until we are in again (docs/drivers/llrp.md).
* **Closing** is `disconnect()` then `hard_disconnect()` on a daemon thread with a deadline
  (disconnect() alone is racy and can hang; a daemon thread never blocks interpreter exit).

Threads: sllurp runs one thread per connection and calls our callbacks on it. The callbacks only
convert tag dicts into TagReads and hand each recv chunk's reads to the sink in one batch (the
sink is thread-safe and non-blocking); they never block, never touch SQLite.

Report cadence: LLRP 1.0.1 ROReportSpec N is the number of TagReportData per report. sllurp
always sends N=0 ("only at the end of the AISpec"), and its `report_every_n_tags` adds an AISpec
*stop* trigger instead; with a never-ending AISpec a reader following the standard would then
never report. `report_n_tags` sets the real N (default 1: lowest latency).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from socket import SHUT_RDWR
from typing import Any, ClassVar, Literal

from sllurp.llrp import (
    LLRPClient,
    LLRPReaderClient,
    LLRPReaderConfig,
    LLRPReaderState,
)
from sllurp.llrp_errors import ReaderConfigurationError

from drivers.base import Driver, SessionEnded
from drivers.options import LLRPOptions
from drivers.runtime import Backoff, run_in_daemon_thread
from gateway.engine.clock import ReaderClock
from gateway.model import TagRead, now_us

log = logging.getLogger(__name__)

STATE_INVENTORYING = LLRPReaderState.STATE_INVENTORYING

# LLRP frame header: ver/type u16, total length u32, message id u32.
_HEADER = struct.Struct("!HII")
_HEADER_LEN = _HEADER.size
# No reader sends anything near this; a larger length means we lost the frame boundaries.
MAX_FRAME_BYTES = 16 * 1024 * 1024
# raw EPC bytes -> upper-case str, cleared when full. It only has to hold what is in a
# reader's field now (hundreds to a few thousand tags); the 2-hour soak found 100,000 too many:
# a reader that sees 5 new EPCs a second grew its cache by ~3.6 MB an hour for 5.5 hours.
EPC_CACHE_SIZE = 4096

ReconnectCause = Literal[
    "connect_failed",
    "connection_lost",
    "thread_died",
    "liveness",
    "handshake_timeout",
    "malformed",
    "connection_exists",
    "internal_error",
]

# IANA enterprise numbers as readers put them in GeneralDeviceCapabilities.DeviceManufacturerName.
VENDOR_IMPINJ = 25882
# Zebra FX readers report 24831 (sllurp issue 115, an FX reader on FW 1.6.5) and use 161
# (Motorola Solutions, whose RFID line Zebra bought) on their custom parameters; 10642 is
# Zebra Technologies' own number.
VENDOR_NAMES = {VENDOR_IMPINJ: "Impinj", 161: "Zebra", 24831: "Zebra", 10642: "Zebra"}
# ConnectionAttemptEvent statuses (sllurp's names) meaning another client holds the reader.
_HELD_BY_ANOTHER_CLIENT = (
    "Failed (a Reader initiated connection already exists)",
    "Failed (a Client initiated connection already exists)",
)
# sllurp's config settings that make it send Impinj's custom messages or parameters.
_IMPINJ_SETTINGS = (
    "impinj_search_mode",
    "impinj_tag_content_selector",
    "impinj_extended_configuration",
    "impinj_event_selector",
)


# --- logging ---------------------------------------------------------------------------------


class _SllurpNoiseFilter(logging.Filter):
    """Drops two sllurp messages and nothing else: "Too few bytes ... to unpack message header"
    (a recv boundary that splits a header: harmless, ~440 per 200k one-tag reports), and its
    CRITICAL "Could not start session on reader" for a reader another client holds, which it
    logs on every attempt; the driver counts that cause and logs it once (`connection_exists`).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if not isinstance(msg, str):
            return True
        if msg.startswith("Too few bytes"):
            return False
        if msg.startswith("Could not start session") and isinstance(record.args, tuple):
            return not any(status in record.args for status in _HELD_BY_ANOTHER_CLIENT)
        return True


_FILTER = _SllurpNoiseFilter()


def install_log_filter() -> None:
    """Idempotent: a logger keeps one copy of a given filter object."""
    logging.getLogger("sllurp.llrp").addFilter(_FILTER)


# --- tag conversion --------------------------------------------------------------------------


def reader_time_us(tag: Mapping[str, Any]) -> int | None:
    """The reader's UTC timestamp of the sighting: LastSeen, else FirstSeen (µs)."""
    value = tag.get("LastSeenTimestampUTC")
    if value is None:
        value = tag.get("FirstSeenTimestampUTC")
    return int(value) if value is not None else None


def epc_of(tag: Mapping[str, Any]) -> str | None:
    """sllurp gives the EPC as lower-case hex bytes under 'EPC-96' (96-bit) or 'EPC' (EPCData)."""
    raw = tag.get("EPC-96")
    if raw is None:
        raw = tag.get("EPC")
    if raw is None:
        return None
    text = raw.decode("ascii") if isinstance(raw, bytes | bytearray) else str(raw)
    return text.upper() if text else None


# --- the reader's identity -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReaderIdentity:
    """Who made the reader and what it is, from GET_READER_CAPABILITIES."""

    vendor_id: int
    model: int
    firmware: str
    utc_clock: bool

    @property
    def vendor(self) -> str:
        return VENDOR_NAMES.get(self.vendor_id, f"vendor {self.vendor_id}")

    @property
    def is_impinj(self) -> bool:
        return self.vendor_id == VENDOR_IMPINJ

    def describe(self) -> str:
        clock = "UTC clock" if self.utc_clock else "no UTC clock"
        return f"{self.vendor} model {self.model}, firmware {self.firmware}, {clock}"


def reader_identity(capabilities: Mapping[str, Any]) -> ReaderIdentity | None:
    """The identity in sllurp's decoded GET_READER_CAPABILITIES_RESPONSE, or None."""
    try:
        gdc = capabilities["GeneralDeviceCapabilities"]
        firmware = gdc.get("ReaderFirmwareVersion", b"")
        if isinstance(firmware, bytes | bytearray):
            firmware = firmware.decode("ascii", "replace")
        return ReaderIdentity(
            int(gdc["DeviceManufacturerName"]),
            int(gdc["ModelName"]),
            str(firmware),
            bool(gdc.get("HasUTCClockCapability", False)),
        )
    except (KeyError, TypeError, ValueError):
        return None


def drop_impinj_settings(config: Any) -> list[str]:
    """Clear what would make sllurp send Impinj extensions from its LLRPReaderConfig; returns
    the names of those that were set."""
    dropped = [name for name in _IMPINJ_SETTINGS if getattr(config, name, None)]
    for name in dropped:
        setattr(config, name, None)
    frequencies = getattr(config, "frequencies", None)
    if isinstance(frequencies, dict) and frequencies.get("Automatic"):
        frequencies["Automatic"] = False  # automatic frequency selection is Impinj's too
        dropped.append("frequencies.Automatic")
    return dropped


def drop_unknown_mode(config: Any, capabilities: Mapping[str, Any]) -> list[str]:
    """Clear a configured RF mode the reader's UHFC1G2RFModeTable does not list (an Impinj
    Autoset mode such as 1002 on a Zebra, say), so the reader's own mode applies; sllurp would
    otherwise stop the handshake, and the driver would reconnect for ever. Returns what was
    dropped. A capabilities response without a mode table is left to sllurp."""
    wanted = getattr(config, "mode_identifier", None)
    try:
        band = capabilities["RegulatoryCapabilities"]["UHFBandCapabilities"]
        entries = band["UHFC1G2RFModeTable"]["UHFC1G2RFModeTableEntry"]
        modes = sorted(int(entry["ModeIdentifier"]) for entry in entries)
    except (KeyError, TypeError, ValueError):
        return []
    if wanted is None or wanted in modes:
        return []
    config.mode_identifier = None
    return [f"mode {wanted} (its RF modes: {', '.join(map(str, modes))})"]


# --- the sllurp client, one per connection ---------------------------------------------------


class _ProtocolClient(LLRPClient):
    """sllurp's state machine with two additions: ROReportSpec N = report_n_tags, and the
    reader's identity reported (and Impinj settings dropped for another vendor's reader) as
    soon as its capabilities are decoded, before sllurp builds SET_READER_CONFIG/ADD_ROSPEC."""

    report_n_tags: int = 1
    on_identity: Callable[[ReaderIdentity, list[str]], None] | None = None

    def parseCapabilities(self, capdict: Any) -> Any:  # noqa: N802 (sllurp's name)
        identity = reader_identity(capdict)
        if identity is not None:
            dropped = drop_unknown_mode(self.config, capdict)
            if not identity.is_impinj:
                dropped += drop_impinj_settings(self.config)
            if self.on_identity is not None:
                self.on_identity(identity, dropped)
        return super().parseCapabilities(capdict)

    def getROSpec(self, force_new: bool = False) -> Any:  # noqa: N802 (sllurp's name)
        rospec = super().getROSpec(force_new=force_new)
        rospec["ROReportSpec"]["N"] = self.report_n_tags
        return rospec


class _Client(LLRPReaderClient):
    """An `LLRPReaderClient` that frames the stream itself and reports what it saw.

    Everything here runs on sllurp's thread. `on_chunk_done` runs after each recv chunk (the
    session hands that chunk's reads to the sink in one batch); `on_frame_error(message, fatal)`
    reports a frame sllurp could not decode (not fatal) or a broken header (fatal: no resync).
    """

    def __init__(
        self,
        host: str,
        port: int,
        config: LLRPReaderConfig,
        *,
        report_n_tags: int,
        on_frame_error: Callable[[str, bool], None],
        on_chunk_done: Callable[[], None],
        on_identity: Callable[[ReaderIdentity, list[str]], None],
        socket_timeout_s: float,
    ) -> None:
        super().__init__(host, port, config, timeout=socket_timeout_s)
        # Re-class sllurp's own state machine instead of building a second one (which would log
        # its start-up lines twice); _ProtocolClient only overrides two of its methods.
        self.llrp.__class__ = _ProtocolClient
        self.llrp.report_n_tags = report_n_tags
        self.llrp.on_identity = on_identity
        self._buffer = bytearray()
        self._desynced = False
        self._decoded = 0
        self._on_frame_error = on_frame_error
        self._on_chunk_done = on_chunk_done

    def raw_data_received(self, data: bytes) -> None:
        if self._desynced:
            return  # the stream is garbage from here on; the supervisor reconnects
        buf = self._buffer
        buf += data
        start = 0
        try:
            while len(buf) - start >= _HEADER_LEN:
                ver_type, length, _msg_id = _HEADER.unpack_from(buf, start)
                if length < _HEADER_LEN or length > MAX_FRAME_BYTES or (ver_type >> 10) & 7 != 1:
                    self._desynced = True
                    self._on_frame_error(
                        f"bad LLRP header (version/type 0x{ver_type:04x}, length {length})", True
                    )
                    del buf[:]
                    return
                if len(buf) - start < length:
                    break
                frame = bytes(buf[start : start + length])
                start += length
                before = self._decoded
                # sllurp decodes, runs its state machine and our callbacks.
                try:
                    super().raw_data_received(frame)
                except (ReaderConfigurationError, OSError):
                    raise  # sllurp's main loop handles these (abort / connection lost)
                except Exception as exc:
                    if self._decoded != before:
                        raise  # decoded, then sllurp's state machine failed: thread_died
                    # sllurp catches only LLRPError; its decoders also raise struct.error,
                    # IndexError, ... on a truncated parameter (found by tests/fuzz), which
                    # would kill its thread. Such a frame costs itself only.
                    self._on_frame_error(
                        f"undecodable frame of type {ver_type & 0x3FF} "
                        f"({type(exc).__name__}: {exc})",
                        False,
                    )
                    continue
                if self._decoded == before:
                    self._on_frame_error(f"undecodable frame of type {ver_type & 0x3FF}", False)
        finally:
            if start:
                del buf[:start]
            self._on_chunk_done()

    def _on_llrp_message_received(self, lmsg: Any) -> None:
        self._decoded += 1
        super()._on_llrp_message_received(lmsg)

    def stop_reading(self, timeout_s: float) -> None:
        """End sllurp's thread before its socket is closed: closing the fd under its select()
        makes it log "Exception encountered in main loop" (EBADF). A shutdown wakes select,
        recv returns nothing, and the loop sees the stop flag and exits on its own."""
        self._stop_main_loop.set()
        sock = self._socket
        if sock is not None:
            try:
                sock.shutdown(SHUT_RDWR)
            except OSError:
                pass  # already closed by sllurp itself
        self.join(timeout_s)


# --- one connection --------------------------------------------------------------------------


class _Session:
    """One connection: its client, what its callbacks observed, and its teardown."""

    def __init__(self, driver: LLRPDriver) -> None:
        self.driver = driver
        opts: LLRPOptions = driver.options
        self.antennas = sorted(driver.device.antennas)
        self.client = _Client(
            opts.host,
            opts.port,
            LLRPReaderConfig(reader_config(opts, self.antennas)),
            report_n_tags=opts.report_n_tags,
            on_frame_error=self._on_frame_error,
            on_chunk_done=self._flush,
            on_identity=driver.note_identity,
            socket_timeout_s=min(5.0, opts.handshake_timeout_s),
        )
        self.client.add_tag_report_callback(self._on_tags)
        self.client.add_message_callback("KEEPALIVE", self._on_keepalive)
        self.client.add_message_callback("READER_EVENT_NOTIFICATION", self._on_event)
        self.client.add_disconnected_callback(self._on_disconnected)
        for _name, state in LLRPReaderState.getStates():
            self.client.add_state_callback(state, self._on_state)
        now = time.monotonic()
        self.last_alive = now  # last report or KEEPALIVE
        self.not_inventorying_since: float | None = now
        self.inventorying = False
        self.disconnected = False
        self.held_by_another_client = False  # the reader refused us: another client holds it
        self.desynced = False
        self.pending: list[TagRead] = []
        self._lock = threading.Lock()
        self._closing = False

    # ---- sllurp thread ----
    def _on_tags(self, _reader: Any, tags: Iterable[Mapping[str, Any]]) -> None:
        self.last_alive = time.monotonic()
        if not tags:
            # An RO_ACCESS_REPORT without tags (Zebra FX readers send them, sllurp issue 115):
            # no error, and like a KEEPALIVE it says the reader has sent all it read so far.
            self.driver.sink.progress(self.driver.name, now_us())
            return
        reads = self.driver.convert(tags, now_us())
        with self._lock:
            self.pending.extend(reads)

    def _on_event(self, _reader: Any, msg: Any) -> None:
        """A READER_EVENT_NOTIFICATION carries the reader's clock: the first one comes at
        connect, before any backlog, so the offset is known before stale reads arrive. It also
        says whether the reader let us in (ConnectionAttemptEvent)."""
        try:
            data = msg.msgdict["READER_EVENT_NOTIFICATION"]["ReaderEventNotificationData"]
        except (AttributeError, KeyError, TypeError):
            return
        attempt = data.get("ConnectionAttemptEvent")
        if isinstance(attempt, Mapping) and attempt.get("Status") in _HELD_BY_ANOTHER_CLIENT:
            self.held_by_another_client = True  # the reader closes the connection next
        try:
            stamp = int(data["UTCTimestamp"]["Microseconds"])
        except (KeyError, TypeError, ValueError):
            return  # no timestamp (an uptime clock): the reads will tell
        self.driver.clock.correct(stamp, now_us())

    def _on_keepalive(self, _reader: Any, _msg: Any) -> None:
        self.last_alive = time.monotonic()
        # Everything the reader read before this KEEPALIVE was sent before it (one TCP
        # stream): the engine need not wait for this reader up to now.
        self.driver.sink.progress(self.driver.name, now_us())

    def _on_state(self, _reader: Any, state: int) -> None:
        if state == STATE_INVENTORYING:
            self.last_alive = time.monotonic()  # liveness is measured from here
            self.inventorying = True
            self.not_inventorying_since = None
        elif self.not_inventorying_since is None:
            self.inventorying = False
            self.not_inventorying_since = time.monotonic()

    def _on_disconnected(self, _reader: Any) -> None:
        self.disconnected = True

    def _on_frame_error(self, message: str, fatal: bool) -> None:
        self.driver.count_error("malformed")
        self.driver.log_once("malformed", f"malformed data from the reader: {message}")
        if fatal:
            self.desynced = True

    def _flush(self) -> None:
        """Hand the reads of one recv chunk to the sink (called on sllurp's thread)."""
        with self._lock:
            if not self.pending:
                return
            batch, self.pending = self.pending, []
        self.driver.sink.reads(batch)
        self.driver.mark_data()

    # ---- supervisor (any thread) ----
    def connect(self) -> None:
        """Blocking: TCP connect and start sllurp's thread. If close() ran meanwhile, undo."""
        now = time.monotonic()
        self.last_alive = now
        self.not_inventorying_since = now  # the handshake deadline counts from the connect
        self.client.connect()
        with self._lock:
            closing = self._closing
        if closing:
            self.client.hard_disconnect()

    def close(self, polite_timeout_s: float) -> None:
        """Blocking and bounded: a polite stop (deletes the ROSpec), then the hard close."""
        with self._lock:
            self._closing = True
        try:
            # A dead thread (peer gone, or sllurp crashed) gets no polite stop: nobody would
            # answer it, and sllurp would only warn "Disconnect is not needed".
            if self.client.is_alive():
                self.client.disconnect(timeout=polite_timeout_s)
        except Exception as exc:  # the socket may be gone already; the hard close follows
            log.debug("%s: polite disconnect failed: %s", self.driver.name, exc)
        try:
            self.client.stop_reading(polite_timeout_s)
            self.client.hard_disconnect()
        except Exception as exc:
            log.debug("%s: hard disconnect failed: %s", self.driver.name, exc)

    def failure(self, now: float, opts: LLRPOptions) -> ReconnectCause | None:
        """Why this session must end, or None while it is healthy."""
        if self.held_by_another_client:  # (checked first: the reader hangs up right after)
            return "connection_exists"
        if self.disconnected:
            return "connection_lost"
        if self.desynced:
            return "malformed"
        if not self.client.is_alive():
            return "thread_died"
        since = self.not_inventorying_since
        if since is not None and now - since > opts.handshake_timeout_s:
            return "handshake_timeout"
        # Before INVENTORYING the handshake deadline applies; after it, the liveness deadline.
        if self.inventorying and now - self.last_alive > 2 * opts.keepalive_s:
            return "liveness"
        return None


def reader_config(opts: LLRPOptions, antennas: list[int]) -> dict[str, Any]:
    """sllurp's LLRPReaderConfig for one connection (it mutates it: build one per client)."""
    config: dict[str, Any] = {
        "antennas": list(antennas),
        "tx_power": 0,  # index 0: the reader's maximum, unless tx_power_dbm says otherwise
        "mode_identifier": opts.mode,
        "session": opts.session,
        "tag_population": opts.tag_population,
        "keepalive_interval": max(1, round(opts.keepalive_s * 1000)),
        "start_inventory": True,
        "reset_on_connect": True,  # deletes the ROSpec a previous session left on the reader
        "reconnect": False,  # reconnects are ours (fresh client each time)
        "tag_content_selector": {
            "EnableROSpecID": False,
            "EnableSpecIndex": False,
            "EnableInventoryParameterSpecID": False,
            "EnableAntennaID": True,
            "EnableChannelIndex": False,
            "EnablePeakRSSI": True,
            "EnableFirstSeenTimestamp": True,
            "EnableLastSeenTimestamp": True,
            "EnableTagSeenCount": True,
            "EnableAccessSpecID": False,
        },
    }
    if opts.tx_power_dbm is not None:
        config["tx_power_dbm"] = float(opts.tx_power_dbm)
    return config


# --- the driver ------------------------------------------------------------------------------


class LLRPDriver(Driver):
    """One LLRP reader, supervised: `Driver.run`'s reconnect loop with the steps below (connect
    = TCP connect and handshake, serve = liveness watch); sllurp's thread does the I/O."""

    Options: ClassVar[type] = LLRPOptions
    kind: ClassVar[Literal["reader", "equipment"]] = "reader"

    def __init__(self, device: Any, sink: Any) -> None:
        super().__init__(device, sink)
        self.options: LLRPOptions = device.options
        self.antenna_numbers = frozenset(device.antennas)
        self._only_antenna = next(iter(device.antennas)) if len(device.antennas) == 1 else None
        # The reader's clock, put on the gateway's (gateway/engine/clock.py): reads are
        # compared across readers, and a backlog keeps the times it was read at.
        self.clock = ReaderClock(max_step_us=int(self.options.max_clock_skew_s * 1_000_000))
        self._skewed = False
        self._epc_cache: dict[Any, str] = {}
        self._logged: set[str] = set()
        self._log_lock = threading.Lock()
        self.session: _Session | None = None
        self._failing: str | None = None  # the failure cause last logged
        self._was_up = False
        self.identity: ReaderIdentity | None = None  # from the last capabilities seen

    # ---- logging once ----
    def log_once(self, key: str, message: str, level: int = logging.WARNING) -> None:
        """Log `message` the first time `key` is raised since it was last cleared."""
        with self._log_lock:
            if key in self._logged:
                return
            self._logged.add(key)
        log.log(level, "%s: %s", self.name, message)

    def clear_logged(self, key: str) -> bool:
        with self._log_lock:
            if key in self._logged:
                self._logged.discard(key)
                return True
            return False

    def note_identity(self, identity: ReaderIdentity, dropped: list[str]) -> None:
        """The reader's capabilities were decoded (sllurp thread): log who it is when that
        changes (first connect, or the reader was swapped), and what of the configuration it
        does not support and is therefore left out (logged once, counted per session)."""
        if identity != self.identity:
            log.info("%s: the reader is %s", self.name, identity.describe())
            self.identity = identity
        if dropped:
            self.count_error("unsupported_setting", len(dropped))
            self.log_once(
                "unsupported_setting",
                f"the {identity.vendor} reader does not support {'; '.join(dropped)}: left "
                "out, the reader's own setting applies; counted as errors.unsupported_setting",
            )

    # ---- conversion (sllurp thread) ----
    def convert(self, tags: Iterable[Mapping[str, Any]], arrival_us: int) -> list[TagRead]:
        """sllurp tag dicts -> TagReads. Bad entries are counted and skipped, never raised.

        The hot path of the driver (it runs on sllurp's thread for every tag): names are bound
        locally and EPC strings are cached by their raw bytes (a site sees the same tags over
        and over)."""
        out: list[TagRead] = []
        append = out.append
        rejected = 0
        clock = self.clock
        impossible_before = clock.impossible
        known_antennas = self.antenna_numbers
        only_antenna = self._only_antenna
        reader = self.name
        epc_cache = self._epc_cache
        for tag in tags:
            get = tag.get
            raw = get("EPC-96") or get("EPC")
            epc = epc_cache.get(raw) if raw is not None else None
            if epc is None and raw is not None:
                epc = epc_of(tag)
                if epc is not None:
                    if len(epc_cache) >= EPC_CACHE_SIZE:
                        epc_cache.clear()
                    epc_cache[raw] = epc
            antenna = get("AntennaID", only_antenna)
            rssi = get("PeakRSSI")
            if epc is None or rssi is None or antenna not in known_antennas:
                rejected += 1
                continue
            stamp = get("LastSeenTimestampUTC") or get("FirstSeenTimestampUTC")
            if stamp is None:
                stamp = arrival_us  # timestamps are enabled, but a reader may omit them
            else:
                stamp = clock.correct(stamp, arrival_us)
            append(TagRead(epc, reader, antenna, float(rssi), stamp, get("TagSeenCount") or 1))
        if rejected:
            self.count_error("bad_tag", rejected)
            self.log_once(
                "bad_tag",
                "dropping tag reports without EPC, AntennaID or PeakRSSI, or from an antenna "
                f"not in the config ({sorted(self.antenna_numbers)}); counted as errors.bad_tag",
            )
        self._note_skew(clock.impossible - impossible_before, len(out))
        return out

    def _note_skew(self, skewed: int, total: int) -> None:
        if skewed:
            self.count_error("clock_skew", skewed)
            if not self._skewed:
                self._skewed = True
                log.warning(
                    "%s: reader timestamps more than %.1f s later than the reader's clock "
                    "offset allows: using arrival time; counted as errors.clock_skew",
                    self.name,
                    self.options.max_clock_skew_s,
                )
        elif total and self._skewed:
            self._skewed = False
            log.info("%s: reader clock recovered, using reader timestamps again", self.name)

    # ---- the reconnect loop's steps (asyncio; the loop itself is Driver.run) ----
    async def run(self) -> None:
        install_log_filter()
        # The initial "connecting" is no transition, so set_state() would not publish it.
        self.sink.device_state(self.name, self.health())
        await super().run()

    def make_backoff(self) -> Backoff:
        return Backoff(cap_s=self.options.reconnect_max_s)

    async def connect(self) -> None:
        """A fresh client (see the module's docstring), TCP connect, and the handshake: returns
        once the reader inventories."""
        opts = self.options
        session = self.session = _Session(self)
        try:
            await run_in_daemon_thread(session.connect, f"llrp-connect-{self.name}")
        except OSError as exc:
            self.log_once("connect", f"cannot connect to {opts.host}:{opts.port}: {exc}")
            raise SessionEnded("connect_failed") from None
        self.clear_logged("connect")
        await self._supervise(session, until_inventorying=True)

    async def serve(self) -> None:
        assert self.session is not None  # connect() made it
        await self._supervise(self.session, until_inventorying=False)

    async def _supervise(self, session: _Session, *, until_inventorying: bool) -> None:
        """Watch the session (sllurp's thread does the I/O): raise SessionEnded with the cause
        once it fails; with `until_inventorying`, return once the reader inventories."""
        opts = self.options
        tick = min(0.1, opts.keepalive_s / 5)
        while True:
            await asyncio.sleep(tick)
            if until_inventorying and session.inventorying:
                return
            cause = session.failure(time.monotonic(), opts)
            if cause is not None:
                raise SessionEnded(cause)

    def on_up(self) -> None:
        super().on_up()
        if self._failing is not None:
            log.info("%s: recovered (after: %s), inventorying", self.name, _explain(self._failing))
            self._failing = None
        elif not self._was_up:
            log.info("%s: inventorying on antennas %s", self.name, sorted(self.antenna_numbers))
        self._was_up = True
        self.clear_logged("malformed")

    def on_backoff(self, cause: str, exc: Exception) -> None:
        if cause != self._failing:  # a repeated failure is logged once
            log.warning("%s: %s; reconnecting with backoff", self.name, _explain(cause))
            self._failing = cause
        super().on_backoff(cause, exc)

    async def close(self) -> None:
        """Close the session's client on a daemon thread, bounded by close_timeout_s."""
        session, self.session = self.session, None
        if session is None:
            return  # nothing open, or closed already
        opts = self.options
        polite = opts.close_timeout_s / 2
        try:
            # (asyncio.timeout: 3.11's wait_for can swallow a cancellation that arrives as the
            # close completes, and the driver would reconnect after being stopped.)
            async with asyncio.timeout(opts.close_timeout_s + 1.0):
                await run_in_daemon_thread(lambda: session.close(polite), f"llrp-close-{self.name}")
        except TimeoutError:
            self.count_error("close_timeout")
            log.warning("%s: closing the connection timed out; abandoning it", self.name)
        session._flush()  # reads decoded before the close still count


def _explain(cause: str) -> str:
    return {
        "connect_failed": "cannot connect",
        "connection_lost": "connection lost",
        "thread_died": "sllurp's reader thread died",
        "liveness": "no report and no KEEPALIVE for 2 x keepalive_s",
        "handshake_timeout": "the reader did not start inventorying within handshake_timeout_s",
        "malformed": "the reader sent a malformed frame",
        "connection_exists": "the reader refused us: another client holds it (a stale session "
        "of ours?); retrying until the reader's keepalive timeout drops that session",
        "internal_error": "an unexpected error in the driver",
    }.get(cause, cause)
