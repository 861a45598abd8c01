"""The scorer: truth lines vs published movements, on hand-made pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import score as sc

EPC_A = "3034257BF7194E4000001A85"
EPC_B = "3034257BF7194E4000001A86"


def truth(epc: str, kind: str, from_: str | None, to: str | None, sec: float) -> dict[str, Any]:
    return {"epc": epc, "type": kind, "from": from_, "to": to, "time": at(sec)}


def at(sec: float) -> str:
    whole = int(sec)
    return f"2026-01-01T00:00:{whole:02d}.{round((sec - whole) * 1000):03d}Z"


def got(
    epc: str,
    kind: str,
    from_: str | None,
    to: str | None,
    sec: float,
    received: float | None = None,
    seq: int = 1,
) -> dict[str, Any]:
    """A published movement as `fc-edge listen` prints it (the fields the scorer looks at and
    a few it must ignore)."""
    body: dict[str, Any] = {
        "schema": "fc-edge/movement/1",
        "id": f"id-{epc[-4:]}-{kind}-{sec}",
        "seq": seq,
        "site": "S1",
        "gateway": "gw-sim",
        "type": kind,
        "epc": epc,
        "item": None,
        "from": from_,
        "to": to,
        "via": "dock-07",
        "time": at(sec),
        "observed": {"reads": 3},
    }
    if received is not None:
        body["received_at"] = at(received)
    return body


TRUTH = [
    truth(EPC_A, "arrived", "YARD", "DOCK-07", 8.0),
    truth(EPC_B, "arrived", "YARD", "DOCK-07", 8.0),
    truth(EPC_A, "moved", "DOCK-07", "STAGING", 33.0),
]


def test_perfect() -> None:
    got_lines = [
        got(EPC_A, "arrived", "YARD", "DOCK-07", 8.4, received=8.5),
        got(EPC_B, "arrived", "YARD", "DOCK-07", 7.5, received=8.0),
        got(EPC_A, "moved", "DOCK-07", "STAGING", 32.0, received=34.0),
    ]
    r = sc.score(TRUTH, got_lines)
    assert (r["truth"], r["got"], r["matched"]) == (3, 3, 3)
    assert r["precision"] == r["recall"] == r["f1"] == 1.0
    assert r["unmatched_truth"] == [] and r["unmatched_got"] == []
    # latency uses received_at: 0.5, 0.0, 1.0 s
    assert r["latency_s"] == {"p50": 0.5, "p99": 1.0, "max": 1.0}
    assert r["by_type"]["arrived"] == {"truth": 2, "got": 2, "matched": 2}


def test_latency_falls_back_to_the_movement_time() -> None:
    r = sc.score(TRUTH[:1], [got(EPC_A, "arrived", "YARD", "DOCK-07", 9.25)])
    assert r["latency_s"]["p50"] == pytest.approx(1.25)


def test_missing_movement_lowers_recall() -> None:
    r = sc.score(TRUTH, [got(EPC_A, "arrived", "YARD", "DOCK-07", 8.0)])
    assert r["matched"] == 1
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(1 / 3, abs=1e-6)
    assert r["f1"] == pytest.approx(0.5)
    assert r["unmatched_truth"] == TRUTH[1:]


def test_extra_movement_lowers_precision_and_matching_is_one_to_one() -> None:
    got_lines = [
        got(EPC_A, "arrived", "YARD", "DOCK-07", 8.0),
        got(EPC_A, "arrived", "YARD", "DOCK-07", 8.5),  # a duplicate announcement
    ]
    r = sc.score(TRUTH[:1], got_lines)
    assert r["matched"] == 1 and r["precision"] == 0.5 and r["recall"] == 1.0
    (extra,) = r["unmatched_got"]
    assert extra["time"] == at(8.5) and "observed" not in extra  # a short form of the movement


def test_wrong_type_or_locations_do_not_match() -> None:
    got_lines = [
        got(EPC_A, "moved", "YARD", "DOCK-07", 8.0),  # wrong type
        got(EPC_B, "arrived", None, "DOCK-07", 8.0),  # wrong from
        got(EPC_A, "moved", "DOCK-07", "STAGING-B", 33.0),  # wrong to
    ]
    r = sc.score(TRUTH, got_lines)
    assert r["matched"] == 0 and r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0
    assert len(r["unmatched_truth"]) == 3 and len(r["unmatched_got"]) == 3
    assert r["latency_s"] == {"p50": None, "p99": None, "max": None}


def test_time_tolerance() -> None:
    late = [got(EPC_A, "arrived", "YARD", "DOCK-07", 10.5)]
    assert sc.score(TRUTH[:1], late)["matched"] == 0  # 2.5 s late, default tolerance 2 s
    assert sc.score(TRUTH[:1], late, time_tolerance_s=3.0)["matched"] == 1
    early = [got(EPC_A, "arrived", "YARD", "DOCK-07", 5.9)]
    assert sc.score(TRUTH[:1], early)["matched"] == 0
    edge = [got(EPC_A, "arrived", "YARD", "DOCK-07", 10.0)]
    assert sc.score(TRUTH[:1], edge)["matched"] == 1  # within, inclusive


def test_the_matching_is_maximal_when_windows_overlap() -> None:
    # truth at 10 and 13; movements at 11.5 and 14.9: a greedy "closest first" would pair
    # 11.5 with 13 and leave 10 unmatched; the right answer pairs both.
    t = [truth(EPC_A, "arrived", None, "Z", 10.0), truth(EPC_A, "arrived", None, "Z", 13.0)]
    g = [got(EPC_A, "arrived", None, "Z", 11.5), got(EPC_A, "arrived", None, "Z", 14.9)]
    assert sc.score(t, g)["matched"] == 2


def test_non_movements_are_ignored_and_bad_lines_counted() -> None:
    got_lines: list[dict[str, Any]] = [
        got(EPC_A, "arrived", "YARD", "DOCK-07", 8.0),
        {"state": "online", "gateway": "gw-sim"},  # a status message
        {"schema": "fc-edge/count/1", "type": "arrived", "epc": EPC_B, "time": at(8)},
        {"type": "arrived", "epc": None, "object_id": "tote-9", "time": at(8)},  # non-RFID
        {"type": "arrived", "epc": EPC_B, "from": "YARD", "to": "DOCK-07", "time": "yesterday"},
    ]
    bad_truth = [*TRUTH[:1], {"epc": EPC_A, "type": "teleported", "time": at(1)}]
    r = sc.score(bad_truth, got_lines)
    assert (r["truth"], r["got"], r["matched"]) == (1, 1, 1)
    assert r["rejected"] == {"truth": 1, "got": 1}


def test_empty_sides() -> None:
    r = sc.score([], [])
    assert r["precision"] == r["recall"] == 1.0
    r = sc.score(TRUTH, [])
    assert r["recall"] == 0.0 and r["f1"] == 0.0


def test_percentile_is_nearest_rank() -> None:
    assert sc.percentile([], 50) is None
    assert sc.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert sc.percentile(list(map(float, range(1, 101))), 99) == 99.0


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_command_prints_a_table_or_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth_file = write_jsonl(tmp_path / "truth.jsonl", TRUTH)
    got_file = write_jsonl(
        tmp_path / "got.jsonl",
        [got(EPC_A, "arrived", "YARD", "DOCK-07", 8.0, received=8.2)],
    )
    with got_file.open("a") as f:
        f.write("not json\n\n")
    args = ["--truth", str(truth_file), "--got", str(got_file)]
    assert sc.main(args) == 0
    out, err = capsys.readouterr()
    assert "precision 1.000  recall 0.333  F1 0.500" in out
    assert "latency p50 0.200 s" in out
    assert "unmatched truth (2):" in out and f"arrived {EPC_B} YARD -> DOCK-07" in out
    assert "got.jsonl:2: not JSON" in err
    assert sc.main([*args, "--json", "--time-tolerance-s", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["matched"] == 1 and result["time_tolerance_s"] == 0.5
    assert result["rejected"] == {"truth": 0, "got": 1}


def test_command_with_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth_file = write_jsonl(tmp_path / "truth.jsonl", TRUTH)
    assert sc.main(["--truth", str(truth_file), "--got", str(tmp_path / "nope.jsonl")]) == 66
    assert "cannot read" in capsys.readouterr().err


def test_scenario_truth_scores_perfectly_against_itself() -> None:
    """The scenario module's truth lines are valid scorer input (the two share the line shape)."""
    from simulators import scenario

    s = scenario.load_scenario(scenario.SCENARIOS_DIR / "store-floor.json")
    lines = scenario.truth_lines(scenario.render(s, until_s=0), 1_767_225_600_000_000)
    as_got = [
        line | {"schema": "fc-edge/movement/1", "received_at": line["time"]} for line in lines
    ]
    r = sc.score(lines, as_got)
    assert r["f1"] == 1.0 and r["latency_s"]["max"] == 0.0
