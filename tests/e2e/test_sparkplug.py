"""Sparkplug B end to end, every part real: `fc-edge simulate llrp` (one reader) and
`fc-edge simulate modbus` (a conveyor PLC), `fc-edge run` with `[sparkplug] enabled`, mosquitto,
and a subscriber to `spBv1.0/#` that decodes with Eclipse Tahu's own generated schema
(tahutils), not the gateway's.

It sees an NBIRTH (bdSeq, Node Control/Rebirth, seq 0) and a DBIRTH per configured device,
DDATA with the reader's reads and the conveyor's mapped points, births again on a Rebirth
command, malformed commands counted with no crash, the NDEATH with the NBIRTH's bdSeq after
`kill -9`, the next bdSeq after a restart, and the NDEATH of a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tahutils.tahu import sparkplug_b_pb2

from tests.support.broker import Broker
from tests.support.gateway import fc_edge, gateway_toml, llrp_zone_readers
from tests.support.helpers import free_port, wait_for
from tests.support.sparkplug import PREFIX, Subscriber, metrics_of, value
from tools.simsite import ModbusSim, metric, scrape

pytestmark = pytest.mark.slow

READER = "rd-1"
CONVEYOR = "conveyor-1"
SCENARIO = {
    "site": "S1",
    "seed": 1,
    "duration": 3600,
    "readers": {READER: {"antennas": {"1": {"location": "ZONE-1"}}}},
    "radio": {"round_ms": 200, "read_rate": 1.0, "rssi_near": -50, "rssi_sigma": 0},
    "tags": {"none": {"sgtin": {"company": "4912345", "item": "067890", "serial_from": 1,
                                "count": 1}}},
    "timeline": [],
}  # fmt: skip
BOOLEAN, STRING = 11, 12


def rebirth(kind: int, set_value: Any) -> bytes:
    payload = sparkplug_b_pb2.Payload()
    payload.timestamp = 1
    m = payload.metrics.add()
    m.name, m.datatype = "Node Control/Rebirth", kind
    if isinstance(set_value, bool):
        m.boolean_value = set_value
    else:
        m.string_value = set_value
    return bytes(payload.SerializeToString())


def config(tmp_path: Path, broker: Broker, llrp_port: int, modbus_port: int, http: int) -> Path:
    devices = f"""
[sparkplug]
enabled = true
interval_s = 0.5

{llrp_zone_readers({READER: llrp_port})}
[[equipment]]
name = "{CONVEYOR}"
driver = "modbus"
host = "127.0.0.1"
port = {modbus_port}
map = "{Path(__file__).resolve().parents[2]}/drivers/maps/conveyor.toml"
interval_s = 0.2
"""
    path = tmp_path / "gw.toml"
    path.write_text(gateway_toml(tmp_path / "state", broker.url, devices, metrics_port=http))
    return path


def wait_births(sub: Subscriber, after: int) -> tuple[Any, dict[str, Any]]:
    """The first NBIRTH after message `after` and the DBIRTHs that follow it."""

    def born() -> tuple[Any, dict[str, Any]] | None:
        births = [(t, p) for t, p in sub.since(after) if "/NBIRTH/" in t or "/DBIRTH/" in t]
        nodes = [i for i, (t, _) in enumerate(births) if "/NBIRTH/" in t]
        if not nodes:
            return None
        rest = births[nodes[0] + 1 :]
        devices = {t.rsplit("/", 1)[1]: p for t, p in rest if "/DBIRTH/" in t}
        if {READER, CONVEYOR} <= set(devices):
            return births[nodes[0]][1], devices
        return None

    result: tuple[Any, dict[str, Any]] = wait_for(born, 60, interval=0.1)
    return result


def check_seqs(messages: list[tuple[str, Any]]) -> None:
    """From an NBIRTH (seq 0) on, every message but NDEATH takes the next seq, mod 256."""
    seqs = [p.seq for t, p in messages if "/NDEATH/" not in t]
    assert seqs[0] == 0
    assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:], strict=False)), seqs


def test_sparkplug_births_rebirth_bad_commands_and_death(tmp_path: Path, broker: Broker) -> None:
    (tmp_path / "site.json").write_text(json.dumps(SCENARIO))
    sim_err = open(tmp_path / "llrp.err", "wb")  # noqa: SIM115
    llrp = fc_edge("simulate", "llrp", "--scenario", str(tmp_path / "site.json"),
                   "--grace-s", "0", stdout=subprocess.PIPE, stderr=sim_err)  # fmt: skip
    conveyor = ModbusSim(tmp_path, "conveyor")
    sub = Subscriber(broker)
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    http = free_port()
    gw = None
    try:
        assert llrp.stdout is not None
        where = json.loads(llrp.stdout.readline())
        conf = config(tmp_path, broker, where["readers"][READER]["port"], conveyor.port, http)
        gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)

        # NBIRTH and a DBIRTH for every configured device
        nbirth, dbirths = wait_births(sub, 0)
        node = metrics_of(nbirth)
        bd_seq = value(node["bdSeq"])
        assert nbirth.seq == 0
        assert node["Node Control/Rebirth"].datatype == BOOLEAN
        assert value(node["Node Control/Rebirth"]) is False
        for device in (READER, CONVEYOR):
            born = metrics_of(dbirths[device])
            assert {"State", "Up", "Reconnects", "Errors"} <= set(born), born.keys()
        assert {"Reads", "Reads per second"} <= set(metrics_of(dbirths[READER]))

        # DDATA: the reader's reads, the conveyor's mapped points
        ctl = where["control"]["port"]
        reads = {"in_s": 0.0, "reads": [[1, f"30342D5A0000{k:012X}", -50] for k in range(5)]}
        wait_for(lambda: reader_up(ctl), 60, interval=0.2)
        control(ctl, f"/readers/{READER}/reads", reads)

        def reads_reported() -> bool:
            return any(
                value(m) >= 5
                for p in sub.of(f"{PREFIX}/DDATA/gw-1/{READER}")
                for m in p.metrics
                if m.name == "Reads"
            )

        def conveyor_points() -> bool:
            payloads = sub.of(f"{PREFIX}/DDATA/gw-1/{CONVEYOR}")
            payloads += sub.of(f"{PREFIX}/DBIRTH/gw-1/{CONVEYOR}")
            return any(m.name == "Points/belt_speed" for p in payloads for m in p.metrics)

        wait_for(reads_reported, 30, interval=0.2)
        wait_for(conveyor_points, 30, interval=0.2)

        # Rebirth: the births again, same bdSeq (same MQTT session), seq from 0
        mark = sub.count()
        sub.command(rebirth(BOOLEAN, True))
        again, _ = wait_births(sub, mark)
        assert value(metrics_of(again)["bdSeq"]) == bd_seq and again.seq == 0

        # Malformed commands: counted, ignored, the gateway runs on
        url = f"http://127.0.0.1:{http}"
        sub.command(b"\xff\x00 not protobuf")
        sub.command(rebirth(STRING, "yes"))

        def rejected(reason: str) -> float:
            labels = {"source": "sparkplug", "reason": reason}
            return metric(scrape(url), "fc_edge_rejected_inputs_total", **labels)

        wait_for(lambda: rejected("bad_payload") == 1 and rejected("bad_command_value") == 1, 30)
        mark_bad = sub.count()
        sub.command(rebirth(BOOLEAN, True))  # still answers
        wait_births(sub, mark_bad)
        assert gw.poll() is None
        last_birth = max(i for i, (t, _) in enumerate(sub.since(0)) if "/NBIRTH/" in t)
        check_seqs(sub.since(last_birth))

        # kill -9: the broker sends the will, the NDEATH with this session's bdSeq
        gw.kill()
        gw.wait(10)
        ndeath = wait_for(lambda: sub.of(f"{PREFIX}/NDEATH/gw-1"), 30, interval=0.1)[-1]
        assert value(metrics_of(ndeath)["bdSeq"]) == bd_seq

        # a restart: the next bdSeq; a clean stop publishes its NDEATH itself
        mark = sub.count()
        gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
        nbirth, _ = wait_births(sub, mark)
        assert value(metrics_of(nbirth)["bdSeq"]) == (bd_seq + 1) % 256
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(60) == 0
        deaths = wait_for(lambda: sub.of(f"{PREFIX}/NDEATH/gw-1")[1:], 30, interval=0.1)
        assert value(metrics_of(deaths[-1])["bdSeq"]) == (bd_seq + 1) % 256
        assert sub.undecodable == []
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
            gw.wait(10)
        log.close()
        sub.stop()
        conveyor.stop()
        llrp.terminate()
        llrp.wait(30)
        sim_err.close()


def control(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data, timeout=30) as resp:  # noqa: S310
        return json.loads(resp.read())


def reader_up(port: int) -> bool:
    return bool(control(port, f"/readers/{READER}").get("active"))
