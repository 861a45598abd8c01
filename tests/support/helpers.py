"""Shared test helpers: a recording sink (a real Sink implementation that keeps what it is
given, for driver-vs-simulator tests), message validation against the JSON Schemas, and (from
tools/harness.py, shared with the soak tool) free loopback ports, polling, JSON lines and
SGTIN-96 EPCs."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from drivers.base import DeviceEvent, DriverHealth
from gateway.model import Movement, TagRead
from tools.harness import free_port, json_lines, sgtin96, wait_for

__all__ = [
    "RecordingSink",
    "free_port",
    "json_lines",
    "sgtin96",
    "validate_message",
    "wait_for",
]


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
        self.progressed: list[tuple[str, int]] = []
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

    def progress(self, source: str, time_us: int) -> None:
        with self.lock:
            self.progressed.append((source, time_us))

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
    path = Path(__file__).resolve().parents[2] / "gateway" / "schemas" / name
    jsonschema.validate(obj, json.loads(path.read_text()))
