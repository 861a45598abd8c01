"""The engine bench's steady-state workload (`fc-edge bench engine`, gateway.bench.engine
SteadySite) really does what a site does at steady state: ticks, KEEPALIVEs, arrivals,
moves, departures by absence, evictions at the cap, forgetting and refreshes of persisted
states. Small sizes; nothing here asserts on speed."""

from __future__ import annotations

import json

import pytest

from gateway.bench import engine as bench_engine


def test_the_steady_state_ticks_departs_evicts_forgets_and_refreshes() -> None:
    # 2,000 tags at their cap, reader time at 600 reads/s: two runs of 5 s of reader time.
    doc = bench_engine.steady_state(2000, 3000, 2, 600.0)
    assert doc["reader_time_s"] == pytest.approx(10.0)
    assert doc["ticks"] == 40  # every 250 ms of reader time
    assert doc["keepalives"] == 10  # five readers, every 5 s each
    assert doc["flows"] == {"arrivals": 40, "leaving": 40, "moves": 10, "yard_visits": 10}
    moves = doc["movements"]
    assert moves["arrived"] > 0 and moves["moved"] > 0
    assert moves["departed"] > 0  # by absence: the stock that left 30 s before
    # At the cap the least recently seen are evicted: the stock that left long ago, never a
    # present tag; the yard tags are forgotten first (yard_forget_s is shorter).
    assert doc["evicted"]["absent"] > 0 and doc["evicted"]["present"] == 0
    assert 0 < doc["forgotten"] <= doc["flows"]["yard_visits"] + 2
    assert doc["yard_confirmations"] > 0
    assert doc["refreshes"] > 0  # present tags staying put re-emit their state
    assert 0.98 * 2000 <= doc["tracked_tags"] <= 2000
    assert doc["cpu_reads_per_s"] > 0 and doc["cpu_floor_reads_per_s"] > 0


def test_the_engine_bench_reports_the_steady_state_beside_the_feed_only_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["engine", "--json", "--tags", "2000", "--reads", "3000", "--runs", "1"]
    argv += ["--reader-rate", "600", "--memory-tags", "0"]
    assert bench_engine.main(argv) == 0
    (speed,) = json.loads(capsys.readouterr().out)["speed"]
    assert speed["tracked_tags"] == 2000 and speed["reads_per_s"] > 0  # feed-only, as before
    steady = speed["steady_state"]
    assert steady["max_tags"] == 2000 and steady["hot_loop"] == speed["hot_loop"]
    ratio = steady["cpu_reads_per_s"] / steady["cpu_floor_reads_per_s"]
    assert steady["cpu_ratio_to_floor"] == pytest.approx(ratio, abs=1e-3)
    feed_only = steady["cpu_reads_per_s"] / speed["cpu_reads_per_s"]
    assert steady["cpu_ratio_to_feed_only"] == pytest.approx(feed_only, abs=1e-3)
    assert steady["goal_cpu_reads_per_s"] == 300_000
    assert steady["ticks"] > 0 and steady["movements"]["departed"] > 0

    assert bench_engine.main([*argv, "--no-steady-state"]) == 0
    (speed,) = json.loads(capsys.readouterr().out)["speed"]
    assert "steady_state" not in speed
