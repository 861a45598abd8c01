"""The real OPC UA driver against a real asyncua server in the same process (the PackML
simulator, simulators/opcua, or a small server of the test's own for values a PackML machine
never sends): change events from monitored items, a silently stalled subscription detected
and bridged by polling, staleness and reachability once each way with a new session after a
restart, bad statuses and bad values counted; the point map's and the config's errors name
the key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua

from drivers.opcua import OPCUADriver
from drivers.opcua_map import MapError, map_from_dict
from drivers.options import OPCUAOptions
from gateway.config import ConfigError, DeviceSettings, from_dict
from simulators.opcua import DeviceServer, PackMLTimeline, RobotCell, SimulatedDevice
from tests.support.helpers import RecordingSink

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "drivers" / "maps" / "opcua"
PACKML_MAP = MAPS / "packml.toml"


def make_driver(
    url: str, map_path: Path = PACKML_MAP, sink: RecordingSink | None = None, **options: Any
) -> OPCUADriver:
    defaults: dict[str, Any] = {"interval_s": 0.2, "stale_after_s": 2.0}
    opts = OPCUAOptions(url=url, map=str(map_path), **{**defaults, **options})
    device = DeviceSettings("packer-1", "opcua", {}, opts, str(ROOT))
    return OPCUADriver(device, sink or RecordingSink())


def events(driver: OPCUADriver, kind: str) -> list[dict[str, Any]]:
    sink = driver.sink
    assert isinstance(sink, RecordingSink)
    with sink.lock:
        return [e.data for e in sink.events if e.data["event"] == kind]


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def run_with(
    device: SimulatedDevice,
    body: Callable[[DeviceServer, OPCUADriver], Awaitable[None]],
    **kw: Any,
) -> OPCUADriver:
    """Serve `device`, run a driver against it (`kw`: make_driver's) and `body`; the driver
    as it ended."""

    async def main() -> OPCUADriver:
        server = DeviceServer(device)
        _, port = await server.start()
        driver = make_driver(f"opc.tcp://127.0.0.1:{port}", **kw)
        task = asyncio.create_task(driver.run())
        try:
            await body(server, driver)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop()
        return driver

    return asyncio.run(main())


def test_states_counters_and_a_jam_become_equipment_events() -> None:
    async def body(server: DeviceServer, driver: OPCUADriver) -> None:
        await until(lambda: len({e["value"] for e in events(driver, "state")}) >= 3)
        await until(lambda: bool(events(driver, "counter")))
        server.control({"fault": "abort"})
        await until(lambda: any(e["alarm"] == "MaterialJam" for e in events(driver, "alarm")))
        await until(lambda: any(e["value"] == "Jam" for e in events(driver, "state")))

    driver = run_with(PackMLTimeline(step_s=0.2, heartbeat_s=0.2), body)
    (status, *_) = events(driver, "status")
    assert status["state"] == "up" and status["points"]["state"] == "Stopped"
    states = [e for e in events(driver, "state") if e["point"] == "state"]
    assert states[0] == {
        "event": "state",
        "point": "state",
        "value": "Resetting",
        "previous": "Stopped",
        "code": 15,
    }
    for before, after in zip(states, states[1:], strict=False):
        assert after["previous"] == before["value"], "no state change missed or repeated"
    counters = events(driver, "counter")
    assert counters and all(c["delta"] > 0 and c["unit"] == "pcs" for c in counters)
    jam = [e for e in events(driver, "alarm") if e["alarm"] == "MaterialJam"]
    assert jam[0]["active"] is True
    assert driver.notifications > 0
    assert driver.health().errors == {}


def test_a_silently_stalled_subscription_is_counted_and_bridged_by_polling() -> None:
    async def body(server: DeviceServer, driver: OPCUADriver) -> None:
        await until(lambda: driver.notifications > 5)
        server.control({"fault": "stall"})
        stalled_at = len(events(driver, "state"))
        await until(lambda: driver.health().errors["subscription_stalled"] >= 1)
        # while it stalls, the state changes still arrive: by reads every interval_s
        await until(lambda: len(events(driver, "state")) >= stalled_at + 2)
        assert not events(driver, "stale"), "a stalled subscription is no stale machine"
        server.control({"fault": "none"})
        notified = driver.notifications
        await until(lambda: driver.notifications > notified + 3)

    driver = run_with(PackMLTimeline(step_s=0.2, heartbeat_s=0.2), body, subscription_timeout_s=1.0)
    assert driver.polls >= 3  # the first read at connect, then the fallback
    assert driver.sessions == 1, "a stall is bridged within the session"
    states = [e for e in events(driver, "state") if e["point"] == "state"]
    for before, after in zip(states, states[1:], strict=False):
        assert after["previous"] == before["value"]


def test_a_frozen_heartbeat_is_stale_once_then_recovered() -> None:
    async def body(server: DeviceServer, driver: OPCUADriver) -> None:
        await until(lambda: driver.notifications > 3)
        server.control({"fault": "freeze"})
        await until(lambda: driver.health().state == "stale")
        await asyncio.sleep(1.0)  # stays stale: no second event
        server.control({"fault": "none"})
        await until(lambda: bool(events(driver, "recovered")))

    driver = run_with(PackMLTimeline(step_s=0.3, heartbeat_s=0.2), body, stale_after_s=1.0)
    (stale,) = events(driver, "stale")
    assert stale["point"] == "heartbeat" and stale["unchanged_s"] >= 1.0
    (recovered,) = events(driver, "recovered")
    assert recovered["from"] == "stale"
    assert driver.health().errors["subscription_stalled"] == 0, "frozen is not stalled"


def test_a_server_restart_is_unreachable_once_then_recovered_in_a_new_session() -> None:
    async def main() -> OPCUADriver:
        server = DeviceServer(PackMLTimeline(step_s=0.3, heartbeat_s=0.2))
        _, port = await server.start()
        driver = make_driver(f"opc.tcp://127.0.0.1:{port}", reconnect_max_s=0.5)
        task = asyncio.create_task(driver.run())
        await until(lambda: driver.notifications > 3)
        await server.stop()
        await until(lambda: driver.health().state == "unreachable")
        await asyncio.sleep(1.5)  # several failed attempts: still one event
        server = DeviceServer(PackMLTimeline(step_s=0.3, heartbeat_s=0.2), port=port)
        await server.start()
        await until(lambda: bool(events(driver, "recovered")))
        seen = driver.notifications
        await until(lambda: driver.notifications > seen + 3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        return driver

    driver = asyncio.run(main())
    (down,) = events(driver, "unreachable")
    assert down["previous"] == "up" and down["reason"] in ("disconnected", "timeout")
    (recovered,) = events(driver, "recovered")
    assert recovered["from"] == "unreachable" and recovered["down_s"] >= 1.5
    assert driver.sessions == 2, "a new session after the restart"
    assert driver.health().reconnects["unreachable"] >= 2
    assert driver.health().errors["refused"] >= 1


def test_a_bad_status_is_counted_and_the_rest_goes_on() -> None:
    async def body(server: DeviceServer, driver: OPCUADriver) -> None:
        await until(lambda: driver.notifications > 3)
        server.control({"fault": "bad_status"})
        await until(lambda: driver.health().errors["bad_status"] >= 1)
        beats = driver.notifications
        await until(lambda: driver.notifications > beats + 3)  # the heartbeat still comes
        server.control({"fault": "none"})
        await until(lambda: len(events(driver, "state")) >= 2)

    driver = run_with(PackMLTimeline(step_s=0.3, heartbeat_s=0.2), body)
    assert driver.health().state != "unreachable"
    assert driver.sessions == 1


# --- values a PackML machine never sends: the test's own server ---------------------------------

ODD_MAP = """
[points.state]
node = "ns=2;s=Odd.State"
enum = { 1 = "Run" }

[points.code]
node = "ns=2;s=Odd.Code"
enum = { 1 = "Run" }

[points.count]
node = "ns=2;s=Odd.Count"
role = "counter"

[points.speed]
node = "ns=2;s=Odd.Speed"
"""


def test_values_of_the_wrong_kind_are_counted_never_a_crash(tmp_path: Path) -> None:
    map_path = tmp_path / "odd.toml"
    map_path.write_text(ODD_MAP)

    async def main() -> OPCUADriver:
        server = Server()
        await server.init()
        server.set_endpoint("opc.tcp://127.0.0.1:0/")
        idx = await server.register_namespace("urn:test:odd")
        obj = await server.nodes.objects.add_object(ua.NodeId("Odd", idx), "Odd")

        async def variable(name: str, value: Any) -> Any:
            return await obj.add_variable(ua.NodeId(f"Odd.{name}", idx), name, value)

        await variable("State", "garbage")  # text where the map expects an enum code
        await variable("Code", 7)  # an integer the enum has no name for
        count = await variable("Count", -5)  # a counter below zero
        speed = await variable("Speed", float("nan"))
        await server.start()
        assert server.bserver is not None
        driver = make_driver(f"opc.tcp://127.0.0.1:{server.bserver.port}", map_path)
        task = asyncio.create_task(driver.run())
        await until(lambda: driver.health().errors["bad_value"] >= 3)
        assert driver.health().errors["unknown_enum"] >= 1
        await count.write_value(-4)
        await until(lambda: driver.health().errors["bad_value"] >= 4)
        await count.write_value(3)
        await speed.write_value(1.5)
        await until(lambda: driver._values.get("speed") == 1.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        return driver

    driver = asyncio.run(main())
    assert driver.health().reconnects == {}, "bad values never end the session"
    assert driver._values["code"] == "unknown(7)"
    assert driver._values["count"] == 3
    assert "state" not in driver._values
    (status,) = events(driver, "status")
    assert status["points"]["code"] == "unknown(7)"


@pytest.mark.parametrize("device", [PackMLTimeline, RobotCell])
def test_the_simulator_serves_every_node_the_shipped_map_names(device: type[Any]) -> None:
    from drivers.opcua_map import load_map

    shipped = load_map(MAPS / f"{device.kind}.toml")
    served = {f"ns=2;s={device.object_name}.{n}" for n in device.NODES}
    assert {p.node for p in shipped.points.values()} == served


# --- the map's and the config's errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ({"x": {"node": "Packer.State"}}, "m.toml: points.x.node: not an OPC UA node id"),
        ({"x": {"node": "ns=2;s=A", "role": "counter", "enum": {1: "a"}}}, "points.x.enum:"),
        ({"x": {"node": "ns=2;s=A", "role": "state", "bits": {0: "a"}}}, "points.x.bits:"),
        ({"x": {"node": "ns=2;s=A", "bits": {64: "a"}}}, "points.x.bits.64:"),
        ({"x": {"node": "ns=2;s=A", "role": "state", "scale": 2.0}}, "points.x.scale:"),
        ({"x": {"node": "ns=2;s=A"}, "y": {"node": "ns=2;s=A"}}, "points.y.node: same node"),
        ({"x": {"node": "ns=2;s=A", "address": 3}}, "points.x.address"),
        ({"x": {"node": "ns=2;s=A", "role": "gauge"}}, "points.x.role"),
        ({"x": {"node": 5}}, "points.x.node"),
    ],
)
def test_map_errors_name_the_key(points: dict[str, Any], expected: str) -> None:
    with pytest.raises(MapError) as info:
        map_from_dict({"points": points}, "m.toml")
    assert expected in str(info.value)


def test_an_unknown_heartbeat_point_is_named() -> None:
    with pytest.raises(MapError, match=r"m.toml: heartbeat.point: unknown point 'beat'"):
        map_from_dict(
            {"points": {"x": {"node": "i=2258"}}, "heartbeat": {"point": "beat"}}, "m.toml"
        )


def config(entry: dict[str, Any]) -> dict[str, Any]:
    base = {"name": "packer-1", "driver": "opcua", "map": str(PACKML_MAP)}
    return {
        "gateway": {"site": "fc1", "id": "gw1", "state_dir": "/tmp/fc-edge-test"},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "locations": {"PACK": {}},
        "equipment": [{**base, **entry}],
    }


def config_error(entry: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(config(entry))
    return str(info.value)


def test_the_config_validates_the_opcua_keys_naming_each(tmp_path: Path) -> None:
    (device,) = from_dict(config({"url": "opc.tcp://10.0.0.9:4840"})).equipment
    assert isinstance(device.options, OPCUAOptions) and device.options.security == "None"
    assert "equipment[0].url: expected opc.tcp://host:port" in config_error({"url": "http://x"})
    text = config_error({"url": "opc.tcp://h:4840", "security": "Basic256Sha256,Sign"})
    assert "equipment[0].certificate_file: required with security" in text
    text = config_error({"url": "opc.tcp://h:4840", "security": "Basic128Rsa15"})
    assert "equipment[0].security:" in text
    text = config_error({"url": "opc.tcp://h:4840", "username": "op"})
    assert "equipment[0].password_file: required with username" in text
    missing = tmp_path / "nope.txt"
    text = config_error(
        {"url": "opc.tcp://h:4840", "username": "op", "password_file": str(missing)}
    )
    assert f"equipment[0].password_file: {missing}: no such readable file" in text
    bad_map = tmp_path / "bad.toml"
    bad_map.write_text('[points.s]\nnode = "nonsense"\n')
    text = config_error({"url": "opc.tcp://h:4840", "map": str(bad_map)})
    assert "equipment[0].map: bad.toml: points.s.node: not an OPC UA node id" in text
    assert "equipment[0].subscription_timeout_s" in config_error(
        {"url": "opc.tcp://h:4840", "subscription_timeout_s": 0}
    )


# --- security and users -------------------------------------------------------------------------


class OneUser:
    """asyncua's user manager interface: one user name and password, nobody else."""

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        if username == "op" and password == "s3cret":  # noqa: S105 (a test server's user)
            return User(role=UserRole.User, name=username)
        return None


async def make_cert(tmp_path: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key, cert = tmp_path / f"{name}-key.pem", tmp_path / f"{name}.der"
    use = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    await setup_self_signed_certificate(key, cert, uri, "localhost", [use], {"commonName": name})
    return cert, key


@pytest.mark.parametrize(("password", "works"), [("s3cret", True), ("wrong", False)])
def test_basic256sha256_sign_and_encrypt_with_a_user(
    tmp_path: Path, password: str, works: bool
) -> None:
    (tmp_path / "password").write_text(password + "\n")
    used: list[tuple[str, Any]] = []

    async def main() -> OPCUADriver:
        server = Server(user_manager=OneUser())  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint("opc.tcp://127.0.0.1:0/")
        cert, key = await make_cert(tmp_path, "server", "urn:test:server", server=True)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        idx = await server.register_namespace("urn:test:secure")
        obj = await server.nodes.objects.add_object(ua.NodeId("S", idx), "S")
        beat = await obj.add_variable(
            ua.NodeId("S.Beat", idx), "Beat", ua.Variant(0, ua.VariantType.UInt32)
        )
        await server.start()
        assert server.bserver is not None
        client_cert, client_key = await make_cert(
            tmp_path, "client", "urn:test:fc-edge", server=False
        )
        map_path = tmp_path / "s.toml"
        map_path.write_text('[points.beat]\nnode = "ns=2;s=S.Beat"\n[heartbeat]\npoint = "beat"\n')
        driver = make_driver(
            f"opc.tcp://127.0.0.1:{server.bserver.port}",
            map_path,
            security="Basic256Sha256,SignAndEncrypt",
            certificate_file=str(client_cert),
            private_key_file=str(client_key),
            username="op",
            password_file=str(tmp_path / "password"),
        )
        task = asyncio.create_task(driver.run())
        if works:
            for n in range(1, 6):
                await beat.write_value(ua.Variant(n, ua.VariantType.UInt32))
                await asyncio.sleep(0.3)
            await until(lambda: driver.notifications >= 5)
            policy = driver._client.security_policy  # the session's own, as negotiated
            used.append((policy.URI.rsplit("#", 1)[-1], policy.Mode))
        else:
            await until(lambda: driver.health().errors["rejected"] >= 1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        return driver

    driver = asyncio.run(main())
    if works:
        assert driver.sessions == 1 and driver.health().errors == {}
        assert used == [("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt)]
    else:
        assert driver.sessions == 0
        (down,) = events(driver, "unreachable")
        assert down["reason"] == "rejected"


# --- the robot move handshake -------------------------------------------------------------------

STATIONS = {"1": "DOCK-01", "2": "PICK-A", "3": "PICK-B", "4": "PACK"}
CURSOR = "opcua:packer-1:ack_seq"


def run_robot(
    robot: RobotCell, sink: RecordingSink, body: Callable[[OPCUADriver], Awaitable[None]]
) -> OPCUADriver:
    async def robot_body(server: DeviceServer, driver: OPCUADriver) -> None:
        await body(driver)

    robot_map = MAPS / "robot.toml"
    return run_with(robot, robot_body, map_path=robot_map, sink=sink, stations=dict(STATIONS))


def key(move: Any) -> str:
    return str(move.object_id or move.epc)


def seq_of(move: Any) -> int:
    """The simulated robot's seq: TOTE-{seq:06d} on odd seqs, an EPC ending in it on even."""
    return int(move.object_id[5:]) if move.object_id else int(move.epc[-5:], 16)


def test_robot_moves_are_acked_only_once_durable_and_booked_once() -> None:
    robot = RobotCell(move_every_s=0.1, heartbeat_s=0.2)
    sink = RecordingSink()
    sink.hold_movements = True

    async def body(driver: OPCUADriver) -> None:
        await until(lambda: len(sink.pending) == 1)
        await asyncio.sleep(1.0)  # several looks at the raised record meanwhile
        assert robot.acked == [], "no ack before the movement is durable"
        assert len(sink.moves) == 1, "one booking while it waits"
        with sink.lock:
            sink.hold_movements = False
            sink.pending[0].set_result(None)
        await until(lambda: len(robot.acked) >= 6)

    run_robot(robot, sink, body)
    keys = [key(m) for m in sink.moves]
    assert len(keys) == len(set(keys)), "no move booked twice"
    assert robot.acked == list(range(1, len(robot.acked) + 1))
    assert sink.cursors[CURSOR] >= robot.acked[-1]
    first = sink.moves[0]
    assert (first.object_id, first.from_, first.to) == ("TOTE-000001", "DOCK-01", "PICK-A")
    second = sink.moves[1]
    assert second.epc == "30340242201D884000000002" and second.object_id is None
    assert (second.from_, second.to, second.source) == ("PICK-A", "PICK-B", "packer-1")


def test_records_at_or_below_the_cursor_are_acked_not_booked_again() -> None:
    robot = RobotCell(move_every_s=0.1, heartbeat_s=0.2)
    sink = RecordingSink(cursors={CURSOR: 3})  # a run that died before acking 1..3

    async def body(driver: OPCUADriver) -> None:
        await until(lambda: len(robot.acked) >= 6)

    run_robot(robot, sink, body)
    assert robot.acked[:6] == [1, 2, 3, 4, 5, 6]
    assert sorted(seq_of(m) for m in sink.moves)[:3] == [4, 5, 6], "1..3: acked only"


def test_a_record_with_an_unknown_station_is_refused_and_never_acked() -> None:
    robot = RobotCell(move_every_s=0.1, heartbeat_s=0.2)
    sink = RecordingSink()

    async def body(driver: OPCUADriver) -> None:
        driver.options.stations.pop("2")  # record 1 goes 1 -> 2: no location for 2
        await until(lambda: bool(events(driver, "move_refused")))
        await asyncio.sleep(1.0)

    driver = run_robot(robot, sink, body)
    (refused,) = events(driver, "move_refused")
    assert refused["seq"] == 1 and "station 2" in refused["reason"]
    assert robot.acked == [] and sink.moves == []
    assert driver.health().errors["bad_move"] >= 1


def test_a_robots_serial_offset_numbers_its_totes_and_epcs_apart_from_another_robots() -> None:
    """The demo runs a Modbus and an OPC UA robot cell: with the same ids the IMS's stock
    view would put one robot's totes where the other moved its own."""
    plain, offset = RobotCell(), RobotCell(serial_offset=500_000)
    records = []
    for robot in (plain, offset):
        robot.tick(0.0)
        for seq in (1, 2):
            robot.tick(float(seq))
            records.append((robot.tote, robot.epc))
            robot.written("MoveAck", seq, float(seq))
    assert records[:2] == [("TOTE-000001", ""), ("", "30340242201D884000000002")]
    assert records[2:] == [("TOTE-500001", ""), ("", "30340242201D88400007A122")]
