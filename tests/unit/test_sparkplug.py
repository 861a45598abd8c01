"""Sparkplug B: payloads as Eclipse Tahu's own schema reads them, seq and bdSeq wrapping, the
bdSeq kept across restarts, commands and STATE parsed, and the edge node itself against a real
mosquitto: births wait for the primary host, its going offline ends the session (NDEATH, a new
session with the next bdSeq), what changed while it was offline comes after the next births
with is_historical, a device that loses its connection gets a DDEATH."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tahutils.tahu import sparkplug_b_pb2

from drivers.base import Driver
from gateway.config import Settings, from_dict
from gateway.health import Devices
from gateway.metrics import Metrics
from gateway.sparkplug import BdSeqStore, SparkplugNode, _parse_state
from gateway.sparkplug_payload import (
    BadPayload,
    DataType,
    Metric,
    Seq,
    datatype_of,
    decode,
    encode,
)
from tests.support.broker import Broker
from tests.support.helpers import RecordingSink, wait_for
from tests.support.sparkplug import PREFIX, Subscriber, metrics_of, value


def tahu(data: bytes) -> Any:
    payload = sparkplug_b_pb2.Payload()
    payload.ParseFromString(data)
    return payload


# --- payloads --------------------------------------------------------------------------------


def test_payload_reads_back_with_tahus_schema() -> None:
    metrics = [
        Metric("bdSeq", DataType.INT64, 7),
        Metric("Temp", DataType.INT32, -2),
        Metric("Rate", DataType.DOUBLE, 12.5, timestamp_ms=99, historical=True),
        Metric("Up", DataType.BOOLEAN, True),
        Metric("State", DataType.STRING, "up"),
        Metric("Detail", DataType.STRING, None),
    ]
    p = tahu(encode(metrics, timestamp_ms=1_000, seq=42))
    assert p.seq == 42 and p.timestamp == 1_000
    got = metrics_of(p)
    assert got["bdSeq"].datatype == 4 and got["bdSeq"].long_value == 7
    assert got["Temp"].int_value == 2**32 - 2  # two's complement in the uint32 field
    assert got["Rate"].double_value == 12.5 and got["Rate"].is_historical
    assert got["Rate"].timestamp == 99 and got["Up"].timestamp == 1_000
    assert got["Up"].boolean_value is True and got["State"].string_value == "up"
    assert got["Detail"].is_null and got["Detail"].WhichOneof("value") is None
    assert not got["Up"].is_historical


def test_ndeath_carries_no_seq() -> None:
    p = tahu(encode([Metric("bdSeq", DataType.INT64, 3)], timestamp_ms=5, seq=None))
    assert not p.HasField("seq")
    assert value(metrics_of(p)["bdSeq"]) == 3


def test_a_command_decodes_and_garbage_is_refused() -> None:
    command = sparkplug_b_pb2.Payload()
    m = command.metrics.add()
    m.name, m.datatype, m.boolean_value = "Node Control/Rebirth", 11, True
    wrong = command.metrics.add()
    wrong.name, wrong.datatype, wrong.string_value = "Node Control/Rebirth", 11, "true"
    got = decode(command.SerializeToString())
    assert [(r.name, r.value) for r in got] == [
        ("Node Control/Rebirth", True),
        ("Node Control/Rebirth", None),  # the value is not in the field its datatype names
    ]
    with pytest.raises(BadPayload):
        decode(b"\xff\xff\xff\xff")


def test_equipment_values_get_their_types() -> None:
    assert datatype_of(True) is DataType.BOOLEAN
    assert datatype_of(3) is DataType.INT64
    assert datatype_of(1.5) is DataType.DOUBLE
    assert datatype_of("RUNNING") is DataType.STRING
    assert datatype_of(float("nan")) is DataType.STRING


def test_seq_runs_0_to_255_and_wraps() -> None:
    seq = Seq()
    assert seq.reset() == 0
    taken = [seq.take() for _ in range(300)]
    assert taken[:3] == [1, 2, 3]
    assert taken[254] == 255 and taken[255] == 0 and taken[256] == 1
    assert seq.reset() == 0 and seq.take() == 1


def test_bdseq_is_kept_across_restarts_and_wraps(tmp_path: Path) -> None:
    assert BdSeqStore(tmp_path).advance() == 0
    assert BdSeqStore(tmp_path).advance() == 1  # a new process reads the last one
    (tmp_path / "sparkplug-bdseq.json").write_text(json.dumps({"bd_seq": 255}))
    assert BdSeqStore(tmp_path).advance() == 0
    (tmp_path / "sparkplug-bdseq.json").write_text("{not json")
    assert BdSeqStore(tmp_path).advance() == 0  # unreadable: start over, never crash


def test_state_payloads_of_both_spec_versions() -> None:
    assert _parse_state(b'{"online": true, "timestamp": 5}') == (True, 5)
    assert _parse_state(b'{"online": false}') == (False, None)
    assert _parse_state(b"OFFLINE") == (False, None)
    assert _parse_state(b'{"online": "yes"}') == (None, None)
    assert _parse_state(b"\xff garbage") == (None, None)


# --- the edge node against mosquitto ------------------------------------------------------------


def node_settings(tmp_path: Path, broker: Broker, primary_host: str | None) -> Settings:
    sparkplug: dict[str, Any] = {"enabled": True, "interval_s": 0.1}
    if primary_host is not None:
        sparkplug["primary_host_id"] = primary_host
    return from_dict(
        {
            "gateway": {"site": "S1", "id": "gw-1", "state_dir": str(tmp_path)},
            "mqtt": {"url": broker.url},
            "sparkplug": sparkplug,
            "locations": {"Z": {}},
            "readers": [
                {"name": "rd-1", "driver": "llrp", "host": "127.0.0.1",
                 "antennas": {"1": {"location": "Z"}}}
            ],
        }
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running_node(
    tmp_path: Path, broker: Broker, primary_host: str | None = None
) -> AsyncIterator[tuple[SparkplugNode, Driver, Metrics]]:
    """A node whose one reader is a Driver doing its health bookkeeping (never connected)."""
    settings = node_settings(tmp_path, broker, primary_host)
    devices = Devices(settings.devices)
    metrics = Metrics()
    node = SparkplugNode(settings, devices, metrics)
    driver = Driver(settings.readers[0], node.tap_sink(RecordingSink()))
    devices.add(driver)
    node.start()
    task = asyncio.create_task(node.run())
    try:
        yield node, driver, metrics
    finally:
        task.cancel()
        await node.stop()


async def until(predicate: Any, timeout: float = 10.0) -> Any:
    return await asyncio.to_thread(wait_for, predicate, timeout, 0.05)


def state_message(online: bool, stamp: int) -> bytes:
    return json.dumps({"online": online, "timestamp": stamp}).encode()


def test_births_wait_for_the_primary_host_and_history_follows_them(
    tmp_path: Path, broker: Broker
) -> None:
    sub = Subscriber(broker)

    async def scenario() -> None:
        async with running_node(tmp_path, broker, "scada") as (node, driver, _):
            await until(lambda: node.connected)
            await asyncio.sleep(0.5)
            assert sub.of(f"{PREFIX}/NBIRTH/gw-1") == [], "births wait for the host"
            host = sub.client
            host.publish("spBv1.0/STATE/scada", state_message(True, 10), qos=1, retain=True)
            await until(lambda: sub.of(f"{PREFIX}/DBIRTH/gw-1/rd-1"))
            host.publish("spBv1.0/STATE/scada", state_message(False, 20), qos=1, retain=True)
            await until(lambda: sub.of(f"{PREFIX}/NDEATH/gw-1"))
            driver.set_state("backoff", "connection refused")  # while the host is offline
            await asyncio.sleep(0.3)
            assert sub.of(f"{PREFIX}/DDATA/gw-1/rd-1") == [], "nothing published while offline"
            host.publish("spBv1.0/STATE/scada", state_message(True, 15), qos=1, retain=True)
            await asyncio.sleep(0.3)
            assert len(sub.of(f"{PREFIX}/NBIRTH/gw-1")) == 1, "an older STATE is ignored"
            host.publish("spBv1.0/STATE/scada", state_message(True, 30), qos=1, retain=True)
            await until(lambda: sub.of(f"{PREFIX}/DDEATH/gw-1/rd-1"))

    try:
        asyncio.run(scenario())
    finally:
        sub.client.publish("spBv1.0/STATE/scada", b"", retain=True).wait_for_publish(5)
        sub.stop()
    births = sub.of(f"{PREFIX}/NBIRTH/gw-1")
    assert len(births) == 2
    first, second = (value(metrics_of(b)["bdSeq"]) for b in births)
    ndeath = sub.of(f"{PREFIX}/NDEATH/gw-1")[0]
    assert value(metrics_of(ndeath)["bdSeq"]) == first, "the NDEATH ends the first session"
    assert second == first + 1, "a new session (Sparkplug 3.0: disconnect, connect again)"
    history = [m for p in sub.of(f"{PREFIX}/DDATA/gw-1/rd-1") for m in p.metrics if m.is_historical]
    states = {m.name: value(m) for m in history}
    assert states["State"] == "backoff" and states["Detail"] == "connection refused"
    second_dbirth = sub.of(f"{PREFIX}/DBIRTH/gw-1/rd-1")[1]
    assert value(metrics_of(second_dbirth)["State"]) == "backoff"
    assert all(m.timestamp <= second_dbirth.timestamp for m in history)


def test_a_device_that_loses_its_connection_gets_a_ddeath_and_a_dbirth_back(
    tmp_path: Path, broker: Broker
) -> None:
    sub = Subscriber(broker)

    async def scenario() -> None:
        async with running_node(tmp_path, broker) as (node, driver, _):
            await until(lambda: sub.of(f"{PREFIX}/DBIRTH/gw-1/rd-1"))
            driver.set_state("up")
            await until(lambda: sub.of(f"{PREFIX}/DDATA/gw-1/rd-1"))
            driver.set_state("unreachable", "no route")
            await until(lambda: sub.of(f"{PREFIX}/DDEATH/gw-1/rd-1"))
            driver.set_state("up")
            await until(lambda: len(sub.of(f"{PREFIX}/DBIRTH/gw-1/rd-1")) == 2)

    try:
        asyncio.run(scenario())
    finally:
        sub.stop()
    kinds = [t.split("/")[2] for t, _ in sub.since(0) if t.endswith("/rd-1")]
    assert kinds[-3:] == ["DDATA", "DDEATH", "DBIRTH"], kinds
    last_ddata = sub.of(f"{PREFIX}/DDATA/gw-1/rd-1")[-1]
    assert value(metrics_of(last_ddata)["State"]) == "unreachable"  # the last word before it


def test_malformed_commands_are_counted_and_ignored(tmp_path: Path, broker: Broker) -> None:
    settings = node_settings(tmp_path, broker, None)
    metrics = Metrics()
    node = SparkplugNode(settings, Devices(settings.devices), metrics)
    node.tap_sink(RecordingSink())
    command = sparkplug_b_pb2.Payload()
    m = command.metrics.add()
    m.name, m.datatype, m.long_value = "Node Control/Rebirth", 4, 1  # Int64, not Boolean
    other = sparkplug_b_pb2.Payload()
    o = other.metrics.add()
    o.name, o.datatype, o.boolean_value = "Node Control/Reboot", 11, True
    node._on_node_command(command.SerializeToString())
    node._on_node_command(b"\x0a\xff")
    node._on_node_command(other.SerializeToString())
    node._on_node_command(b"")
    node._on_host_state(b"maybe")

    def rejected(reason: str) -> float | None:
        return metrics.registry.get_sample_value(
            "fc_edge_rejected_inputs_total", {"source": "sparkplug", "reason": reason}
        )

    assert rejected("bad_command_value") == 1
    assert rejected("bad_payload") == 1
    assert rejected("unknown_command") == 1
    assert rejected("empty_command") == 1
    assert rejected("bad_state") == 1
    assert node.sent == {}, "nothing published for a refused command"


def test_reads_per_second_come_from_what_the_reader_delivered(
    tmp_path: Path, broker: Broker
) -> None:
    from gateway.model import TagRead

    settings = node_settings(tmp_path, broker, None)
    node = SparkplugNode(settings, Devices(settings.devices), Metrics())
    tap = node.tap_sink(RecordingSink())
    assert node.view is not None
    node.view.measure_rates(100.0)
    read = TagRead(epc="3034", reader="rd-1", antenna=1, rssi=-50.0, time_us=int(time.time() * 1e6))
    tap.reads([read] * 30)
    node.view.measure_rates(102.0)
    snapshot = node.view.snapshot("rd-1")
    assert snapshot["Reads"].value == 30
    assert snapshot["Reads per second"].value == 15.0


def test_config_errors_name_the_sparkplug_key(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    raw: dict[str, Any] = {
        "gateway": {"site": "S1", "id": "gw-1", "state_dir": str(tmp_path)},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "locations": {"Z": {}},
        "readers": [
            {"name": "rd-1", "driver": "llrp", "host": "h", "antennas": {"1": {"location": "Z"}}}
        ],
        "sparkplug": {"enabled": "yes", "group_id": "a/b", "interval_s": 0, "bogus": 1},
    }
    with pytest.raises(ConfigError) as bad:
        from_dict(raw, "gw.toml")
    lines = bad.value.lines
    for key in ("enabled", "group_id", "interval_s", "bogus"):
        assert any(line.startswith(f"gw.toml: sparkplug.{key}: ") for line in lines), lines
    raw["sparkplug"] = {"enabled": True, "url": "http://scada"}
    with pytest.raises(ConfigError) as bad_url:
        from_dict(raw, "gw.toml")
    assert bad_url.value.lines == [
        "gw.toml: sparkplug.url: expected mqtt://HOST[:PORT] or mqtts://..., got 'http://scada'"
    ]
    raw["sparkplug"] = {"enabled": True}
    settings = from_dict(raw, "gw.toml")
    assert settings.sparkplug.enabled and settings.sparkplug.group_id is None  # the site


def test_equipment_events_become_point_counter_and_alarm_metrics() -> None:
    from drivers.base import DeviceEvent
    from gateway.sparkplug_devices import DeviceTap

    sink = RecordingSink()
    tap = DeviceTap(sink, on_state=lambda device: None)

    def event(**data: Any) -> None:
        tap.event(DeviceEvent("plc", "equipment", data, time_us=1))

    event(event="status", points={"mode": "RUN", "speed": 1.5}, counters={"cartons": 7},
          alarms=["E-STOP"])  # fmt: skip
    event(event="state", point="mode", value="STOPPED", previous="RUN")
    event(event="counter", point="cartons", total=9, delta=2)
    event(event="alarm", point="faults", alarm="JAM", active=True, previous=False)
    event(event="alarm", point="faults", alarm="E-STOP", active=False, previous=True)
    assert tap.points_of("plc") == {
        "Points/mode": "STOPPED",
        "Points/speed": 1.5,
        "Counters/cartons": 9,
        "Alarms/Active": "JAM",
    }
    assert len(sink.events) == 5, "every event is handed on to the gateway's sink"
