"""The daemon's owners (gateway.daemon, ingest, health, outbox_thread), without a broker:

- the sink hands the ingest loop typed items, one per call a driver made;
- ingest commits what they carry (a device's own movement is durable before its future
  resolves, with its cursor);
- under the daemon's TaskGroup a crashing driver is restarted and ends nothing, while a loop
  that fails ends the daemon with that loop's error (not an ExceptionGroup);
- device state has one owner: /readyz, the status line and the retained devices/{name} status
  say the same after a state change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceEvent, Driver, DriverHealth
from gateway import config, daemon
from gateway.daemon import Gateway
from gateway.engine import Engine, EngineConfig
from gateway.health import Devices, Health
from gateway.ingest import (
    EventItem,
    GatewaySink,
    Ingest,
    MovementItem,
    ProgressItem,
    ReadsItem,
    SourceDownItem,
    SourceRetiredItem,
)
from gateway.metrics import Metrics
from gateway.model import Movement, TagRead, now_us
from gateway.outbox import OutboxError
from gateway.outbox_thread import OutboxThread

EPC = "3074257BF7194E4000001A85"


def write_config(tmp_path: Path) -> Path:
    """One replay reader with nothing to replay; a broker nobody listens at (the publisher
    retries in the background: nothing here needs MQTT)."""
    (tmp_path / "empty.jsonl").write_text("")
    path = tmp_path / "gw.toml"
    path.write_text(
        f"""
[gateway]
site = "S1"
id = "gw-1"
state_dir = "{tmp_path / "state"}"
shutdown_timeout_s = 1

[mqtt]
url = "mqtt://127.0.0.1:9"

[metrics]
enabled = false

[locations.YARD]
offsite = true

[locations.DOCK]

[[readers]]
name = "dock-01"
driver = "replay"
file = "empty.jsonl"

[readers.antennas]
1 = {{ location = "DOCK" }}
"""
    )
    return path


# --- typed items --------------------------------------------------------------------------------


def test_each_sink_call_becomes_one_typed_item_and_states_go_to_their_owner() -> None:
    states: list[tuple[str, str]] = []
    sink = GatewaySink({"replay:dock-01": 7}, lambda device, h: states.append((device, h.state)))
    read = TagRead(EPC, "dock-01", 1, -50.0, now_us())
    event = DeviceEvent("plc-1", "equipment", {"event": "n"}, now_us())
    move = Movement("moved", EPC, "YARD", "DOCK", now_us(), "robot-1")

    sink.reads([read], {"replay:dock-01": 8})
    sink.reads([])  # nothing and no cursor: no item
    sink.event(event)
    future = sink.movement(move)
    sink.progress("dock-01", 42)
    sink.device_state("dock-01", DriverHealth(state="stale"))
    sink.device_state("dock-01", DriverHealth(state="up"))  # no engine business: no item
    sink.device_state("dock-01", DriverHealth(state="stopped"))

    assert sink.take() == [
        ReadsItem([read], {"replay:dock-01": 8}),
        EventItem(event),
        MovementItem(move, None, future),
        ProgressItem("dock-01", 42),
        SourceDownItem("dock-01"),
        SourceRetiredItem("dock-01"),
    ]
    assert states == [("dock-01", "stale"), ("dock-01", "up"), ("dock-01", "stopped")]
    assert sink.rows == 0 and sink.cursor("replay:dock-01") == 7


def test_a_devices_own_movement_is_durable_with_its_cursor_before_its_future_resolves(
    tmp_path: Path,
) -> None:
    settings = config.load(write_config(tmp_path))

    async def main() -> tuple[Future[None], dict[str, int], int]:
        store = OutboxThread()
        await store.open(tmp_path / "outbox.db", settings.outbox)
        engine = Engine.restore([], EngineConfig.from_settings(settings))
        sink = GatewaySink({}, lambda device, h: None)
        ingest = Ingest(settings, engine, sink, store, Metrics())
        move = Movement("moved", EPC, "YARD", "DOCK", now_us(), "robot-1")
        future = sink.movement(move, {"robot:seq": 5})
        assert not future.done()
        await ingest.flush()
        cursors = await store.call(store.outbox.cursors)
        depth = store.outbox.stats().depth
        await store.close()
        return future, cursors, depth

    future, cursors, depth = asyncio.run(main())
    assert future.done() and future.exception() is None
    assert cursors == {"robot:seq": 5} and depth == 1


# --- the TaskGroup --------------------------------------------------------------------------------


class CrashingDriver(Driver):
    """Driver code with a bug: run() raises at once, every time."""

    crashes = 0

    async def run(self) -> None:
        CrashingDriver.crashes += 1
        raise RuntimeError("a bug in the driver")


async def run_until(
    gateway: Gateway, done: Callable[[], bool], then: Callable[[], Awaitable[None]] | None = None
) -> asyncio.Task[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    for _ in range(400):
        if done() or task.done():
            break
        await asyncio.sleep(0.02)
    if then is not None:
        await then()
    stop.set()
    await asyncio.wait([task], timeout=20)
    return task


def test_a_crashing_driver_is_restarted_and_does_not_end_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon, "driver_class", lambda name: CrashingDriver)
    monkeypatch.setattr(daemon, "DRIVER_RESTART_DELAY_S", 0.02)
    CrashingDriver.crashes = 0
    gateway = Gateway(config.load(write_config(tmp_path)))
    alive: dict[str, bool] = {}

    async def look() -> None:
        alive.update({t.get_name(): not t.done() for t in asyncio.all_tasks()})

    task = asyncio.run(run_until(gateway, lambda: CrashingDriver.crashes >= 3, look))
    assert CrashingDriver.crashes >= 3  # restarted, again and again
    assert alive["driver:dock-01"] and alive["ingest"] and alive["publish"]
    assert task.done() and task.exception() is None  # then a clean stop
    assert gateway.devices.drivers["dock-01"].health().errors["driver_crash"] >= 3


def test_a_failing_loop_ends_the_daemon_with_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = Gateway(config.load(write_config(tmp_path)))

    async def refuse(*args: Any) -> None:
        raise OutboxError("disk full")

    monkeypatch.setattr(gateway.store, "commit", refuse)  # the disk fills at the first commit

    def hand_over_an_event() -> bool:
        if gateway.ingest is not None:
            gateway.ingest.sink.event(DeviceEvent("plc-1", "equipment", {"n": 1}, now_us()))
        return False

    task = asyncio.run(run_until(gateway, hand_over_an_event))
    assert isinstance(task.exception(), OutboxError)  # what run_gateway maps to exit 74


# --- device state has one owner -------------------------------------------------------------------


class QuietDriver(Driver):
    async def run(self) -> None:
        await asyncio.Event().wait()


def test_readyz_the_status_line_and_the_retained_status_agree_after_a_state_change(
    tmp_path: Path,
) -> None:
    settings = config.load(write_config(tmp_path))
    devices = Devices(settings.devices)
    retained: dict[str, dict[str, Any]] = {}
    devices.publish_retained = lambda subtopic, body: retained.__setitem__(subtopic, body)
    sink = GatewaySink({}, devices.state_changed)
    driver = QuietDriver(settings.devices[0], sink)
    devices.add(driver)
    health = Health(devices, OutboxThread())
    assert retained["devices/dock-01"]["state"] == "connecting"

    driver.set_state("up")
    _, ready = health.ready()
    assert ready["devices"]["dock-01"]["state"] == retained["devices/dock-01"]["state"] == "up"
    assert health.status_line().startswith("1/1 devices up")

    driver.set_state("stale", "no KEEPALIVE")
    _, ready = health.ready()
    body = retained["devices/dock-01"]
    assert body["schema"] == "fc-edge/device/1" and body["driver"] == "replay"
    assert ready["devices"]["dock-01"] == {k: body[k] for k in ready["devices"]["dock-01"]}
    assert body["state"] == "stale" and body["detail"] == "no KEEPALIVE"
    assert health.status_line().startswith("0/1 devices up")
