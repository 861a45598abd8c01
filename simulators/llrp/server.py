"""Simulated LLRP readers: one asyncio TCP server per reader, all in one process.

See the package docstring (simulators/llrp/__init__.py) for the model and the fault API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from simulators.llrp import codec
from simulators.llrp.errors import FaultError
from simulators.llrp.profiles import PROFILES, Profile, foreign_custom_vendor

logger = logging.getLogger("simulators.llrp")

T = TypeVar("T")

# A scripted read: (t_s relative to the simulator's start, antenna, EPC hex, RSSI dBm).
Read = tuple[float, int, str, float]

ONE_SHOT_FAULTS = ("drop", "drop_mid_frame", "malformed")
LASTING_FAULTS = ("silent", "refuse", "no_mode_table")
FAULTS = (*ONE_SHOT_FAULTS, *LASTING_FAULTS, "clear")
MALFORMED_KINDS = ("length", "type", "short")
DEFAULT_REFUSE_S = 5.0
MAX_TAGS_PER_REPORT = 1000
# Reports are dropped (and counted) rather than buffered without bound when a client stops reading.
MAX_WRITE_BUFFER = 4 << 20
_LOGGED_REJECTIONS = 10


@dataclass(frozen=True)
class Generator:
    """Benchmark source: `tags` distinct 96-bit EPCs cycled `tags_per_report` at a time, paced to
    `rate` tags/s while a ROSpec is active (nothing is generated, nor counted, otherwise)."""

    tags: int = 1000
    rate: float = 10_000.0
    tags_per_report: int = 100
    antennas: tuple[int, ...] = (1,)
    rssi: int = -55
    epc_prefix: str = "30340000000000"  # 7 bytes; a 5-byte serial follows

    def epcs(self) -> list[bytes]:
        prefix = bytes.fromhex(self.epc_prefix)[:7].ljust(7, b"\0")
        return [prefix + i.to_bytes(5, "big") for i in range(self.tags)]


@dataclass(frozen=True)
class ReaderSpec:
    name: str
    reads: Sequence[Read] = ()
    port: int = 0  # 0: an ephemeral port, see SimReader.port once started
    generator: Generator | None = None
    # Reads kept while no client is inventorying (Impinj report buffering, Zebra FX "data
    # protection": up to 66,000 messages) and sent, with their times, right after the next
    # ROSpec starts; 0: dropped and counted, as a reader without buffering does.
    buffer_reads: int = 0
    # What the reader says it is and does (simulators/llrp/profiles.py): "impinj" | "zebra".
    profile: str = "impinj"
    # A client that went away without closing still holds the reader this long after start:
    # new connections are refused until the reader's own timeout for it drops that session.
    stale_session_s: float = 0.0
    # Overrides the profile's interval between empty RO_ACCESS_REPORTs (None: the profile's).
    empty_report_interval_s: float | None = None
    # Close a session after this many KEEPALIVEs in a row went unacknowledged (0: never), the
    # way a reader frees itself of a client that stopped answering (Impinj calls it link
    # monitoring); a client stuck half-open then holds the reader only that long.
    keepalive_ack_limit: int = 0


@dataclass(slots=True)
class _ScriptedRead:
    t_s: float
    antenna: int
    epc: bytes
    rssi: int


class _ROSpec:
    def __init__(self, info: codec.ROSpecInfo) -> None:
        self.info = info
        self.state = codec.ROSPEC_DISABLED
        self.stop_timer: asyncio.TimerHandle | None = None

    def set_state(self, state: int) -> None:
        self.state = state
        if state != codec.ROSPEC_ACTIVE and self.stop_timer is not None:
            self.stop_timer.cancel()
            self.stop_timer = None

    def raw_with_state(self) -> bytes:
        """The ROSpec as added, with CurrentState (byte 4+4+1) set to the current state."""
        raw = bytearray(self.info.raw)
        raw[9] = self.state
        return bytes(raw)


class _Session:
    """One client connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.announced = False  # the ConnectionAttemptEvent went out
        self.closed = False
        self.keepalive_task: asyncio.Task[None] | None = None
        self.unacked_keepalives = 0

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def buffered(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    def abort(self) -> None:
        """Drop the connection at once, as a rebooting reader or a cut cable does."""
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()

    async def close_after_flush(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(2.0):  # (3.11's wait_for can swallow a cancel)
                await self.writer.drain()
        self.writer.close()


class SimReader:
    """One simulated reader. Its public methods are safe to call from any thread."""

    def __init__(self, spec: ReaderSpec, server: SimServer) -> None:
        self.name = spec.name
        self.spec = spec
        self.server = server
        self.port = spec.port
        self.profile = _profile(spec.profile)
        self.stats: Counter[str] = Counter()
        self.rospecs: dict[int, _ROSpec] = {}
        self.keepalive_ms = 0
        self._pending: list[_ScriptedRead] = []
        self._pending_pos = 0
        self._reads_changed: asyncio.Event | None = None
        self._session: _Session | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers_running: set[asyncio.Task[Any]] = set()
        self._msg_id = 1000
        self._encoders: dict[tuple[codec.Selector, int], codec.ReportEncoder] = {}
        # faults
        self.silent = False
        self.no_mode_table = False
        self.refuse_until = 0.0
        self.stale_until = 0.0  # loop time until which a stale client holds the reader
        self._armed: dict[str, str | None] = {}  # one-shot fault -> kind
        self._backlog: list[_ScriptedRead] = []  # buffered while no client inventoried
        self._add_reads_now(spec.reads)

    # --- public API (any thread) -------------------------------------------------------------

    def set_fault(
        self, fault: str, seconds: float | None = None, kind: str | None = None
    ) -> dict[str, Any]:
        """Select a fault (see the package docstring); returns the reader's status."""
        _check_fault(fault, seconds, kind)
        return self.server.call(self._set_fault_now, fault, seconds, kind)

    def clear_faults(self) -> dict[str, Any]:
        return self.set_fault("clear")

    def hold_stale_session(self, seconds: float) -> dict[str, Any]:
        """From now on, a client that is gone without closing holds the reader for `seconds`
        (until the reader's own timeout for it would drop it); returns the status."""
        if seconds < 0:
            raise FaultError(f"seconds must be >= 0, got {seconds!r}")
        return self.server.call(self._hold_stale_session_now, seconds)

    def _hold_stale_session_now(self, seconds: float) -> dict[str, Any]:
        self.stale_until = asyncio.get_running_loop().time() + seconds
        logger.info("reader %s: held by a stale client for %.1f s", self.name, seconds)
        return self._status_now()

    def add_reads(self, reads: Iterable[Read]) -> int:
        """Schedule more reads (t relative to the simulator's start); returns how many were
        accepted. Invalid reads are counted in stats['reads_rejected'] and logged."""
        return self.server.call(self._add_reads_now, list(reads))

    def add_reads_in(self, delay_s: float, reads: Iterable[tuple[int, str, float]]) -> int:
        """Schedule (antenna, epc, rssi) reads `delay_s` scenario-seconds from now."""
        t = max(0.0, self.server.elapsed() + delay_s)  # before t=0 (start delay): at t=0
        return self.add_reads([(t, a, e, r) for a, e, r in reads])

    def status(self) -> dict[str, Any]:
        return self.server.call(self._status_now)

    @property
    def connected(self) -> bool:
        session = self._session
        return session is not None and session.announced and not session.closed

    @property
    def active(self) -> bool:
        """A client is connected and a ROSpec is active: reads are being reported."""
        return self.connected and self._active_rospec() is not None and not self.silent

    # --- fault handling (loop thread) --------------------------------------------------------

    def _set_fault_now(self, fault: str, seconds: float | None, kind: str | None) -> dict[str, Any]:
        logger.info("reader %s: fault %s (seconds=%s, kind=%s)", self.name, fault, seconds, kind)
        self.stats[f"fault_{fault}"] += 1
        if fault == "clear":
            was_silent = self.silent
            self.silent = self.no_mode_table = False
            self.refuse_until = 0.0
            self._armed.clear()
            session = self._session
            if was_silent and session is not None and not session.announced:
                self._announce(session)
        elif fault == "silent":
            self.silent = True
        elif fault == "no_mode_table":
            self.no_mode_table = True
        elif fault == "refuse":
            loop = asyncio.get_running_loop()
            self.refuse_until = loop.time() + (DEFAULT_REFUSE_S if seconds is None else seconds)
        else:
            self._armed[fault] = kind
            self._fire_armed_connection_faults()
        return self._status_now()

    def _fire_armed_connection_faults(self) -> None:
        """drop and malformed fire as soon as an announced session exists."""
        session = self._session
        if session is None or not session.announced or session.closed:
            return
        if "malformed" in self._armed:
            kind = self._armed.pop("malformed") or "length"
            session.write(_malformed_frame(kind, self._next_id()))
            self.stats["malformed_sent"] += 1
        if "drop" in self._armed:
            self._armed.pop("drop")
            self.stats["drops"] += 1
            session.abort()

    # --- reads -------------------------------------------------------------------------------

    def _add_reads_now(self, reads: Iterable[Read]) -> int:
        accepted: list[_ScriptedRead] = []
        for read in reads:
            scripted = self._validate(read)
            if scripted is not None:
                accepted.append(scripted)
        if accepted:
            rest = self._pending[self._pending_pos :] + accepted
            rest.sort(key=lambda r: r.t_s)
            self._pending, self._pending_pos = rest, 0
            if self._reads_changed is not None:
                self._reads_changed.set()
        return len(accepted)

    def _validate(self, read: Any) -> _ScriptedRead | None:
        try:
            t_s, antenna, epc_hex, rssi = read
            t = float(t_s)
            if not math.isfinite(t) or t < 0:
                raise codec.CodecError(f"t_s {t_s!r} must be a finite number >= 0")
            if not isinstance(antenna, int) or not 1 <= antenna <= 0xFFFF:
                raise codec.CodecError(f"antenna {antenna!r} must be an int in 1..65535")
            epc = codec.epc_bytes(str(epc_hex))
            level = float(rssi)
            if not math.isfinite(level):
                raise codec.CodecError(f"rssi {rssi!r} must be finite")
        except (codec.CodecError, TypeError, ValueError) as exc:
            self.stats["reads_rejected"] += 1
            if self.stats["reads_rejected"] <= _LOGGED_REJECTIONS:
                logger.warning("reader %s: read %r rejected: %s", self.name, read, exc)
            return None
        level_int = round(level)
        if not -128 <= level_int <= 127:
            # PeakRSSI is a signed byte on the wire; a real reader saturates it too.
            self.stats["rssi_clamped"] += 1
            level_int = max(-128, min(127, level_int))
        return _ScriptedRead(t, antenna, epc, level_int)

    def _take_due(self, now_s: float) -> list[_ScriptedRead]:
        """Reads whose scenario time, scaled by speed, has come."""
        speed = self.server.speed
        pending, pos = self._pending, self._pending_pos
        end = pos
        while end < len(pending) and pending[end].t_s / speed <= now_s:
            end += 1
        due = pending[pos:end]
        self._pending_pos = end
        if end > 4096 and end * 2 > len(pending):  # compact once most of the list is consumed
            self._pending, self._pending_pos = pending[end:], 0
        return due

    def _next_due_s(self) -> float | None:
        if self._pending_pos < len(self._pending):
            return self._pending[self._pending_pos].t_s / self.server.speed
        return None

    async def _playback(self) -> None:
        assert self._reads_changed is not None
        loop = asyncio.get_running_loop()
        while True:
            self._reads_changed.clear()
            next_s = self._next_due_s()
            if next_s is None:
                await self._reads_changed.wait()
                continue
            delay = self.server.start_mono + next_s - loop.time()
            if delay > 0:
                # (asyncio.timeout: 3.11's wait_for can swallow a cancellation in a loop.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._reads_changed.wait()
                continue
            due = self._take_due(loop.time() - self.server.start_mono)
            for start in range(0, len(due), MAX_TAGS_PER_REPORT):
                await self._deliver(due[start : start + MAX_TAGS_PER_REPORT])

    async def _deliver(self, due: list[_ScriptedRead]) -> None:
        session, rospec = self._reporting_target()
        if session is None or rospec is None:
            if self.spec.buffer_reads:
                self._buffer(due)
                return
            if self.silent:
                reason = "silent"
            elif session is None:
                reason = "no_client"
            else:
                reason = "no_rospec_active"
            self.stats[f"reads_dropped_{reason}"] += len(due)
            return
        if session.buffered() > MAX_WRITE_BUFFER:
            self.stats["reads_dropped_backpressure"] += len(due)
            return
        encoder = self._encoder(rospec)
        epoch_us, speed = self.server.start_epoch_us, self.server.speed
        reads = []
        for r in due:
            seen_us = epoch_us + round(r.t_s * 1e6 / speed)
            reads.append(codec.TagRead(r.epc, r.antenna, r.rssi, seen_us, seen_us))
        await self._send_report(session, encoder.report(self._next_id(), reads), len(due))

    async def _send_report(self, session: _Session, report: bytes, tags: int) -> None:
        if "drop_mid_frame" in self._armed:
            self._armed.pop("drop_mid_frame")
            session.write(report[: max(1, len(report) // 2)])
            self.stats["drops_mid_frame"] += 1
            self.stats["reads_dropped_mid_frame"] += tags
            await session.close_after_flush()
            return
        session.write(report)
        self.stats["reports_sent"] += 1
        self.stats["tags_sent"] += tags

    def _reporting_target(self) -> tuple[_Session | None, _ROSpec | None]:
        session = self._session
        if session is None or session.closed or not session.announced or self.silent:
            return None, None
        return session, self._active_rospec()

    def _active_rospec(self) -> _ROSpec | None:
        active = [r for r in self.rospecs.values() if r.state == codec.ROSPEC_ACTIVE]
        return min(active, key=lambda r: r.info.rospec_id) if active else None

    def _encoder(self, rospec: _ROSpec) -> codec.ReportEncoder:
        selector = rospec.info.selector or codec.Selector()
        key = (selector, rospec.info.rospec_id)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoders[key] = codec.ReportEncoder(selector, rospec.info.rospec_id)
        return encoder

    async def _generate(self, gen: Generator) -> None:
        loop = asyncio.get_running_loop()
        epcs = gen.epcs()
        heads: dict[int, list[tuple[bytes, bytes]]] = {}
        interval = gen.tags_per_report / gen.rate
        next_at = loop.time()
        index = 0
        while True:
            session, rospec = self._reporting_target()
            if session is None or rospec is None:
                await asyncio.sleep(0.02)
                next_at = loop.time()
                continue
            encoder = self._encoder(rospec)
            tags = heads.get(id(encoder))
            if tags is None:
                antennas = gen.antennas or (1,)
                tags = [
                    encoder.precompute(epc, antennas[i % len(antennas)], gen.rssi)
                    for i, epc in enumerate(epcs)
                ]
                heads[id(encoder)] = tags
            now_us = time.time_ns() // 1000
            tail = encoder.tail(now_us, now_us, 1)
            count = min(gen.tags_per_report, len(tags))
            chunk = [tags[(index + k) % len(tags)] for k in range(count)]
            index = (index + count) % len(tags)
            body = b"".join([head + tail + suffix for head, suffix in chunk])
            await self._send_report(session, codec.frame(codec.RO_ACCESS_REPORT, self._next_id(),
                                                         body), count)  # fmt: skip
            with contextlib.suppress(ConnectionError, OSError):
                await session.writer.drain()  # backpressure: a slow client lowers the rate
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                next_at = loop.time()  # after a stall, do not burst to catch up
            else:
                await asyncio.sleep(0)

    # --- connections -------------------------------------------------------------------------

    async def start(self, host: str) -> None:
        self._reads_changed = asyncio.Event()
        self._tcp_server = await asyncio.start_server(self._on_connect, host, self.port)
        self.port = self._tcp_server.sockets[0].getsockname()[1]
        if self.spec.stale_session_s > 0:
            self._hold_stale_session_now(self.spec.stale_session_s)

    def start_playback(self) -> None:
        """Once the server's clock is set: play the reads (and run the generator)."""
        self._tasks.append(asyncio.create_task(self._playback(), name=f"llrp-sim-{self.name}"))
        if self.spec.generator is not None:
            self._tasks.append(asyncio.create_task(self._generate(self.spec.generator)))
        interval = self.spec.empty_report_interval_s or self.profile.empty_report_interval_s
        if interval:
            self._tasks.append(asyncio.create_task(self._send_empty_reports(interval)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            self._session.abort()
        # Connection handlers end by themselves once their socket is gone; cancelling them
        # instead makes asyncio's stream callback log a spurious CancelledError.
        if self._handlers_running:
            _, stuck = await asyncio.wait(set(self._handlers_running), timeout=2.0)
            for task in stuck:
                task.cancel()
        if self._tcp_server is not None:
            self._tcp_server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._tcp_server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers_running.add(task)
            task.add_done_callback(self._handlers_running.discard)
        self.stats["connection_attempts"] += 1
        loop = asyncio.get_running_loop()
        if loop.time() < self.refuse_until:
            self.stats["connections_refused_fault"] += 1
            writer.transport.abort()
            return
        if loop.time() < self.stale_until:
            self.stats["connections_refused_stale"] += 1
            await self._refuse_second_client(None, writer)
            return
        current = self._session
        if current is not None and not current.closed:
            self.stats["connections_refused_busy"] += 1
            await self._refuse_second_client(current, writer)
            return
        session = _Session(writer)
        self._session = session
        self.stats["connections"] += 1
        logger.info("reader %s: client %s connected", self.name, session.peer)
        try:
            if not self.silent:
                self._announce(session)
            await self._serve(session, reader)
        except (ConnectionError, OSError) as exc:
            logger.info("reader %s: connection error %s", self.name, exc)
        finally:
            if session.keepalive_task is not None:
                session.keepalive_task.cancel()
            session.abort()
            if self._session is session:
                self._session = None
            logger.info("reader %s: client %s gone", self.name, session.peer)

    async def _refuse_second_client(
        self, current: _Session | None, writer: asyncio.StreamWriter
    ) -> None:
        """LLRP 1.0.1 §14.1.1: the reader reports Failed (a Client initiated connection already
        exists) on the new connection and closes it; the client in session (None: a stale one,
        gone without closing) hears that another connection was attempted."""
        now_us = time.time_ns() // 1000
        status = codec.CONN_FAILED_CLIENT_CONNECTION_EXISTS
        writer.write(codec.reader_event(self._next_id(), now_us, connection_status=status))
        if current is not None and current.announced and not self.silent:
            another = codec.CONN_ANOTHER_CONNECTION_ATTEMPTED
            current.write(codec.reader_event(self._next_id(), now_us, connection_status=another))
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await writer.drain()
        writer.close()

    def _announce(self, session: _Session) -> None:
        now_us = time.time_ns() // 1000
        session.write(
            codec.reader_event(self._next_id(), now_us, connection_status=codec.CONN_SUCCESS)
        )
        session.announced = True
        self._restart_keepalive(session)
        self._fire_armed_connection_faults()

    async def _serve(self, session: _Session, reader: asyncio.StreamReader) -> None:
        splitter = codec.FrameSplitter()
        while not session.closed:
            data = await reader.read(65536)
            if not data:
                return
            try:
                frames = splitter.feed(data)
            except codec.CodecError as exc:
                # The stream cannot be resynchronised: say why, then hang up.
                self.stats["client_frames_rejected"] += 1
                logger.warning("reader %s: bad frame from client: %s", self.name, exc)
                session.write(
                    codec.error_message(0, codec.STATUS_PARAMETER_ERROR, f"bad frame: {exc}")
                )
                await session.close_after_flush()
                return
            for fr in frames:
                if self.silent:
                    self.stats["requests_ignored_silent"] += 1
                    continue
                await self._handle(session, fr)

    # --- requests ----------------------------------------------------------------------------

    async def _handle(self, session: _Session, fr: codec.Frame) -> None:
        self.stats[f"rx_{codec.MESSAGE_NAMES.get(fr.msg_type, fr.msg_type)}"] += 1
        if fr.msg_type == codec.KEEPALIVE_ACK:
            session.unacked_keepalives = 0
        if fr.version != codec.LLRP_VERSION:
            self.stats["client_frames_rejected"] += 1
            session.write(
                codec.error_message(
                    fr.msg_id, codec.STATUS_UNSUPPORTED_VERSION, f"version {fr.version}"
                )
            )
            return
        handler = self._handlers().get(fr.msg_type)
        if handler is None:
            if fr.msg_type in (codec.ENABLE_EVENTS_AND_REPORTS, codec.KEEPALIVE_ACK):
                return  # no response is defined for either
            self.stats["client_frames_unsupported"] += 1
            description = f"message type {fr.msg_type} not supported by the simulator"
            session.write(
                codec.error_message(fr.msg_id, codec.STATUS_UNSUPPORTED_MESSAGE, description)
            )
            return
        try:
            response = handler(fr)
        except codec.CodecError as exc:
            self.stats["client_frames_rejected"] += 1
            logger.warning("reader %s: bad message type %d: %s", self.name, fr.msg_type, exc)
            response = codec.status_response(
                fr.msg_type + 10, fr.msg_id, codec.STATUS_PARAMETER_ERROR, str(exc)
            )
        session.write(response)
        if fr.msg_type == codec.CLOSE_CONNECTION:
            await session.close_after_flush()

    def _handlers(self) -> dict[int, Callable[[codec.Frame], bytes]]:
        return {
            codec.GET_READER_CAPABILITIES: self._get_capabilities,
            codec.GET_READER_CONFIG: self._get_config,
            codec.SET_READER_CONFIG: self._set_config,
            codec.CLOSE_CONNECTION: lambda fr: codec.status_response(
                codec.CLOSE_CONNECTION_RESPONSE, fr.msg_id
            ),
            codec.ADD_ROSPEC: self._add_rospec,
            codec.DELETE_ROSPEC: self._rospec_command,
            codec.START_ROSPEC: self._rospec_command,
            codec.STOP_ROSPEC: self._rospec_command,
            codec.ENABLE_ROSPEC: self._rospec_command,
            codec.DISABLE_ROSPEC: self._rospec_command,
            codec.GET_ROSPECS: self._get_rospecs,
            codec.DELETE_ACCESSSPEC: self._delete_accessspec,
        }

    def _get_capabilities(self, fr: codec.Frame) -> bytes:
        payload = self.profile.capabilities
        if self.no_mode_table:
            payload = codec.strip_param(payload, codec.P_UHF_C1G2_RF_MODE_TABLE)
        return codec.frame(codec.GET_READER_CAPABILITIES_RESPONSE, fr.msg_id, payload)

    def _get_config(self, fr: codec.Frame) -> bytes:
        return codec.frame(codec.GET_READER_CONFIG_RESPONSE, fr.msg_id, self.profile.reader_config)

    def _foreign_custom_error(self, fr: codec.Frame) -> bytes | None:
        """The error a reader that does not take another vendor's custom parameters answers a
        configuration carrying one with (profiles.py), or None."""
        allowed = self.profile.custom_vendors
        vendor = None if allowed is None else foreign_custom_vendor(fr.body, allowed)
        if vendor is None:
            return None
        self.stats["custom_parameters_rejected"] += 1
        name = codec.MESSAGE_NAMES.get(fr.msg_type, fr.msg_type)
        logger.info("reader %s: %s with a custom parameter of vendor %d", self.name, name, vendor)
        return codec.status_response(
            fr.msg_type + 10,
            fr.msg_id,
            codec.STATUS_UNSUPPORTED_PARAMETER,
            f"custom parameter of vendor {vendor} not supported",
        )

    def _set_config(self, fr: codec.Frame) -> bytes:
        error = self._foreign_custom_error(fr)
        if error is not None:
            return error
        change = codec.decode_set_reader_config(fr.body)
        if change.reset_to_factory_defaults:
            self.keepalive_ms = 0
        if change.keepalive_ms is not None:
            self.keepalive_ms = change.keepalive_ms
        session = self._session
        if session is not None:
            self._restart_keepalive(session)
        return codec.status_response(codec.SET_READER_CONFIG_RESPONSE, fr.msg_id)

    def _add_rospec(self, fr: codec.Frame) -> bytes:
        error = self._foreign_custom_error(fr)
        if error is not None:
            return error
        info = codec.decode_add_rospec(fr.body)
        response = codec.ADD_ROSPEC_RESPONSE
        if info.rospec_id == 0:
            return self._field_error(response, fr.msg_id, "ROSpecID 0 is reserved")
        if info.rospec_id in self.rospecs:
            return self._field_error(response, fr.msg_id, f"ROSpecID {info.rospec_id} exists")
        if info.current_state != codec.ROSPEC_DISABLED:
            return self._field_error(response, fr.msg_id, "a ROSpec must be added Disabled", 1)
        self.rospecs[info.rospec_id] = _ROSpec(info)
        return codec.status_response(response, fr.msg_id)

    @staticmethod
    def _field_error(msg_type: int, msg_id: int, text: str, field_num: int = 0) -> bytes:
        return codec.status_response(msg_type, msg_id, codec.STATUS_FIELD_ERROR, text, field_num)

    def _rospec_command(self, fr: codec.Frame) -> bytes:
        rospec_id = codec.decode_u32_field(fr.body, f"message type {fr.msg_type}")
        response = fr.msg_type + 10
        if rospec_id == 0 and fr.msg_type in (
            codec.DELETE_ROSPEC,
            codec.ENABLE_ROSPEC,
            codec.DISABLE_ROSPEC,
        ):
            targets = list(self.rospecs.values())  # 0 means all ROSpecs for these three
        elif rospec_id in self.rospecs:
            targets = [self.rospecs[rospec_id]]
        else:
            return self._field_error(response, fr.msg_id, f"ROSpecID {rospec_id} not found")
        for rospec in targets:
            error = self._apply_rospec_command(fr.msg_type, rospec)
            if error:
                return self._field_error(response, fr.msg_id, error)
        return codec.status_response(response, fr.msg_id)

    def _apply_rospec_command(self, msg_type: int, rospec: _ROSpec) -> str | None:
        rid = rospec.info.rospec_id
        if msg_type == codec.DELETE_ROSPEC:
            rospec.set_state(codec.ROSPEC_DISABLED)
            del self.rospecs[rid]
        elif msg_type == codec.ENABLE_ROSPEC:
            if rospec.state == codec.ROSPEC_DISABLED:
                rospec.set_state(codec.ROSPEC_INACTIVE)
                if rospec.info.start_trigger == codec.START_TRIGGER_IMMEDIATE:
                    self._activate(rospec)
        elif msg_type == codec.DISABLE_ROSPEC:
            rospec.set_state(codec.ROSPEC_DISABLED)
        elif msg_type == codec.START_ROSPEC:
            if rospec.state == codec.ROSPEC_DISABLED:
                return f"ROSpecID {rid} is disabled"
            if rospec.state == codec.ROSPEC_ACTIVE:
                return f"ROSpecID {rid} is already active"
            self._activate(rospec)
        elif msg_type == codec.STOP_ROSPEC:
            if rospec.state != codec.ROSPEC_ACTIVE:
                return f"ROSpecID {rid} is not active"
            rospec.set_state(codec.ROSPEC_INACTIVE)
        return None

    def _buffer(self, due: list[_ScriptedRead]) -> None:
        room = max(0, self.spec.buffer_reads - len(self._backlog))
        self._backlog.extend(due[:room])
        self.stats["reads_buffered"] += min(room, len(due))
        if len(due) > room:
            self.stats["reads_dropped_buffer_full"] += len(due) - room

    async def _send_backlog(self) -> None:
        """What was buffered, oldest first, as a reader replays it after the ROSpec starts."""
        backlog, self._backlog = self._backlog, []
        self.stats["backlog_sent"] += len(backlog)
        for start in range(0, len(backlog), MAX_TAGS_PER_REPORT):
            await self._deliver(backlog[start : start + MAX_TAGS_PER_REPORT])

    def _activate(self, rospec: _ROSpec) -> None:
        rospec.set_state(codec.ROSPEC_ACTIVE)
        if self._backlog:  # sent after this message's response, as a reader does
            self._tasks.append(asyncio.get_running_loop().create_task(self._send_backlog()))
        info = rospec.info
        if info.stop_trigger == codec.STOP_TRIGGER_DURATION and info.stop_duration_ms > 0:
            loop = asyncio.get_running_loop()
            rospec.stop_timer = loop.call_later(
                info.stop_duration_ms / 1000, rospec.set_state, codec.ROSPEC_INACTIVE
            )

    def _get_rospecs(self, fr: codec.Frame) -> bytes:
        body = codec.llrp_status() + b"".join(r.raw_with_state() for r in self.rospecs.values())
        return codec.frame(codec.GET_ROSPECS_RESPONSE, fr.msg_id, body)

    def _delete_accessspec(self, fr: codec.Frame) -> bytes:
        spec_id = codec.decode_u32_field(fr.body, "DELETE_ACCESSSPEC")
        if spec_id != 0:  # the simulator holds no AccessSpecs: like the real reader, say invalid
            return self._field_error(
                codec.DELETE_ACCESSSPEC_RESPONSE, fr.msg_id, f"AccessSpecID {spec_id} : invalid"
            )
        return codec.status_response(codec.DELETE_ACCESSSPEC_RESPONSE, fr.msg_id)

    async def _send_empty_reports(self, interval_s: float) -> None:
        """An RO_ACCESS_REPORT without TagReportData now and then while inventorying, as Zebra
        FX readers send them (sllurp issue 115)."""
        while True:
            await asyncio.sleep(interval_s)
            session, rospec = self._reporting_target()
            if session is not None and rospec is not None:
                session.write(codec.frame(codec.RO_ACCESS_REPORT, self._next_id()))
                self.stats["empty_reports_sent"] += 1

    # --- keepalive ---------------------------------------------------------------------------

    def _restart_keepalive(self, session: _Session) -> None:
        if session.keepalive_task is not None:
            session.keepalive_task.cancel()
            session.keepalive_task = None
        if self.keepalive_ms > 0 and not session.closed:
            session.keepalive_task = asyncio.create_task(self._keepalive(session))

    async def _keepalive(self, session: _Session) -> None:
        interval = self.keepalive_ms / 1000
        while not session.closed:
            await asyncio.sleep(interval)
            if session.closed or self.silent or not session.announced:
                continue
            limit = self.spec.keepalive_ack_limit
            if limit and session.unacked_keepalives >= limit:
                logger.info("reader %s: %d KEEPALIVEs unacknowledged: closing", self.name, limit)
                self.stats["sessions_dropped_unacked_keepalives"] += 1
                session.abort()
                return
            session.write(codec.keepalive(self._next_id()))
            session.unacked_keepalives += 1
            self.stats["keepalives_sent"] += 1

    # --- misc --------------------------------------------------------------------------------

    def _next_id(self) -> int:
        self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
        return self._msg_id

    def _status_now(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return {
            "name": self.name,
            "profile": self.profile.name,
            "stale_session_s": max(0.0, round(self.stale_until - loop.time(), 3)),
            "host": self.server.host,
            "port": self.port,
            "connected": self.connected,
            "active": self.active,
            "keepalive_ms": self.keepalive_ms,
            "rospecs": {str(rid): r.state for rid, r in self.rospecs.items()},
            "faults": {
                "silent": self.silent,
                "no_mode_table": self.no_mode_table,
                "refuse_s": max(0.0, round(self.refuse_until - loop.time(), 3)),
                "armed": sorted(self._armed),
            },
            "reads_pending": len(self._pending) - self._pending_pos,
            "stats": dict(self.stats),
        }


def _profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown reader profile {name!r}; one of {sorted(PROFILES)}") from None


def _check_fault(fault: str, seconds: float | None, kind: str | None) -> None:
    if fault not in FAULTS:
        raise FaultError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
    if seconds is not None and (not isinstance(seconds, int | float) or seconds < 0):
        raise FaultError(f"seconds must be a number >= 0, got {seconds!r}")
    if kind is not None and (fault != "malformed" or kind not in MALFORMED_KINDS):
        raise FaultError(f"kind {kind!r} only applies to malformed: one of {MALFORMED_KINDS}")


def _malformed_frame(kind: str, msg_id: int) -> bytes:
    """A frame no LLRP client can take: a length far beyond what follows ('length'), a message
    type that does not exist ('type'), or a length shorter than the header ('short')."""
    if kind == "type":
        return codec.frame(1000, msg_id, b"\0" * 8)
    if kind == "short":
        return codec.HEADER.pack((1 << 10) | codec.RO_ACCESS_REPORT, 4, msg_id)
    return codec.HEADER.pack((1 << 10) | codec.RO_ACCESS_REPORT, 0x7FFFFFF0, msg_id) + b"\0" * 16


class SimServer:
    """Several simulated readers, each on its own port, plus an optional HTTP control channel.

    Use it inside a running loop (`async with SimServer(...) as sim:`) or from synchronous code,
    with its own loop on a thread (`with SimServer(...).running() as sim:`)."""

    def __init__(
        self,
        readers: Sequence[ReaderSpec],
        host: str = "127.0.0.1",
        speed: float = 1.0,
        control_port: int | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        names = [r.name for r in readers]
        if len(set(names)) != len(names):
            raise ValueError(f"reader names must be unique: {names}")
        self.host = host
        self.speed = speed
        self.control_port = control_port
        self.control_address: tuple[str, int] | None = None
        self.readers = {spec.name: SimReader(spec, self) for spec in readers}
        self.start_mono = 0.0
        self.start_epoch_us = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._control: Any = None

    def reader(self, name: str) -> SimReader:
        try:
            return self.readers[name]
        except KeyError:
            raise KeyError(f"no simulated reader {name!r}; have {sorted(self.readers)}") from None

    def elapsed(self) -> float:
        """Scenario seconds since start (wall seconds × speed)."""
        # asyncio's loop clock is time.monotonic(), so this works from any thread.
        return (time.monotonic() - self.start_mono) * self.speed if self._loop else 0.0

    def addresses(self) -> dict[str, dict[str, Any]]:
        return {n: {"host": self.host, "port": r.port} for n, r in self.readers.items()}

    async def start(self, start_delay_s: float = 0.0) -> None:
        """Listen on every port; the scenario clock's t=0 is `start_delay_s` from now, so
        clients can connect before the first reads are due."""
        self._loop = asyncio.get_running_loop()
        for sim_reader in self.readers.values():
            await sim_reader.start(self.host)
        if self.control_port is not None:
            from simulators.llrp.control import ControlServer

            self._control = ControlServer(self)
            self.control_address = await self._control.start("127.0.0.1", self.control_port)
        # The clock starts once every port listens: t=0 of the reads is now.
        self.start_mono = self._loop.time() + start_delay_s
        self.start_epoch_us = time.time_ns() // 1000 + round(start_delay_s * 1e6)
        for sim_reader in self.readers.values():
            sim_reader.start_playback()

    async def stop(self) -> None:
        if self._control is not None:
            await self._control.stop()
        for sim_reader in self.readers.values():
            await sim_reader.stop()

    async def __aenter__(self) -> SimServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the server's loop and return its result, from any thread."""
        loop = self._loop
        if loop is None:
            return fn(*args)  # not started yet: nothing runs concurrently
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn(*args)

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    @contextlib.contextmanager
    def running(self) -> Iterator[SimServer]:
        """Run the simulator on its own loop in a daemon thread for the duration of the block."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="llrp-sim", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=10)
            yield self
        finally:
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
