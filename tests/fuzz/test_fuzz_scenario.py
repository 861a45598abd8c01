"""Scenario files (simulators/scenario.py `scenario_from_dict`): random JSON documents and
every shipped scenario with random keys set, added or removed. The result is a Scenario or a
ScenarioError whose every line names the file and a JSON path; never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.scenario import ScenarioError, scenario_from_dict
from tests.support.scale import scaled
from tests.support.strategies import keys, paths_of
from tools.fuzz_oracle import example

ROOT = Path(__file__).resolve().parents[2]
# The site scenarios (the handheld ones have their own format, simulators/tsl/scenario.py).
SHIPPED = [
    raw
    for raw in (
        json.loads(p.read_text()) for p in sorted((ROOT / "simulators/scenarios").glob("*.json"))
    )
    if "timeline" in raw
]
LABEL = "fuzz.json"
FAST = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=10)
    | st.sampled_from(["dock-07:1", "x:0", ":", "a:99999999999", "YARD", "pallet-1", "to"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=10,
)  # fmt: skip


def load(raw: Any) -> None:
    with example("scenario") as verdict:
        try:
            scenario_from_dict(raw, LABEL)
        except ScenarioError as exc:
            verdict.rejected_by_parser()
            assert exc.lines
            for line in exc.lines:
                assert line.startswith(f"{LABEL}: $"), line


@st.composite
def mutated_scenarios(draw: st.DrawFn) -> Any:
    raw = json.loads(json.dumps(draw(st.sampled_from(SHIPPED))))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in paths_of(raw) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = raw
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = draw(json_like)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(json_like)
        else:
            parent.append(draw(json_like))
    return raw


@pytest.mark.parametrize("index", range(len(SHIPPED)))
def test_shipped_scenarios_load(index: int) -> None:
    scenario_from_dict(SHIPPED[index], LABEL)


@FAST
@given(raw=json_like)
def test_random_documents(raw: Any) -> None:
    load(raw)


@FAST
@given(raw=mutated_scenarios())
def test_mutated_shipped_scenarios(raw: Any) -> None:
    load(raw)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_scenario_slow() -> None:
    @scaled(1_500)
    @given(raw=mutated_scenarios())
    def one(raw: Any) -> None:
        load(raw)

    one()
