"""Shared test helpers: a recording sink (a real Sink implementation that keeps what it is
given, for driver-vs-simulator tests), free loopback ports, and polling."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from drivers.base import DeviceEvent, DriverHealth
from gateway.model import Movement, TagRead


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
