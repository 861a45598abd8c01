"""Handheld UHF readers of Technology Solutions (UK) Ltd (1128, 1153, 1166) over a serial port,
speaking the TSL "ASCII 2" protocol.

Where the protocol facts come from (read, not copied):
- TSL's own iOS SDK headers (TSLAsciiCommands.framework, e.g. in github.com/
  GURPREET-GANDHI/cordova-plugin-rfid-connector and github.com/YAKACCESS/TSL-Cordova-Plugin):
  TSLSwitchActionCommand.h (`.sa` single/double press actions off|rd|wr|inv|bar|usr, and
  asynchronous switch reports), TSLSwitchStateCommand.h (switch states `off`, `single`,
  `double`), TSLAlertCommand.h (`.al` buzzer/vibrator on|off, duration sho|med|lon, tone
  low|med|hig), TSLInventoryCommand.h / TSLTransponderParameters.h (`.iv`: include PC, RSSI,
  checksum, index; the transponder fields of a response), TSLBarcodeCommand.h (`.bc`).
- github.com/cfe-lab/stocky, serverlib/TLSAscii.py and serverlib/commlink.py, which implement
  "TSL ASCII Protocol 2.4/2.5" from TSL's document: the command form `.xy -p value` ended by
  CR LF; the `.iv` parameter letters (-x reset to defaults, -r RSSI, -e PC, -c checksum,
  -ix index, -o output power 10..29 dBm, -n "take no action", -al alert); responses as
  `XY: value` lines (CS: echo, EP:, RI:, PC:, IX:, DT:, BC:, ME:, SW: ...) closed by `OK:` or
  `ER: nnn` and a blank line; the reader's stray 0x00/0xFF bytes; and the error code table of
  "TSL ASCII protocol 2.5 rev B", page 14 (ERROR_MESSAGES below).

The reader forgets its settings when it powers up, so they are re-sent on every connect.
The handheld's own trigger drives inventories: single press runs `.iv` repeatedly while held
(a CS/EP/RI.../OK block per round), double press runs `.bc` (one barcode), and with
asynchronous reporting on, every switch change arrives as `SW: single|double|off`.

The driver only translates: TagReads (time = the gateway's clock; a handheld has no clock worth
trusting) go to `sink.reads`, barcodes and trigger changes to `sink.event`. What a read means
(a count, a return, a find) is decided in gateway.handheld.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import serial

from drivers.base import DeviceEvent, Driver, SessionEnded, Sink
from drivers.options import TSLOptions
from drivers.runtime import Backoff, run_in_daemon_thread
from gateway.model import TagRead, now_us

if TYPE_CHECKING:
    from gateway.config import DeviceSettings

log = logging.getLogger(__name__)

# --- protocol facts ------------------------------------------------------------------------------

#: ER: codes of TSL ASCII protocol 2.5 rev B (page 14), with what an operator should read.
ERROR_MESSAGES: dict[int, str] = {
    1: "syntax error (the reader did not understand the command)",
    2: "parameter not supported",
    3: "action not enabled",
    4: "command not supported by the reader's hardware",
    5: "no transponder found",
    6: "no barcode found",
    7: "parameter configuration invalid",
    8: "antenna/radio error (wrong region, or radio not fitted)",
    9: "battery level too low",
    10: "barcode scanner not ready",
    11: "command not supported on this interface",
    12: "command not supported from the autorun file",
    13: "write failure",
    14: "switch already in use",
    15: "command aborted",
    16: "lock failure",
    17: "Bluetooth error",
    18: "licence key is not blank",
    255: "system error in the reader",
}
#: Codes that are a normal outcome, not a fault: nothing in range, no barcode aimed at, a
#: trigger-driven inventory stopped by the operator letting go.
BENIGN_ERRORS = frozenset({5, 6, 15})

#: Response line prefixes the ASCII 2 protocol defines (commlink.py's list). Lines with other
#: prefixes are well-formed but unknown to us: counted and skipped.
KNOWN_PREFIXES = frozenset(
    "AB AC AE AS BA BC BP BR CH CR CS DA DP DT EA EB ER FN IA IX KS LB LE LL LK LS ME MF OK "
    "QT PC PR PV RB RD RF RI RS SP BV SR SW TD TM UB UF US WW EP".split()
)
#: Fields that describe one transponder in an inventory response; a repeated one starts the next.
TRANSPONDER_FIELDS = frozenset({"EP", "PC", "RI", "IX", "DT", "CR"})
SWITCH_STATES = frozenset({"single", "double", "off"})
MAX_LINE = 1024  # no valid line is near this long; a longer run without CR LF is garbage
NOISE = bytes([0x00, 0xFF])

_LINE = re.compile(r"^([A-Z]{2}):(?: ?(.*))?$")
_HEX = re.compile(r"^[0-9A-Fa-f]+$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


# --- parsed items ---------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TagSeen:
    epc: str  # upper-case hex
    rssi: float | None
    pc: int | None = None


@dataclass(slots=True, frozen=True)
class BarcodeScanned:
    data: str


@dataclass(slots=True, frozen=True)
class SwitchChanged:
    state: str  # single | double | off


@dataclass(slots=True, frozen=True)
class BlockDone:
    """A response block closed by OK: (error None) or ER: nnn."""

    command: str  # the CS: echo ("" when the block had none)
    error: int | None = None
    message: str | None = None  # ME: text, if the reader sent one
    fields: tuple[tuple[str, str], ...] = ()  # other lines (.vr's MF:, PV: ...)


Item = TagSeen | BarcodeScanned | SwitchChanged | BlockDone


def error_text(code: int) -> str:
    return ERROR_MESSAGES.get(code, f"undocumented error code {code}")


class TSLParser:
    """Bytes from the reader -> items. Pure (no I/O) and total: any input yields items and
    counted rejections, never an exception. `on_error(kind, n)` counts each rejection."""

    def __init__(self, on_error: Callable[[str, int], None]) -> None:
        self.on_error = on_error
        self._buffer = bytearray()
        self._in_block = False
        self._command = ""
        self._message: str | None = None
        self._fields: list[tuple[str, str]] = []
        self._tag: dict[str, str] = {}
        self._tag_bad = False
        # The field each transponder of this block starts with (PC: or EP: ...), learned from
        # the block's first one: a new transponder starts at it, or at any repeated field.
        self._leader: str | None = None

    def feed(self, data: bytes) -> list[Item]:
        cleaned = data.translate(None, NOISE)
        if len(cleaned) != len(data):
            self.on_error("noise_bytes", len(data) - len(cleaned))
        self._buffer += cleaned
        items: list[Item] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._line(raw[:-1] if raw.endswith(b"\r") else raw, items)
        if len(self._buffer) > MAX_LINE:
            self.on_error("overlong_line", 1)
            self._buffer.clear()
        return items

    def reset(self) -> list[Item]:
        """The link dropped: keep what complete lines said, forget any partial line."""
        items: list[Item] = []
        if self._buffer:
            self.on_error("partial_line", 1)
            self._buffer.clear()
        if self._in_block:
            self._flush_tag(items)
            self.on_error("incomplete_block", 1)
            self._in_block = False
        return items

    # -- one line -----------------------------------------------------------------------------

    def _line(self, raw: bytes, items: list[Item]) -> None:
        if not raw.strip():
            return  # the blank line after OK:/ER: (and any spare CR LF)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            self._garbled(items)
            return
        match = _LINE.match(text) if _PRINTABLE.match(text) else None
        prefix, value = (match.group(1), (match.group(2) or "").strip()) if match else ("", "")
        if match is None or (prefix in _NUMERIC and ":" in value):
            # A line cut mid-write runs into the next one ("EP: 3034SW: off"): count the cut
            # head, keep the whole line that follows it.
            tail = _embedded_line(text)
            if tail is None:
                self._garbled(items)
            else:
                self._partial(items)
                self._line(tail.encode("ascii"), items)
            return
        if prefix not in KNOWN_PREFIXES:
            self.on_error("unknown_line", 1)
            return
        handler = self._HANDLERS.get(prefix)
        if handler is not None:
            handler(self, value, items)
        elif prefix in TRANSPONDER_FIELDS:
            self._transponder_field(prefix, value, items)
        else:
            self._open_block()
            self._fields.append((prefix, value))

    def _garbled(self, items: list[Item]) -> None:
        self.on_error("garbled_line", 1)
        # A garbled line inside a transponder may have been one of its fields: drop the
        # transponder rather than report it with a missing or wrong value.
        if self._tag:
            self._tag_bad = True

    def _partial(self, items: list[Item]) -> None:
        self.on_error("partial_line", 1)
        if self._tag:
            self._tag_bad = True

    def _open_block(self) -> None:
        if not self._in_block:
            self._in_block = True
            self._command, self._message, self._fields = "", None, []

    def _on_cs(self, value: str, items: list[Item]) -> None:
        if self._in_block:
            # The previous block lost its OK:/ER: line (truncated): keep its complete lines.
            self._flush_tag(items)
            self.on_error("incomplete_block", 1)
        self._in_block = True
        self._command, self._message, self._fields = value, None, []
        self._tag, self._tag_bad, self._leader = {}, False, None

    def _on_ok(self, value: str, items: list[Item]) -> None:
        self._close(None, items)

    def _on_er(self, value: str, items: list[Item]) -> None:
        digits = value.strip()
        if not digits.isdigit() or len(digits) > 3:
            self.on_error("bad_error_line", 1)
            self._close(255, items)  # still a failed command: close it rather than hang
            return
        self._close(int(digits), items)

    def _close(self, error: int | None, items: list[Item]) -> None:
        self._flush_tag(items)
        items.append(BlockDone(self._command, error, self._message, tuple(self._fields)))
        self._in_block = False
        self._leader = None
        self._command, self._message, self._fields = "", None, []

    def _on_sw(self, value: str, items: list[Item]) -> None:
        if value not in SWITCH_STATES:
            self.on_error("bad_switch_line", 1)
            return
        items.append(SwitchChanged(value))

    def _on_bc(self, value: str, items: list[Item]) -> None:
        self._open_block()
        if not value:
            self.on_error("bad_barcode_line", 1)
            return
        items.append(BarcodeScanned(value))

    def _on_me(self, value: str, items: list[Item]) -> None:
        self._open_block()
        self._message = value

    _HANDLERS: dict[str, Callable[[TSLParser, str, list[Item]], None]] = {
        "CS": _on_cs,
        "OK": _on_ok,
        "ER": _on_er,
        "SW": _on_sw,
        "BC": _on_bc,
        "ME": _on_me,
    }

    # -- transponders -------------------------------------------------------------------------

    def _transponder_field(self, prefix: str, value: str, items: list[Item]) -> None:
        self._open_block()
        if self._tag and (prefix in self._tag or prefix == self._leader):
            self._flush_tag(items)
        elif not self._tag and self._leader is None:
            self._leader = prefix
        if not _valid_field(prefix, value):
            self.on_error(f"bad_{prefix.lower()}_line", 1)
            self._tag_bad = True
            value = ""
        self._tag[prefix] = value

    def _flush_tag(self, items: list[Item]) -> None:
        tag, bad = self._tag, self._tag_bad
        self._tag, self._tag_bad = {}, False
        if not tag or bad:
            return  # nothing, or already counted as bad
        epc = tag.get("EP")
        if not epc:
            self.on_error("transponder_without_epc", 1)
            return
        pc = int(tag["PC"], 16) if tag.get("PC") else None
        if pc is not None and (pc >> 11) * 4 != len(epc):
            # The PC word says how many 16-bit words the EPC has: a shorter EP: line was cut.
            self.on_error("epc_length_mismatch", 1)
            return
        rssi = float(tag["RI"]) if tag.get("RI") else None
        items.append(TagSeen(epc.upper(), rssi, pc))


_NUMERIC = frozenset({"EP", "PC", "RI", "CR", "IX", "OK", "ER", "SW"})  # values never hold ':'
_EMBEDDED = re.compile(r"(?<=.)([A-Z]{2}):")


def _embedded_line(text: str) -> str | None:
    """The last well-formed-looking line glued behind a cut one, if any."""
    for m in reversed(list(_EMBEDDED.finditer(text))):
        tail = text[m.start() :]
        if m.group(1) in KNOWN_PREFIXES and _PRINTABLE.match(tail) and _LINE.match(tail):
            return tail
    return None


def _valid_field(prefix: str, value: str) -> bool:
    if prefix == "EP":
        return bool(_HEX.match(value)) and len(value) % 4 == 0 and 4 <= len(value) <= 124
    if prefix == "PC":
        return bool(_HEX.match(value)) and len(value) == 4
    if prefix == "RI":
        try:
            rssi = int(value)
        except ValueError:
            return False
        return -128 <= rssi <= 0
    if prefix == "CR":
        return bool(_HEX.match(value)) and len(value) == 4
    return bool(value)  # IX:, DT: are passed through, only non-empty


# --- commands -------------------------------------------------------------------------------------


def inventory_settings(tx_power_dbm: int) -> str:
    """Reset `.iv` to its defaults, then ask for PC (to check EPC lengths), RSSI and the EPC
    itself at the configured power; `-n` stores the settings without running an inventory."""
    return f".iv -x -e on -r on -ie on -o {tx_power_dbm} -n"


#: Trigger: single press inventories while held, double press reads a barcode; report every
#: switch change asynchronously (SW: lines).
SWITCH_SETTINGS = ".sa -x -a on -s inv -d bar"
#: Barcode scans time out after 5 s without the reader's date/time.
BARCODE_SETTINGS = ".bc -x -dt off -t 5 -n"
VERSION = ".vr"
#: Operator feedback: a short high beep for "ok", a long low beep with vibration for "error".
ALERTS: dict[str, str] = {
    "ok": ".al -b on -v off -d sho -t hig",
    "error": ".al -b on -v on -d lon -t low",
}


def command_word(command: str) -> str:
    return command.split(" ", 1)[0] if command else ""


# --- the driver -----------------------------------------------------------------------------------


class TSLDriver(Driver):
    kind = "handheld"

    Options = TSLOptions

    def __init__(self, device: DeviceSettings, sink: Sink) -> None:
        super().__init__(device, sink)
        self.opts: TSLOptions = device.options
        self._stop = threading.Event()
        self._outbox: queue.Queue[tuple[float, str]] = queue.Queue(maxsize=64)
        self._link: _Session | None = None  # the open port, from connect() to close()
        self.reader_info: dict[str, str] = {}

    # -- gateway -> reader ------------------------------------------------------------------------

    def alert(self, kind: str) -> bool:
        """Queue operator feedback ("ok" or "error"); thread-safe, never blocks. Returns False
        (and counts why) when it cannot be sent."""
        command = ALERTS.get(kind)
        if command is None:
            self.count_error("bad_alert_kind")
            return False
        try:
            self._outbox.put_nowait((time.monotonic(), command))
        except queue.Full:
            self.count_error("alert_dropped")
            return False
        return True

    # -- the reconnect loop's steps (the loop itself is Driver.run) --------------------------------
    # Serial I/O blocks: connect() and serve() each run on a daemon thread of their own (never
    # the loop, never the shared executor: a handheld session lasts hours). Cancelling sets
    # the stop flag the thread watches and waits for the thread to end.

    def make_backoff(self) -> Backoff:
        return Backoff(initial_s=0.2, cap_s=self.opts.reconnect_max_s)

    def on_connecting(self) -> None:
        self.set_state("connecting", self.opts.port)

    def on_up(self) -> None:
        detail = " ".join(f"{k}={v}" for k, v in self.reader_info.items()) or None
        self.set_state("up", detail)

    async def connect(self) -> None:
        """Open the port and (re)send every setting: returns once the reader answered them."""
        self._stop.clear()
        await self._on_thread(self._open)

    async def serve(self) -> None:
        """Read, translate and write feedback until the port fails or the reader goes silent."""
        link = self._link
        assert link is not None  # connect() opened it
        await self._on_thread(lambda: self._with_port_errors(link.serve))

    async def close(self) -> None:
        self._stop.set()  # a session thread still running (a cancel that timed out) ends
        link, self._link = self._link, None
        if link is not None:
            await run_in_daemon_thread(link.finish, f"tsl-{self.name}-close")

    async def _on_thread(self, fn: Callable[[], None]) -> None:
        await run_in_daemon_thread(
            fn, f"tsl-{self.name}", on_cancel=self._stop.set, join_timeout_s=5.0
        )

    # -- one connection (runs on the session thread) -----------------------------------------------

    def _open(self) -> None:
        try:
            port = serial.serial_for_url(
                self.opts.port, baudrate=self.opts.baudrate, timeout=0.05, write_timeout=2.0
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SessionEnded("open_failed", f"cannot open {self.opts.port}: {exc}") from None
        link = self._link = _Session(self, port)
        if self._stop.is_set():  # closed meanwhile (a cancel that outwaited the join): undo
            link.finish()
            return
        self._with_port_errors(link.start)

    def _with_port_errors(self, fn: Callable[[], None]) -> None:
        """Run `fn`; a failing port ends the session as `port_lost`."""
        try:
            fn()
        except (serial.SerialException, OSError) as exc:
            raise SessionEnded("port_lost", f"{self.opts.port}: {exc}") from None

    # -- items -> sink (session thread) ------------------------------------------------------------

    def deliver_reads(self, seen: Iterable[TagSeen]) -> None:
        now = now_us()
        batch = [
            TagRead(t.epc, self.name, 1, t.rssi if t.rssi is not None else -127.0, now)
            for t in seen
        ]
        if batch:
            self.mark_data(now)
            self.sink.reads(batch)

    def deliver_event(self, kind: str, data: dict[str, Any]) -> None:
        now = now_us()
        self.mark_data(now)
        self.sink.event(DeviceEvent(self.name, kind, data, now))


class _Session:
    """One open port: configure the reader, then read, translate and write feedback until the
    port fails, the reader goes silent, or the driver stops."""

    BATCH = 500  # reads handed over at once at most

    def __init__(self, driver: TSLDriver, port: Any) -> None:
        self.driver = driver
        self.port = port
        self.opts = driver.opts
        self.parser = TSLParser(lambda kind, n: driver.count_error(kind, n))
        self.pending: str | None = None  # command word awaiting its OK:/ER:
        self.pending_result: BlockDone | None = None
        self.reads: list[TagSeen] = []
        self.last_rx = time.monotonic()
        self.probe_sent: float | None = None
        self.resend_settings = False

    # -- setup ------------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.port.reset_input_buffer()
        except (serial.SerialException, OSError, AttributeError):
            pass  # not every URL handler has an input buffer to reset
        self.configure()

    def serve(self) -> None:
        while not self.driver._stop.is_set():
            self.pump()
            self.send_feedback()
            self.check_link()
            if self.resend_settings:
                self.resend_settings = False
                self.configure()

    def configure(self) -> None:
        """(Re)send every setting: the reader forgets them on power-up."""
        version = self.call(VERSION)
        if version.error is None:
            self.driver.reader_info = {k: v for k, v in version.fields if k in ("MF", "US", "PV")}
        self.call(inventory_settings(self.opts.tx_power_dbm))
        self.call(SWITCH_SETTINGS)
        self.call(BARCODE_SETTINGS)

    def call(self, command: str) -> BlockDone:
        """Send a command and wait for its block; an ER: is counted and explained, not fatal."""
        self.write(command)
        self.pending, self.pending_result = command_word(command), None
        deadline = time.monotonic() + self.opts.response_timeout_s
        while self.pending_result is None:
            if self.driver._stop.is_set():
                raise SessionEnded("stopped", "stopping")
            if time.monotonic() > deadline:
                self.pending = None
                raise SessionEnded("no_response", f"reader did not answer {command!r}")
            self.pump()
        result = self.pending_result
        if result.error is not None:
            self.driver.count_error(f"command_error_{result.error:03d}")
            log.warning(
                "%s: reader refused %r: ER %03d %s",
                self.driver.name,
                command,
                result.error,
                error_text(result.error),
            )
        return result

    # -- traffic ----------------------------------------------------------------------------------

    def write(self, command: str) -> None:
        self.port.write(command.encode("ascii") + b"\r\n")

    def pump(self) -> None:
        waiting = getattr(self.port, "in_waiting", 0) or 1
        data = self.port.read(min(max(waiting, 1), 4096))
        if data:
            self.last_rx = time.monotonic()
            self.probe_sent = None
            self.handle(self.parser.feed(data))

    def handle(self, items: list[Item]) -> None:
        for item in items:
            if isinstance(item, TagSeen):
                if item.rssi is None:
                    # We always ask for RSSI: its absence means the reader lost our settings
                    # (a power cycle the link did not notice). Re-send them.
                    self.driver.count_error("settings_lost")
                    self.resend_settings = True
                self.reads.append(item)
                if len(self.reads) >= self.BATCH:
                    self.flush_reads()
            elif isinstance(item, BlockDone):
                self.flush_reads()
                self.block_done(item)
            elif isinstance(item, BarcodeScanned):
                self.driver.deliver_event("barcode", {"barcode": item.data})
            else:
                self.driver.deliver_event(
                    "trigger", {"state": item.state, "pulled": item.state != "off"}
                )

    def block_done(self, block: BlockDone) -> None:
        word = command_word(block.command)
        if self.pending is not None and word == self.pending:
            self.pending, self.pending_result = None, block
            return
        if block.error is not None and block.error not in BENIGN_ERRORS:
            # A trigger-driven command failed (e.g. battery too low): tell, count, go on.
            self.driver.count_error(f"reader_error_{block.error:03d}")
            self.driver.set_state("up", f"ER {block.error:03d}: {error_text(block.error)}")

    def flush_reads(self) -> None:
        if self.reads:
            reads, self.reads = self.reads, []
            self.driver.deliver_reads(reads)

    def send_feedback(self) -> None:
        while True:
            try:
                queued_at, command = self.driver._outbox.get_nowait()
            except queue.Empty:
                return
            if time.monotonic() - queued_at > 5.0:
                # Feedback for something the operator did long ago only confuses: drop it.
                self.driver.count_error("alert_stale")
                continue
            self.write(command)

    def check_link(self) -> None:
        """A Bluetooth link can die without an error: after a silence, ask for the version; if
        that goes unanswered too, end the session and reconnect."""
        now = time.monotonic()
        if self.probe_sent is not None:
            if now - self.probe_sent > self.opts.response_timeout_s:
                raise SessionEnded("no_response", "reader stopped answering")
        elif now - self.last_rx > self.opts.probe_interval_s:
            self.write(VERSION)
            self.probe_sent = now

    def finish(self) -> None:
        """Deliver what complete lines said, then close the port."""
        try:
            self.handle(self.parser.reset())
            self.flush_reads()
        finally:
            try:
                self.port.close()
            except (serial.SerialException, OSError):
                pass
