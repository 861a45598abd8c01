"""The driver interface, the sink drivers hand data to, and the lazy driver registry.

Modelled on python-can's BusABC: a small abstract base, a registry of name -> "module:Class"
imported only when a device is run (a missing vendor library never breaks import; the config
loader needs only drivers/options.py), and shared health bookkeeping so that no driver writes
its own (backoff and the thread helper are in drivers/runtime.py).

A driver translates one hardware protocol into TagReads and events. It never talks MQTT,
never touches SQLite, and never decides what a read means: that is the engine's job.
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from drivers.options import DRIVERS, UnknownDriver
from gateway.model import Movement, TagRead

if TYPE_CHECKING:
    from gateway.config import DeviceSettings

DeviceState = Literal["connecting", "up", "backoff", "stale", "unreachable", "stopped"]


@dataclass(slots=True, frozen=True)
class DeviceEvent:
    """A non-read event from a device: barcode scans, trigger pulls, equipment status changes.

    `kind` names it ("barcode", "trigger", "equipment"); `data` is JSON-ready.
    """

    device: str
    kind: str
    data: dict[str, Any]
    time_us: int


class Sink(Protocol):
    """Where a driver hands its data. Every method is thread-safe and never blocks."""

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        """A batch of reads; `cursors` (key -> value, e.g. a replay offset) are committed in the
        same outbox transaction as whatever the batch produces, so a restart resumes there."""

    def event(self, event: DeviceEvent) -> None:
        """A barcode, trigger or equipment event."""

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        """A movement a device reports itself (a robot move). The future resolves once the
        movement and the cursor are durable in the outbox: only then may the device be acked."""

    def progress(self, source: str, time_us: int) -> None:
        """`source` is alive and has sent everything it read before `time_us` (on the gateway
        clock: a KEEPALIVE, an empty report). Lets the engine judge without waiting for it."""

    def device_state(self, device: str, health: DriverHealth) -> None:
        """The device's connection state changed (published retained on devices/{name})."""

    def cursor(self, key: str) -> int | None:
        """The value of a cursor as last committed (read at start-up), or None."""


@dataclass
class DriverHealth:
    """What a driver reports about its device: shown in metrics, /readyz and device status."""

    state: DeviceState = "connecting"
    since_us: int = 0
    last_data_us: int | None = None
    reconnects: Counter[str] = field(default_factory=Counter)  # by cause
    errors: Counter[str] = field(default_factory=Counter)  # by kind
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        from gateway.model import iso_ms

        return {
            "state": self.state,
            "since": iso_ms(self.since_us) if self.since_us else None,
            "last_data": iso_ms(self.last_data_us) if self.last_data_us else None,
            "reconnects": dict(self.reconnects),
            "errors": dict(self.errors),
            "detail": self.detail,
        }


class Driver(ABC):
    """One device. `run()` connects, reads and reconnects with backoff until cancelled."""

    #: The dataclass of this driver's own config keys: its DriverSpec's `options` in
    #: drivers/options.py, which gateway.config validates without importing the driver.
    Options: ClassVar[type]
    #: "reader" drivers need [readers.antennas]; a "handheld" sits under [[readers]] without
    #: antennas (where it is comes from the location label it scans); "equipment" drivers sit
    #: under [[equipment]].
    kind: ClassVar[Literal["reader", "handheld", "equipment"]] = "reader"

    def __init__(self, device: DeviceSettings, sink: Sink) -> None:
        self.device = device
        self.name = device.name
        self.options = device.options
        self.sink = sink
        self._health = DriverHealth(since_us=time.time_ns() // 1000)
        self._health_lock = threading.Lock()

    @abstractmethod
    async def run(self) -> None:
        """Serve the device until cancelled. Must never return on a device error."""

    def health(self) -> DriverHealth:
        with self._health_lock:
            return DriverHealth(
                state=self._health.state,
                since_us=self._health.since_us,
                last_data_us=self._health.last_data_us,
                reconnects=Counter(self._health.reconnects),
                errors=Counter(self._health.errors),
                detail=self._health.detail,
            )

    # Helpers for subclasses: thread-safe, and they publish state transitions only.
    def set_state(self, state: DeviceState, detail: str | None = None) -> None:
        with self._health_lock:
            changed = state != self._health.state or detail != self._health.detail
            if state != self._health.state:
                self._health.since_us = time.time_ns() // 1000
            self._health.state = state
            self._health.detail = detail
        if changed:
            self.sink.device_state(self.name, self.health())

    def count_error(self, kind: str, n: int = 1) -> None:
        with self._health_lock:
            self._health.errors[kind] += n

    def count_reconnect(self, cause: str) -> None:
        with self._health_lock:
            self._health.reconnects[cause] += 1

    def mark_data(self, time_us: int | None = None) -> None:
        with self._health_lock:
            self._health.last_data_us = time_us or time.time_ns() // 1000


# name -> "module:Class"; imported lazily so a missing optional library breaks only its driver.
REGISTRY: dict[str, str] = {name: spec.driver for name, spec in DRIVERS.items()}


def driver_class(name: str) -> type[Driver]:
    """The driver's class, its module imported now (raises UnknownDriver, ImportError)."""
    try:
        target = REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownDriver(f"unknown driver {name!r} (known: {known})") from None
    module_name, class_name = target.split(":")
    module = importlib.import_module(module_name)
    cls: type[Driver] = getattr(module, class_name)
    return cls
