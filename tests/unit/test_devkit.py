"""gateway.devkit: the one TOML writer and the one broker the demo, the benchmarks, the soak and
the tests share (issue 15 item 2)."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from gateway.devkit import toml
from gateway.devkit.broker import Mosquitto
from gateway.devkit.process import listening, stop, wait_for


def test_toml_writer_round_trips_a_gateway_shaped_document() -> None:
    data = {
        "gateway": {"site": "S", "id": "gw", "n": 3, "on": True, "x": 1.5},
        "locations": {"A-1": {"offsite": True}, "B": {"barcode": 'say "hi"\\'}},
        "readers": [
            {"name": "r", "tags": ["a", "b"], "antennas": {"1": {"location": "A-1"}}},
            {"name": "s", "stations": {"1": "B"}},
        ],
        "key with space": {"é": "ü"},
    }
    assert tomllib.loads(toml.dumps(data)) == data


def test_toml_writer_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(TypeError, match="NoneType"):
        toml.dumps({"a": None})


def test_a_broker_restarts_on_its_port_with_its_persistence(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    try:
        port = broker.port
        assert port is not None and listening(port) and broker.url == f"mqtt://127.0.0.1:{port}"
        broker.stop()
        assert not broker.running and not listening(port)
        broker.start()  # after an outage clients expect it where it was
        assert broker.port == port and listening(port)
        assert (tmp_path / "broker" / "mosquitto.conf").read_text().count("persistence true") == 1
    finally:
        broker.stop()
    assert (tmp_path / "broker" / "mosquitto.db").exists()  # saved on SIGTERM


def test_a_port_somebody_else_listens_on_is_not_taken_for_our_broker(tmp_path: Path) -> None:
    # The port accepts connections, but they are not mosquitto's: start() must not return.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = Mosquitto(tmp_path / "broker", port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address already in use"):
            broker.start()
    assert stop(broker.proc) == 1 and not broker.running


def test_wait_for_returns_the_value_or_fails_as_an_expectation() -> None:
    assert wait_for(lambda: 42) == 42
    with pytest.raises(AssertionError, match="within 0.05s"):
        wait_for(lambda: 0, timeout=0.05)
