"""End to end: shipped scenarios through the engine, scored against their truth
(gateway.bench_engine, the same code as `fc-edge bench accuracy`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.bench_engine import accuracy_of, shipped_scenarios

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
    result = accuracy_of(path)
    engine = result["engine"]
    assert engine["parked_false_moves"] == 0
    # Measured: 1.0 on conveyor, ship-door and store-floor; 0.9875 on dock-receive and 0.96 on
    # noisy (late or early by a little more than the 2 s tolerance), see docs/engine.md.
    assert engine["precision"] >= 0.95 and engine["recall"] >= 0.95, engine
    for baseline in ("last_antenna_wins", "edgex"):
        assert engine["f1"] >= result[baseline]["f1"], (baseline, result[baseline]["f1"])
