"""The honest evaluation's simulator and bench (issue #13 item 4): the second, bursty noise
model (simulators/bursty.py), reader transport (clock offsets, delivery delays, outages), the
scenario families with their seed split (simulators/families.py) and the accuracy bench
delivering reads the way the gateway receives them (gateway/bench/engine.py)."""

from __future__ import annotations

import copy
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.bench import engine as be
from gateway.engine.clock import ReaderClocks
from gateway.model import TagRead
from simulators import families as fam
from simulators import scenario as sc


def site(**changes: Any) -> dict[str, Any]:
    """A dock door (YARD | DOCK) and a staging reader with two zones; group g of 40 tags
    parked at ZONE-A for 60 s, group h of 2 tags with no steps."""
    raw: dict[str, Any] = {
        "site": "S1",
        "seed": 7,
        "duration": 60,
        "offsite": ["YARD"],
        "readers": {
            "dock": {"antennas": {"1": {"location": "YARD"}, "2": {"location": "DOCK"}}},
            "stg": {"antennas": {"1": {"location": "ZONE-A"}, "2": {"location": "ZONE-B"}}},
        },
        "portals": {
            "dock": {
                "outside": ["dock:1"],
                "inside": ["dock:2"],
                "outside_location": "YARD",
                "inside_location": "DOCK",
                "kind": "receiving",
            }
        },
        "radio": {"round_ms": 100, "read_rate": 0.7, "rssi_near": -52, "rssi_sigma": 2.0},
        "tags": {
            "g": {"sgtin": {"company": "4912345", "item": "067890", "serial_from": 1, "count": 40}},
            "h": {"epcs": ["3034257BF7194E4000001A85", "E2801160600002084A5B1C3D"]},
        },
        "timeline": [{"t": 0, "group": "g", "at": "ZONE-A"}],
    }
    raw.update(changes)
    return raw


def bursty(raw: dict[str, Any], **keys: Any) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    out["radio"] |= {"model": "bursty"} | keys
    return out


def load(raw: dict[str, Any]) -> sc.Scenario:
    return sc.scenario_from_dict(copy.deepcopy(raw), "test.json")


def on(r: sc.Rendering, reader: str, antenna: int) -> list[tuple[float, int, str, int]]:
    return [x for x in r.reads[reader] if x[1] == antenna]


def miss_runs(reads: list[tuple[float, int, str, int]], round_s: float, rounds: int) -> list[int]:
    """Lengths of the runs of rounds in which a tag was not read (per tag, within the span)."""
    by_tag: dict[str, set[int]] = {}
    for t, _, epc, _ in reads:
        by_tag.setdefault(epc, set()).add(int(t / round_s + 1e-9))
    runs = []
    for hit in by_tag.values():
        run = 0
        for k in range(rounds):
            if k in hit:
                if run:
                    runs.append(run)
                run = 0
            else:
                run += 1
    return runs


# --- the bursty model --------------------------------------------------------------------------


def test_bursty_rendering_is_deterministic_per_seed_and_leaves_the_truth_alone() -> None:
    raw = bursty(site(), cross_read_rate=0.1, crowd_n0=100, antenna_gain_sigma_db=2.0)
    first, again = sc.render(load(raw)), sc.render(load(raw))
    assert first.reads == again.reads and first.reads["stg"]
    other = sc.render(load(raw | {"seed": 8}))
    assert other.reads != first.reads
    plain = sc.render(load(site()))
    assert first.truth == other.truth == plain.truth
    assert first.reads != plain.reads  # a model of its own, not the first one's draws
    # the stream is endless and the rendering is its prefix, as with the first model
    s = load(raw)
    stream = sc.iter_reads(s)
    merged = sc.merged_reads(first)
    assert [next(stream) for _ in range(len(merged))] == merged


def test_bursty_misses_come_in_longer_runs_than_independent_ones_at_the_same_rate() -> None:
    """A Gilbert-Elliott link (good 0.9, bad 0.05, ~2 s good / ~0.6 s bad) against the first
    model at the read rate the bursty one was measured at."""
    keys = {
        "read_rate": 0.9,
        "bad_read_rate": 0.05,
        "mean_good_s": 2.0,
        "mean_bad_s": 0.6,
        "tag_spread": 0.0,
        "crowd_n0": 0,
    }
    raw = bursty(site(), **keys)
    s = load(raw)
    r = sc.render(s)
    direct = on(r, "stg", 1)
    rate = len(direct) / (40 * 600)
    assert s.radio.bursty is not None
    assert rate == pytest.approx(s.radio.bursty.mean_read_rate(0.9, 0.1), abs=0.02)
    plain = site()
    plain["radio"]["read_rate"] = round(rate, 3)
    r_plain = sc.render(load(plain))
    assert len(on(r_plain, "stg", 1)) / (40 * 600) == pytest.approx(rate, abs=0.015)
    runs_bursty = miss_runs(direct, 0.1, 600)
    runs_plain = miss_runs(on(r_plain, "stg", 1), 0.1, 600)
    assert statistics.fmean(runs_bursty) > 1.8 * statistics.fmean(runs_plain)
    assert max(runs_bursty) >= 10 > max(runs_plain)  # a second of silence: a fade, not chance


def test_crowding_lowers_the_read_rate() -> None:
    def rate(count: int) -> float:
        raw = bursty(site(), tag_spread=0.0, crowd_n0=50, mean_bad_s=0.01, bad_read_rate=0.7)
        raw["tags"]["g"]["sgtin"]["count"] = count
        r = sc.render(load(raw | {"duration": 20}))
        return len(on(r, "stg", 1)) / (count * 200)

    alone, crowded = rate(1), rate(150)
    assert alone == pytest.approx(0.7, abs=0.05)
    assert crowded == pytest.approx(0.7 / (1 + 149 / 50), abs=0.03)


def test_an_antenna_gain_offset_shifts_the_mean_rssi() -> None:
    keys = {"tag_spread": 0.0, "tag_rssi_sigma_db": 0.0, "fading_sigma_db": 1.0}
    flat = sc.render(load(bursty(site(), **keys)))
    raised = sc.render(load(bursty(site(), **keys, antenna_gain_db={"stg:1": 6.0})))
    mean_flat = statistics.fmean(x[3] for x in on(flat, "stg", 1))
    mean_raised = statistics.fmean(x[3] for x in on(raised, "stg", 1))
    assert mean_flat == pytest.approx(-52, abs=0.3)
    assert mean_raised - mean_flat == pytest.approx(6.0, abs=0.3)


def test_tags_differ_in_read_rate_and_in_rssi() -> None:
    keys = {"tag_spread": 0.5, "tag_rssi_sigma_db": 3.0, "mean_bad_s": 0.01, "crowd_n0": 0}
    raw = bursty(site(), read_rate=0.5, bad_read_rate=0.5, **keys)
    r = sc.render(load(raw))
    per_tag = Counter(x[2] for x in on(r, "stg", 1))
    rates = [n / 600 for n in per_tag.values()]
    binomial_sd = (0.5 * 0.5 / 600) ** 0.5  # what independent draws at one rate would give
    assert statistics.pstdev(rates) > 5 * binomial_sd
    levels: dict[str, list[int]] = {}
    for _, _, epc, rssi in on(r, "stg", 1):
        levels.setdefault(epc, []).append(rssi)
    means = [statistics.fmean(v) for v in levels.values()]
    assert statistics.pstdev(means) > 1.5
    # one draw drives both: the tags read most often are the strong ones
    by_rate = sorted(levels, key=lambda e: per_tag[e])
    low, high = by_rate[:10], by_rate[-10:]
    assert statistics.fmean(statistics.fmean(levels[e]) for e in high) > statistics.fmean(
        statistics.fmean(levels[e]) for e in low
    )


def test_fading_is_slow_and_correlated_in_time() -> None:
    """Per-read scatter 0.5 dB, fading 4 dB with a 5 s correlation time: successive reads of
    one tag are close; reads seconds apart are not."""
    raw = site(tags={"g": {"epcs": ["E2801160600002084A5B1C3D"]}}, duration=600)
    raw["radio"] |= {"rssi_sigma": 0.5, "read_rate": 1.0}
    keys = {"bad_read_rate": 1.0, "fading_sigma_db": 4.0, "fading_tau_s": 5.0}
    r = sc.render(load(bursty(raw, tag_rssi_sigma_db=0.0, **keys)))
    levels = [x[3] for x in on(r, "stg", 1)]
    assert statistics.pstdev(levels) == pytest.approx(4.0, abs=1.0)
    step = [abs(a - b) for a, b in zip(levels, levels[1:], strict=False)]
    apart = [abs(a - b) for a, b in zip(levels, levels[100:], strict=False)]  # 10 s
    assert statistics.fmean(step) < 1.5 < statistics.fmean(apart)


def test_bursty_keys_need_the_bursty_model_and_real_antennas() -> None:
    raw = site()
    raw["radio"]["bad_read_rate"] = 0.1
    with pytest.raises(sc.ScenarioError, match=r"\$\.radio: 'model' is a required property"):
        load(raw)
    raw["radio"]["model"] = "independent"
    with pytest.raises(sc.ScenarioError, match=r"\$\.radio\.model: 'bursty' was expected"):
        load(raw)
    with pytest.raises(sc.ScenarioError, match=r"antenna_gain_db\.stg:9: no such antenna"):
        load(bursty(site(), antenna_gain_db={"stg:9": 1.0}))


# --- reader transport --------------------------------------------------------------------------


def with_transport(**stg: Any) -> dict[str, Any]:
    raw = site()
    raw["readers"]["stg"] |= stg
    return raw


def test_without_transport_arrival_is_the_stamp_is_the_read_time() -> None:
    r = sc.render(load(site()))
    for reader, reads in r.reads.items():
        assert r.deliveries[reader] == [(t, t, a, e, rssi) for t, a, e, rssi in reads]


def test_a_clock_offset_moves_the_stamps_only() -> None:
    plain = sc.render(load(site()))
    r = sc.render(load(with_transport(clock_offset_s=2.0)))
    made = plain.reads["stg"]
    assert [x[1:] for x in r.reads["stg"]] == [x[1:] for x in made]
    assert all(
        abs(stamp - (t + 2.0)) < 1e-6 and arrival == t
        for (arrival, stamp, *_), (t, *_) in zip(r.deliveries["stg"], made, strict=True)
    )
    assert r.truth == plain.truth


def test_a_delivery_delay_with_jitter_keeps_the_readers_order() -> None:
    plain = sc.render(load(site()))
    r = sc.render(load(with_transport(delivery_delay_s=1.2, delivery_jitter_s=0.3)))
    made = plain.reads["stg"]
    delivered = r.deliveries["stg"]
    assert len(delivered) == len(made)
    late = [arrival - stamp for arrival, stamp, *_ in delivered]
    assert min(late) >= 1.2 - 1e-6 and max(late) <= 1.5 + 1e-6
    assert statistics.fmean(late) > 1.3  # jittered, not a constant
    arrivals = [d[0] for d in delivered]
    assert arrivals == sorted(arrivals)  # one connection: nothing overtakes
    assert [d[1] for d in delivered] == [t for t, *_ in made]  # stamps are the read times


def test_a_buffered_outage_delivers_its_reads_at_once_when_it_ends_in_order() -> None:
    r = sc.render(load(with_transport(outages=[{"at_s": 10, "for_s": 5, "buffer": True}])))
    delivered = r.deliveries["stg"]
    held = [d for d in delivered if 10 <= d[1] < 15]
    assert held and {d[0] for d in held} == {15.0}
    assert [d[1] for d in held] == sorted(d[1] for d in held)
    assert not [d for d in delivered if 10 <= d[0] < 15]  # nothing arrives while it is out
    assert len(delivered) == len(sc.render(load(site())).reads["stg"])  # nothing lost


def test_an_unbuffered_outage_loses_its_reads() -> None:
    r = sc.render(load(with_transport(outages=[{"at_s": 10, "for_s": 5, "buffer": False}])))
    assert not [x for x in r.reads["stg"] if 10 <= x[0] < 15]
    assert not [d for d in r.deliveries["stg"] if 10 <= d[1] < 15]
    assert [x for x in r.reads["stg"] if x[0] >= 15]


def test_outages_of_one_reader_must_not_overlap() -> None:
    raw = with_transport(outages=[{"at_s": 10, "for_s": 5}, {"at_s": 12, "for_s": 1}])
    with pytest.raises(sc.ScenarioError, match=r"\$\.readers\.stg\.outages\[1\]: starts at 12"):
        load(raw)


def events(raw: dict[str, Any], group: str = "h") -> list[tuple[Any, ...]]:
    s = load(raw)
    epc = s.groups[group][0]
    return [
        (x["type"], x["from"], x["to"], x["t_s"])
        for x in sc.render(s, until_s=0).truth
        if x["epc"] == epc
    ]


def test_what_an_unbuffered_outage_hides_is_not_in_the_truth() -> None:
    timeline = [
        {"t": 0, "group": "h", "at": "ZONE-A"},
        {"t": 11, "group": "h", "to": "ZONE-B", "duration": 2},  # while stg is out: seen at 15
        {"t": 30, "group": "h", "to": "ZONE-A", "duration": 1},  # out again: back and forth
        {"t": 33, "group": "h", "to": "ZONE-B", "duration": 1},  # collapses into nothing
        {"t": 50, "group": "h", "leave": True},
    ]
    out = [{"at_s": 10, "for_s": 5, "buffer": False}, {"at_s": 29, "for_s": 8, "buffer": False}]
    assert events(with_transport(outages=out) | {"timeline": timeline}) == [
        ("arrived", None, "ZONE-A", 0.0),
        ("moved", "ZONE-A", "ZONE-B", 15.0),
        ("departed", "ZONE-B", None, 50.0),
    ]
    buffered = [dict(o, buffer=True) for o in out]  # buffered: the gateway sees it all later
    assert events(with_transport(outages=buffered) | {"timeline": timeline}) == events(
        site(timeline=timeline)
    )


def test_a_crossing_hidden_by_an_outage_arrives_from_nowhere_when_it_ends() -> None:
    raw = site(timeline=[{"t": 4, "group": "h", "through": "dock", "to": "DOCK", "duration": 4}])
    assert events(raw) == [("arrived", "YARD", "DOCK", 8.0)]
    raw["readers"]["dock"]["outages"] = [{"at_s": 3, "for_s": 7, "buffer": False}]
    assert events(raw) == [("arrived", None, "DOCK", 10.0)]


def test_observed_events_without_blind_spans_are_the_plans() -> None:
    """The truth's second path (used with unbuffered outages) agrees with the first on every
    bundled scenario when nothing is hidden."""
    bundled = [
        p
        for p in sorted(sc.SCENARIOS_DIR.rglob("*.json"))
        if json.loads(p.read_text(encoding="utf-8")).get("$schema", "").endswith(".schema.json")
    ]
    assert len(bundled) >= 6
    for path in bundled:
        s = sc.load_scenario(path)
        plan = sc.plan(s)
        walker_events = sorted(plan.events, key=lambda e: (e.group, e.t_s))
        by_group: list[sc.TruthEvent] = []
        for group in s.groups:
            walker = sc._GroupWalker(s, group, [])
            steps = sorted((x for x in s.timeline if x.group == group), key=lambda x: x.t)
            for step in steps:
                walker.apply(step)
            walker.finish()
            by_group += sc._observed_events(s, group, walker.moves, {})
        assert sorted(by_group, key=lambda e: (e.group, e.t_s)) == walker_events, path.name


# --- the bench: delivery as the gateway receives it ---------------------------------------------


class Recorder:
    """A runner that records what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def feed(self, reads: Any) -> Any:
        self.calls.append(("feed", reads[0].reader, [r.time_us for r in reads]))
        return be.Step()

    def tick(self, now_us: int) -> Any:
        return be.Step()

    def progress(self, source: str, time_us: int) -> None:
        self.calls.append(("progress", source, time_us))

    def source_down(self, source: str) -> None:
        self.calls.append(("down", source))


def us(s: float) -> int:
    return be.EPOCH_US + round(s * 1e6)


def test_deliver_batches_per_reader_by_arrival_with_progress_and_source_down() -> None:
    def read(reader: str, stamp_s: float) -> be.Delivered:
        return (0, TagRead("E" * 24, reader, 1, -50.0, us(stamp_s)))

    deliveries = {
        "a": [(us(0.01), read("a", 0.01)[1]), (us(0.07), read("a", 0.06)[1])],
        "b": [(us(0.02), read("b", -1.0)[1]), (us(0.2), read("b", 0.1)[1])],
    }
    runner = Recorder()
    be.deliver(runner, deliveries, us(0.3), outages=[(us(0.12), us(0.15), "a")])
    assert runner.calls == [
        ("feed", "a", [us(0.01)]),
        ("progress", "a", us(0.01)),
        ("feed", "b", [us(-1.0)]),  # by arrival, whatever the stamp says
        ("progress", "b", us(0.02)),
        ("feed", "a", [us(0.06)]),
        ("progress", "a", us(0.07)),
        ("down", "a"),
        ("feed", "b", [us(0.1)]),
        ("progress", "b", us(0.2)),
    ]


def test_the_bench_puts_reader_stamps_on_the_gateway_clock() -> None:
    raw = with_transport(clock_offset_s=2.0)
    r = sc.render(load(raw), until_s=5)
    raw_stamps = be.delivered_reads(r, None)["stg"]
    assert all(read.time_us - arrival == 2_000_000 for arrival, read in raw_stamps)
    corrected = be.delivered_reads(r, ReaderClocks())["stg"]
    assert all(abs(read.time_us - arrival) < 1000 for arrival, read in corrected)


# --- families and the seed split ----------------------------------------------------------------


def test_the_seed_sets_are_disjoint_and_the_evaluation_set_cannot_be_narrowed() -> None:
    assert not set(fam.TUNING_SEEDS) & set(fam.EVALUATION_SEEDS)
    assert len(fam.EVALUATION_SEEDS) == 10
    assert set(fam.RETIRED_EVALUATION_SEEDS) <= set(fam.TUNING_SEEDS)  # looked at: tuning now
    with pytest.raises(ValueError, match="only the tuning set"):
        be.set_instances("evaluation", ["backlog"], seeds=[fam.EVALUATION_SEEDS[0]])
    with pytest.raises(ValueError, match="not tuning seeds"):
        be.set_instances("tuning", ["backlog"], seeds=[fam.EVALUATION_SEEDS[0]])


def test_every_family_makes_valid_scenarios_with_both_models() -> None:
    shipped = be.shipped_scenarios()
    for family in fam.FAMILIES:
        for model in fam.MODELS:
            raw = fam.variant(family, 3, model, be.harsh_variant, shipped)
            assert raw == fam.variant(family, 3, model, be.harsh_variant, shipped)
            s = sc.scenario_from_dict(copy.deepcopy(raw), family)
            assert s.radio.model == model
            assert sc.truth(s)
        plain = fam.variant(family, 3, "independent", be.harsh_variant, shipped)
        noisy = fam.variant(family, 3, "bursty", be.harsh_variant, shipped)
        assert plain["timeline"] == noisy["timeline"]  # only the noise differs


def test_families_match_the_findings() -> None:
    conveyor = load(fam.shipped_instance("fast-conveyor"))
    assert conveyor.radio.round_ms == 50 and conveyor.radio.read_rate == 0.9
    assert (conveyor.radio.cross_read_rate, conveyor.radio.cross_read_drop_db) == (0.1, 9.0)
    floor = load(fam.shipped_instance("dense-floor"))
    assert len(floor.readers["floor"]) == 4 and floor.radio.round_ms == 200
    assert (floor.radio.read_rate, floor.radio.rssi_sigma) == (0.6, 5.0)
    assert (floor.radio.cross_read_rate, floor.radio.cross_read_drop_db) == (0.25, 7.0)
    pick = load(fam.shipped_instance("pick-pack"))
    assert pick.transport["pick"].clock_offset_s == 2.0
    assert pick.transport["pack"].delivery_delay_s == 1.2
    assert len([g for g in pick.groups if g.startswith("tote-")]) == 96
    backlog = load(fam.shipped_instance("backlog"))
    per_reader = Counter(g.rsplit("-", 1)[0] for g in backlog.groups)
    assert {r: n * 25 for r, n in per_reader.items()} == {"tun-a": 1200, "tun-b": 1200}
    for t in backlog.transport.values():
        assert [o.at_s for o in t.outages] == [6.0, 16.0] and all(o.buffer for o in t.outages)
    assert load(fam.shipped_instance("dock-door")).radio.model == "bursty"


def test_the_shipped_family_files_are_the_generators_output() -> None:
    """Regenerate with `python -m simulators.families --write` after changing a generator."""
    for family in fam.GENERATORS:
        path = fam.FAMILIES_DIR / f"{family}.json"
        assert path.read_text(encoding="utf-8") == fam.dump(fam.shipped_instance(family))
        assert json.loads(path.read_text(encoding="utf-8"))["$schema"] == (
            "../../scenario.schema.json"
        )


def test_the_accuracy_bench_runs_a_tuning_family_end_to_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["accuracy", "--json", "--set", "tuning", "--family", "pick-pack", "--seeds", "1"]
    assert be.main([*argv, "--runner", "engine", "--runner", "last_antenna_wins"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["set"] == "tuning" and doc["seeds"] == [1]
    assert set(doc["families"]) == {"pick-pack", "pick-pack+bursty"}
    assert [s["scenario"] for s in doc["scenarios"]] == ["pick-pack#1", "pick-pack+bursty#1"]
    for scenario in doc["scenarios"]:
        assert scenario["truth"] == 96 * 4 and scenario["transport"]
        engine = scenario["engine"]
        assert {"precision", "recall", "f1", "parked_false_moves", "strict_2s"} <= set(engine)
        assert 0 < engine["f1"] <= 1
    family = doc["families"]["pick-pack"]["engine"]
    assert family["truth"] == 384
    assert family["f1"] == pytest.approx(doc["scenarios"][0]["engine"]["f1"], abs=1e-6)
    total = doc["aggregate"]["engine"]
    assert total["truth"] == 768 and doc["aggregate"]["scenarios"] == 2
    assert total["matched"] == sum(s["engine"]["matched"] for s in doc["scenarios"])
    assert doc["clock_correction"] == "ReaderClocks"


def test_the_shipped_set_lists_every_shipped_scenario_file() -> None:
    instances = be.set_instances("shipped")
    names = {i.name for i in instances}
    assert {"conveyor.json", "backlog.json", "dock-door.json"} <= names
    assert {i.family for i in instances if i.name == "dock-door.json"} == {"dock-door+bursty"}
    assert all(i.path is not None and Path(i.path).exists() for i in instances)
