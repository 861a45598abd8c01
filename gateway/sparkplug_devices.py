"""What the Sparkplug edge node says about each device: a tap on the drivers' sink, and each
device's metrics as they stand now.

The tap sits between the drivers and the gateway's sink (gateway.ingest.GatewaySink): it hands
everything on unchanged and notes, per device, the reads it delivered, the equipment points its
events reported, and that its state changed (so the node publishes promptly). Health (state,
reconnects, errors) is read from gateway.health.Devices, its one owner, never copied.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from drivers.base import DeviceEvent, DriverHealth, Sink
from gateway.config import Settings
from gateway.health import Devices
from gateway.model import Movement, TagRead
from gateway.sparkplug_payload import DataType, Metric, as_metric_value, datatype_of

# A device in one of these states has no connection: a DDEATH says so to the host.
DEAD_STATES = frozenset({"backoff", "unreachable", "stopped"})


class DeviceTap:
    """A drivers.base.Sink that hands everything to `sink` and keeps what Sparkplug shows."""

    def __init__(self, sink: Sink, on_state: Callable[[str], None]) -> None:
        self.sink = sink
        self.on_state = on_state
        self._lock = threading.Lock()
        self._reads: dict[str, int] = {}
        self._points: dict[str, dict[str, Any]] = {}  # device -> metric name -> value
        self._alarms: dict[str, set[str]] = {}  # device -> active alarms

    # --- drivers.base.Sink --------------------------------------------------------------------

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        if batch:
            reader = batch[0].reader  # a batch is one reader's (as ingest counts them too)
            with self._lock:
                self._reads[reader] = self._reads.get(reader, 0) + len(batch)
        self.sink.reads(batch, cursors)

    def event(self, event: DeviceEvent) -> None:
        if event.kind == "equipment":
            self._note_points(event.device, event.data)
        self.sink.event(event)

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        return self.sink.movement(move, cursors)

    def progress(self, source: str, time_us: int) -> None:
        self.sink.progress(source, time_us)

    def device_state(self, device: str, health: DriverHealth) -> None:
        self.sink.device_state(device, health)
        self.on_state(device)

    def cursor(self, key: str) -> int | None:
        return self.sink.cursor(key)

    # --- what the node reads ------------------------------------------------------------------

    def _note_points(self, device: str, data: Mapping[str, Any]) -> None:
        """Equipment events (drivers/equipment.py) as metrics: each mapped point's value, each
        counter's total, the active alarms."""
        found: dict[str, Any] = {}
        match data.get("event"):
            case "status":
                for point, value in (data.get("points") or {}).items():
                    found[f"Points/{point}"] = value
                for point, total in (data.get("counters") or {}).items():
                    found[f"Counters/{point}"] = total
                found["Alarms/Active"] = self._active(device, set(data.get("alarms") or ()))
            case "alarm" if isinstance(data.get("alarm"), str):
                with self._lock:
                    active = set(self._alarms.get(device, ()))
                (active.add if data.get("active") else active.discard)(data["alarm"])
                found["Alarms/Active"] = self._active(device, active)
            case "state" if isinstance(data.get("point"), str):
                found[f"Points/{data['point']}"] = data.get("value")
            case "counter" if isinstance(data.get("point"), str):
                found[f"Counters/{data['point']}"] = data.get("total")
        if found:
            with self._lock:
                self._points.setdefault(device, {}).update(found)

    def _active(self, device: str, alarms: set[str]) -> str:
        """The device's active alarms are now `alarms`: as one metric value."""
        with self._lock:
            self._alarms[device] = alarms
        return ", ".join(sorted(str(a) for a in alarms))

    def reads_of(self, reader: str) -> int:
        with self._lock:
            return self._reads.get(reader, 0)

    def points_of(self, device: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._points.get(device, {}))


class DeviceMetrics:
    """Each configured device's Sparkplug metrics, from its health and what the tap saw."""

    def __init__(self, settings: Settings, devices: Devices, tap: DeviceTap) -> None:
        self.devices = devices
        self.tap = tap
        self.drivers = {d.name: d.driver for d in settings.devices}
        self.readers = {d.name for d in settings.readers}
        self._rates: dict[str, float] = {}  # reader -> reads/s over the last interval
        self._rate_base: dict[str, tuple[int, float]] = {}  # reader -> (reads, monotonic s)
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self.drivers)

    def measure_rates(self, now_s: float) -> None:
        """Reads per second of each reader since the last call (the node's interval)."""
        for reader in self.readers:
            total = self.tap.reads_of(reader)
            before, since = self._rate_base.get(reader, (total, now_s))
            rate = (total - before) / (now_s - since) if now_s > since else 0.0
            with self._lock:
                self._rates[reader] = round(rate, 1)
            self._rate_base[reader] = (total, now_s)

    def state_of(self, device: str) -> str:
        return self._health(device).state

    def snapshot(self, device: str) -> dict[str, Metric]:
        """The device's metrics now, by name (no timestamps: they are stamped when sent)."""
        health = self._health(device)
        values: list[tuple[str, DataType, Any]] = [
            ("State", DataType.STRING, health.state),
            ("Up", DataType.BOOLEAN, health.state == "up"),
            ("Driver", DataType.STRING, self.drivers.get(device)),
            ("Detail", DataType.STRING, health.detail),
            ("Reconnects", DataType.INT64, sum(health.reconnects.values())),
            ("Errors", DataType.INT64, sum(health.errors.values())),
        ]
        if device in self.readers:
            with self._lock:
                rate = self._rates.get(device, 0.0)
            values.append(("Reads", DataType.INT64, self.tap.reads_of(device)))
            values.append(("Reads per second", DataType.DOUBLE, rate))
        for name, value in sorted(self.tap.points_of(device).items()):
            values.append((name, datatype_of(value), as_metric_value(value)))
        return {name: Metric(name, kind, value) for name, kind, value in values}

    def _health(self, device: str) -> DriverHealth:
        driver = self.devices.drivers.get(device)
        return driver.health() if driver is not None else DriverHealth()
