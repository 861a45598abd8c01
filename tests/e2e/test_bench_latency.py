"""The latency bench end to end, reduced: dock-receive's crossing only (200 arrivals through
the dock door, 14 s in real time), 1,000 background reads/s from 2 readers, played twice (the
floor without load, then under load) through mosquitto, `fc-edge run` and `fc-edge listen`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.bench import latency as bench_latency
from simulators.scenario import find_scenario


@pytest.mark.slow
def test_latency_bench_reports_sane_figures_under_light_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = json.loads(find_scenario("dock-receive").read_text())
    raw["timeline"] = raw["timeline"][:1]  # through the dock door, t 5..11 s
    raw["duration"] = 14
    scenario = tmp_path / "crossing.json"
    scenario.write_text(json.dumps(raw))
    argv = [
        "--json",
        "--scenario",
        str(scenario),
        "--background-reads-per-s",
        "1000",
        "--background-readers",
        "2",
        "--warmup-s",
        "3",
        "--dir",
        str(tmp_path),
    ]
    assert bench_latency.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bench"] == "latency" and doc["params"]["speed"] == 1.0
    assert {"nproc", "cpu", "loadavg"} <= set(doc["machine"])
    for name in ("floor", "loaded"):
        run = doc[name]
        assert run["truth"] == 200, run
        assert run["recall"] >= 0.9 and run["precision"] >= 0.9, run
        total = run["latency_s"]["all"]["total"]
        # (A crossing can be decided, and even received, before the truth's step has ended:
        # total may be negative. Total is decision plus a delivery that is never negative.)
        decision = run["latency_s"]["all"]["decision"]
        assert total["p99"] >= total["p50"] >= decision["p50"], (total, decision)
        assert total["max"] >= total["p99"]
        delivery = run["latency_s"]["all"]["delivery"]
        # Nothing reaches the IMS before the read that decided it (its reader time).
        assert delivery["p99"] >= delivery["p50"] >= 0, delivery
        assert set(run["latency_s"]) >= {"all", "portal"}
        assert run["cpu"]["gateway"] > 0
    background = doc["loaded"]["background"]
    assert background["reads_per_s"] > 0 and background["offered_reads_per_s"] == 1000
    assert background["published_background_movements"] == 2000  # one arrival per tag
    assert doc["floor"]["background"] is None
    goal = doc["goal"]
    assert goal["profile"] == "portal" and goal["confirm_s"] == 0.5 and goal["goal_s"] == 0.75
    assert goal["met"] == (goal["p99_total_s"] <= goal["goal_s"])
    assert goal["delivery"]["goal_s"] == 0.25
    assert set(doc["loaded_vs_floor"]) == {"total", "decision", "delivery"}
    assert not list(tmp_path.glob("fc-edge-bench-latency-*")), "the work dir is left behind"
