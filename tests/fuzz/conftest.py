"""Fuzz tests feed garbage on purpose: sllurp logs a traceback for every frame it cannot
decode, which would make the runs slow and the output unreadable. The driver's own counters
(what the tests assert on) are unaffected; the LLRP tests still see what sllurp logs with an
exception (tools/fuzz_oracle.sllurp_exceptions), so an exception of ours it swallows fails.

When tools/fuzz.py runs these tests it sets FC_FUZZ_REPORT_DIR: each test process writes its
outcome counts there at the end (tools/fuzz_oracle.Tally), and tools/fuzz.py adds them up."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.fuzz_oracle import REPORT_DIR_ENV, TALLY


@pytest.fixture(autouse=True, scope="module")
def quiet_sllurp() -> Iterator[None]:
    logger = logging.getLogger("sllurp")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    yield
    logger.setLevel(level)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    directory = os.environ.get(REPORT_DIR_ENV)
    if directory:
        TALLY.write(Path(directory))
