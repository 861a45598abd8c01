"""Health: the devices' state, /healthz and /readyz, the status line and the scrape-time metrics.

Device state has one owner, Devices. Each driver keeps its device's health (drivers/base.py
does the bookkeeping); Devices is the one place the gateway reads it from (/readyz, the
status line, /metrics) and the one place a state change is published from (the retained
devices/{name} topic), so the two cannot disagree. It keeps no copy of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

from drivers.base import Driver, DriverHealth
from gateway.config import DeviceSettings
from gateway.metrics import counter, gauge
from gateway.model import iso_ms, now_us
from gateway.outbox_thread import OutboxThread
from gateway.publisher import Publisher

log = logging.getLogger("fc_edge.health")
DEVICE_STATES = ("connecting", "up", "backoff", "stale", "unreachable", "stopped")

PublishRetained = Callable[[str, dict[str, Any]], None]


def _publish_nowhere(subtopic: str, body: dict[str, Any]) -> None:
    """Before the publisher exists: the retained status goes out on its first connect."""


class Devices:
    """The configured devices, their drivers and the tasks that supervise them."""

    def __init__(self, configured: Sequence[DeviceSettings]) -> None:
        self.configured = tuple(configured)
        self._driver_names = {d.name: d.driver for d in configured}
        self.drivers: dict[str, Driver] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.publish_retained: PublishRetained = _publish_nowhere

    def add(self, driver: Driver) -> None:
        self.drivers[driver.name] = driver
        self.state_changed(driver.name, driver.health())

    def supervised_by(self, name: str, task: asyncio.Task[None]) -> None:
        self.tasks[name] = task

    def state_changed(self, device: str, health: DriverHealth) -> None:
        """From any thread (the sink's on_state): publish the retained device status."""
        self.publish_retained(f"devices/{device}", self.status_body(device, health))

    def status_body(self, device: str, health: DriverHealth) -> dict[str, Any]:
        return {
            "schema": "fc-edge/device/1",
            "device": device,
            "driver": self._driver_names.get(device),
            **health.to_json(),
        }

    def health(self) -> dict[str, DriverHealth]:
        """Every device's health, as its driver reports it now."""
        return {name: driver.health() for name, driver in self.drivers.items()}

    def all_running(self) -> bool:
        """Every configured device has a driver, and each driver task runs (or its finite
        source has finished)."""
        if len(self.drivers) != len(self.configured):
            return False
        return all(
            not task.done() or self.drivers[name].health().state == "stopped"
            for name, task in self.tasks.items()
        )

    def alert(self, device: str, kind: str) -> None:
        """Operator feedback ("ok" | "error") on a device that can give it (a handheld)."""
        alert = getattr(self.drivers.get(device), "alert", None)
        if alert is not None:
            alert(kind)


class Health:
    """What /healthz, /readyz, the status line and /metrics say about the running gateway."""

    def __init__(self, devices: Devices, store: OutboxThread, warnings: Sequence[str] = ()) -> None:
        self.devices = devices
        self.store = store
        # Codes of what the config allows but should not (gateway.config.start_warnings):
        # shown in /readyz, never unready.
        self.warnings = tuple(warnings)
        self.publisher: Publisher | None = None  # set once delivery started it
        self.started_us = now_us()

    def status_line(self) -> str:
        states = self.devices.health().values()
        up = sum(1 for h in states if h.state == "up")
        stats = self.store.stats()
        depth = stats.depth if stats is not None else 0
        return f"{up}/{len(states)} devices up, outbox {depth}, broker {self._broker()}"

    def _broker(self) -> str:
        connected = self.publisher is not None and self.publisher.connected
        return "connected" if connected else "disconnected"

    def healthz(self) -> dict[str, Any]:
        return {"status": "alive", "started": iso_ms(self.started_us)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready once the outbox is open, the publisher runs and every driver runs. A broker
        outage is not unready for a store-and-forward gateway: the body shows it."""
        publisher = self.publisher
        devices = {name: h.to_json() for name, h in self.devices.health().items()}
        ok = self.store.is_open and publisher is not None and self.devices.all_running()
        broker: dict[str, Any] = {"broker": self._broker()}
        if publisher is not None and publisher.disconnected_since_us:
            broker["since"] = iso_ms(publisher.disconnected_since_us)
            broker["last_error"] = publisher.last_error
        stats = self.store.stats()
        outbox = stats.to_json() if stats is not None else None
        warnings = list(self.warnings)
        return ok, {
            "ready": ok,
            **broker,
            "outbox": outbox,
            "devices": devices,
            "warnings": warnings,
        }

    # --- metrics read at scrape time ----------------------------------------------------------

    def collect(self) -> list[Metric]:
        out = self._outbox_metrics()
        if self.publisher is not None:
            out.append(
                gauge(
                    "publisher_in_flight_messages",
                    "Published, awaiting PUBACK",
                    self.publisher.in_flight,
                )
            )
        for name, health in self.devices.health().items():
            out += device_metrics(name, health)
        out.append(self._clock_offsets())
        return out

    def _outbox_metrics(self) -> list[Metric]:
        st = self.store.stats()
        if st is None:
            return []
        age = (now_us() - st.oldest_created_us) / 1e6 if st.oldest_created_us else 0.0
        return [
            gauge("outbox_messages", "Messages waiting in the outbox", st.depth),
            gauge("outbox_bytes", "Bytes waiting in the outbox", st.bytes),
            gauge("outbox_oldest_age_seconds", "Age of the oldest waiting message", age),
            counter(
                "outbox_dropped_messages_total",
                "Messages dropped because the outbox was full",
                {(k,): v for k, v in st.dropped.items()},
                ["stream"],
            ),
        ]

    def _clock_offsets(self) -> Metric:
        """Each reader's clock offset, as its driver estimates it (LLRP readers do)."""
        offset = GaugeMetricFamily(
            "fc_edge_reader_clock_offset_seconds",
            "Gateway clock minus the reader's clock (at the link's least delay), as estimated",
            labels=["reader"],
        )
        for name, driver in self.devices.drivers.items():
            clock = getattr(driver, "clock", None)
            if clock is not None and clock.offset_us is not None:
                offset.add_metric([name], clock.offset_us / 1e6)
        return offset


def device_metrics(name: str, h: DriverHealth) -> list[Metric]:
    state = GaugeMetricFamily(
        "fc_edge_device_state", "1 for the device's current state", labels=["device", "state"]
    )
    for candidate in DEVICE_STATES:
        state.add_metric([name, candidate], 1 if h.state == candidate else 0)
    out = [
        gauge(
            "device_up",
            "1 while the device is connected and delivering",
            1 if h.state == "up" else 0,
            {"device": name},
        ),
        state,
        counter(
            "device_reconnects_total",
            "Reconnects by cause",
            {(name, cause): n for cause, n in h.reconnects.items()},
            ["device", "cause"],
        ),
        counter(
            "device_errors_total",
            "Device errors by kind (bad frames, timeouts, garbled lines)",
            {(name, kind): n for kind, n in h.errors.items()},
            ["device", "kind"],
        ),
    ]
    if h.last_data_us:
        age_s = (now_us() - h.last_data_us) / 1e6
        out.append(
            gauge(
                "device_last_data_age_seconds",
                "Seconds since the device last delivered data",
                age_s,
                {"device": name},
            )
        )
    return out
