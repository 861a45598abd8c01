"""Shared test helpers: a recording sink (a real Sink implementation that keeps what it is
given, for driver-vs-simulator tests), free loopback ports, and polling."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from drivers.base import DeviceEvent, DriverHealth
from gateway.model import Movement, TagRead


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a running process has written to `path` so far. A last line without its
    newline is still being written and is left for the next look (parsing it failed a CI run
    once); every complete line must parse."""
    text = path.read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; returns its value or raises AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class RecordingSink:
    """Keeps everything a driver hands over. Thread-safe like the real sink. Movements are
    acknowledged as durable at once unless `hold_movements` is set."""

    def __init__(self, cursors: Mapping[str, int] | None = None) -> None:
        self.lock = threading.Lock()
        self.batches: list[list[TagRead]] = []
        self.cursors: dict[str, int] = dict(cursors or {})
        self.events: list[DeviceEvent] = []
        self.moves: list[Movement] = []
        self.states: list[tuple[str, DriverHealth]] = []
        self.hold_movements = False
        self.pending: list[Future[None]] = []

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        with self.lock:
            self.batches.append(list(batch))
            self.cursors.update(cursors or {})

    def event(self, event: DeviceEvent) -> None:
        with self.lock:
            self.events.append(event)

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        future: Future[None] = Future()
        with self.lock:
            self.moves.append(move)
            self.cursors.update(cursors or {})
            if self.hold_movements:
                self.pending.append(future)
            else:
                future.set_result(None)
        return future

    def device_state(self, device: str, health: DriverHealth) -> None:
        with self.lock:
            self.states.append((device, health))

    def cursor(self, key: str) -> int | None:
        with self.lock:
            return self.cursors.get(key)

    @property
    def all_reads(self) -> list[TagRead]:
        with self.lock:
            return [r for b in self.batches for r in b]

    def state_names(self) -> list[str]:
        with self.lock:
            return [h.state for _, h in self.states]


def sgtin96(company: int, item: int, serial: int, filter_value: int = 1) -> str:
    """An SGTIN-96 EPC (hex) for a 7-digit company prefix (partition 5), packed by hand so
    tests can make thousands quickly; decode_epc() checks the packing against epcpy."""
    value = 0x30
    value = value << 3 | filter_value
    value = value << 3 | 5  # partition 5: 24-bit company prefix, 20-bit item reference
    value = value << 24 | company
    value = value << 20 | item
    value = value << 38 | serial
    return f"{value:024X}"


_SCHEMA_FILES = {
    "fc-edge/movement/1": "movement.json",
    "fc-edge/dropped/1": "dropped.json",
    "fc-edge/equipment/1": "equipment.json",
    "fc-edge/count/1": "count.json",
    "fc-edge/device/1": "device.json",
}


def validate_message(obj: dict[str, Any]) -> None:
    """Validate a published message against its JSON Schema in gateway/schemas/ (tests only:
    validation is kept off the hot path)."""
    import json
    from pathlib import Path

    import jsonschema

    name = _SCHEMA_FILES[obj["schema"]]
    path = Path(__file__).resolve().parent.parent / "gateway" / "schemas" / name
    jsonschema.validate(obj, json.loads(path.read_text()))
