"""Moved to gateway.bench.engine (issue #15). This alias stays only while
tests/unit/test_engine_golden.py and tests/unit/test_engine_scenarios.py import the old name;
delete it once they import gateway.bench.engine."""

import sys

from gateway.bench import engine

sys.modules[__name__] = engine
