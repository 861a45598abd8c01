"""A scenario end to end, every part real: the LLRP simulator (its own process) → sllurp inside
`fc-edge run` → mosquitto → `fc-edge listen` → `fc-edge score`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.gateway import ROOT, ListenProcess, fc_edge
from tests.support.helpers import validate_message, wait_for


def run_scenario(
    tmp_path: Path, broker: Broker, name: str, speed: float
) -> tuple[list[dict], dict]:
    truth = tmp_path / "truth.jsonl"
    conf = tmp_path / "gw.toml"
    sim_err = open(tmp_path / "sim.err", "wb")  # noqa: SIM115
    sim = fc_edge(
        "simulate",
        "llrp",
        "--scenario",
        name,
        "--truth",
        str(truth),
        "--gateway-config",
        str(conf),
        "--speed",
        str(speed),
        "--start-delay-s",
        "4",
        "--grace-s",
        "3",
        "--state-dir",
        str(tmp_path / "state"),
        "--mqtt-url",
        broker.url,
        stdout=subprocess.PIPE,
        stderr=sim_err,
    )
    assert sim.stdout is not None
    first = json.loads(sim.stdout.readline())
    assert set(first["readers"]) and all(r["port"] for r in first["readers"].values())
    site = next(
        line.split('"')[1] for line in conf.read_text().splitlines() if line.startswith("site")
    )
    listen = ListenProcess(tmp_path, broker.url, site, "--streams", "movements")
    gw_log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = fc_edge("run", "-c", str(conf), stdout=gw_log, stderr=gw_log)
    try:
        assert sim.wait(300) == 0
        wait_for(lambda: truth.exists(), 10)
        wait_for(lambda: len(listen.lines()) > 0, 30)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0
        listen.stop()
        gw_log.close()
        sim_err.close()
    got_path = listen.out_path
    score = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "score",
            "--truth",
            str(truth),
            "--got",
            str(got_path),
            "--json",
            "--time-tolerance-s",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return listen.lines(), json.loads(score.stdout)


@pytest.mark.parametrize("name", ["dock-receive"])
def test_scenario_through_sllurp_gateway_broker_and_score(
    tmp_path: Path, broker: Broker, name: str
) -> None:
    got, score = run_scenario(tmp_path, broker, name, speed=3.0)
    truth_epcs = {
        json.loads(line)["epc"] for line in (tmp_path / "truth.jsonl").read_text().splitlines()
    }
    seen = {m["epc"] for m in got}
    assert truth_epcs and truth_epcs <= seen, f"{len(truth_epcs - seen)} truth EPCs never moved"
    for m in got:
        validate_message(m)
    assert {"precision", "recall", "f1"} <= set(score), score
