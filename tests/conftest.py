"""Fixtures shared by all tests: a real mosquitto on a free loopback port (plain and TLS).
What the tests import (the Broker, gateway configs, the real `fc-edge` process) lives in
tests/support/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker, make_certs
from tests.support.helpers import free_port


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", free_port())
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_broker(tmp_path: Path, certs: dict[str, str]) -> Iterator[Broker]:
    b = Broker(tmp_path / "tls-broker", free_port(), tls=dict(certs))
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop()
