"""Robots and PLCs end to end: the Modbus simulator (its own process, pymodbus's real server) →
`fc-edge run` → mosquitto → `fc-edge listen`, including kill -9 of the gateway while the robot
hands over moves: each move record becomes exactly one movement."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.broker import Broker
from tests.support.gateway import ROOT, ListenProcess, fc_edge, gateway_head
from tests.support.helpers import validate_message, wait_for


def equipment_config(state: Path, broker_url: str, devices: dict[str, tuple[str, int]]) -> str:
    entries = []
    for name, (kind, port) in devices.items():
        stations = (
            'stations = { 1 = "DOCK-01", 2 = "PICK-A", 3 = "PICK-B", 4 = "PACK" }'
            if kind == "robot"
            else ""
        )
        entries.append(
            f"""
[[equipment]]
name = "{name}"
driver = "modbus"
host = "127.0.0.1"
port = {port}
map = "{ROOT}/drivers/maps/{kind}.toml"
interval_s = 0.1
stale_after_s = 3
{stations}
"""
        )
    locations = "\n".join(f"[locations.{n}]\n" for n in ("DOCK-01", "PICK-A", "PICK-B", "PACK"))
    return (
        gateway_head(state, broker_url)
        + f"""
{locations}
{"".join(entries)}
"""
    )


class ModbusSim:
    def __init__(self, tmp_path: Path, device: str, *args: str) -> None:
        self.err = open(tmp_path / f"sim-{device}.err", "wb")  # noqa: SIM115
        self.proc = fc_edge(
            "simulate",
            "modbus",
            "--device",
            device,
            "--listen",
            "127.0.0.1:0",
            *args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
        )
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])

    def command(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        self.err.close()


def move_key(m: dict[str, Any]) -> str:
    return str(m["object_id"] or m["epc"])


def test_robot_moves_exactly_once_across_kill_9(tmp_path: Path, broker: Broker) -> None:
    robot = ModbusSim(tmp_path, "robot", "--move-every-s", "0.1")
    conveyor = ModbusSim(tmp_path, "conveyor")
    state = tmp_path / "state"
    conf = tmp_path / "gw.toml"
    conf.write_text(
        equipment_config(
            state,
            broker.url,
            {"robot-1": ("robot", robot.port), "conveyor-1": ("conveyor", conveyor.port)},
        )
    )
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements,equipment")
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    rnd = random.Random(6)
    gw = None
    try:

        def acked() -> int:
            return len(robot.command({"status": True})["status"]["acked"])

        for _ in range(5):
            before = acked()
            gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
            # kill once this run is handing moves over (a slow start must not fool the test)
            wait_for(lambda before=before: acked() >= before + 2, 60, interval=0.05)
            time.sleep(rnd.uniform(0.0, 0.3))
            gw.kill()
            gw.wait(10)
        gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
        time.sleep(3)
        gw.send_signal(signal.SIGTERM)
        code = gw.wait(30)
        assert code == 0, (tmp_path / "gw.log").read_text()[-3000:]
        time.sleep(1)
        status = robot.command({"status": True})
    finally:
        if gw is not None and gw.poll() is None:  # a failed wait must not leave one running
            gw.kill()
            gw.wait(10)
        log.close()
        summary = listen.stop()
        robot.stop()
        conveyor.stop()
    lines = listen.lines()
    moves = [m for m in lines if m["schema"] == "fc-edge/movement/1"]
    for m in lines:
        validate_message(m)
    acked = status["status"]["acked"]
    assert len(acked) >= 10, status
    assert acked == sorted(set(acked)), "the robot saw each seq acknowledged once"
    keys = Counter(move_key(m) for m in moves)
    assert max(keys.values()) == 1, "no move booked twice"
    # the simulated robot moves TOTE-{seq} on odd seqs and an EPC ending in the seq on even ones
    expected = {f"TOTE-{seq:06d}" if seq % 2 else f"30340242201D8840000{seq:05X}" for seq in acked}
    assert expected <= set(keys), "every acknowledged record is a published movement"
    assert all(m["type"] == "moved" and m["source"] == "robot-1" for m in moves)
    assert summary["gaps"] == 0
    equipment = [m for m in lines if m["schema"] == "fc-edge/equipment/1"]
    assert {m["device"] for m in equipment} == {"robot-1", "conveyor-1"}
