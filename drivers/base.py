"""The driver interface, the sink drivers hand data to, and the lazy driver registry.

Modelled on python-can's BusABC: a small abstract base, a registry of name -> "module:Class"
imported only when a device is run (a missing vendor library never breaks import; the config
loader needs only drivers/options.py), shared health bookkeeping so that no driver writes its
own, and one reconnect loop, `Driver.run`, whose steps each driver fills in (`connect`,
`serve`, `close`; backoff and the thread helper are in drivers/runtime.py).

A driver translates one hardware protocol into TagReads and events. It never talks MQTT,
never touches SQLite, and never decides what a read means: that is the engine's job.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from drivers.options import DRIVERS, UnknownDriver
from drivers.runtime import Backoff
from gateway.model import Movement, TagRead

if TYPE_CHECKING:
    from gateway.config import DeviceSettings

log = logging.getLogger(__name__)

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


class SessionEnded(Exception):
    """A connection ended, or never came up. `cause` is counted as the reconnect's cause
    (`count_reconnect`); `detail` is shown with the "backoff" state (the cause by default)."""

    def __init__(self, cause: str, detail: str | None = None) -> None:
        super().__init__(detail or cause)
        self.cause = cause
        self.detail = detail or cause


class Driver:
    """One device. `run()` connects, serves and reconnects with backoff until cancelled.

    `run()` is a template: a driver fills in `connect()`, `serve()` and `close()`, and may
    adjust what the loop shows and counts through the other hooks (`make_backoff`,
    `failure_cause`, `on_connecting`, `on_up`, `on_backoff`). One attempt goes:

        on_connecting()  -> state "connecting"
        connect()        -> the device is proven to talk (raises if not)
        on_up()          -> state "up"
        serve()          -> returns or raises when the connection is lost
        close()          -> always, also when connect() failed or run() is cancelled
        failure_cause()  -> counted with count_reconnect(cause)
        on_backoff()     -> state "backoff"; then the Backoff's delay

    The backoff starts over after an attempt whose connect() succeeded. Cancelling run()
    closes the connection and sets "stopped". A driver whose device is no connection (a file
    played once) overrides run() instead, and says why.
    """

    #: The dataclass of this driver's own config keys: its DriverSpec's `options` in
    #: drivers/options.py, which gateway.config validates without importing the driver.
    Options: ClassVar[type]
    #: "reader" drivers need [readers.antennas]; a "handheld" sits under [[readers]] without
    #: antennas (where it is comes from the location label it scans); "equipment" drivers sit
    #: under [[equipment]].
    kind: ClassVar[Literal["reader", "handheld", "equipment"]] = "reader"
    #: The delays between attempts (made by make_backoff() when run() starts).
    backoff: Backoff

    def __init__(self, device: DeviceSettings, sink: Sink) -> None:
        self.device = device
        self.name = device.name
        self.options = device.options
        self.sink = sink
        self._health = DriverHealth(since_us=time.time_ns() // 1000)
        self._health_lock = threading.Lock()

    # --- the reconnect loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the device until cancelled. Never returns on a device error."""
        self.backoff = self.make_backoff()
        try:
            while True:
                failure, came_up = await self._attempt()
                if came_up:
                    self.backoff.reset()  # a good session: the next attempt starts fast again
                cause = self.failure_cause(failure)
                self.count_reconnect(cause)
                self.on_backoff(cause, failure)
                await self.backoff.sleep()
        finally:
            self.set_state("stopped")

    async def _attempt(self) -> tuple[Exception, bool]:
        """One connection from connect to close: why it ended, and whether it came up."""
        came_up = False
        try:
            self.on_connecting()
            await self.connect()
            came_up = True
            self.on_up()
            await self.serve()
            return SessionEnded("connection_lost", "the connection ended"), came_up
        except Exception as exc:  # classified by failure_cause(); a cancel is no Exception
            return exc, came_up
        finally:
            await self.close()

    # --- hooks each driver fills -------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and return once the device talks; raise SessionEnded (or any
        exception) if it does not. Blocking work belongs on a thread (drivers.runtime)."""
        raise NotImplementedError(f"{type(self).__name__} must implement connect() or run()")

    async def serve(self) -> None:
        """Read from the device until the connection is lost: return or raise then."""
        raise NotImplementedError(f"{type(self).__name__} must implement serve() or run()")

    async def close(self) -> None:
        """Let go of the connection. Called after every attempt, also one whose connect()
        failed half-way or was cancelled, so it must be safe to call with nothing open and to
        call twice."""

    def make_backoff(self) -> Backoff:
        """The delays between attempts; a driver sets its first delay and its cap (its
        `reconnect_max_s` option)."""
        return Backoff()

    def failure_cause(self, exc: Exception) -> str:
        """The reconnect cause of a failed attempt (a metric label); may count an error too."""
        if isinstance(exc, SessionEnded):
            return exc.cause
        # A bug of ours must not stop the device for good: log it, count it, reconnect.
        log.error("%s: unexpected error in the driver", self.name, exc_info=exc)
        self.count_error("internal")
        return "internal_error"

    def on_connecting(self) -> None:
        self.set_state("connecting")

    def on_up(self) -> None:
        self.set_state("up")

    def on_backoff(self, cause: str, exc: Exception) -> None:
        self.set_state("backoff", exc.detail if isinstance(exc, SessionEnded) else cause)

    # --- health ------------------------------------------------------------------------------

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
