"""Handhelds end to end: the TSL simulator (its own process, over TCP) → the tsl driver inside
`fc-edge run` → the count / returns workflows → outbox → mosquitto → `fc-edge listen`."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.model import TagState
from gateway.outbox import Outbox
from simulators.scenario import sgtin96
from tests.support.broker import Broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_head
from tests.support.helpers import validate_message, wait_for


def handheld_config(state: Path, broker_url: str, port: int, workflow: str) -> str:
    extra = (
        'returns_location = "RETURNS"'
        if workflow == "returns"
        else 'allowed_locations = ["SHELF-A1", "SHELF-B2"]'
    )
    return (
        gateway_head(state, broker_url)
        + f"""
[locations.SHELF-A1]
barcode = "LOC-SHELF-A1"
biz_step = "cycle_counting"
disposition = "sellable_accessible"
[locations.SHELF-B2]
barcode = "LOC-SHELF-B2"
[locations.RETURNS]
biz_step = "receiving"
disposition = "returned"
[[readers]]
name = "hh-1"
driver = "tsl"
port = "socket://127.0.0.1:{port}"
workflow = "{workflow}"
{extra}
"""
    )


def run_handheld(
    tmp_path: Path,
    broker: Broker,
    scenario: str,
    workflow: str,
    seed: list[TagState] | None = None,
    until: Any = None,
) -> list[dict[str, Any]]:
    sim_err = open(tmp_path / "sim.err", "wb")  # noqa: SIM115
    sim = fc_edge(
        "simulate",
        "tsl",
        "--scenario",
        scenario,
        "--listen",
        "127.0.0.1:0",
        stdout=subprocess.PIPE,
        stderr=sim_err,
    )
    assert sim.stdout is not None
    port = int(json.loads(sim.stdout.readline())["port"])
    state = tmp_path / "state"
    if seed:  # stock the engine already believes in, as a previous run would have left it
        box = Outbox(state / "outbox.db")
        box.commit([], seed)
        box.close()
    conf = tmp_path / "gw.toml"
    conf.write_text(handheld_config(state, broker.url, port, workflow))
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements,counts")
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
    try:
        wait_for(lambda: until(listen.lines()), 60, interval=0.2)
    finally:
        gw.send_signal(signal.SIGTERM)
        code = gw.wait(30)
        listen.stop()
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
        log.close()
        sim_err.close()
    assert code == 0, (tmp_path / "gw.log").read_text()[-2000:]
    lines = listen.lines()
    for line in lines:
        validate_message(line)
    return lines


def test_count_session_and_misplaced_stock(tmp_path: Path, broker: Broker) -> None:
    misplaced = [sgtin96("0614141", "512347", serial) for serial in (5000, 5001, 5002)]
    seed = [TagState(epc, True, "SHELF-B2", 1) for epc in misplaced]

    def done(lines: list[dict[str, Any]]) -> bool:
        sessions = {m["session"] for m in lines if m["schema"] == "fc-edge/count/1"}
        return len(sessions) >= 2

    lines = run_handheld(tmp_path, broker, "handheld-count", "count", seed, done)
    counts = [m for m in lines if m["schema"] == "fc-edge/count/1"]
    assert {m["location"] for m in counts} == {"SHELF-A1"}, "no count booked at an unknown label"
    first = [m for m in counts if m["session"] == counts[0]["session"]]
    epcs = {e for m in first for e in m["epcs"]}
    assert len(epcs) == 24 + 12 + 3 and set(misplaced) <= epcs
    assert sum(sum(m["quantities"].values()) for m in first) == len(epcs)
    moves = [m for m in lines if m["schema"] == "fc-edge/movement/1"]
    found = Counter((m["epc"], m["from"], m["to"], m["type"]) for m in moves)
    for epc in misplaced:
        assert found[(epc, "SHELF-B2", "SHELF-A1", "moved")] == 1, "misplaced stock found, once"


def test_returns_are_booked_once(tmp_path: Path, broker: Broker) -> None:
    def done(lines: list[dict[str, Any]]) -> bool:
        return len({m["epc"] for m in lines if m.get("to") == "RETURNS"}) >= 3 and len(lines) >= 3

    lines = run_handheld(tmp_path, broker, "handheld-returns", "returns", None, done)
    moves = [m for m in lines if m["schema"] == "fc-edge/movement/1"]
    assert moves and all(m["to"] == "RETURNS" and m["disposition"] == "returned" for m in moves)
    per_epc = Counter(m["epc"] for m in moves)
    assert max(per_epc.values()) == 1, "a re-read within dedup_window_s is not booked twice"
    assert all(m["type"] == "arrived" for m in moves)
