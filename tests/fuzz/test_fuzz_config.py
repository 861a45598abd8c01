"""Config files (gateway/config.py `from_dict`) and names used in topics
(gateway/confschema.py `check_topic_name`).

Random TOML-ish documents, and a valid config (config/example.toml plus one device of each
driver) with random keys set, added or removed: the result is Settings or a ConfigError whose
every line names the file and the dotted key ("site.toml: readers[0].port: ..."); never any
other exception.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import config
from gateway.confschema import check_topic_name
from tests.support.scale import scaled
from tests.support.strategies import KEY_CHARS, keys, paths_of, toml_values
from tools.fuzz_oracle import example

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"
LABEL = "site.toml"
FAST = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))

EXTRA_DEVICES = """
[[readers]]
name = "door-7"
driver = "llrp"
host = "127.0.0.1"
[readers.antennas]
1 = { location = "YARD" }

[[readers]]
name = "handheld-1"
driver = "tsl"
port = "/dev/ttyUSB0"

[[equipment]]
name = "sorter-1"
driver = "modbus"
host = "127.0.0.1"
map = "../drivers/maps/packml.toml"
"""


def base_config(tmp: Path) -> dict[str, Any]:
    raw = tomllib.loads(EXAMPLE.read_text() + EXTRA_DEVICES)
    raw["gateway"]["state_dir"] = str(tmp)
    raw["mqtt"]["url"] = "mqtt://127.0.0.1:1883"  # the example takes it from ${FC_EDGE_MQTT_URL}
    return raw


BASE: dict[str, Any] = {}


def base() -> dict[str, Any]:
    if not BASE:
        BASE.update(base_config(Path("/nonexistent-state-dir")))
    return copy.deepcopy(BASE)


def load(raw: Any) -> config.Settings | None:
    """from_dict; a ConfigError must name the file and a key on every line."""
    with example("config") as verdict:
        try:
            return config.from_dict(raw, LABEL, str(EXAMPLE))
        except config.ConfigError as exc:
            verdict.rejected_by_parser()
            assert exc.lines
            for line in exc.lines:
                assert line.startswith(f"{LABEL}: "), line
                rest = line[len(LABEL) + 2 :]
                assert ": " in rest, line  # "<dotted key>: <what is wrong>"
            return None


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    raw = base()
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in paths_of(raw) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = raw
        for step in path[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = draw(toml_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(toml_values)
        else:
            parent.append(draw(toml_values))
    return raw


def test_the_base_config_is_valid() -> None:
    assert config.from_dict(base(), LABEL, str(EXAMPLE)) is not None


@pytest.mark.parametrize("driver", [[], {}])
def test_a_driver_that_is_not_a_string_is_a_config_error(driver: Any) -> None:
    raw = base()
    raw["equipment"][0]["driver"] = driver
    with pytest.raises(config.ConfigError) as caught:
        config.from_dict(raw, LABEL, str(EXAMPLE))
    assert any(line.startswith(f"{LABEL}: equipment[0].driver: ") for line in caught.value.lines)


@FAST
@given(raw=st.dictionaries(keys, toml_values, max_size=6))
def test_random_documents(raw: dict[str, Any]) -> None:
    load(raw)


@FAST
@given(raw=mutated_configs())
def test_mutated_valid_config(raw: dict[str, Any]) -> None:
    load(raw)


# --- names used in topics -----------------------------------------------------------------------

_TOPIC_BAD = re.compile(r"[+#/\x00]")


def topic_ok(name: str) -> bool:
    return bool(name) and not _TOPIC_BAD.search(name) and name.strip() == name


names = st.one_of(
    st.text(KEY_CHARS, max_size=12),
    st.text(st.sampled_from("ab-_.+#/ \x00\t$"), max_size=6),
)


def check_topic(name: str) -> None:
    """Accepted exactly when topic_ok; a rejection is a ValueError naming the name."""
    with example("topic_name") as verdict:
        try:
            assert check_topic_name(name) == name
            assert topic_ok(name)
        except ValueError as exc:
            verdict.rejected_by_parser()
            assert not topic_ok(name)
            assert repr(name) in str(exc)


@settings(max_examples=500, deadline=None)
@given(name=names)
def test_check_topic_name(name: str) -> None:
    check_topic(name)


WHERE = {
    "site": ("gateway", "site"),
    "id": ("gateway", "id"),
    "topic_prefix": ("mqtt", "topic_prefix"),
}


@FAST
@given(name=names, where=st.sampled_from(["site", "id", "topic_prefix", "device", "location"]))
def test_names_used_in_topics_are_checked_by_the_config(name: str, where: str) -> None:
    """site, gateway id, topic prefix, device and location names go into MQTT topics: any
    with + # / NUL or spaces at the ends is rejected with its key named."""
    raw = base()
    if where in WHERE:
        section, key = WHERE[where]
        raw[section][key] = name
        key_path = f"{section}.{key}"
    elif where == "device":
        raw["equipment"][0]["name"] = name
        key_path = "equipment[0].name"
    else:
        raw["locations"][name] = {"offsite": False}
        key_path = f"locations.{name}"
    settings_ = load(raw)
    if topic_ok(name):
        return  # may still fail for another reason (a duplicate name), but not this one
    assert settings_ is None
    try:
        config.from_dict(raw, LABEL, str(EXAMPLE))
    except config.ConfigError as exc:
        assert any(line.startswith(f"{LABEL}: {key_path}: ") for line in exc.lines), exc.lines


# --- slow ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_config_slow() -> None:
    @scaled(2_000)
    @given(raw=mutated_configs())
    def mutated(raw: dict[str, Any]) -> None:
        load(raw)

    @scaled(1_000)
    @given(raw=st.dictionaries(keys, toml_values, max_size=6))
    def documents(raw: dict[str, Any]) -> None:
        load(raw)

    @scaled(12_000)
    @given(name=names)
    def topic(name: str) -> None:
        check_topic(name)

    mutated()
    documents()
    topic()
