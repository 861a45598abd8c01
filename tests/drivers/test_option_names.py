"""One naming convention for driver options (drivers/options.py): a key renamed to follow it
still loads under its old name, with a warning naming the new key; the new name loads as is."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from drivers.options import DRIVERS
from gateway.config import ConfigError, Settings, from_dict

MAPS = Path(__file__).resolve().parents[2] / "drivers" / "maps"


def config_with(device: dict[str, Any], section: str) -> dict[str, Any]:
    return {
        "gateway": {"site": "s1", "id": "g1", "state_dir": "/tmp/fc-edge-test"},
        "mqtt": {"url": "mqtt://127.0.0.1"},
        "locations": {"DOCK": {}},
        section: [device],
    }


def llrp(**keys: Any) -> dict[str, Any]:
    return config_with(
        {
            "name": "r1",
            "driver": "llrp",
            "host": "10.0.0.7",
            "antennas": {"1": {"location": "DOCK"}},
        }
        | keys,
        "readers",
    )


def tsl(**keys: Any) -> dict[str, Any]:
    return config_with({"name": "hh-1", "driver": "tsl", "port": "/dev/rfcomm0"} | keys, "readers")


def modbus(**keys: Any) -> dict[str, Any]:
    entry = {"name": "m1", "driver": "modbus", "host": "10.0.0.5", "map": str(MAPS / "packml.toml")}
    return config_with(entry | keys, "equipment")


def only_device_options(settings: Settings) -> Any:
    (device,) = settings.devices
    return device.options


@pytest.mark.parametrize(
    ("raw", "old", "new", "value"),
    [
        (llrp(backoff_cap_s=4), "backoff_cap_s", "reconnect_max_s", 4.0),
        (tsl(output_power_dbm=20), "output_power_dbm", "tx_power_dbm", 20),
        (modbus(status_every_s=15), "status_every_s", "status_interval_s", 15.0),
    ],
)
def test_an_old_name_still_loads_with_a_warning_naming_the_new_key(
    raw: dict[str, Any], old: str, new: str, value: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fc_edge.config")
    options = only_device_options(from_dict(raw))
    assert getattr(options, new) == value
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "fc_edge.config"]
    assert old in warning and f"write {new} instead" in warning


@pytest.mark.parametrize(
    ("raw", "new", "value"),
    [
        (llrp(reconnect_max_s=4), "reconnect_max_s", 4.0),
        (tsl(tx_power_dbm=20), "tx_power_dbm", 20),
        (modbus(status_interval_s=15, reconnect_max_s=5), "status_interval_s", 15.0),
    ],
)
def test_the_new_name_loads_without_a_warning(
    raw: dict[str, Any], new: str, value: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fc_edge.config")
    options = only_device_options(from_dict(raw))
    assert getattr(options, new) == value
    assert not [r for r in caplog.records if r.name == "fc_edge.config"]


def test_old_and_new_name_together_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(llrp(backoff_cap_s=4, reconnect_max_s=5))
    assert "readers[0].backoff_cap_s: renamed reconnect_max_s, which is given too" in str(
        info.value
    )


def test_renames_point_at_real_options_and_every_connected_driver_has_reconnect_max_s() -> None:
    for name, spec in DRIVERS.items():
        fields = {f.name for f in dataclasses.fields(spec.options)}
        for old, new in spec.renamed.items():
            assert new in fields and old not in fields, (name, old, new)
        if name != "replay":  # a file, played once: nothing to reconnect to
            assert "reconnect_max_s" in fields, name


UNIT_FREE = {"speed", "loop", "file", "host", "port", "mode", "session", "map", "serial"}
UNIT_FREE |= {"tag_population", "report_n_tags", "workflow", "allowed_locations"}
UNIT_FREE |= {"returns_location", "count_part_size", "baudrate", "parity", "device_id"}
UNIT_FREE |= {"max_gap", "stations"}
UNIT_FREE |= {"url", "security", "certificate_file", "private_key_file"}  # opcua
UNIT_FREE |= {"server_certificate_file", "username", "password_file"}
UNIT_FREE |= {"broker", "manufacturer", "serial_number", "location", "nodes"}  # vda5050
UNIT_FREE |= {"interface_name", "major_version", "client_id"}


def test_every_option_is_snake_case_and_every_time_is_in_seconds() -> None:
    """A float option is a quantity and names its unit (`_s`, `_dbm`); the others are listed
    here on purpose, so that a new one without a unit is a decision, not an accident."""
    for spec in DRIVERS.values():
        for f in dataclasses.fields(spec.options):
            assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", f.name), f.name
            if f.name not in UNIT_FREE:
                assert f.name.endswith(("_s", "_dbm")), f"{spec.options.__name__}.{f.name}"
            assert not f.name.endswith(("_ms", "_sec", "_seconds")), f.name
