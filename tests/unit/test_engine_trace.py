"""tools.engine_trace replays an instance exactly as `fc-edge bench accuracy` scores it (else
what it shows would not be what the figures count), and follows one tag read by read."""

from __future__ import annotations

import re

import pytest

from gateway.bench import engine as bench
from tools import engine_trace


@pytest.mark.parametrize(("family", "model"), [("dense-floor", "bursty"), ("harsh", "independent")])
def test_the_errors_listed_are_those_the_accuracy_bench_scores(
    family: str, model: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (instance,) = bench.set_instances("tuning", [family], seeds=[1], models=[model])
    scored = bench.run_instance(instance, None, ["engine"])["engine"]
    assert engine_trace.main(["errors", family, "1", model]) == 0
    out = capsys.readouterr().out
    summary = re.search(r"F1 ([0-9.]+) at [0-9.]+ s; (\d+) tags wrong", out)
    assert summary is not None, out[-500:]
    assert float(summary.group(1)) == pytest.approx(scored["f1"], abs=1e-4)
    wrong = {m["epc"] for m in scored["unmatched_truth"] + scored["unmatched_got"]}
    assert wrong <= set(re.findall(r"^([0-9A-F]{24})  ", out, re.M))  # (the bench lists 20)


def test_a_trace_follows_one_tag_read_by_read(capsys: pytest.CaptureFixture[str]) -> None:
    run = engine_trace.Run("dense-floor", 1, "bursty")
    epc = run.truth[0]["epc"]
    assert engine_trace.main(["trace", "dense-floor", "1", "bursty", epc, "0", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    reads = [line for line in lines if re.match(r"\s+\d+\.\d{3} FLOOR-\d", line)]
    assert reads and all(0.0 <= float(line.split()[0]) <= 5.0 for line in reads)
    assert any(line.startswith("published arrived") for line in lines)


def test_latency_splits_every_match_the_bench_scores_by_kind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    (instance,) = bench.set_instances("tuning", ["dock-door"], seeds=[1], models=["independent"])
    scored = bench.run_instance(instance, None, ["engine"])["engine"]
    assert engine_trace.main(["latency", "dock-door", "1", "independent"]) == 0
    out = capsys.readouterr().out
    counts = dict(re.findall(r"^(\w[\w ]+?)\s+(\d+)  p50", out, re.M))
    assert "portal crossing" in counts and "zone move" in counts, out
    assert sum(int(n) for n in counts.values()) == scored["matched"]


def test_an_evaluation_seed_is_refused() -> None:
    from simulators.families import EVALUATION_SEEDS

    with pytest.raises(ValueError, match="not tuning seeds"):
        engine_trace.Run("backlog", EVALUATION_SEEDS[0], "independent")
