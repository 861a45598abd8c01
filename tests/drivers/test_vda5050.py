"""The VDA 5050 observer against a real mosquitto (the fleet broker) and the simulated fleet
(simulators/vda5050, in-process, its own MQTT clients): vehicle state becomes equipment events,
finished pick/drops become movements once each however often states repeat them and across a
restart, bad and out-of-order messages are counted per vehicle and kind, the will is
`unreachable`, and the observer publishes nothing. The config's errors name the key."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.options import VDA5050Options
from drivers.vda5050 import VDA5050Driver
from drivers.vda5050_messages import BOOKED_RING, BookedActions, HeaderOrder
from gateway.config import ConfigError, DeviceSettings, from_dict
from simulators.vda5050 import Fleet, SimulatedVehicle, Vehicle
from simulators.vda5050.vehicle import PACKS, RACKS
from tests.support.broker import Broker
from tests.support.helpers import RecordingSink, free_port

NODES = {n: n.upper() for n in RACKS + PACKS}
Move = tuple[str | None, str | None, str | None]  # (load, from, to)
TOPIC = "uagv/v2/fcsim"


def make_driver(broker: Broker, serial: str, sink: RecordingSink, **options: Any) -> VDA5050Driver:
    opts = VDA5050Options(
        broker=broker.url,
        manufacturer="fcsim",
        serial_number=serial,
        location=f"AMR-{serial}",
        nodes=options.pop("nodes", NODES),
        stale_after_s=options.pop("stale_after_s", 30.0),
        **options,
    )
    return VDA5050Driver(DeviceSettings(serial, "vda5050", {}, opts, "."), sink)


def make_fleet(broker: Broker, n: int, step_s: float = 0.05) -> Fleet:
    vehicles = [
        SimulatedVehicle(Vehicle(f"amr-{i}", "fcsim", i), f"{TOPIC}/amr-{i}", qos=1)
        for i in range(1, n + 1)
    ]
    return Fleet(broker.url, vehicles, step_s=step_s)


def events(sink: RecordingSink, kind: str) -> list[dict[str, Any]]:
    with sink.lock:
        return [e.data for e in sink.events if e.data["event"] == kind]


def moves(sink: RecordingSink) -> list[Move]:
    with sink.lock:
        return [(m.object_id or m.epc, m.from_, m.to) for m in sink.moves]


def expected_moves(fleet: Fleet, serial: str) -> list[Move]:
    """What the vehicle's finished pick/drops must become, in order."""
    (vehicle,) = [v.vehicle for v in fleet.vehicles if v.vehicle.serial == serial]
    here = f"AMR-{serial}"
    return [
        (f["load"], NODES[f["node"]], here)
        if f["action"] == "pick"
        else (f["load"], here, NODES[f["node"]])
        for f in vehicle.finished
    ]


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


class Spy:
    """Everything published on the fleet broker, as (topic, payload)."""

    def __init__(self, broker: Broker) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="spy")
        self.client.on_message = self._on_message
        assert broker.port is not None
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("#", qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.seen.append((msg.topic, bytes(msg.payload)))

    def publish(self, topic: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1).wait_for_publish(5)

    def topics(self) -> set[str]:
        with self.lock:
            return {t for t, _ in self.seen}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def running(driver: VDA5050Driver) -> asyncio.Task[None]:
    task = asyncio.create_task(driver.run())
    await until(lambda: driver.health().state == "up" or driver.messages > 0)
    return task


async def stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def with_fleet(broker: Broker, n: int, body: Callable[[Fleet], Awaitable[None]]) -> None:
    async def main() -> None:
        fleet = make_fleet(broker, n)
        fleet.hold = True  # no pick or drop before the body's drivers listen (released there)
        fleet.start()
        runner = asyncio.create_task(fleet.run())
        try:
            await body(fleet)
        finally:
            await stop(runner)
            fleet.stop()

    asyncio.run(main())


def test_state_and_pick_drop_become_events_and_one_move_each(broker: Broker) -> None:
    sink = RecordingSink()
    spy = Spy(broker)

    async def body(fleet: Fleet) -> None:
        driver = make_driver(broker, "amr-1", sink)
        task = await running(driver)
        fleet.hold = False
        vehicle = fleet.vehicles[0].vehicle
        await until(lambda: vehicle.orders_started >= 5)  # order 4 meets an obstacle
        fleet.hold = True  # the last state is repeated: its finished actions again and again
        await until(lambda: len(moves(sink)) == len(vehicle.finished))
        repeats = driver.messages
        await until(lambda: driver.messages >= repeats + 10)
        assert moves(sink) == expected_moves(fleet, "amr-1"), "each pick and drop once, in order"
        await stop(task)

    with_fleet(broker, 1, body)
    spy.close()
    (status, *_) = events(sink, "status")
    assert status["state"] == "up" and status["points"]["operating_mode"] == "AUTOMATIC"
    driving = [e for e in events(sink, "state") if e["point"] == "driving"]
    assert {e["value"] for e in driving} == {True, False}
    for before, after in zip(driving, driving[1:], strict=False):
        assert after["previous"] == before["value"]
    obstacle = [(e["alarm"], e["active"]) for e in events(sink, "alarm")]
    assert obstacle[:2] == [("obstacleDetected", True), ("obstacleDetected", False)]
    with sink.lock:
        epcs = [m for m in sink.moves if m.epc]
        totes = [m for m in sink.moves if m.object_id]
    assert epcs and all(m.object_id is None and len(m.epc or "") == 24 for m in epcs)
    assert totes and all(m.epc is None and (m.object_id or "").startswith("TOTE-") for m in totes)
    # An observer: every message on the fleet broker is the vehicle's own state or connection.
    assert spy.topics() == {f"{TOPIC}/amr-1/state", f"{TOPIC}/amr-1/connection"}
    assert sink.state_names()[0] == "up"


def test_bad_and_out_of_order_messages_are_counted_per_vehicle_and_kind(broker: Broker) -> None:
    sinks = {serial: RecordingSink() for serial in ("amr-1", "amr-2")}
    spy = Spy(broker)

    async def body(fleet: Fleet) -> None:
        drivers = {s: make_driver(broker, s, sink) for s, sink in sinks.items()}
        tasks = [await running(d) for d in drivers.values()]
        fleet.hold = False
        one = drivers["amr-1"]
        fleet.control({"fault": "missing_fields", "vehicle": "amr-1"})
        fleet.control({"fault": "out_of_order", "vehicle": "amr-1"})
        spy.publish(f"{TOPIC}/amr-1/state", b"{not json")
        other = fleet.vehicles[1].vehicle.state()  # a valid state naming another vehicle
        spy.publish(f"{TOPIC}/amr-1/state", other)
        spy.publish(f"{TOPIC}/amr-1/connection", {"connectionState": "ONLINE"})
        await until(lambda: sum(one.health().errors.values()) >= 5)
        seen = one.messages
        await until(lambda: one.messages > seen + 5)  # still serving
        fleet.hold = True
        for serial, driver in drivers.items():
            finished = fleet.vehicles[int(serial[-1]) - 1].vehicle.finished
            await until(lambda d=driver, f=finished: d.loads_booked == len(f))  # type: ignore[misc]
        await stop(*tasks)

    with_fleet(broker, 2, body)
    spy.close()
    errors = {s: dict(sink.states[-1][1].errors) for s, sink in sinks.items()}
    assert errors["amr-1"] == {"state_invalid": 3, "state_out_of_order": 1, "connection_invalid": 1}
    assert errors["amr-2"] == {}, "counted against the vehicle that sent them"
    for sink in sinks.values():
        assert len(moves(sink)) == len(set(moves(sink))), "an old state booked nothing twice"


def test_the_will_is_unreachable_and_online_recovers(broker: Broker) -> None:
    sink = RecordingSink()

    async def body(fleet: Fleet) -> None:
        driver = make_driver(broker, "amr-1", sink)
        task = await running(driver)
        fleet.hold = False
        await until(lambda: driver.health().state == "up")
        fleet.control({"fault": "connection_lost", "down_s": 1.0})
        await until(lambda: bool(events(sink, "unreachable")))
        await until(lambda: bool(events(sink, "recovered")))
        await stop(task)

    with_fleet(broker, 1, body)
    (down,) = events(sink, "unreachable")
    assert down["reason"] == "connection_broken" and down["previous"] == "up"
    (up,) = events(sink, "recovered")
    assert up["from"] == "unreachable"
    connection = [e["value"] for e in events(sink, "state") if e["point"] == "connection"]
    assert connection == ["CONNECTIONBROKEN", "ONLINE"]
    assert sink.state_names()[-3:] == ["unreachable", "up", "stopped"]


def test_a_fleet_broker_that_is_not_there_is_unreachable_until_the_vehicle_is_heard(
    tmp_path: Path,
) -> None:
    later = Broker(tmp_path / "fleet", free_port())
    sink = RecordingSink()
    vehicle = Vehicle("amr-4", "fcsim", 4)
    vehicle.advance()

    async def body() -> None:
        driver = make_driver(later, "amr-4", sink, reconnect_max_s=1.0)
        task = asyncio.create_task(driver.run())
        await until(lambda: bool(events(sink, "unreachable")))
        later.start()
        spy = Spy(later)
        try:
            await until(lambda: driver.sessions == 1)
            spy.publish(f"{TOPIC}/amr-4/state", state_message(vehicle, 1))
            await until(lambda: bool(events(sink, "recovered")))
        finally:
            spy.close()
            await stop(task)

    try:
        asyncio.run(body())
    finally:
        later.stop()
    (down,) = events(sink, "unreachable")
    assert down["reason"] == "refused" and later.url in down["detail"]
    assert sink.states[-1][1].errors["refused"] >= 1


def test_a_restart_books_what_came_while_down_and_nothing_twice(broker: Broker) -> None:
    first = RecordingSink()
    sinks = [first]

    async def body(fleet: Fleet) -> None:
        vehicle = fleet.vehicles[0].vehicle
        driver = make_driver(broker, "amr-1", first)
        task = await running(driver)
        fleet.hold = False
        await until(lambda: len(moves(first)) >= 3)
        await stop(task)  # the session stays on the broker, which queues what comes meanwhile
        done_while_down = len(vehicle.finished)
        await until(lambda: len(vehicle.finished) >= done_while_down + 4)
        fleet.hold = True
        second = RecordingSink(first.cursors)  # the outbox's cursors, as the next run reads them
        sinks.append(second)
        task = await running(make_driver(broker, "amr-1", second))
        await until(lambda: len(moves(first)) + len(moves(second)) >= len(vehicle.finished))
        await asyncio.sleep(0.5)  # repeated states book nothing more
        await stop(task)

    with_fleet(broker, 1, body)
    first, second = sinks
    assert moves(first) and moves(second)
    assert moves(first) + moves(second) == expected_moves_of(first, second)


def expected_moves_of(*sinks: RecordingSink) -> list[Move]:
    """The moves in booking order, each once: a duplicate or a gap shows against this."""
    seen: list[Move] = []
    for sink in sinks:
        for move in moves(sink):
            assert move not in seen, f"booked twice: {move}"
            seen.append(move)
    return seen


def state_message(vehicle: Vehicle, header_id: int, **changes: Any) -> dict[str, Any]:
    message = vehicle.state()
    message.update(headerId=header_id, **changes)
    return message


def test_header_ids_start_again_after_the_vehicle_reconnects(broker: Broker) -> None:
    sink = RecordingSink()
    spy = Spy(broker)
    vehicle = Vehicle("amr-9", "fcsim", 9)
    vehicle.advance()

    async def body(driver: VDA5050Driver) -> None:
        topic = f"{TOPIC}/amr-9"
        for header_id in (10, 11):
            spy.publish(f"{topic}/state", state_message(vehicle, header_id))
        spy.publish(f"{topic}/state", state_message(vehicle, 3))  # out of order
        spy.publish(f"{topic}/connection", vehicle.connection("ONLINE"))  # a reboot
        spy.publish(f"{topic}/state", state_message(vehicle, 1, driving=False))
        await until(lambda: driver.messages >= 5)

    run_hand_driven(broker, "amr-9", sink, body)
    spy.close()
    assert dict(sink.states[-1][1].errors) == {"state_out_of_order": 1}
    driving = [e["value"] for e in events(sink, "state") if e["point"] == "driving"]
    assert driving == [False], "headerId 1 after the reconnect was applied"


def publish_steps(spy: Spy, vehicle: Vehicle, steps: int, header_id: int) -> int:
    """Advance the vehicle `steps` steps, publishing each state; the next headerId."""
    for _ in range(steps):
        vehicle.advance()
        spy.publish(f"{TOPIC}/{vehicle.serial}/state", state_message(vehicle, header_id))
        header_id += 1
    return header_id


def run_hand_driven(
    broker: Broker,
    serial: str,
    sink: RecordingSink,
    body: Callable[[VDA5050Driver], Awaitable[None]],
    **kw: Any,
) -> None:
    """A driver subscribed to `serial`'s topics while `body` publishes to them by hand."""

    async def main() -> None:
        driver = make_driver(broker, serial, sink, **kw)
        task = asyncio.create_task(driver.run())
        await until(lambda: driver.sessions == 1)  # subscribed: what follows reaches it
        await body(driver)
        await stop(task)

    asyncio.run(main())


def test_a_load_action_that_cannot_be_booked_is_refused_once(broker: Broker) -> None:
    sink = RecordingSink()
    spy = Spy(broker)
    vehicle = Vehicle("amr-8", "fcsim", 8)

    async def body(driver: VDA5050Driver) -> None:
        header_id = publish_steps(spy, vehicle, 2, 1)  # driving to a rack, picking
        header_id = publish_steps(spy, vehicle, 1, header_id)  # the pick finished
        for _ in range(2):  # the same finished pick in the next states
            spy.publish(f"{TOPIC}/amr-8/state", state_message(vehicle, header_id))
            header_id += 1
        await until(lambda: driver.messages >= 5)

    run_hand_driven(broker, "amr-8", sink, body, nodes={"pack-01": "PACK-01"})
    spy.close()
    assert moves(sink) == []
    (refused,) = events(sink, "move_refused")
    assert refused["action_id"] == "order-amr-8-1-pick"
    assert refused["reason"] == f"node {vehicle.last_node!r} has no location in nodes"
    assert dict(sink.states[-1][1].errors) == {"bad_load_action": 1}


def test_what_finished_before_the_first_session_is_refused_not_guessed(broker: Broker) -> None:
    sink = RecordingSink()
    spy = Spy(broker)
    vehicle = Vehicle("amr-6", "fcsim", 6)
    for _ in range(4):
        vehicle.advance()  # picked, and on its way to the drop: lastNodeId is no longer news

    async def body(driver: VDA5050Driver) -> None:
        spy.publish(f"{TOPIC}/amr-6/state", state_message(vehicle, 1))
        publish_steps(spy, vehicle, 2, 2)  # at the drop, dropped
        await until(lambda: driver.messages >= 3)

    run_hand_driven(broker, "amr-6", sink, body)
    spy.close()
    (drop,) = vehicle.finished[1:]
    assert moves(sink) == [(drop["load"], "AMR-amr-6", NODES[drop["node"]])]
    (refused,) = events(sink, "move_refused")
    assert refused["action_id"] == "order-amr-6-1-pick"
    assert dict(sink.states[-1][1].errors) == {"unseen_load_action": 1}


def test_a_vehicle_that_stops_sending_states_is_stale_once(broker: Broker) -> None:
    sink = RecordingSink()
    spy = Spy(broker)
    vehicle = Vehicle("amr-5", "fcsim", 5)

    async def body(driver: VDA5050Driver) -> None:
        header_id = publish_steps(spy, vehicle, 1, 1)
        await until(lambda: bool(events(sink, "stale")))
        await asyncio.sleep(1.5)  # still silent: no second stale
        publish_steps(spy, vehicle, 1, header_id)
        await until(lambda: bool(events(sink, "recovered")))

    run_hand_driven(broker, "amr-5", sink, body, stale_after_s=1.0)
    spy.close()
    (stale,) = events(sink, "stale")
    assert stale["point"] == "state" and stale["unchanged_s"] >= 1.0
    (recovered,) = events(sink, "recovered")
    assert recovered["from"] == "stale"
    assert sink.state_names()[-3:] == ["stale", "up", "stopped"]


def test_a_message_that_comes_with_the_stop_does_not_keep_the_driver_running(
    broker: Broker,
) -> None:
    """Python 3.11's asyncio.wait_for returns the item and forgets the cancel when the item
    and the cancel come in the same turn of the loop: the driver then served on past the
    daemon's stop, which waited for it until its shutdown timeout (exit 70 in the VDA 5050
    kill -9 test, while the vehicles repeated their states). Here both come in one callback,
    which calls the race up every time (the queue item stands for any message or tick)."""
    sink = RecordingSink()

    async def main() -> bool:
        driver = make_driver(broker, "amr-8", sink)
        task = asyncio.create_task(driver.run())
        await until(lambda: driver.sessions == 1)
        await asyncio.sleep(0.1)  # the driver waits on its queue

        def message_and_stop() -> None:
            driver._queue.put_nowait(None)
            task.cancel()

        asyncio.get_running_loop().call_soon(message_and_stop)
        done, _ = await asyncio.wait([task], timeout=5)
        if not done:  # a second cancel ends it, so that a failure does not hang the test
            task.cancel()
            await asyncio.wait([task], timeout=5)
        return bool(done)

    assert asyncio.run(main()), "the driver ran on past its stop"
    assert sink.state_names()[-1] == "stopped"


def test_a_move_not_made_durable_is_booked_from_the_redelivered_message(broker: Broker) -> None:
    sink = RecordingSink()
    sink.hold_movements = True
    spy = Spy(broker)
    vehicle = Vehicle("amr-7", "fcsim", 7)

    async def body(driver: VDA5050Driver) -> None:
        publish_steps(spy, vehicle, 3, 1)  # to the rack, picking, picked
        await until(lambda: len(sink.pending) == 1)
        sink.hold_movements = False
        sink.pending[0].set_exception(OSError("disk full"))
        # not acked: the broker sends the message again to the next session
        await until(lambda: driver.loads_booked == 1, timeout=30)

    run_hand_driven(broker, "amr-7", sink, body, reconnect_max_s=1.0)
    spy.close()
    assert [m[0] for m in moves(sink)] == [vehicle.finished[0]["load"]] * 2
    assert sink.cursors["vda5050:amr-7:booked:n"] == 1
    assert sink.states[-1][1].errors["move_not_durable"] == 1


def test_the_booked_ring_forgets_only_the_oldest() -> None:
    cursors: dict[str, int] = {}
    ring = BookedActions("b", cursors.get)
    for key in range(BOOKED_RING + 3):
        cursors.update(ring.cursors_for(key, "h", key))
        ring.booked(key)
    assert 0 not in ring and 2 not in ring and 3 in ring and BOOKED_RING + 2 in ring
    reloaded = BookedActions("b", cursors.get)
    assert reloaded.keys == ring.keys and reloaded.count == BOOKED_RING + 3
    order = HeaderOrder(5)
    assert not order.accept(5) and order.accept(6)
    order.reconnected()
    assert order.accept(0) and not order.accept(0)


def config(entry: dict[str, Any]) -> dict[str, Any]:
    base = {
        "name": "amr-1",
        "driver": "vda5050",
        "broker": "mqtt://10.0.0.5:1883",
        "manufacturer": "acme",
        "serial_number": "amr-1",
        "location": "AMR-1",
        "nodes": {"rack-01": "RACK-01"},
    }
    return {
        "gateway": {"site": "fc1", "id": "gw1", "state_dir": "/tmp/fc-edge-test"},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "locations": {"AMR-1": {}, "RACK-01": {}},
        "equipment": [{**base, **entry}],
    }


def config_error(entry: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(config(entry))
    return str(info.value)


def test_the_config_validates_the_vda5050_keys_naming_each(tmp_path: Path) -> None:
    (device,) = from_dict(config({})).equipment
    assert isinstance(device.options, VDA5050Options) and device.options.interface_name == "uagv"
    assert "equipment[0].broker: expected mqtt://HOST[:PORT]" in config_error({"broker": "x"})
    assert "equipment[0].nodes: unknown location 'NOPE'" in config_error({"nodes": {"n": "NOPE"}})
    assert "equipment[0].location: unknown location 'AMR-X'" in config_error({"location": "AMR-X"})
    assert "equipment[0].serial_number: must be a non-empty MQTT topic level" in config_error(
        {"serial_number": "a/b"}
    )
    assert "equipment[0].password_file: required with username" in config_error({"username": "u"})
    missing = tmp_path / "nope"
    text = config_error({"username": "u", "password_file": str(missing)})
    assert f"equipment[0].password_file: {missing}: no such readable file" in text
    entry = config({})["equipment"][0]
    del entry["manufacturer"]
    with pytest.raises(ConfigError, match=r"equipment\[0\]\.manufacturer"):
        from_dict({**config({}), "equipment": [entry]})


def test_the_demo_s_amrs_are_valid_entries_whose_nodes_are_the_simulator_s() -> None:
    from gateway import demo

    raw = config({})
    raw["equipment"] = demo.amr_entries(raw["locations"], "mqtt://127.0.0.1:1884", ["amr-1"])
    (device,) = from_dict(raw).equipment
    assert device.driver == "vda5050" and device.options.location == "AMR-AMR-1"
    assert set(device.options.nodes) == set(RACKS + PACKS), "every node the AMRs visit"
