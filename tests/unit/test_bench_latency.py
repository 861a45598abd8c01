"""The latency bench's parts that need no process: the config merge, the scenario cut, the
latency split and the goal. The whole bench runs in tests/e2e/test_bench_latency.py."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway import bench, cli
from gateway.bench import latency as bench_latency
from gateway.bench.latency import (
    Profiles,
    cut_scenario,
    goal_of,
    last_step_end,
    latency_figures,
    merge_config,
    profiles_of,
)
from gateway.model import iso_ms
from simulators.scenario import find_scenario, gateway_config_text, load_scenario

T0_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
EPC = "3034257BF7194E4000000001"


def dock_receive_config(tmp_path: Path) -> str:
    scenario = load_scenario(find_scenario("dock-receive"))
    return gateway_config_text(
        scenario,
        {"dock-07": 5001, "staging": 5002},
        "127.0.0.1",
        state_dir=str(tmp_path / "state"),
        mqtt_url="mqtt://127.0.0.1:1883",
    )


def test_merge_serves_metrics_and_adds_one_zone_per_background_reader(tmp_path: Path) -> None:
    text = dock_receive_config(tmp_path)
    assert tomllib.loads(text)["metrics"] == {"enabled": False}
    merged = merge_config(text, 9999, {"r0": 6000, "r1": 6001})
    conf = tomllib.loads(merged)
    assert conf["metrics"] == {"listen": "127.0.0.1:9999"}
    readers = {r["name"]: r for r in conf["readers"]}
    assert set(readers) == {"dock-07", "staging", "r0", "r1"}
    assert readers["r1"]["port"] == 6001 and readers["r1"]["driver"] == "llrp"
    assert readers["r1"]["antennas"] == {"1": {"location": "Z-r1"}, "2": {"location": "Z-r1"}}
    assert {"Z-r0", "Z-r1", "DOCK-07", "STAGING", "YARD"} == set(conf["locations"])
    assert conf["portals"]["dock-07"]["inside"] == ["dock-07:2"]  # the scenario's part unchanged


def test_merge_refuses_a_background_reader_named_like_a_scenario_reader(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clashes"):
        merge_config(dock_receive_config(tmp_path), 9999, {"staging": 6000})


def test_profiles_are_the_engines_portal_and_zone(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(merge_config(dock_receive_config(tmp_path), 9999, {"r0": 6000}))
    profiles = profiles_of(path)
    assert profiles.of_location["DOCK-07"] == "portal" and profiles.of_location["YARD"] == "portal"
    assert profiles.of_location["STAGING"] == "zone" and profiles.of_location["Z-r0"] == "zone"
    assert profiles.confirm_s == {"portal": 0.5, "zone": 0.75}
    assert profiles.reorder_window_s == 0.5


def test_quick_cut_keeps_every_step_and_refuses_to_cut_one() -> None:
    raw = json.loads(find_scenario("dock-receive").read_text())
    assert last_step_end(raw) == 44.0
    cut = cut_scenario(raw, 47.0)
    assert cut["duration"] == 47.0 and cut["timeline"] == raw["timeline"]
    assert raw["duration"] == 90  # the original is left alone
    with pytest.raises(ValueError):
        cut_scenario(raw, 43.0)


def line(kind: str, from_: str | None, to: str | None, t_s: float) -> dict[str, Any]:
    return {"epc": EPC, "type": kind, "from": from_, "to": to, "time": iso_ms(T0_US + t_s * 1e6)}


def got(truth: dict[str, Any], decided_s: float, received_s: float) -> dict[str, Any]:
    t = T0_US + round(decided_s * 1e6)
    return {**truth, "time": iso_ms(t), "received_at": iso_ms(t + round(received_s * 1e6))}


PROFILES = Profiles(
    {"YARD": "portal", "DOCK-07": "portal", "STAGING": "zone"}, {"portal": 0.5, "zone": 0.75}, 0.5
)


def test_latency_is_split_into_decision_and_delivery_per_profile() -> None:
    arrived = line("arrived", "YARD", "DOCK-07", 10.0)
    moved = line("moved", "DOCK-07", "STAGING", 40.0)
    gone = line("departed", "STAGING", None, 60.0)
    published = [
        got(arrived, 10.2, 0.6),  # decided 0.2 s after the truth, delivered 0.6 s later
        got(moved, 40.9, 0.7),
        got(gone, 60.0, 30.0),  # a departure by absence waits departed_after_s
        {**line("arrived", None, "STAGING", 20.0), "epc": "30340000000000000000000A"},
        {"type": "arrived", "epc": "30340000000000000000000B", "from": None, "to": "X"},  # no time
    ]
    result = latency_figures([arrived, moved, gone], published, 3.0, PROFILES)
    assert result["recall"] == 1.0 and result["precision"] == 0.75
    assert result["rejected"] == {"truth": 0, "got": 1}
    lat = result["latency_s"]
    assert set(lat) == {"all", "portal", "zone", "absence"}
    assert lat["portal"]["decision"]["p50"] == pytest.approx(0.2, abs=0.002)
    assert lat["portal"]["delivery"]["p50"] == pytest.approx(0.6, abs=0.002)
    assert lat["portal"]["total"]["p50"] == pytest.approx(0.8, abs=0.002)
    assert lat["zone"]["total"]["p99"] == pytest.approx(1.6, abs=0.002)
    assert lat["absence"]["total"]["max"] == pytest.approx(30.0, abs=0.002)
    assert lat["all"]["total"]["n"] == 3 and lat["all"]["total"]["max"] == pytest.approx(30.0)


def test_goal_is_met_only_when_the_p99_is_within_confirm_plus_a_quarter_second() -> None:
    arrived = line("arrived", "YARD", "DOCK-07", 10.0)
    moved = line("moved", "DOCK-07", "STAGING", 40.0)
    fast = latency_figures(
        [arrived, moved], [got(arrived, 10.1, 0.2), got(moved, 40.1, 0.2)], 3.0, PROFILES
    )
    goal = goal_of(fast, PROFILES)
    assert goal["profile"] == "portal" and goal["goal_s"] == 0.75
    assert goal["p99_total_s"] == pytest.approx(0.3, abs=0.002) and goal["met"] is True
    assert goal["per_profile"]["zone"]["goal_s"] == 1.0 and goal["all_profiles_met"] is True
    assert goal["delivery"]["goal_s"] == 0.25 and goal["delivery"]["met"] is True
    slow = latency_figures(
        [arrived, moved], [got(arrived, 10.1, 0.8), got(moved, 40.1, 0.6)], 3.0, PROFILES
    )
    goal = goal_of(slow, PROFILES)
    assert goal["met"] is False and goal["all_profiles_met"] is False
    assert goal["per_profile"]["zone"]["met"] is True
    assert goal["delivery"]["p99_delivery_s"] == pytest.approx(0.8, abs=0.002)
    assert goal["delivery"]["met"] is False


def test_nothing_matched_meets_no_goal() -> None:
    arrived = line("arrived", "YARD", "DOCK-07", 10.0)
    result = latency_figures([arrived], [], 3.0, PROFILES)
    assert result["recall"] == 0.0
    goal = goal_of(result, PROFILES)
    assert goal["met"] is False and goal["delivery"]["met"] is False


def test_latency_is_registered_with_the_benches() -> None:
    assert bench.MAINS["latency"] is bench.latency_main
    assert cli.BENCHES["latency"] == "gateway.bench.latency:main"
    target, full, quick = bench.ALL["latency"]
    assert target == "gateway.bench.latency:main" and full == ["--json"] and quick is None
    assert bench_latency.main is not None
    doc = {
        "loaded": {
            "latency_s": {"all": {"total": {"p50": 0.5, "p99": 2.0}}},
            "background": {"reads_per_s": 9000},
            "recall": 1.0,
        },
        "floor": {"latency_s": {"all": {"total": {"p99": 1.9}}}},
        "goal": {"profile": "portal", "goal_s": 0.75, "p99_total_s": 2.1, "met": False},
    }
    head = bench.headline({"latency": doc})["latency"]
    assert head["p99_total_s"] == 2.0 and head["floor_p99_total_s"] == 1.9
    assert head["goal"]["met"] is False and head["background_reads_per_s"] == 9000
