"""Smoke tests of the benchmarks: each runs with tiny sizes against real SQLite files and a real
mosquitto, and prints one valid JSON document with the expected keys. Nothing here asserts on
speed (figures come from `fc-edge bench`, with their floor measured in the same run)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import bench
from gateway.model import decode_epc


def run_json(capsys: pytest.CaptureFixture[str], main: Any, argv: list[str]) -> dict[str, Any]:
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, dict)
    return doc


def assert_machine(doc: dict[str, Any]) -> None:
    assert {"nproc", "cpu", "python", "loadavg"} <= set(doc["machine"])


def test_bench_movements_are_realistic_and_decodable() -> None:
    messages, states, cursors = bench.batch_of(0, 3)
    body = messages[0].body
    assert body["type"] == "arrived" and body["from"] == "YARD" and body["to"] == "DOCK-03"
    assert body["item"]["gtin"] and body["observed"]["reads"] == 12
    assert decode_epc(body["epc"])["scheme"] == "sgtin"
    assert len({m.body["epc"] for m in messages}) == 3
    assert [s.epc for s in states] == [m.body["epc"] for m in messages]
    assert cursors == {"replay:dock-03": 3}


def test_outbox_bench_prints_figure_floor_and_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, bench.outbox_main, ["--json", "--movements", "1200", "--runs", "1"])
    assert doc["bench"] == "outbox"
    assert_machine(doc)
    assert doc["params"]["movements"] == 1200 and doc["params"]["batch"] == 500
    for mode in ("full", "normal"):
        figures = doc[mode]
        assert figures["movements_per_s"] > 0 and figures["floor_rows_per_s"] > 0
        assert figures["ratio"] > 0 and isinstance(figures["goal_met"], bool)


def test_drain_bench_drains_through_the_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(
        capsys, bench.drain_main, ["--json", "--messages", "700", "--runs", "1", "--window", "50"]
    )
    assert doc["bench"] == "drain"
    assert_machine(doc)
    assert doc["params"]["messages"] == 700 and doc["params"]["window"] == 50
    assert doc["msgs_per_s"] > 0 and doc["floor_msgs_per_s"] > 0 and doc["ratio"] > 0
    (run,) = doc["pipeline_runs"]
    assert run["messages"] == 700 and run["depth_after"] == 0
    assert doc["floor_runs"][0]["messages"] == 700


def test_reduction_bench_counts_reads_per_movement(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, bench.reduction_main, ["--json"])
    assert doc["params"]["scenario"] == "dock-receive.json"
    assert doc["reads"] > doc["engine"]["messages"] > 0
    assert doc["reads_per_message"] == doc["engine"]["reads_per_message"]
    assert 0.0 <= doc["recall"] <= 1.0
    assert "last_antenna_wins" in doc


def test_identity_recall_matches_one_to_one() -> None:
    truth = [{"epc": "ab", "type": "arrived", "from": None, "to": "X"}] * 2
    got = [{"epc": "AB", "type": "arrived", "from": None, "to": "X"}]
    assert bench.identity_recall(truth, got) == 0.5
    assert bench.identity_recall([], got) == 1.0


def test_all_runs_each_bench_in_a_subprocess(capsys: pytest.CaptureFixture[str]) -> None:
    # memory starts a real idle gateway; reduction is pure. Both are the quick ones.
    doc = run_json(capsys, bench.all_main, ["--json", "--quick", "--only", "memory,reduction"])
    assert doc["bench"] == "all" and doc["quick"] is True
    assert_machine(doc)
    assert set(doc["benches"]) == {"memory", "reduction"}
    assert (
        doc["summary"]["memory"]["rss_idle_mib"]
        > doc["summary"]["memory"]["floor_bare_python_mib"]
        > 0
    )
    assert doc["summary"]["reduction"]["reads_per_message"] > 1


def test_a_failing_child_is_reported_not_fatal() -> None:
    result = bench.run_child("gateway.bench:outbox_main", ["--movements", "-1"], 60.0)
    assert result["error"].startswith("exit status") and "--movements" in result["stderr_tail"]
    assert bench.headline({"outbox": result})["outbox"] == {"error": result["error"]}


@pytest.mark.parametrize(("loop", "hot_loop"), [("default", "c"), ("python", "python")])
def test_engine_bench_says_which_hot_loop_ran(
    capsys: pytest.CaptureFixture[str], loop: str, hot_loop: str
) -> None:
    from gateway.bench import engine as bench_engine

    argv = ["engine", "--json", "--tags", "2000", "--reads", "4000", "--runs", "1"]
    doc = run_json(capsys, bench_engine.main, [*argv, "--memory-tags", "2000", "--loop", loop])
    assert doc["bench"] == "engine"
    assert_machine(doc)
    (speed,) = doc["speed"]
    assert speed["hot_loop"] == hot_loop and speed["tracked_tags"] == 2000
    assert speed["reads_per_s"] > 0 and speed["floor_reads_per_s"] > 0
    ratio = speed["reads_per_s"] / speed["floor_reads_per_s"]
    assert speed["ratio_to_floor"] == pytest.approx(ratio, abs=1e-3)
    assert 100 < doc["memory"]["bytes_per_tag"] < 1000
