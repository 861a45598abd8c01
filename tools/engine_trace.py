"""Where the engine goes wrong on one family instance, and why: a debugging aid for rule work.

    python -m tools.engine_trace errors dense-floor 1 bursty
        every tag with an unmatched movement: its true and its published movements, and a
        count of the kinds of error (late or early, missed, extra, first sighting in the
        wrong zone, parked false move)
    python -m tools.engine_trace trace dense-floor 1 bursty EPC [FROM_S TO_S]
        that tag's reads in judging order (reader time, location, RSSI) with the engine's
        state for the tag after each (estimate, challenger, count lead, first-sighting tally)
        and every challenger it dropped
    python -m tools.engine_trace latency dock-door 1 bursty
        how long after the truth each matched movement was produced (on the playback's
        clock: decision and batching, no transport), per kind of movement (portal crossing,
        zone move, first sighting, departure by absence), with the slowest of each kind: where
        `fc-edge bench latency` spends its total

The instance is rendered and delivered exactly as `fc-edge bench accuracy` does (same clocks,
batches, ticks and tolerance), on the Python hot loop so that every read can be followed; the
two loops decide identically (tests/unit/test_engine_golden.py). Tuning seeds only (others are
refused): a look at an evaluation seed makes it tuning data (simulators/families.py).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from typing import Any

from gateway.bench import engine as bench
from gateway.engine.core import NONE, Engine, PythonLoopEngine, Step
from gateway.model import TagRead
from gateway.score import matched_pairs, parse_time, percentile, score
from simulators.scenario import scenario_from_dict


class Run:
    """One tuning instance, played to the engine as the accuracy bench plays it (the same
    instance from set_instances, which refuses evaluation seeds, and the same playback)."""

    def __init__(self, family: str, seed: int, model: str) -> None:
        (instance,) = bench.set_instances("tuning", [family], seeds=[seed], models=[model])
        assert instance.raw is not None
        self.scenario = scenario_from_dict(instance.raw, instance.name, instance.name)
        self.playback = bench.playback(self.scenario)
        self.truth = self.playback.truth
        self.tolerance_s = bench.chosen_tolerance_s(self.scenario)
        self.engine = PythonLoopEngine(self.playback.config)

    def play(self) -> list[dict[str, Any]]:
        return self.playback.play(self.engine)


def _line(m: dict[str, Any]) -> str:
    to = m.get("to") or m.get("location")
    return f"{m['type']:8s} {m.get('from')} -> {to}  {m['time']}"


def _kind(truth: list[dict[str, Any]], got: list[dict[str, Any]], parked: bool) -> str:
    first_t = next((t for t in truth if t["type"] == "arrived"), None)
    first_g = next((g for g in got if g["type"] == "arrived"), None)
    if first_t and first_g and first_t.get("to") != first_g.get("to"):
        return "first sighting in the wrong zone"
    if parked and len(got) > len(truth):
        return "parked false move"
    if len(got) == len(truth):
        return "late or early"
    return "missed movement" if len(got) < len(truth) else "extra movement"


def errors(family: str, seed: int, model: str) -> int:
    run = Run(family, seed, model)
    got = run.play()
    result = score(run.truth, got, run.tolerance_s)
    parked = bench._parked_epcs(run.scenario)
    by_truth: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in run.truth:
        by_truth[t["epc"]].append(t)
    for g in got:
        by_got[g["epc"]].append(g)
    wrong = sorted({m["epc"] for m in result["unmatched_truth"] + result["unmatched_got"]})
    kinds: Counter[str] = Counter()
    for epc in wrong:
        kind = _kind(by_truth[epc], by_got[epc], epc in parked)
        kinds[kind] += 1
        print(f"{epc}  {kind}")
        for t in by_truth[epc]:
            print("   truth    ", _line(t))
        for g in by_got[epc]:
            print("   published", _line(g))
    print(
        f"{family} seed {seed} {model}: F1 {result['f1']:.4f} at {run.tolerance_s} s; "
        f"{len(wrong)} tags wrong: {dict(kinds)}"
    )
    return 0


def _latency_kind(movement: dict[str, Any], portals: set[str]) -> str:
    if movement["via"] in portals and movement["from"] is not None:
        return "portal crossing"
    if movement["from"] is None:
        return "first sighting"
    if movement["to"] is None:
        return "departure by absence"
    return "zone move"


def latency(family: str, seed: int, model: str, slowest: int = 3) -> int:
    run = Run(family, seed, model)
    portals = set(run.playback.config.portals)
    kinds: dict[str, list[tuple[float, str, float]]] = defaultdict(list)
    for truth, got, late_s in matched_pairs(run.truth, run.play(), run.tolerance_s):
        when = parse_time(truth["time"]) - bench.EPOCH_US / 1e6
        kinds[_latency_kind(got, portals)].append((late_s, got["epc"], when))
    for kind, rows in sorted(kinds.items()):
        rows.sort()
        late = [r[0] for r in rows]
        print(
            f"{kind:21s} {len(rows):5d}  p50 {percentile(late, 50) or 0.0:6.2f}  "
            f"p99 {percentile(late, 99) or 0.0:6.2f}  max {late[-1]:6.2f} s"
        )
        for late_s, epc, when in rows[-slowest:]:
            print(f"    {epc}  {late_s:+.2f} s after its truth at {when:.1f} s")
    return 0


def _state(engine: Engine, i: int) -> str:
    def name(lid: int) -> str:
        return engine.locs[lid].name if lid != NONE else "-"

    tentative = "?" if engine._tentative[i] else ""
    return (
        f"at {name(engine._loc[i])}{tentative} n={engine._n_cur[i]} s={engine._s_cur[i]:.1f} | "
        f"challenger {name(engine._cand[i])} n={engine._n_cand[i]} s={engine._s_cand[i]:.1f} "
        f"lead={engine._k_lead[i]} | tally {engine._tally.get(i)}"
    )


def trace(family: str, seed: int, model: str, epc: str, from_s: float, to_s: float) -> int:
    run = Run(family, seed, model)
    engine = run.engine
    for t in run.truth:
        if t["epc"] == epc:
            print("truth    ", _line(t))
    judge, drop = engine._judge, engine._drop_evidence
    now = [0.0]  # reader time of the read being judged, in seconds of the scenario

    def judged(reads: list[TagRead], step: Step) -> None:
        for read in reads:  # one at a time: the state after each read of this tag
            before = len(step.movements)
            t = now[0] = (read.time_us - bench.EPOCH_US) / 1e6
            judge([read], step)
            if read.epc == epc and from_s <= t <= to_s:
                place = engine._places.get(read.reader, {}).get(read.antenna)
                where = engine.locs[place[0]].name if place else "?"
                i = engine._index[epc]
                print(f"{t:9.3f} {where:10s} {read.rssi:6.1f}  {_state(engine, i)}")
            for m in step.movements[before:]:
                if m.epc == epc and from_s <= t <= to_s:
                    print(f"          -> {m.type} {m.from_} -> {m.to}")

    def dropped(i: int, reason: str) -> None:
        if engine._epc[i] == epc and from_s <= now[0] <= to_s:
            print(f"          (challenger dropped at a read of {now[0]:.3f} s: {reason})")
        drop(i, reason)

    engine._judge = judged  # type: ignore[method-assign]
    engine._drop_evidence = dropped  # type: ignore[method-assign]
    for g in run.play():
        if g["epc"] == epc:
            print("published", _line(g))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.engine_trace", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for command in ("errors", "trace", "latency"):
        q = sub.add_parser(command)
        q.add_argument("family")
        q.add_argument("seed", type=int)
        q.add_argument("model", choices=("independent", "bursty"))
        if command == "trace":
            q.add_argument("epc")
            q.add_argument("from_s", type=float, nargs="?", default=0.0)
            q.add_argument("to_s", type=float, nargs="?", default=1e9)
    args = p.parse_args(argv)
    if args.command == "errors":
        return errors(args.family, args.seed, args.model)
    if args.command == "latency":
        return latency(args.family, args.seed, args.model)
    return trace(args.family, args.seed, args.model, args.epc, args.from_s, args.to_s)


if __name__ == "__main__":
    sys.exit(main())
