"""The speed work's safety net: the optimised engine decides exactly as before.

Two checks, both on the engine's full output (movements with their time, via, business meaning
and evidence; persisted tag states; resume floors; suppression, movement and eviction counts):

* **Golden file** (`engine_golden.json.gz`): the movements (type, epc, from, to, time, via) the
  engine made before the speed work on every shipped scenario and on harsh variants of each
  (`gateway.bench.engine.harsh_variant`, seeds 11 and 13). Regenerate only for an intended
  change of behaviour: `.venv/bin/python -m tests.unit.test_engine_golden`.
* **Reference engine** (`tests/support/engine_reference.py`, a copy of core.py before the speed
  work, with the rule changes since): the same inputs, a synthetic site with eviction, and
  hypothesis-generated read sequences (out of order, late, duplicated, weak, unknown antennas,
  device moves, restarts) go through both engines; every output must be identical.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.bench.engine import (
    EPOCH_US,
    _population_reads,
    _site,
    bytes_per_tag,
    harsh_variant,
    scenario_config,
    scenario_reads,
    shipped_scenarios,
)
from gateway.engine import Engine, EngineConfig
from gateway.engine.core import PythonLoopEngine
from gateway.engine.settings import EngineSettings
from gateway.model import Movement, TagRead, TagState
from tests.support import engine_reference
from tests.support.engine_site import T0, keepalive, site

GOLDEN = Path(__file__).with_name("engine_golden.json.gz")
SHIPPED = shipped_scenarios()
HARSH_SEEDS = (11, 13)
FAST = {"ship-door", "store-floor", "conveyor"}  # quick to render; the rest run as slow tests
BATCH_US = 50_000
TICK_US = 250_000

Factory = Callable[[EngineConfig], Any]


# Both hot loops must decide as the reference engine does.
LOOPS = [
    pytest.param(Engine, id="compiled-loop"),
    pytest.param(PythonLoopEngine, id="python-loop"),
]


# --- driving an engine and recording everything it says -----------------------------------------


def _movement(m: Movement) -> list[Any]:
    observed = None if m.observed is None else astuple(m.observed)
    return [
        m.type,
        m.epc,
        m.from_,
        m.to,
        m.time_us,
        m.via,
        m.source,
        m.biz_step,
        m.disposition,
        observed,
    ]


def _states(states: Sequence[TagState]) -> list[Any]:
    return [astuple(s) for s in states]


def drive(
    make: Factory, config: EngineConfig, reads: Sequence[TagRead], end_us: int
) -> dict[str, Any]:
    """Like `fc-edge bench accuracy`: 50 ms batches of reader time, tick every 250 ms; records
    every step's movements and states and the resume floor after each step."""
    engine = make(config)
    out: list[Any] = []
    k = 0
    now = EPOCH_US
    next_tick = EPOCH_US + TICK_US
    while now < end_us:
        now += BATCH_US
        start = k
        while k < len(reads) and reads[k].time_us < now:
            k += 1
        if k > start:
            step = engine.feed(reads[start:k])
            out.append(["f", [_movement(m) for m in step.movements], _states(step.states)])
            out.append(["floor", engine.resume_floor_us()])
        if now >= next_tick:
            keepalive(engine, now)
            step = engine.tick(now)
            out.append(["t", [_movement(m) for m in step.movements], _states(step.states)])
            next_tick += TICK_US
    return {"steps": out, **_counters(engine)}


def _counters(engine: Any) -> dict[str, Any]:
    return {
        "suppressed": dict(engine.suppressed),
        "movement_counts": dict(engine.movement_counts),
        "evicted": dict(engine.evicted),
        "tracked": engine.tracked,
        "pending": engine.pending_reads,
    }


def golden_movements(trace: dict[str, Any]) -> list[list[Any]]:
    """(type, epc, from, to, time_us, via) of every movement, in order."""
    return [m[:6] for kind, moves, *_ in trace["steps"] if kind in "ft" for m in moves]


def _digest(reads: Sequence[TagRead]) -> str:
    h = hashlib.sha256()
    for r in reads:
        h.update(repr(astuple(r)).encode())
    return h.hexdigest()[:16]


def _scenario_input(path: Path, seed: int | None) -> tuple[EngineConfig, list[TagRead], int]:
    from simulators.scenario import load_scenario, render, scenario_from_dict

    if seed is None:
        scenario = load_scenario(path)
    else:
        raw = json.loads(path.read_text(encoding="utf-8"))
        scenario = scenario_from_dict(harsh_variant(raw, seed), path.name, str(path))
    config = scenario_config(scenario)
    longest = max(
        (loc.profile.departed_after_s or 0.0 for loc in config.locations.values()), default=0.0
    )
    end_s = scenario.duration + longest + 5.0
    reads = scenario_reads(render(scenario, until_s=end_s))
    return config, reads, EPOCH_US + round(end_s * 1e6)


CASES = [(p, None) for p in SHIPPED] + [(p, s) for p in SHIPPED for s in HARSH_SEEDS]


def _case_id(path: Path, seed: int | None) -> str:
    return path.stem if seed is None else f"{path.stem}-harsh{seed}"


def _marks(path: Path) -> list[Any]:
    return [] if path.stem in FAST else [pytest.mark.slow]


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "seed"),
    [pytest.param(p, s, id=_case_id(p, s), marks=_marks(p)) for p, s in CASES],
)
@pytest.mark.parametrize("make", LOOPS)
def test_scenario_output_is_the_recorded_one_and_the_reference_engines(
    path: Path, seed: int | None, make: Factory
) -> None:
    config, reads, end_us = _scenario_input(path, seed)
    got = drive(make, config, reads, end_us)
    recorded = _load_golden()[_case_id(path, seed)]
    if recorded["reads"] == _digest(reads):  # else the simulator changed: the reference decides
        assert golden_movements(got) == recorded["movements"]
    assert got == drive(engine_reference.Engine, config, reads, end_us)


@pytest.mark.parametrize("make", LOOPS)
def test_steady_state_with_eviction_matches_the_reference(make: Factory) -> None:
    """The bench's workload (stationary tags, 5 % cross-reads) on a capped engine, with
    out-of-order batches, so eviction, late reads and refreshes all happen."""
    config = _site()
    config = EngineConfig(
        config.places,
        config.locations,
        config.portals,
        EngineSettings(max_tags=1500),
    )
    rng = random.Random(5)
    reads = _population_reads(2000, 40_000, EPOCH_US, rng)
    for k in range(0, len(reads) - 64, 64):  # local disorder within a few ms
        chunk = reads[k : k + 64]
        rng.shuffle(chunk)
        reads[k : k + 64] = chunk
    traces = []
    for engine in (make(config), engine_reference.Engine(config)):
        out: list[Any] = []
        for k in range(0, len(reads), 500):
            step = engine.feed(reads[k : k + 500])
            tick = engine.tick(reads[k].time_us + 300_000)
            out.append((_states(step.states), [_movement(m) for m in step.movements]))
            out.append((_states(tick.states), [_movement(m) for m in tick.movements]))
            out.append(engine.resume_floor_us())
        step = engine.flush()
        out.append((_states(step.states), [_movement(m) for m in step.movements]))
        out.append(_counters(engine))
        out.append(
            [astuple(s) if s else None for s in map(engine.state_of, (r.epc for r in reads))]
        )
        traces.append(out)
    assert traces[0] == traces[1]
    assert traces[0][-2]["evicted"] != {"present": 0, "absent": 0}


# A small site (tests/unit/test_engine.py: a dock door, a ship door, zones A and B) and random
# traffic on it: reads of a few tags at any antenna (and one unknown), in batches out of order.
ANTENNAS = [("dock", 1), ("dock", 2), ("ship", 1), ("ship", 2), ("zones", 1), ("zones", 2)]
ANTENNAS += [("zones", 9)]
EPCS = [f"3074257BF7194E40000000{k:02X}" for k in range(4)]

read_spec = st.tuples(
    st.integers(min_value=0, max_value=3),  # tag
    st.integers(min_value=0, max_value=len(ANTENNAS) - 1),
    st.integers(min_value=-90, max_value=-30),  # rssi (whole dB: ties happen)
    st.integers(min_value=0, max_value=4_000_000),  # time step to the next read, µs
    st.integers(min_value=-800_000, max_value=0),  # delivered this late (out of order)
)
event = st.one_of(
    st.tuples(st.just("reads"), st.lists(read_spec, min_size=1, max_size=40)),
    st.tuples(st.just("tick"), st.integers(min_value=0, max_value=60_000_000)),
    st.tuples(
        st.just("apply"),
        st.integers(min_value=0, max_value=3),
        st.sampled_from(["A", "B", "SHIP", "TRAILER", "ROBOT-CELL", None]),
    ),
    st.tuples(st.just("restart"), st.booleans()),
)


def _replay_events(make: Factory, events: list[Any], config: EngineConfig) -> list[Any]:
    engine = make(config)
    out: list[Any] = []
    clock = T0
    for ev in events:
        if ev[0] == "reads":
            batch = []
            for tag, ant, rssi, dt, late in ev[1]:
                clock += dt
                batch.append(TagRead(EPCS[tag], *ANTENNAS[ant], float(rssi), clock + late))
            step = engine.feed(batch)
        elif ev[0] == "tick":
            step = engine.tick(clock + ev[1])
        elif ev[0] == "apply":
            to = ev[2]
            kind = "departed" if to in (None, "TRAILER") else "moved"
            m = Movement(type=kind, epc=EPCS[ev[1]], from_=None, to=to, time_us=clock, source="x")
            step = engine.apply(m)
        else:
            states = [s for s in map(engine.state_of, EPCS) if s is not None]
            if ev[1]:
                out.append(("flush", _movement_list(engine.flush())))
            engine = make.restore(states, config)  # type: ignore[attr-defined]
            out.append(("restart", _states(states)))
            continue
        out.append((ev[0], _movement_list(step), engine.resume_floor_us()))
    out.append(("end", _movement_list(engine.flush()), _counters(engine)))
    out.append([None if s is None else astuple(s) for s in map(engine.state_of, EPCS)])
    return out


def _movement_list(step: Any) -> tuple[list[Any], list[Any]]:
    return [_movement(m) for m in step.movements], _states(step.states)


@pytest.mark.parametrize("make", LOOPS)
@settings(max_examples=150, deadline=None)
@given(st.lists(event, max_size=60), st.sampled_from([{}, {"min_reads": 1}, {"max_tags": 2}]))
def test_random_traffic_decides_as_the_reference(
    make: Factory, events: list[Any], overrides: dict[str, int]
) -> None:
    config = site(**overrides)
    assert _replay_events(make, events, config) == _replay_events(
        engine_reference.Engine, events, config
    )


def test_both_loops_keep_the_same_memory_per_tag() -> None:
    """The compiled loop hands the slow paths the index's own slot objects, as the Python loop
    does: a copy of each would be kept in the absence wheel, 28 bytes a tag more."""
    compiled = bytes_per_tag(20_000, Engine)
    python = bytes_per_tag(20_000, PythonLoopEngine)
    assert compiled["tracked_tags"] == python["tracked_tags"] == 20_000
    assert abs(compiled["bytes_per_tag"] - python["bytes_per_tag"]) < 2.0, (compiled, python)


def test_the_compiled_loop_is_built_and_used() -> None:
    """This project's machines have a C compiler: the engine must not quietly fall back to
    the Python loop there (`make` rebuilds it when gateway/engine/_hotloop.c changes)."""
    assert Engine.compiled_loop, "gateway/engine/_hotloop.c was not built: pip install -e ."
    assert Engine(site()).hot_loop == "c"
    assert PythonLoopEngine(site()).hot_loop == "python"


@pytest.mark.parametrize("make", LOOPS)
def test_a_tunnel_with_a_reconnect_backlog_decides_as_the_reference(make: Factory) -> None:
    """A backlog family instance under the bursty noise model (two tunnels; misses in bursts,
    so many cases are read only once or twice): passages are dated by the dwell each tunnel
    learns, which no shipped scenario exercises. Both loops must date every one as the
    reference engine does (tuning seed 1: simulators/families.py)."""
    from gateway.bench import engine as bench
    from simulators.scenario import scenario_from_dict

    (instance,) = bench.set_instances("tuning", ["backlog"], seeds=[1], models=["bursty"])
    assert instance.raw is not None
    scenario = scenario_from_dict(instance.raw, instance.name, instance.name)
    played = bench.playback(scenario)
    engine = make(played.config)
    got = played.play(engine)
    assert got == played.play(engine_reference.Engine(played.config))
    assert sum(m["type"] == "departed" for m in got) > 2000
    tunnel = engine.locs[engine._loc_named("TUNNEL-A")]  # it learnt its passages' 2.5 s
    assert tunnel.passages > 500 and 2.0e6 < tunnel.dwell_us < 3.0e6
    assert tunnel.dwell_dev_us < tunnel.dwell_us / 3


# --- the golden file ----------------------------------------------------------------------------

_golden_cache: dict[str, Any] = {}


def _load_golden() -> dict[str, Any]:
    if not _golden_cache:
        with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
            _golden_cache.update(json.load(f))
    return _golden_cache


def write_golden() -> None:
    """Record the reference engine's movements on every case (an intended change only)."""
    golden = {}
    for path, seed in CASES:
        config, reads, end_us = _scenario_input(path, seed)
        trace = drive(engine_reference.Engine, config, reads, end_us)
        golden[_case_id(path, seed)] = {
            "reads": _digest(reads),
            "movements": golden_movements(trace),
        }
        print(_case_id(path, seed), len(reads), "reads", len(golden_movements(trace)), "moves")
    with gzip.open(GOLDEN, "wt", encoding="utf-8") as f:
        json.dump(golden, f, separators=(",", ":"))


if __name__ == "__main__":
    write_golden()
    sys.exit(0)
