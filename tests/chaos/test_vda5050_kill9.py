"""Chaos: two AMRs (`fc-edge simulate vda5050`, their own process) pick and drop totes on a
fleet broker of their own while `fc-edge run` observes them; the gateway is killed with -9
twice mid-stream and restarted. At the end the IMS (`fc-edge listen` on the gateway's broker)
must have received each load's pick and drop as exactly one movement each (one message id per
move: a redelivered copy of the same message is fine, a second booking is not), and none
missing: every pick/drop the simulator published."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.vda5050.vehicle import PACKS, RACKS
from tests.support.broker import Broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_head
from tests.support.helpers import free_port, validate_message, wait_for
from tests.support.ops import http_json, scrape

SERIALS = ("amr-1", "amr-2")
NODES = {n: n.upper() for n in RACKS + PACKS}
Move = tuple[str, str, str]  # (load, from, to)


class FleetSim:
    """`fc-edge simulate vda5050` and its control channel."""

    def __init__(self, tmp_path: Path, broker_url: str) -> None:
        self.err = open(tmp_path / "fleet-sim.err", "ab")  # noqa: SIM115
        self.proc = fc_edge(
            "simulate", "vda5050", "--broker", broker_url, "--vehicles", "2", "--step-s", "0.1",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
        )  # fmt: skip
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        assert hello["vehicles"] == list(SERIALS), hello

    def command(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def published(self) -> list[Move]:
        """Every finished pick/drop the vehicles have published, as the move it must become."""
        moves = []
        for v in self.command({"status": True})["vehicles"]:
            here = f"AMR-{v['serial'].upper()}"
            for f in v["finished"]:
                node = NODES[f["node"]]
                moves.append(
                    (f["load"], node, here) if f["action"] == "pick" else (f["load"], here, node)
                )
        return moves

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.err.close()


def config(state: Path, broker_url: str, fleet_url: str, metrics_port: int) -> str:
    locations = "".join(
        f"[locations.{loc}]\n" for loc in [*NODES.values(), "AMR-AMR-1", "AMR-AMR-2"]
    )
    vehicles = "".join(
        f"""
[[equipment]]
name = "{serial}"
driver = "vda5050"
broker = "{fleet_url}"
manufacturer = "fcsim"
serial_number = "{serial}"
location = "AMR-{serial.upper()}"
nodes = {{ {", ".join(f'"{n}" = "{loc}"' for n, loc in NODES.items())} }}
reconnect_max_s = 2
"""
        for serial in SERIALS
    )
    head = gateway_head(state, broker_url).replace(
        "enabled = false", f'enabled = true\nlisten = "127.0.0.1:{metrics_port}"'
    )
    return head + locations + vehicles


def received(listen: ListenProcess) -> dict[Move, set[str]]:
    """Each move the IMS got, with the message ids that carried it."""
    ids: dict[Move, set[str]] = defaultdict(set)
    for m in listen.lines():
        if m.get("type") == "moved":
            ids[(m["object_id"] or m["epc"], m["from"], m["to"])].add(m["id"])
    return ids


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_amr_moves_reach_the_ims_exactly_once_through_two_kill_9(
    tmp_path: Path, broker: Broker
) -> None:
    rnd = random.Random(5050)
    fleet_broker = Broker(tmp_path / "fleet-broker", free_port())
    fleet_broker.start()
    conf = tmp_path / "gw.toml"
    metrics_port = free_port()
    conf.write_text(config(tmp_path / "state", broker.url, fleet_broker.url, metrics_port))
    assert fc_edge("check-config", "-c", str(conf), stdout=subprocess.DEVNULL).wait(60) == 0
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements")
    log_path = tmp_path / "gw.log"
    log = open(log_path, "ab")  # noqa: SIM115
    kills = 0
    sim: FleetSim | None = None
    gw: subprocess.Popen[bytes] | None = None
    try:
        gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
        # The vehicles start once the gateway's sessions exist on the fleet broker: from then
        # on the broker queues what they publish for it, also while it is dead.
        wait_for(lambda: log_path.read_text().count("observing uagv/v2") >= 2, 60, interval=0.2)
        sim = FleetSim(tmp_path, fleet_broker.url)
        for _ in range(2):
            before = len(received(listen))
            # this run is booking (the IMS got new moves from it) before the moment is drawn
            wait_for(lambda b=before: len(received(listen)) >= b + 4, 90, interval=0.2)  # type: ignore[misc]
            time.sleep(rnd.uniform(0.0, 2.0))
            gw.kill()
            gw.wait(20)
            kills += 1
            time.sleep(rnd.uniform(0.5, 2.0))  # the vehicles go on; the fleet broker queues
            gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
        sim.command({"hold": True})  # no new actions: the last states repeat
        published = sim.published()
        deadline = time.monotonic() + 120
        while not set(received(listen)) >= set(published) and time.monotonic() < deadline:
            time.sleep(0.5)
        # Bad messages in the last run: counted per vehicle and kind in the gateway's metrics.
        sim.command({"fault": "out_of_order", "vehicle": "amr-1"})
        sim.command({"fault": "missing_fields", "vehicle": "amr-2"})
        time.sleep(3)  # repeated states and redeliveries would show by now
        ready, samples = http_json(metrics_port, "/readyz")[1], scrape(metrics_port)
        retained = devices_retained(broker)
        gw.terminate()
        assert gw.wait(30) == 0, (tmp_path / "gw.log").read_text()[-3000:]
    finally:
        if sim is not None:
            sim.stop()
        if gw is not None and gw.poll() is None:
            gw.kill()
            gw.wait(10)
        log.close()
        listen.stop()
        fleet_broker.stop()
    assert kills == 2
    got = received(listen)
    for m in listen.lines():
        validate_message(m)
    assert len(published) >= 20 and len(set(published)) == len(published)
    missing = [m for m in published if m not in got]
    assert not missing, f"{len(missing)} of {len(published)} never reached the IMS: {missing[:4]}"
    assert set(got) == set(published), "every published pick/drop, and nothing else"
    twice = {move: ids for move, ids in got.items() if len(ids) != 1}
    assert not twice, f"booked more than once: {list(twice.items())[:3]}"
    assert any(len(load) == 24 for load, _, _ in got), "EPC loads among them"
    assert ready["ready"] and {ready["devices"][s]["state"] for s in SERIALS} == {"up"}
    assert {s: retained[s]["state"] for s in SERIALS} == {s: "up" for s in SERIALS}
    errors = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "fc_edge_device_errors_total" and value
    }
    assert errors == {
        frozenset({("device", "amr-1"), ("kind", "state_out_of_order")}): 1,
        frozenset({("device", "amr-2"), ("kind", "state_invalid")}): 1,
    }, "the injected faults, counted on their vehicle; no load action refused or unseen"
    for serial in SERIALS:
        assert samples[("fc_edge_device_up", frozenset({("device", serial)}))] == 1


def devices_retained(broker: Broker) -> dict[str, dict[str, Any]]:
    """The retained devices/{name} status on the gateway's broker, as an IMS sees it."""
    status: dict[str, dict[str, Any]] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ims-devices")

    def on_message(c: Any, u: Any, msg: Any) -> None:
        status[msg.topic.rsplit("/", 1)[1]] = json.loads(msg.payload)

    client.on_message = on_message
    assert broker.port is not None
    client.connect("127.0.0.1", broker.port)
    client.subscribe("fc/S1/gw-1/devices/+", qos=1)
    client.loop_start()
    try:
        wait_for(lambda: len(status) >= len(SERIALS), 10, interval=0.1)
    finally:
        client.disconnect()
        client.loop_stop()
    return status
