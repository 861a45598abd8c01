"""Benchmarks of the movement engine: quality against scenario truth, and speed.

    fc-edge bench accuracy --json [--scenario FILE ...] [--time-tolerance-s S]
    fc-edge bench accuracy --json --set shipped|tuning|evaluation [--family F ...]
                           [--seeds 1-3] [--model independent|bursty] [--runner R ...] [--jobs N]
    fc-edge bench engine --json [--tags 10000,100000,1000000] [--reads 300000] [--runs 5]
                                [--loop default|python] [--no-steady-state]

`accuracy` renders each scenario (default: every shipped one with readers), derives the
gateway config it describes (write_gateway_config -> gateway.config.load), and delivers the
reads the way the gateway receives them (deliver): on the arrival clock, in 50 ms windows, one
batch per reader, each read's stamp put on the gateway clock by the engine's reader clock
correction, progress() after each batch and at every KEEPALIVE, source_down() when an outage
starts, tick() every 250 ms of the same clock. It runs on until the scenario's duration plus
the longest departed_after_s plus 5 s (or the last delivery), and scores the movements against
the truth: the engine and two baselines (last-antenna-wins, EdgeX's published rule) on the same
reads and config. Without transport settings every read arrives at its own stamp.

`--set` runs a set and reports per scenario, per family and aggregate figures: `shipped` (every
shipped scenario file), `tuning` (every family of simulators/families.py with both noise models
on the tuning seeds) or `evaluation` (the same on the FROZEN evaluation seeds: run it only to
report a finished change, never while tuning; the seed sets are defined in
simulators/families.py).

`engine` measures reads/s through feed() on one core with N tracked tags (median of the runs),
the bytes per tracked tag by tracemalloc, and the floor measured in the same run: a bare loop
that only updates a dict per read. The speed figure is reported as a ratio to that floor, with
the hot loop that ran ("c": gateway/engine/_hotloop.c; "python": --loop python, or a box
where it was not built). Beside each size's feed-only figures, `steady_state` measures the same
number of tracked tags doing what a site does (SteadySite): tags arriving, moving and leaving,
yard tags passing, departures by absence, evictions at the cap (max_tags = the size),
forgetting, refreshes of persisted states, a feed per reader and report, KEEPALIVEs and ticks,
with the floor on the same reads; the work done is counted next to the rate.
"""

from __future__ import annotations

import argparse
import copy
import gc
import heapq
import json
import math
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.engine import Engine, EngineConfig, Step
from gateway.engine.baselines import EdgeXRule, LastAntennaWins
from gateway.engine.clock import ReaderClocks
from gateway.engine.core import PythonLoopEngine
from gateway.model import Movement, TagRead, iso_ms

EPOCH_US = 1_764_000_000_000_000  # scenario t=0 on the reader clock (late 2025)
BATCH_US = 50_000
TICK_US = 250_000
KEEPALIVE_US = 5_000_000  # the LLRP driver's default keepalive_s
GOAL_READS_PER_S = 300_000  # per core, at 1M tracked tags (issue 13 item 5)


class _Runner(Protocol):
    def feed(self, reads: Sequence[TagRead]) -> Step: ...
    def tick(self, now_us: int) -> Step: ...
    def progress(self, source: str, time_us: int) -> None: ...
    def source_down(self, source: str) -> None: ...


# --- accuracy ---------------------------------------------------------------------------------


def _rates(rate: float, floor: float, cpu_rate: float, cpu_floor: float) -> dict[str, Any]:
    """A speed figure with the floor measured in the same run, wall and CPU time alike."""
    return {
        "reads_per_s": round(rate),
        "floor_reads_per_s": round(floor),
        "ratio_to_floor": round(rate / floor, 4),
        "cpu_reads_per_s": round(cpu_rate),
        "cpu_floor_reads_per_s": round(cpu_floor),
        "cpu_ratio_to_floor": round(cpu_rate / cpu_floor, 4),
    }


def scenario_config(scenario: Any) -> EngineConfig:
    """The EngineConfig of the gateway config the scenario derives (replay driver: the config
    loader needs a driver it can import; the engine only needs the antennas)."""
    from gateway.config import load
    from simulators.scenario import write_gateway_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.toml"
        write_gateway_config(
            scenario,
            {},
            "",
            path,
            state_dir=tmp,
            mqtt_url="mqtt://127.0.0.1:1883",
            driver="replay",
            reader_options={"file": "capture.jsonl"},
        )
        return EngineConfig.from_settings(load(path))


def scenario_reads(rendering: Any) -> list[TagRead]:
    """Every reader's reads in one list in reader-time order, stamped as the readers report
    them (the golden tests replay this)."""
    from simulators.scenario import merged_reads

    return [
        TagRead(epc, reader, antenna, float(rssi), EPOCH_US + round(t * 1e6))
        for t, reader, antenna, epc, rssi in merged_reads(rendering)
    ]


Delivered = tuple[int, TagRead]  # (arrival_us on the gateway clock, the read)


def delivered_reads(
    rendering: Any, clocks: ReaderClocks | None = None
) -> dict[str, list[Delivered]]:
    """reader -> its reads as the gateway receives them, in arrival order: (arrival_us, read),
    the read's time put on the gateway clock by `clocks` (None: the reader's stamp as it is).
    Without transport settings every arrival is the read's own stamp."""
    out: dict[str, list[Delivered]] = {}
    for reader, deliveries in rendering.deliveries.items():
        batch: list[Delivered] = []
        for arrival_s, stamp_s, antenna, epc, rssi in deliveries:
            arrival = EPOCH_US + round(arrival_s * 1e6)
            stamp = EPOCH_US + round(stamp_s * 1e6)
            if clocks is not None:
                stamp = clocks.correct(reader, stamp, arrival)
            batch.append((arrival, TagRead(epc, reader, antenna, float(rssi), stamp)))
        out[reader] = batch
    return out


def outages_of(scenario: Any) -> list[tuple[int, int, str]]:
    """(start, end, reader) of every outage on the gateway clock, in start order."""
    spans = [
        (EPOCH_US + round(o.at_s * 1e6), EPOCH_US + round(o.end_s * 1e6), reader)
        for reader, transport in scenario.transport.items()
        for o in transport.outages
    ]
    return sorted(spans)


def replay(runner: _Runner, reads: Sequence[TagRead], end_us: int) -> list[dict[str, Any]]:
    """Reads in reader-time order delivered as they are stamped (no transport): see deliver."""
    per_reader: dict[str, list[Delivered]] = {}
    for read in reads:
        per_reader.setdefault(read.reader, []).append((read.time_us, read))
    return deliver(runner, per_reader, end_us)


def deliver(
    runner: _Runner,
    deliveries: Mapping[str, Sequence[Delivered]],
    end_us: int,
    outages: Sequence[tuple[int, int, str]] = (),
) -> list[dict[str, Any]]:
    """Deliver reads the way the gateway receives them, on the arrival clock, in BATCH_US
    windows: one batch per reader (in the scenario's reader order) with the reads that arrived
    in the window, then `progress(reader, its last arrival)`; every KEEPALIVE_US a
    KEEPALIVE, `progress(reader, now)`, from every reader whose link is up (as the LLRP
    driver reports them); `source_down(reader, t)` in the window an outage starts; tick(now)
    every TICK_US of the same clock. Runners without progress / source_down go without. Each
    movement is stamped `received_at` = the clock when the runner produced it (latency)."""
    got: list[dict[str, Any]] = []

    def take(step: Step, now: int) -> None:
        for m in step.movements:
            got.append(_movement_json(m, now))

    cursor = dict.fromkeys(deliveries, 0)
    down = 0
    now = EPOCH_US
    next_tick = EPOCH_US + TICK_US
    next_keepalive = EPOCH_US + KEEPALIVE_US
    while now < end_us:
        now += BATCH_US
        for reader, items in deliveries.items():
            k = start = cursor[reader]
            while k < len(items) and items[k][0] < now:
                k += 1
            if k > start:
                cursor[reader] = k
                take(runner.feed([read for _, read in items[start:k]]), now)
                runner.progress(reader, items[k - 1][0])
        while down < len(outages) and outages[down][0] < now:
            runner.source_down(outages[down][2])
            down += 1
        if now >= next_keepalive:
            next_keepalive += KEEPALIVE_US
            for reader in deliveries:
                if not any(a <= now < b for a, b, r in outages if r == reader):
                    runner.progress(reader, now)
        if now >= next_tick:
            take(runner.tick(now), now)
            next_tick += TICK_US
    return got


def _movement_json(m: Movement, now_us: int) -> dict[str, Any]:
    return {
        "epc": m.epc,
        "type": m.type,
        "from": m.from_,
        "to": m.to,
        "via": m.via,
        "time": iso_ms(m.time_us),
        "received_at": iso_ms(now_us),
    }


STRICT_TOLERANCE_S = 2.0  # the scorer's default


def chosen_tolerance_s(scenario: Any) -> float:
    """The time tolerance the accuracy bench scores with: the longest physical step of the
    scenario (at least the scorer's 2 s). The truth dates a step at its end (t + duration), but
    the radio cannot tell when within a step the tag crossed: during a `to` step the new
    location reads it from the middle on, during a `through` both sides read it from 40 % to
    60 % and the far side alone from then on, and the reads look the same whether the step
    takes 2 s or 6 s. A movement dated anywhere inside the step (or within a confirmation time
    after its end) is therefore right; ±(longest duration) accepts exactly that and nothing
    that belongs to another step of the same tag (steps of a group never overlap)."""
    longest = max((step.duration for step in scenario.timeline), default=0.0)
    return max(STRICT_TOLERANCE_S, float(longest))


def accuracy_of(
    path: str | Path,
    tolerance_s: float | None = None,
    runners: Sequence[str] = ("engine", "last_antenna_wins", "edgex"),
) -> dict[str, Any]:
    """Score the engine and both baselines on one scenario file, with the chosen tolerance
    (None: chosen_tolerance_s) and, for the engine, with the strict 2 s one too."""
    from simulators.scenario import load_scenario

    return accuracy_of_scenario(load_scenario(path), Path(path).name, tolerance_s, runners)


RUNNERS: dict[str, Callable[[EngineConfig], _Runner]] = {
    "engine": Engine,
    "last_antenna_wins": LastAntennaWins,
    "edgex": EdgeXRule,
}


@dataclass(frozen=True)
class Playback:
    """A scenario rendered and ready to deliver to any runner, as the gateway receives it:
    per reader, by arrival time, through the clock correction, with progress / source_down."""

    config: EngineConfig
    deliveries: Mapping[str, Sequence[Delivered]]
    end_us: int
    outages: Sequence[tuple[int, int, str]]
    truth: list[dict[str, Any]]

    def play(self, runner: _Runner) -> list[dict[str, Any]]:
        """The runner's movements over the whole playback (see deliver)."""
        return deliver(runner, self.deliveries, self.end_us, self.outages)


def playback(scenario: Any) -> Playback:
    from simulators.scenario import render, truth_lines

    config = scenario_config(scenario)
    longest = max(
        (loc.profile.departed_after_s or 0.0 for loc in config.locations.values()), default=0.0
    )
    end_s = scenario.duration + longest + 5.0
    # The radio keeps reading the final state after the timeline ends, as a real site would:
    # a run that stopped reading at `duration` would see every tag vanish.
    rendering = render(scenario, until_s=end_s)
    deliveries = delivered_reads(rendering, ReaderClocks())
    end_us = EPOCH_US + round(end_s * 1e6)
    if scenario.transport:  # a backlog delivered after the end is still delivered
        last = max((d[-1][0] for d in deliveries.values() if d), default=EPOCH_US)
        end_us = max(end_us, last + BATCH_US)
    truth = truth_lines(rendering, EPOCH_US)
    return Playback(config, deliveries, end_us, outages_of(scenario), truth)


def accuracy_of_scenario(
    scenario: Any,
    name: str,
    tolerance_s: float | None = None,
    runners: Sequence[str] = ("engine", "last_antenna_wins", "edgex"),
) -> dict[str, Any]:
    """accuracy_of for a loaded scenario. The reads reach every runner as the gateway receives
    them (deliver: per reader, by arrival time, through the clock correction, with
    progress / source_down), the same corrected reads for each."""
    from gateway.score import score

    if tolerance_s is None:
        tolerance_s = chosen_tolerance_s(scenario)
    played = playback(scenario)
    truth = played.truth
    parked = _parked_epcs(scenario)
    out: dict[str, Any] = {
        "scenario": name,
        "reads": sum(len(d) for d in played.deliveries.values()),
        "truth": len(truth),
        "time_tolerance_s": tolerance_s,
    }
    if scenario.transport:
        out["transport"] = {
            reader: {
                "clock_offset_s": t.clock_offset_s,
                "delivery_delay_s": t.delivery_delay_s,
                "outages": len(t.outages),
            }
            for reader, t in scenario.transport.items()
        }
    if scenario.radio.model != "independent":
        out["radio_model"] = scenario.radio.model
    for runner_name in runners:
        runner = RUNNERS[runner_name](played.config)
        got = played.play(runner)
        result = score(truth, got, tolerance_s)
        keys = ("precision", "recall", "f1", "got", "matched", "latency_s")
        entry = {k: result[k] for k in keys}
        if runner_name == "engine":
            strict = score(truth, got, STRICT_TOLERANCE_S)
            entry["strict_2s"] = {k: strict[k] for k in ("precision", "recall", "f1", "matched")}
        per_parked: dict[str, int] = {}
        for g in got:
            if g["epc"] in parked:
                per_parked[g["epc"]] = per_parked.get(g["epc"], 0) + 1
        entry["parked_false_moves"] = sum(n - 1 for n in per_parked.values())
        if runner_name == "engine":
            assert isinstance(runner, Engine)
            entry["suppressed"] = {k: v for k, v in runner.suppressed.items() if v}
            entry["unmatched_truth"] = result["unmatched_truth"][:20]
            entry["unmatched_got"] = result["unmatched_got"][:20]
        out[runner_name] = entry
    return out


def harsh_variant(raw: dict[str, Any], seed: int) -> dict[str, Any]:
    """A harsher version of a scenario: read rate 0.6-0.9, sigma 3-5 dB, cross-reads
    0.1-0.3 (8-12 dB down), strays, a new noise seed, and tags parked next to every portal
    (at its inside location, and at another on-site location when there is one) leaking
    stray reads onto both of its sides."""
    rng = random.Random(seed)
    out = copy.deepcopy(raw)
    out.pop("$schema", None)
    out["seed"] = int(raw.get("seed", 0)) * 1000 + seed
    out["radio"].update(
        read_rate=round(rng.uniform(0.6, 0.9), 2),
        rssi_sigma=round(rng.uniform(3.0, 5.0), 1),
        cross_read_rate=round(rng.uniform(0.1, 0.3), 2),
        cross_read_drop_db=rng.choice((8, 10, 12)),
        stray_rate=round(rng.uniform(0.03, 0.08), 2),
    )
    offsite = set(out.get("offsite", ()))
    covered = sorted(
        {
            a["location"]
            for r in out["readers"].values()
            for a in r["antennas"].values()
            if a["location"] not in offsite
        }
    )
    sides = {p["inside_location"] for p in out.get("portals", {}).values()}
    others = [loc for loc in covered if loc not in sides]
    k = 0
    for name, portal in sorted(out.get("portals", {}).items()):
        spots = [portal["inside_location"]] + ([rng.choice(others)] if others else [])
        for spot in spots:
            if spot in offsite:
                continue
            group = f"parked-{k}"
            sgtin = {"company": "4912345", "item": f"0679{k:02d}", "serial_from": 1, "count": 15}
            out["tags"][group] = {"sgtin": sgtin}
            out["timeline"].append({"t": 0, "group": group, "at": spot, "stray_near": name})
            k += 1
    return out


def _parked_epcs(scenario: Any) -> set[str]:
    """Tags of groups that only ever stand at one place (`at` steps only): they never move, so
    any movement for them after their first appearance is false. Their arrival is in the truth
    and scored like any other; here we count every movement beyond one."""
    ops: dict[str, list[str]] = {}
    for step in scenario.timeline:
        ops.setdefault(step.group, []).append(step.op)
    groups = [g for g, kinds in ops.items() if set(kinds) == {"at"} and len(kinds) == 1]
    return {epc for g in groups for epc in scenario.groups[g]}


def shipped_scenarios() -> list[Path]:
    from simulators.scenario import SCENARIOS_DIR

    paths = []
    for path in sorted(SCENARIOS_DIR.glob("*.json")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(raw, dict) and "readers" in raw and "radio" in raw:
            paths.append(path)  # RFID portal scenarios (handheld sessions have their own bench)
    return paths


# --- families and the seed split -----------------------------------------------------------------
# The seed sets themselves are defined once, in simulators/families.py (SEED_SETS): tuning seeds
# to work with, and a FROZEN evaluation set that must not be looked at while changing rules.

SETS = ("shipped", "tuning", "evaluation")


@dataclass(frozen=True)
class Instance:
    """One scenario of a set: its family ("dense-floor", "dense-floor+bursty", ...) and name,
    and either a file or a generated scenario dict."""

    family: str
    name: str
    path: Path | None = None
    raw: dict[str, Any] | None = None


def family_scenarios() -> list[Path]:
    """The shipped instance of every scenario family (simulators/scenarios/families/)."""
    from simulators.families import FAMILIES_DIR

    return sorted(FAMILIES_DIR.glob("*.json"))


def set_instances(
    name: str,
    families: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    models: Sequence[str] | None = None,
) -> list[Instance]:
    """The scenarios of a set. `shipped`: every shipped scenario file, each its own family
    (top-level ones and the families' shipped instances). `tuning` / `evaluation`: every family
    (or `families`) with both noise models (or `models`) on the set's seeds (`seeds` narrows
    the tuning set only: the evaluation set is run whole or not at all)."""
    from simulators import families as fam

    if name == "shipped":
        out = []
        for path in [*shipped_scenarios(), *family_scenarios()]:
            raw = json.loads(path.read_text(encoding="utf-8"))
            bursty = raw.get("radio", {}).get("model") == "bursty"
            family = path.stem + ("+bursty" if bursty else "")
            if families is None or path.stem in families:
                out.append(Instance(family, path.name, path=path))
        return out
    if name not in fam.SEED_SETS:
        raise ValueError(f"unknown set {name!r} (known: {', '.join(SETS)})")
    chosen = fam.SEED_SETS[name]
    if seeds is not None:
        if name != "tuning":
            raise ValueError("only the tuning set may be narrowed to some seeds")
        unknown = sorted(set(seeds) - set(chosen))
        if unknown:
            raise ValueError(f"seeds {unknown} are not tuning seeds ({chosen[0]}-{chosen[-1]})")
        chosen = tuple(seeds)
    out = []
    for family in families or fam.FAMILIES:
        if family not in fam.FAMILIES:
            raise ValueError(f"unknown family {family!r} (known: {', '.join(fam.FAMILIES)})")
        for model in models or fam.MODELS:
            key = family + ("+bursty" if model == "bursty" else "")
            for seed in chosen:
                raw = fam.variant(family, seed, model, harsh_variant, shipped_scenarios())
                out.append(Instance(key, fam.instance_name(family, seed, model), raw=raw))
    return out


def run_instance(
    instance: Instance, tolerance_s: float | None, runners: Sequence[str]
) -> dict[str, Any]:
    from simulators.scenario import load_scenario, scenario_from_dict

    if instance.path is not None:
        scenario = load_scenario(instance.path)
    else:
        scenario = scenario_from_dict(instance.raw, instance.name, instance.name)
    result = accuracy_of_scenario(scenario, instance.name, tolerance_s, runners)
    result["family"] = instance.family
    return result


def _run(args: tuple[Instance, float | None, Sequence[str]]) -> dict[str, Any]:
    return run_instance(*args)


def run_set(
    instances: Sequence[Instance],
    tolerance_s: float | None = None,
    runners: Sequence[str] = ("engine", "last_antenna_wins", "edgex"),
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """accuracy_of every instance (in `jobs` processes), in order."""
    work = [(inst, tolerance_s, runners) for inst in instances]
    if jobs <= 1 or len(work) <= 1:
        return [_run(w) for w in work]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_run, work))


def _figures(results: Sequence[Mapping[str, Any]], runner: str) -> dict[str, Any]:
    """Micro-averaged P / R / F1 (pooled matches), the mean and worst F1 of the scenarios, and
    the parked tags' false moves, of one runner over some scenarios."""
    entries = [r[runner] for r in results if runner in r]
    truth = sum(r["truth"] for r in results if runner in r)
    got = sum(e["got"] for e in entries)
    matched = sum(e["matched"] for e in entries)
    out = _prf(matched, got, truth)
    f1s = [e["f1"] for e in entries]
    out |= {
        "f1_mean": round(statistics.fmean(f1s), 4) if f1s else None,
        "f1_min": round(min(f1s), 4) if f1s else None,
        "parked_false_moves": sum(e["parked_false_moves"] for e in entries),
    }
    if entries and all("strict_2s" in e for e in entries):
        strict = sum(e["strict_2s"]["matched"] for e in entries)
        out["strict_2s"] = _prf(strict, got, truth)
    return out


def _prf(matched: int, got: int, truth: int) -> dict[str, Any]:
    precision = matched / got if got else 1.0
    recall = matched / truth if truth else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
        "truth": truth,
        "got": got,
        "matched": matched,
    }


def summarize(results: Sequence[Mapping[str, Any]], runners: Sequence[str]) -> dict[str, Any]:
    """Per family and over everything: each runner's figures (see _figures); the aggregate also
    has each runner's mean of the families' F1 (every family weighs the same)."""
    by_family: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_family.setdefault(r.get("family", r["scenario"]), []).append(r)
    families: dict[str, dict[str, Any]] = {
        name: {"scenarios": len(rs)} | {runner: _figures(rs, runner) for runner in runners}
        for name, rs in by_family.items()
    }
    aggregate: dict[str, Any] = {"scenarios": len(results), "families": len(families)}
    for runner in runners:
        figures = _figures(results, runner)
        f1s = [f[runner]["f1"] for f in families.values()]
        figures["family_f1_mean"] = round(statistics.fmean(f1s), 4) if f1s else None
        aggregate[runner] = figures
    return {"families": families, "aggregate": aggregate}


# --- speed ------------------------------------------------------------------------------------


def _site(n_locations: int = 8) -> EngineConfig:
    from types import SimpleNamespace as NS

    locations = {
        f"Z{k}": NS(offsite=False, biz_step=None, disposition=None, profile=None)
        for k in range(n_locations)
    }
    antennas = {
        k + 1: NS(location=f"Z{k}", read_point=None, rssi_offset_db=0.0) for k in range(n_locations)
    }
    return EngineConfig.build([("r1", antennas)], locations, {})


def _epc(k: int) -> str:
    return f"3074257BF7194E{k:010X}"


def _population_reads(
    n_tags: int,
    n_reads: int,
    start_us: int,
    rng: random.Random,
    n_locations: int = 8,
    reader_rate: float | None = None,
) -> list[TagRead]:
    """Reads of stationary tags (tag k stands at zone k % n), 95% where they are and 5% weak
    cross-reads on a neighbour: the steady state of a busy site. Reader time advances at
    `reader_rate` reads/s (None: the batch spans 10 s whatever its size)."""
    reads = []
    if reader_rate is None:
        reader_rate = max(1, n_reads // 10) / 1.0
    for j in range(n_reads):
        k = rng.randrange(n_tags)
        antenna = k % n_locations + 1
        rssi = -55.0 + rng.gauss(0.0, 4.0)
        if rng.random() < 0.05:
            antenna = antenna % n_locations + 1
            rssi -= 10.0
        t = start_us + int((j + 1) * 1_000_000 // reader_rate)
        reads.append(TagRead(_epc(k), "r1", antenna, rssi, t))
    return reads


def _warm(engine: Engine, n_tags: int, start_us: int, n_locations: int = 8) -> int:
    """Make every tag known and confirmed at its zone; returns the clock after."""
    t = start_us
    for rnd in range(3):
        batch = []
        for k in range(n_tags):
            batch.append(TagRead(_epc(k), "r1", k % n_locations + 1, -55.0, t))
            if len(batch) == 10_000:
                engine.feed(batch)
                batch = []
        if batch:
            engine.feed(batch)
        t += 1_000_000 + rnd
    engine.flush()
    return t


def _time_feed(engine: Engine, reads: list[TagRead], batch: int = 500) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) to feed and judge the reads."""
    gc.collect()
    started, cpu = time.perf_counter(), time.thread_time()
    for k in range(0, len(reads), batch):
        engine.feed(reads[k : k + batch])
    engine.flush()
    return time.perf_counter() - started, time.thread_time() - cpu


def _time_floor(reads: list[TagRead], batch: int = 500) -> tuple[float, float]:
    """The floor: a bare loop that only updates a dict per read (wall, CPU seconds)."""
    state: dict[str, int] = {}
    started, cpu = time.perf_counter(), time.thread_time()
    for k in range(0, len(reads), batch):
        for read in reads[k : k + batch]:
            state[read.epc] = read.time_us
    return time.perf_counter() - started, time.thread_time() - cpu


def speed(
    n_tags: int,
    n_reads: int,
    runs: int,
    reader_rate: float,
    seed: int = 1,
    engine_class: type[Engine] = Engine,
) -> dict[str, Any]:
    """Reads/s of the engine on stationary tags, reader time advancing at `reader_rate` reads/s
    (the rate the engine is asked to keep up with: at 1M tags and 300k reads/s a tag is read
    every ~3 s, so the share of reads that refresh a persisted state or meet a stale location
    is what such a site would produce)."""
    rng = random.Random(seed)
    engine = engine_class(_site())
    t = _warm(engine, n_tags, EPOCH_US)
    engine_s, floor_s = [], []
    for _ in range(runs):
        reads = _population_reads(n_tags, n_reads, t, rng, reader_rate=reader_rate)
        t = reads[-1].time_us + 1_000_000
        floor_s.append(_time_floor(reads))
        engine_s.append(_time_feed(engine, reads))
        del reads
    rate = n_reads / statistics.median(s for s, _ in engine_s)
    floor = n_reads / statistics.median(s for s, _ in floor_s)
    # CPU time of this thread: on a shared box, wall time also counts the time other processes
    # held the core; CPU time does not (cache contention still shows in both).
    cpu_rate = n_reads / statistics.median(c for _, c in engine_s)
    cpu_floor = n_reads / statistics.median(c for _, c in floor_s)
    return {
        "tracked_tags": engine.tracked,
        "hot_loop": engine.hot_loop,
        "reads_per_run": n_reads,
        "reader_time_reads_per_s": reader_rate,
        "runs": runs,
        **_rates(rate, floor, cpu_rate, cpu_floor),
        "movements": dict(engine.movement_counts),
    }


def bytes_per_tag(n_tags: int, engine_class: type[Engine] = Engine) -> dict[str, Any]:
    """tracemalloc over everything the engine keeps for n_tags (their EPC strings included):
    reads are made and dropped batch by batch inside the measured span."""
    config = _site()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = engine_class(config)
    _warm(engine, n_tags, EPOCH_US)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "tracked_tags": engine.tracked,
        "bytes": after - before,
        "bytes_per_tag": round((after - before) / max(1, engine.tracked), 1),
    }


# --- speed at a site's steady state -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flows:
    """What a busy site does, per second of reader time, as shares of its tracked tags. The
    site runs at its cap (max_tags = the tracked tags), so new tags evict the least recently
    seen. Stock stands in zones (zone profile: departed after 30 s unread, forgotten after an
    hour); trailers pass through the yard (an offsite location: their tags are confirmed there
    and forgotten after `yard_forget_s`). With these shares the stock dwells 5 minutes (a busy
    cross-dock): churn high enough that every mechanism works within a few seconds of reader
    time, i.e. more slow paths per read than a calmer site has."""

    zone_readers: int = 4
    antennas_per_reader: int = 2  # one zone per antenna
    present_share: float = 0.6  # tracked tags present in the zones (the rest left, or yard)
    churn_per_s: float = 0.002  # stock arrivals per s = stock leaving per s
    moves_per_s: float = 0.0005  # stock moving to another zone per s
    yard_per_s: float = 0.0005  # tags seen in the yard per s (never enter the site)
    yard_forget_s: float = 60.0  # the yard's forget_after_s
    cross_read_share: float = 0.05  # background reads on a neighbour zone, 10 dB down
    keepalive_s: float = 5.0  # KEEPALIVE period of every reader (the LLRP driver's default)
    report_s: float = 0.05  # longest report window of a reader
    history_read_s: float = 5.0  # warm-up: how often present tags are read in the history


_YARD_LOC = "YARD"
_FEED, _TICK, _PROGRESS = 0, 1, 2
_S = 1_000_000  # µs per second
# The reads of each flow (arrive, leave, move, yard), by their offsets from its time.
_BURSTS: tuple[tuple[int, ...], ...] = (
    (0, _S // 2, _S),
    (),
    (0, _S // 2, _S, 3 * _S // 2),
    (0, _S // 2, _S),
)


def steady_site(flows: Flows, max_tags: int) -> EngineConfig:
    """zone_readers readers r1.. with one zone Z<k> per antenna, and a yard reader on the
    offsite YARD location (profile "yard": confirmed in 0.5 s, forgotten after
    yard_forget_s); max_tags capped."""
    from types import SimpleNamespace as NS

    from gateway.engine.settings import EngineSettings, ProfileSettings

    per = flows.antennas_per_reader
    zones = flows.zone_readers * per
    locations: dict[str, Any] = {
        f"Z{k}": NS(offsite=False, biz_step=None, disposition=None, profile=None)
        for k in range(zones)
    }
    locations[_YARD_LOC] = NS(offsite=True, biz_step=None, disposition=None, profile="yard")
    readers: list[tuple[str, Mapping[int, Any]]] = [
        (
            f"r{r + 1}",
            {
                a + 1: NS(location=f"Z{r * per + a}", read_point=None, rssi_offset_db=0.0)
                for a in range(per)
            },
        )
        for r in range(flows.zone_readers)
    ]
    yard_antenna = NS(location=_YARD_LOC, read_point=None, rssi_offset_db=0.0)
    readers.append(("yard", {1: yard_antenna}))
    yard = ProfileSettings(confirm_s=0.5, departed_after_s=None, forget_after_s=flows.yard_forget_s)
    settings = EngineSettings(max_tags=max_tags)
    return EngineConfig.build(readers, locations, {}, {"yard": yard}, settings)


# (_FEED, reads, reader, now_us) | (_TICK, now_us) | (_PROGRESS, reader, time_us)
Op = tuple[Any, ...]


class SteadySite:
    """The reads, ticks and KEEPALIVEs of a site at steady state (see Flows), run after run.

    warm() gives the engine a compressed history, so that at the first measured read it holds
    what the site would after running for ever: `present_share` of the tags confirmed in their
    zones (their absence checks and state refreshes spread evenly over their periods, and, with
    the probability of having met one during their stay, a cross-read that was evidence), the
    stock that left over the last minutes (departing 30 s after its last read, then waiting at
    the cap to be evicted), and the yard tags of the last yard_forget_s; the engine at its cap.
    (steady_state then runs the workload a few seconds unmeasured, so that what a history read
    every history_read_s cannot give settles.)

    run(n) makes the next n reads in reader-time order (reader time advancing at
    `reader_rate`): background reads of a present tag chosen at random (5 % cross-reads on the
    neighbour zone), and the flows: a new tag arriving in a zone (3 reads over 1 s, then
    read like the rest), a present tag leaving (never read again: departs by absence,
    then is evicted), a tag moving to another zone (4 reads 3 dB stronger over 1.5 s, then
    read there), a yard tag (3 reads over 1 s, never again: forgotten). They are delivered as
    the gateway receives them: each reader's reads of a report window in one feed(reads,
    reader, t) as the window ends, progress(reader, t) at each reader's KEEPALIVE, tick(t) every
    tick_s, all on reader time (a gateway clock with no delivery delay)."""

    def __init__(
        self,
        n_tags: int,
        reader_rate: float,
        flows: Flows = Flows(),
        seed: int = 1,
        batch: int = 500,
        tick_s: float = 0.25,
    ) -> None:
        self.n = n_tags
        self.rate = reader_rate
        self.flows = flows
        self.rng = random.Random(seed)
        per = flows.antennas_per_reader
        self.zones = flows.zone_readers * per
        self.yard = self.zones  # location code of the yard
        self.places = [(f"r{z // per + 1}", z % per + 1) for z in range(self.zones)]
        self.places.append(("yard", 1))
        self.readers = [f"r{r + 1}" for r in range(flows.zone_readers)] + ["yard"]
        self.zone = array("b")  # by tag id: its location code
        self.pool: list[int] = []  # present stock, by position
        self.pos = array("q")  # by tag id: its position in pool (-1: not present)
        self.future: list[tuple[int, int, int, float]] = []  # heap: (time, tag, loc, rssi)
        self._acc = [0.0, 0.0, 0.0, 0.0]  # fractional events carried (arrive, leave, move, yard)
        # A reader reports every `batch` reads on average, at most every report_s.
        per_reader_s = batch * flows.zone_readers / reader_rate
        self.report_us = max(1000, round(min(flows.report_s, per_reader_s) * _S))
        self.tick_us = round(tick_s * _S)
        self.now = EPOCH_US
        self.next_tick = EPOCH_US
        self.next_keepalive: dict[str, int] = {}
        self.history_s = 0.0
        self.history_cross_reads = 0

    def _new_tag(self, loc: int) -> int:
        k = len(self.zone)
        self.zone.append(loc)
        self.pos.append(-1)
        return k

    def _join(self, k: int) -> None:
        self.pos[k] = len(self.pool)
        self.pool.append(k)

    def _leave(self, k: int) -> None:
        p = self.pos[k]
        last = self.pool.pop()
        if last != k:
            self.pool[p] = last
            self.pos[last] = p
        self.pos[k] = -1

    def _read(self, k: int, loc: int, rssi: float, t: int) -> TagRead:
        reader, antenna = self.places[loc]
        return TagRead(_epc(k), reader, antenna, rssi, t)

    # --- history ------------------------------------------------------------------------------

    def warm(self, engine: Engine) -> int:
        """Feed the compressed history (see the class); returns the number of its reads."""
        f, rng, n = self.flows, self.rng, self.n
        present = round(f.present_share * n)
        churn = f.churn_per_s * n
        yard_rate = f.yard_per_s * n
        yard_alive = round(yard_rate * f.yard_forget_s)
        # Enough stock that left to put the engine just over its cap (one eviction in the
        # history: the first measured new tags meet a full engine, as at steady state).
        leavers = max(0, n + n // 200 - present - yard_alive) if churn > 0 else 0
        yard_tags = round(yard_rate * (f.yard_forget_s + 2.0))
        spans = [32.0, f.yard_forget_s + 2.0, leavers / churn if churn > 0 else 0.0]
        self.history_s = max(spans) + 3.0
        end = EPOCH_US + round(self.history_s * _S)
        # A read of the history, packed in one int (they sort by time): time, tag, location,
        # and 16 for a cross-read.
        bits = (present + leavers + yard_tags).bit_length() + 5
        keys: list[int] = []
        add = keys.append

        def key(t: int, k: int, code: int) -> int:
            return ((t - EPOCH_US) << bits) | (k << 5) | code

        # The cross-reads a present tag met during its stay that are evidence by the rules
        # (more than cross_read_window_s after its last read where it is: not ignored as a
        # cross-read). Reads of a present tag, as run() makes them, are a Poisson process.
        window = engine.config.settings.cross_read_window_s
        per_tag = self.rate * (1.0 - f.cross_read_share) / max(1, present)  # own reads/s
        evidence = self.rate * f.cross_read_share / max(1, present) * math.exp(-window * per_tag)
        dwell = f.present_share / f.churn_per_s if f.churn_per_s > 0 else math.inf
        self.history_cross_reads = 0
        period = round(f.history_read_s * _S)
        for j in range(present):
            z = rng.randrange(self.zones)
            k = self._new_tag(z)
            self._join(k)
            # Confirmed (2 reads 1 s apart) 1-31 s before the end, then read every
            # history_read_s: checks and refreshes fall evenly over their periods.
            confirmed = end - round(30 * _S * (j + 0.5) / present) - _S
            add(key(confirmed - _S, k, z))
            own = range(confirmed, end, period)
            for t in own:
                add(key(t, k, z))
            # One such cross-read, if its stay (exponential, mean: the dwell) held any, after
            # one of its reads in the history: what it leaves behind is what the engine holds.
            stay = rng.expovariate(1.0 / dwell) if dwell < math.inf else math.inf
            if rng.random() < -math.expm1(-evidence * stay):
                t = rng.choice(own)
                room = min(period, end - t) / _S - window
                if room > 0.2:
                    t += round((window + rng.uniform(0.1, room - 0.1)) * _S)
                    add(key(t, k, 16 | (z + 1) % self.zones))
                    self.history_cross_reads += 1
        for j in range(leavers):
            z = rng.randrange(self.zones)
            k = self._new_tag(z)
            last = end - round(_S * (j + 0.5) / churn)
            for d in (2 * _S, _S, 0):
                add(key(last - d, k, z))
        for j in range(yard_tags):
            k = self._new_tag(self.yard)
            last = end - round(_S * (j + 0.5) / yard_rate)
            for d in (_S, _S // 2, 0):
                add(key(last - d, k, self.yard))
        keys.sort()
        start = (keys[0] >> bits) + EPOCH_US if keys else end
        report = round(f.report_s * _S)
        self.now = start - start % report
        self.next_tick = self.now + self.tick_us
        cursor = 0
        tag_mask = (1 << (bits - 5)) - 1
        while self.now < end:
            w_end = min(self.now + report, end)
            parts: dict[str, list[TagRead]] = {}
            limit = (w_end - EPOCH_US) << bits
            while cursor < len(keys) and keys[cursor] < limit:
                packed = keys[cursor]
                cursor += 1
                code = packed & 31
                loc = code & 15
                rssi = -60.0 if loc == self.yard else -65.0 if code & 16 else -55.0
                t = (packed >> bits) + EPOCH_US
                read = self._read((packed >> 5) & tag_mask, loc, rssi, t)
                parts.setdefault(read.reader, []).append(read)
            for reader in self.readers:
                if reader in parts:
                    engine.feed(parts[reader], reader, w_end)
                engine.progress(reader, w_end)
            if w_end >= self.next_tick:
                engine.tick(w_end)
                while self.next_tick <= w_end:
                    self.next_tick += self.tick_us
            self.now = w_end
        engine.flush()
        keepalive = round(f.keepalive_s * _S)
        for r, reader in enumerate(self.readers):
            self.next_keepalive[reader] = end + keepalive * (r + 1) // len(self.readers)
        return len(keys)

    # --- runs ---------------------------------------------------------------------------------

    def _events(self, count: float, slot: int) -> int:
        self._acc[slot] += count
        k = int(self._acc[slot])
        self._acc[slot] -= k
        return k

    def _apply_event(self, kind: int, t: int) -> int:
        """One flow at time t; returns 1 if it brought a new tag."""
        rng, future = self.rng, self.future
        if kind == 0:  # a new tag arrives in a zone
            z = rng.randrange(self.zones)
            k = self._new_tag(z)
            self._join(k)
            for d in _BURSTS[0]:
                heapq.heappush(future, (t + d, k, z, -55.0 + rng.gauss(0.0, 2.0)))
            return 1
        if kind == 3:  # a yard tag, never seen again
            k = self._new_tag(self.yard)
            for d in _BURSTS[3]:
                heapq.heappush(future, (t + d, k, self.yard, -60.0 + rng.gauss(0.0, 2.0)))
            return 1
        if not self.pool:
            return 0
        k = self.pool[rng.randrange(len(self.pool))]
        if kind == 1:  # leaves: never read again
            self._leave(k)
        else:  # moves to another zone, read there from now on
            z = (self.zone[k] + rng.randrange(1, self.zones)) % self.zones
            self.zone[k] = z
            for d in _BURSTS[2]:
                heapq.heappush(future, (t + d, k, z, -52.0 + rng.gauss(0.0, 2.0)))
        return 0

    def run(self, n_reads: int) -> tuple[list[TagRead], list[Op], dict[str, int]]:
        """The next n_reads reads (in reader-time order), the operations delivering them, and
        what the run holds (new tags, flows, ticks, KEEPALIVEs, feeds)."""
        f, rng, n = self.flows, self.rng, self.n
        t0 = self.now
        t1 = t0 + max(1, round(n_reads * _S / self.rate))
        span_s = (t1 - t0) / _S
        events: list[tuple[int, int]] = []
        shares = (f.churn_per_s, f.churn_per_s, f.moves_per_s, f.yard_per_s)
        for kind, share in enumerate(shares):
            for _ in range(self._events(share * n * span_s, kind)):
                events.append((t0 + rng.randrange(t1 - t0), kind))
        events.sort()
        # Reads of the flows inside this run (those of events to come included): the
        # background makes up the rest of n_reads.
        inside = sum(1 for t, *_ in self.future if t < t1)
        for t, kind in events:
            inside += sum(1 for d in _BURSTS[kind] if t + d < t1)
        background = max(0, n_reads - inside)
        reads: list[TagRead] = []
        future, pool, zone = self.future, self.pool, self.zone
        zones, cross = self.zones, f.cross_read_share
        new_tags = 0
        e = 0
        span = t1 - t0
        for j in range(background):
            t = t0 + (j + 1) * span // (background + 1)
            while e < len(events) and events[e][0] <= t:
                new_tags += self._apply_event(events[e][1], events[e][0])
                e += 1
            while future and future[0][0] <= t:
                ft, k, loc, rssi = heapq.heappop(future)
                reads.append(self._read(k, loc, rssi, ft))
            if not pool:
                continue
            k = pool[rng.randrange(len(pool))]
            z = zone[k]
            rssi = -55.0 + rng.gauss(0.0, 4.0)
            if rng.random() < cross:
                z = (z + 1) % zones
                rssi -= 10.0
            reads.append(self._read(k, z, rssi, t))
        while e < len(events):
            new_tags += self._apply_event(events[e][1], events[e][0])
            e += 1
        while future and future[0][0] < t1:
            ft, k, loc, rssi = heapq.heappop(future)
            reads.append(self._read(k, loc, rssi, ft))
        ops, counts = self._deliver(reads, t0, t1)
        counts["new_tags"] = new_tags
        for kind, name in enumerate(("arrivals", "leaving", "moves", "yard_visits")):
            counts[name] = sum(1 for _, k in events if k == kind)
        self.now = t1
        return reads, ops, counts

    def _deliver(self, reads: list[TagRead], t0: int, t1: int) -> tuple[list[Op], dict[str, int]]:
        ops: list[Op] = []
        ticks = keepalives = feeds = 0
        cursor = 0
        w_start = t0
        while w_start < t1:
            w_end = min(w_start + self.report_us, t1)
            parts: dict[str, list[TagRead]] = {}
            while cursor < len(reads) and reads[cursor].time_us < w_end:
                read = reads[cursor]
                cursor += 1
                part = parts.get(read.reader)
                if part is None:
                    parts[read.reader] = part = []
                part.append(read)
            for reader in self.readers:
                part = parts.get(reader)
                if part:
                    ops.append((_FEED, part, reader, w_end))
                    feeds += 1
                if self.next_keepalive[reader] <= w_end:
                    ops.append((_PROGRESS, reader, w_end))
                    keepalives += 1
                    self.next_keepalive[reader] += round(self.flows.keepalive_s * _S)
            if self.next_tick <= w_end:
                ops.append((_TICK, w_end))
                ticks += 1
                while self.next_tick <= w_end:
                    self.next_tick += self.tick_us
            w_start = w_end
        return ops, {"ticks": ticks, "keepalives": keepalives, "feeds": feeds}


def _time_ops(engine: Engine, ops: Sequence[Op]) -> tuple[float, float, list[Step]]:
    """(wall seconds, CPU seconds of this thread, the steps) to run the operations and flush."""
    feed, tick, progress = engine.feed, engine.tick, engine.progress
    steps: list[Step] = []
    keep = steps.append
    gc.collect()
    started, cpu = time.perf_counter(), time.thread_time()
    for op in ops:
        kind = op[0]
        if kind == _FEED:
            keep(feed(op[1], op[2], op[3]))
        elif kind == _TICK:
            keep(tick(op[1]))
        else:
            progress(op[1], op[2])
    keep(engine.flush())
    return time.perf_counter() - started, time.thread_time() - cpu, steps


def steady_state(
    n_tags: int,
    n_reads: int,
    runs: int,
    reader_rate: float,
    seed: int = 1,
    engine_class: type[Engine] = Engine,
    flows: Flows = Flows(),
    settle_s: float = 5.0,
) -> dict[str, Any]:
    """Reads/s of the engine doing what a site does at steady state (SteadySite), with
    n_tags tracked (its cap), reader time advancing at reader_rate reads/s: median of the
    runs, wall and CPU time of this thread, and the floor (the bare dict loop) on the same
    reads; what the runs did (ticks, KEEPALIVEs, movements by type, refreshes of persisted
    states, evictions, tags forgotten)."""
    config = steady_site(flows, n_tags)
    site = SteadySite(n_tags, reader_rate, flows, seed, tick_s=config.settings.tick_s)
    engine = engine_class(config)
    warm_started = time.perf_counter()
    history_reads = site.warm(engine)
    # Then the workload itself, unmeasured, until what the history could not give has
    # settled (tags waiting for their first read past a refresh or an absence check, moves
    # and arrivals under way): a few seconds of reader time.
    settle = round(settle_s * reader_rate)
    while settle > 0:
        chunk = min(settle, max(1, n_reads))
        _time_ops(engine, site.run(chunk)[1])
        settle -= chunk
    warm_s = time.perf_counter() - warm_started
    moves0 = dict(engine.movement_counts)
    evicted0 = dict(engine.evicted)
    suppressed0 = dict(engine.suppressed)
    tracked_start = engine.tracked
    engine_s: list[tuple[float, float]] = []
    floor_s: list[tuple[float, float]] = []
    fed = 0
    totals: dict[str, int] = {}
    per_run: list[dict[str, Any]] = []
    for _ in range(runs):
        reads, ops, counts = site.run(n_reads)
        before = engine.tracked
        evicted_before = sum(engine.evicted.values())
        moved_before = engine.movement_counts["arrived"] + engine.movement_counts["moved"]
        floor_s.append(_time_floor(reads))
        wall, cpu, steps = _time_ops(engine, ops)
        engine_s.append((wall, cpu))
        fed += len(reads)
        present_states = sum(1 for step in steps for s in step.states if s.present)
        yard_states = sum(
            1 for step in steps for s in step.states if s.location == _YARD_LOC and not s.present
        )
        decided = engine.movement_counts["arrived"] + engine.movement_counts["moved"]
        evicted = sum(engine.evicted.values()) - evicted_before
        counts |= {
            "reads": len(reads),
            "refreshes": present_states - (decided - moved_before),
            "yard_confirmations": yard_states,
            "evicted": evicted,
            # Nothing else drops a tag, and no dropped tag is read again (the leaving stock
            # and the yard tags are never read after their last read).
            "forgotten": before + counts["new_tags"] - evicted - engine.tracked,
        }
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        per_run.append(
            {
                "cpu_reads_per_s": round(len(reads) / cpu) if cpu > 0 else None,
                "evicted": evicted,
            }
        )
        del reads, ops, steps
    per_read = fed / max(1, runs)
    rate = per_read / statistics.median(s for s, _ in engine_s)
    floor = per_read / statistics.median(s for s, _ in floor_s)
    cpu_rate = per_read / statistics.median(c for _, c in engine_s)
    cpu_floor = per_read / statistics.median(c for _, c in floor_s)
    all_cpu = fed / sum(c for _, c in engine_s)
    movements = {k: v - moves0.get(k, 0) for k, v in engine.movement_counts.items()}
    return {
        "tracked_tags": engine.tracked,
        "tracked_tags_at_start": tracked_start,
        "max_tags": n_tags,
        "hot_loop": engine.hot_loop,
        "reads_per_run": n_reads,
        "reader_time_reads_per_s": reader_rate,
        "reader_time_s": round(totals.get("reads", 0) / reader_rate, 3),
        "runs": runs,
        **_rates(rate, floor, cpu_rate, cpu_floor),
        # Every run's reads over every run's CPU time: the rare work (an eviction burst every
        # few seconds of reader time) weighed in, which the median of the runs may leave out.
        "cpu_reads_per_s_all_runs": round(all_cpu),
        "per_run": per_run,
        "ticks": totals.get("ticks", 0),
        "keepalives": totals.get("keepalives", 0),
        "feeds": totals.get("feeds", 0),
        "movements": movements,
        "refreshes": totals.get("refreshes", 0),
        "yard_confirmations": totals.get("yard_confirmations", 0),
        "evicted": {k: v - evicted0.get(k, 0) for k, v in engine.evicted.items()},
        "forgotten": totals.get("forgotten", 0),
        "new_tags": totals.get("new_tags", 0),
        "flows": {k: totals.get(k, 0) for k in ("arrivals", "leaving", "moves", "yard_visits")},
        "suppressed": {
            k: v - suppressed0.get(k, 0)
            for k, v in engine.suppressed.items()
            if v != suppressed0.get(k, 0)
        },
        "workload": {
            "readers": len(site.readers),
            "zones": site.zones,
            "report_window_ms": site.report_us / 1000,
            "tick_s": site.tick_us / _S,
            **asdict(flows),
            "history_s": round(site.history_s, 1),
            "history_reads": history_reads,
            "history_cross_reads": site.history_cross_reads,
            "settle_s": settle_s,
            "warm_wall_s": round(warm_s, 1),
        },
    }


# --- command line -----------------------------------------------------------------------------


def _seed_list(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def accuracy_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    runners: Sequence[str] = args.runner or tuple(RUNNERS)
    report: dict[str, Any] = {"bench": "accuracy", "clock_correction": "ReaderClocks"}
    if args.set is None:
        if args.family or args.seeds or args.model:
            parser.error("--family, --seeds and --model go with --set")
        paths: Iterable[str | Path] = args.scenario or shipped_scenarios()
        results = [accuracy_of(p, args.time_tolerance_s, runners) for p in paths]
        report["scenarios"] = results
        print(json.dumps(report, indent=2))
        return 0
    if args.scenario:
        parser.error("--scenario and --set exclude each other")
    try:
        seeds = _seed_list(args.seeds) if args.seeds else None
        instances = set_instances(
            args.set, args.family, seeds, [args.model] if args.model else None
        )
    except ValueError as exc:
        parser.error(str(exc))
    results = run_set(instances, args.time_tolerance_s, runners, args.jobs)
    report["set"] = args.set
    if args.set != "shipped":
        from simulators.families import SEED_SETS

        report["seeds"] = seeds or list(SEED_SETS[args.set])
    report |= summarize(results, runners)
    report["scenarios"] = results
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fc-edge bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    acc = sub.add_parser("accuracy", help="engine vs baselines against scenario truth")
    acc.add_argument("--scenario", action="append", help="scenario file (repeatable)")
    acc.add_argument(
        "--time-tolerance-s",
        type=float,
        default=None,
        help="default: the scenario's longest step (at least 2 s); the strict 2 s figure is "
        "always reported too",
    )
    acc.add_argument(
        "--set",
        choices=SETS,
        help="run a set: shipped (every shipped scenario file), tuning (the families on the "
        "tuning seeds, both noise models), evaluation (the FROZEN seeds: only to report a "
        "finished change, never while tuning); reports per family and aggregate figures",
    )
    acc.add_argument("--family", action="append", help="only this family (repeatable; with --set)")
    acc.add_argument("--seeds", help="only these tuning seeds, e.g. 1-3 or 1,4 (with --set tuning)")
    acc.add_argument(
        "--model", choices=["independent", "bursty"], help="only this noise model (with --set)"
    )
    acc.add_argument(
        "--runner",
        action="append",
        choices=list(RUNNERS),
        help="only this runner (repeatable; default: the engine and both baselines)",
    )
    acc.add_argument("--jobs", type=int, default=1, help="processes for --set (default 1)")
    acc.add_argument("--json", action="store_true", help="print JSON (the default)")
    eng = sub.add_parser("engine", help="reads/s and bytes per tag")
    eng.add_argument("--tags", default="10000,100000,1000000")
    eng.add_argument("--reads", type=int, default=300_000)
    eng.add_argument("--runs", type=int, default=5)
    eng.add_argument("--memory-tags", type=int, default=1_000_000)
    eng.add_argument(
        "--reader-rate",
        type=float,
        default=300_000.0,
        help="reads/s of reader time in the workload (default: the 300k reads/s goal)",
    )
    eng.add_argument(
        "--steady-state",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure each size at a site's steady state (ticks, KEEPALIVEs, refreshes, "
        "arrivals, departures, moves, evictions, forgetting: see SteadySite); default: on",
    )
    eng.add_argument(
        "--loop",
        choices=["default", "python"],
        default="default",
        help="default: the compiled hot loop where it is built; python: the Python loop",
    )
    eng.add_argument("--json", action="store_true", help="print JSON (the default)")
    args = parser.parse_args(argv)
    if args.what == "accuracy":
        return accuracy_main(args, parser)
    sizes = [int(x) for x in args.tags.split(",") if x]
    from gateway.bench.common import _loadavg, machine

    report: dict[str, Any] = {"bench": "engine", "machine": machine()}
    engine_class = PythonLoopEngine if args.loop == "python" else Engine
    report["speed"] = []
    for n in sizes:
        entry = speed(n, args.reads, args.runs, args.reader_rate, engine_class=engine_class)
        if args.steady_state:
            steady = steady_state(
                n, args.reads, args.runs, args.reader_rate, engine_class=engine_class
            )
            steady["cpu_ratio_to_feed_only"] = round(
                steady["cpu_reads_per_s"] / entry["cpu_reads_per_s"], 4
            )
            steady["goal_cpu_reads_per_s"] = GOAL_READS_PER_S
            entry["steady_state"] = steady
        report["speed"].append(entry)
    if args.memory_tags:
        report["memory"] = bytes_per_tag(args.memory_tags, engine_class)
    report["loadavg_after"] = _loadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
