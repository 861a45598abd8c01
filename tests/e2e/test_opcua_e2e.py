"""A PLC over OPC UA end to end: `fc-edge simulate opcua --device packml` (its own process,
asyncua's real server) → `fc-edge run` → mosquitto → `fc-edge listen`. The IMS sees PackML
state changes, and one `unreachable` then one `recovered` when the simulator is killed and
started again on the same port, while the gateway runs throughout; and a robot cell's move
records over OPC UA become movements, each once."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker
from tests.support.gateway import ROOT, ListenProcess, fc_edge, gateway_head
from tests.support.helpers import free_port, validate_message, wait_for

pytestmark = pytest.mark.slow


class OPCUASim:
    def __init__(self, tmp_path: Path, port: int, device: str = "packml") -> None:
        self.err = open(tmp_path / f"sim-{port}.err", "ab")  # noqa: SIM115
        self.proc = fc_edge(
            "simulate",
            "opcua",
            "--device",
            device,
            "--listen",
            f"127.0.0.1:{port}",
            "--step-s",
            "0.5",
            "--move-every-s",
            "0.2",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
        )
        assert self.proc.stdout is not None
        hello = json.loads(self.proc.stdout.readline())
        assert hello["port"] == port, hello

    def command(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.err.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.err.close()


def config(state: Path, broker_url: str, port: int, robot_port: int) -> str:
    return (
        gateway_head(state, broker_url)
        + f"""
[locations.DOCK-01]
[locations.PICK-A]
[locations.PICK-B]
[locations.PACK]

[[equipment]]
name = "robot-1"
driver = "opcua"
url = "opc.tcp://127.0.0.1:{robot_port}"
map = "{ROOT}/drivers/maps/opcua/robot.toml"
interval_s = 0.2
stations = {{ 1 = "DOCK-01", 2 = "PICK-A", 3 = "PICK-B", 4 = "PACK" }}

[[equipment]]
name = "packer-1"
driver = "opcua"
url = "opc.tcp://127.0.0.1:{port}"
map = "{ROOT}/config/equipment/packml-opcua.toml"
interval_s = 0.5
reconnect_max_s = 2
"""
    )


def test_packml_states_and_a_killed_simulator_reach_the_ims(tmp_path: Path, broker: Broker) -> None:
    port, robot_port = free_port(), free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(config(tmp_path / "state", broker.url, port, robot_port))
    check = fc_edge("check-config", "-c", str(conf), stdout=subprocess.PIPE)
    assert check.wait(60) == 0
    sim = OPCUASim(tmp_path, port)
    robot = OPCUASim(tmp_path, robot_port, "robot")
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "equipment,movements")
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)

    def events(kind: str) -> list[dict[str, Any]]:
        lines = listen.lines()
        return [m for m in lines if m.get("event") == kind and m["device"] == "packer-1"]

    def acked() -> list[int]:
        return list(robot.command({"status": True})["status"]["acked"])

    try:
        # at least two PackML states reported as changes
        wait_for(lambda: len({e["value"] for e in events("state")}) >= 2, 60, interval=0.2)
        sim.kill()
        wait_for(lambda: bool(events("unreachable")), 40, interval=0.2)
        sim = OPCUASim(tmp_path, port)
        wait_for(lambda: bool(events("recovered")), 60, interval=0.2)
        after = len(events("state"))
        wait_for(lambda: len(events("state")) > after, 30, interval=0.2)  # subscribed again
        wait_for(lambda: len(acked()) >= 5, 30, interval=0.2)
        assert gw.poll() is None, "the gateway ran throughout"
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0, (tmp_path / "gw.log").read_text()[-3000:]
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait(10)
        log.close()
        time.sleep(1)  # the last acknowledged movements reach the IMS
        summary = listen.stop()
        robot_acked = acked()
        robot.stop()
        sim.stop()
    lines = listen.lines()
    for m in lines:
        validate_message(m)
    equipment = [m for m in lines if m["schema"] == "fc-edge/equipment/1"]
    assert {m["device"] for m in equipment} == {"packer-1", "robot-1"}
    states = [m for m in events("state") if m["point"] == "state"]
    assert len({m["value"] for m in states}) >= 2
    (down,) = events("unreachable")
    (up,) = events("recovered")
    assert up["from"] == "unreachable" and up["seq"] > down["seq"]
    assert summary["gaps"] == 0
    moves = Counter(m["object_id"] or m["epc"] for m in lines if m.get("type") == "moved")
    assert moves and max(moves.values()) == 1, "each move record booked once"
    # the robot moves TOTE-{seq} on odd seqs and an EPC ending in the seq on even ones
    expected = {f"TOTE-{q:06d}" if q % 2 else f"30340242201D8840000{q:05X}" for q in robot_acked}
    assert expected <= set(moves), "every acknowledged record is a published movement"
