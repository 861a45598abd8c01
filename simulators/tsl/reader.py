"""A simulated TSL handheld UHF reader (1128/1153/1166 family) speaking ASCII 2.

It answers commands the way the protocol document describes (see drivers/tsl.py's docstring
for the sources): `.vr`, `.iv`, `.sa`, `.bc`, `.al`, `.ab`, `.bl`, `.ts`, `.ss`; every response
block starts with `CS: <echo>` and ends with `OK:` or `ER: nnn` and a blank line. It forgets its
settings on power-up (a "vanish"), so a host that does not re-send them gets no RSSI and no
trigger reports. This module shares no code with the driver on purpose: a codec used by both
would let one bug cancel itself out.

The environment (tags in range, what the barcode scanner is aimed at, the trigger) and faults
are driven through methods, which a scenario (scenario.py) calls on a timeline.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass
class TagInRange:
    epc: str  # hex
    rssi: float  # dBm at the reader


@dataclass
class Settings:
    """What the reader remembers until it powers down (power-up defaults)."""

    rssi: bool = False
    pc: bool = False
    epc: bool = True
    power_dbm: int = 29
    async_switch: bool = False
    single_action: str = "inv"
    double_action: str = "bar"
    barcode_timeout_s: int = 9


@dataclass
class Stats:
    commands: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    power_ups: int = 1
    dropped_bytes: int = 0


def split_params(text: str) -> dict[str, str]:
    """'-x -r on -o 29 -n' -> {'x': '', 'r': 'on', 'o': '29', 'n': ''}."""
    params: dict[str, str] = {}
    tokens = text.split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("-") or len(token) < 2:
            raise ValueError(token)
        value = ""
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            value = tokens[i + 1]
            i += 1
        params[token[1:]] = value
        i += 1
    return params


class SimulatedReader:
    """The reader's brain. `emit` writes bytes to whatever transport is attached."""

    def __init__(self, seed: int | None = None, serial_number: str = "SIM-001") -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.serial_number = serial_number
        self.settings = Settings()
        self.stats = Stats()
        self.tags: list[TagInRange] = []
        self.barcode_aim: str | None = None
        self.trigger = "off"
        self.round_s = 0.15
        self.emit: Callable[[bytes], None] = lambda data: None
        self._inbuf = b""
        self._fail_next: dict[str, int] = {}
        self._truncate_next = False
        self.on_first_command: Callable[[], None] | None = None

    # -- host -> reader ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        with self.lock:
            self._inbuf += data
            while b"\n" in self._inbuf:
                line, self._inbuf = self._inbuf.split(b"\n", 1)
                text = line.rstrip(b"\r").decode("ascii", "replace").strip()
                if text:
                    self._command(text)

    def _command(self, text: str) -> None:
        first = not self.stats.commands
        self.stats.commands.append(text)
        if first and self.on_first_command is not None:
            self.on_first_command()
        word, _, rest = text.partition(" ")
        code = self._fail_next.pop(word, None)
        if code is not None:
            self._block(text, [], error=code)
            return
        try:
            params = split_params(rest)
        except ValueError:
            self._block(text, [], error=1)  # syntax error
            return
        handler = {
            ".vr": self._version,
            ".iv": self._inventory,
            ".sa": self._switch_actions,
            ".bc": self._barcode,
            ".al": self._alert,
            ".ab": self._ok,
            ".ts": self._ok,
            ".bl": self._battery,
            ".ss": self._switch_state,
        }.get(word)
        if handler is None:
            self._block(text, [], error=1)
            return
        handler(text, params)

    def _ok(self, text: str, params: dict[str, str]) -> None:
        self._block(text, [])

    def _version(self, text: str, params: dict[str, str]) -> None:
        lines = [
            "MF: Technology Solutions (UK) Ltd (simulated)",
            f"US: {self.serial_number}",
            "PV: 2.5",
            "AS: SIM-ANT-01",
        ]
        self._block(text, lines)

    def _battery(self, text: str, params: dict[str, str]) -> None:
        self._block(text, ["BV: 3950mV", "BP: 87%"])

    def _switch_state(self, text: str, params: dict[str, str]) -> None:
        self._block(text, [f"SW: {self.trigger}"])

    def _inventory(self, text: str, params: dict[str, str]) -> None:
        s = self.settings
        if "x" in params:
            s.rssi, s.pc, s.epc, s.power_dbm = False, False, True, 29
        for key, attr in (("r", "rssi"), ("e", "pc"), ("ie", "epc")):
            if key in params:
                if params[key] not in ("on", "off"):
                    self._block(text, [], error=2)
                    return
                setattr(s, attr, params[key] == "on")
        if "o" in params:
            try:
                power = int(params["o"])
            except ValueError:
                power = -1
            if not 10 <= power <= 29:
                self._block(text, [], error=7)
                return
            s.power_dbm = power
        if "n" in params:
            self._block(text, [])
            return
        self._inventory_round(text)

    def _switch_actions(self, text: str, params: dict[str, str]) -> None:
        s = self.settings
        if "x" in params:
            s.async_switch, s.single_action, s.double_action = False, "inv", "bar"
        actions = {"off", "rd", "wr", "inv", "bar", "usr", "ad"}
        if "a" in params:
            s.async_switch = params["a"] == "on"
        if params.get("s", "inv") not in actions or params.get("d", "bar") not in actions:
            self._block(text, [], error=2)
            return
        s.single_action = params.get("s", s.single_action)
        s.double_action = params.get("d", s.double_action)
        self._block(text, [])

    def _barcode(self, text: str, params: dict[str, str]) -> None:
        if "t" in params:
            self.settings.barcode_timeout_s = int(params["t"]) if params["t"].isdigit() else 9
        if "n" in params:
            self._block(text, [])
            return
        self._barcode_scan(text)

    def _alert(self, text: str, params: dict[str, str]) -> None:
        if "n" not in params:
            self.stats.alerts.append(text)
        self._block(text, [])

    # -- what the reader sends ----------------------------------------------------------------

    def _inventory_round(self, echo: str) -> None:
        s = self.settings
        lines: list[str] = []
        for tag in self.tags:
            if s.pc:
                lines.append(f"PC: {len(tag.epc) // 4 << 11:04X}")
            if s.epc:
                lines.append(f"EP: {tag.epc.upper()}")
            if s.rssi:
                jitter = self.rng.uniform(-3.0, 3.0)
                lines.append(f"RI: {max(-128, min(0, round(tag.rssi + jitter)))}")
        self._block(echo, lines, error=None if self.tags else 5)

    def _barcode_scan(self, echo: str) -> None:
        if self.barcode_aim is None:
            self._block(echo, [], error=6)
        else:
            self._block(echo, [f"BC: {self.barcode_aim}"])

    def _block(self, echo: str, lines: list[str], error: int | None = None) -> None:
        out = [f"CS: {echo}", *lines, "OK:" if error is None else f"ER: {error:03d}", ""]
        for line in out:
            self._send_line(line)

    def _send_line(self, line: str) -> None:
        data = line.encode("ascii")
        if self._truncate_next and line.startswith("EP:"):
            self._truncate_next = False
            data = data[: max(4, len(data) // 2)]
        self.emit(data + CRLF)

    def _switch(self, state: str) -> None:
        self.trigger = state
        if self.settings.async_switch:
            self._send_line(f"SW: {state}")

    # -- the operator's hands (called by the scenario) ---------------------------------------------

    def set_tags(self, tags: list[TagInRange]) -> None:
        with self.lock:
            self.tags = list(tags)

    def press_and_hold(self, hold_s: float, stop: threading.Event | None = None) -> int:
        """Single press held for hold_s: the single-press action repeats while held. Returns
        the number of inventory rounds run."""
        stop = stop or threading.Event()
        with self.lock:
            self._switch("single")
            action = self.settings.single_action
        rounds = 0
        end = _monotonic() + hold_s
        while _monotonic() < end and not stop.is_set():
            with self.lock:
                self._trigger_action(action)
            rounds += 1
            stop.wait(self.round_s)
        with self.lock:
            self._switch("off")
        return rounds

    def double_press(self, barcode: str | None) -> None:
        """Double press: the double-press action (a barcode scan by default) runs once."""
        with self.lock:
            self.barcode_aim = barcode
            self._switch("double")
            self._trigger_action(self.settings.double_action)
            self._switch("off")
            self.barcode_aim = None

    def _trigger_action(self, action: str) -> None:
        """What a press runs: the command the switch action names, echoed as if sent."""
        word = {"inv": ".iv", "bar": ".bc"}.get(action)
        if word is None:
            return  # "off" (or an action this simulator does not model): nothing happens
        code = self._fail_next.pop(word, None)
        if code is not None:
            self._block(word, [], error=code)
        elif word == ".iv":
            self._inventory_round(word)
        else:
            self._barcode_scan(word)

    # -- faults ------------------------------------------------------------------------------------

    def noise(self, n: int) -> None:
        """Bursts of 0x00/0xFF, as Bluetooth SPP links produce."""
        with self.lock:
            self.emit(bytes(self.rng.choice((0x00, 0xFF)) for _ in range(n)))

    def truncate_next_epc(self) -> None:
        with self.lock:
            self._truncate_next = True

    def garble(self) -> None:
        with self.lock:
            junk = "".join(self.rng.choice("ab!#$%&*()xyz:019 ") for _ in range(20))
            self.emit(junk.encode("ascii") + CRLF + b"EP: 30ZZ" + CRLF + b"\xc3\xa9\xe2" + CRLF)

    def cut_line(self) -> None:
        """Half a line with no end, as when a link hiccups mid-write."""
        with self.lock:
            self.emit(b"EP: 3034257BF7")

    def fail_next(self, command: str, code: int) -> None:
        with self.lock:
            self._fail_next[command] = code

    def power_up(self) -> None:
        """Battery swap or power cycle: every setting back to its default."""
        with self.lock:
            self.settings = Settings()
            self.stats.power_ups += 1
            self._inbuf = b""
            self.trigger = "off"


def _monotonic() -> float:
    import time

    return time.monotonic()
