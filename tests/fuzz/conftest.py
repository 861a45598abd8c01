"""Fuzz tests feed garbage on purpose: sllurp logs a traceback for every frame it cannot
decode, which would make the runs slow and the output unreadable. The driver's own counters
(what the tests assert on) are unaffected."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def quiet_sllurp() -> Iterator[None]:
    logger = logging.getLogger("sllurp")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    yield
    logger.setLevel(level)
