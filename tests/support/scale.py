"""Example counts for the slow fuzz runs. `make test-slow` runs each slow test's base count;
`tools/fuzz.py` sets FC_FUZZ_SCALE to multiply every count (e.g. 10 for a 1M-example run); its
SLOW_TOTAL is the sum of the slow tests' base counts, kept in step by hand."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings


def scale() -> float:
    try:
        return max(0.001, float(os.environ.get("FC_FUZZ_SCALE", "1")))
    except ValueError:
        return 1.0


def scaled(base: int) -> Callable[[Any], Any]:
    """Hypothesis settings for a slow fuzz test: `base` examples times FC_FUZZ_SCALE, no
    deadline (a loaded 2-core box), no health checks (generation is deliberately heavy)."""
    return settings(
        max_examples=max(1, round(base * scale())),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
