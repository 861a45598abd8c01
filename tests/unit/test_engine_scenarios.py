"""End to end: shipped scenarios through the engine, scored against their truth
(gateway.bench.engine, the same code as `fc-edge bench accuracy`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.bench.engine import accuracy_of, harsh_variant, shipped_scenarios

SHIPPED = shipped_scenarios()


def _noise_free(path: Path, tmp_path: Path) -> Path:
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    raw.pop("$schema", None)
    raw["radio"].update(read_rate=1.0, rssi_sigma=0.0, cross_read_rate=0.0, stray_rate=0.0)
    out = tmp_path / path.name
    out.write_text(json.dumps(raw), encoding="utf-8")
    return out


def test_scenarios_are_shipped() -> None:
    assert len(SHIPPED) >= 3


def test_noise_free_dock_is_exact(tmp_path: Path) -> None:
    path = next(p for p in SHIPPED if p.name == "ship-door.json")
    result = accuracy_of(_noise_free(path, tmp_path))["engine"]
    assert (result["precision"], result["recall"]) == (1.0, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_noise_free_scenarios_are_exact(path: Path, tmp_path: Path) -> None:
    result = accuracy_of(_noise_free(path, tmp_path))["engine"]
    assert (result["precision"], result["recall"]) == (1.0, 1.0), result


@pytest.mark.slow
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenarios_beat_both_baselines(path: Path) -> None:
    result = accuracy_of(path)  # the chosen tolerance: the scenario's longest step (>= 2 s)
    engine = result["engine"]
    assert engine["parked_false_moves"] == 0
    assert engine["precision"] >= 0.999 and engine["recall"] >= 0.999, engine
    for baseline in ("last_antenna_wins", "edgex"):
        assert engine["f1"] >= result[baseline]["f1"], (baseline, result[baseline]["f1"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_harsher_variants_never_move_a_parked_tag(path: Path, seed: int, tmp_path: Path) -> None:
    """Read rate 0.6-0.9, sigma 3-5 dB, cross-reads, strays, and tags parked next to every
    portal. (Seeds 11-13 were meant to be unseen, but a rule change fixed seed 13: they are
    tuning data, in-sample; simulators/families.py has the frozen evaluation set.)"""
    raw = json.loads(path.read_text(encoding="utf-8"))
    variant = tmp_path / path.name
    variant.write_text(json.dumps(harsh_variant(raw, seed)), encoding="utf-8")
    result = accuracy_of(variant, runners=("engine",))["engine"]
    # Measured (docs/engine.md): no parked tag moves, on seeds 11-13 and 21-22 of every
    # shipped scenario (the last two false first sightings went with the single-read rule,
    # test_one_weak_stray_does_not_hold_off_a_first_sightings_real_location). Conveyor
    # variants lose recall to timing (2 s steps, moves decided 2-4 s after the step's end).
    assert result["parked_false_moves"] == 0, result
    assert result["precision"] >= 0.8 and result["recall"] >= 0.8, result
