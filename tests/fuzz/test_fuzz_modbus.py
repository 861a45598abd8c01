"""Modbus register values against every map type (drivers/modbus_map.py `decode`).

tests/drivers/test_modbus_map.py fuzzes nine fixed point specs with register lists of 0..6
words. What it leaves out, covered here: every type on every register kind and word order,
with random scale/offset/length/enum/bits (built through the map parser, so only specs a
map file can express), coils and discrete inputs, values outside 0..65535 (a broken client
library), every point of every shipped map, and random TOML-ish map files (MapError only).

For any registers: `decode` returns a value of the point's type or raises DecodeError
(which the driver counts as errors.garbage), nothing else; map files raise MapError only. Each
example is judged and counted by tools/fuzz_oracle.py (time limit included).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from drivers.modbus_map import (
    DecodeError,
    MapError,
    Point,
    decode,
    load_map,
    map_from_dict,
    raw_value,
)
from tests.support.scale import scaled
from tests.support.strategies import toml_values
from tools.fuzz_oracle import example

FILES = settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "drivers" / "maps").glob("*.toml"))
FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

TYPES = ["uint16", "int16", "uint32", "int32", "float32", "bool", "bitfield", "string"]
KINDS = ["holding", "input", "coil", "discrete"]
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@st.composite
def point_specs(draw: st.DrawFn) -> dict[str, Any]:
    t = draw(st.sampled_from(TYPES))
    kind = "holding" if t != "bool" else draw(st.sampled_from(KINDS))
    if t != "bool" and draw(st.integers(0, 4)) == 0:
        kind = "input"
    spec: dict[str, Any] = {"address": draw(st.integers(0, 65000)), "kind": kind, "type": t}
    if t in ("uint32", "int32", "float32") or (t in ("string", "bitfield") and draw(st.booleans())):
        spec["word_order"] = draw(st.sampled_from(["big", "little"]))
    if t == "string":
        spec["length"] = draw(st.integers(1, 125))
    if t == "bitfield":
        length = draw(st.sampled_from([None, 1, 2]))
        if length:
            spec["length"] = length
        if draw(st.booleans()):
            top = 16 * (length or 1)
            spec["bits"] = {str(b): f"alarm{b}" for b in draw(st.sets(st.integers(0, top - 1)))}
    if t in ("uint16", "int16", "uint32", "int32", "float32") and draw(st.booleans()):
        spec["scale"] = draw(finite)
        spec["offset"] = draw(finite)
    if t in ("uint16", "int16", "uint32", "int32") and draw(st.booleans()):
        spec["enum"] = {str(k): f"s{k}" for k in draw(st.sets(st.integers(-5, 70000)))}
    return spec


def build_point(spec: dict[str, Any]) -> Point:
    try:
        m = map_from_dict({"points": {"p": spec}})
    except MapError:
        assume(False)  # a spec no map file can express (e.g. runs past 65535)
        raise
    return m.points["p"]


registers = st.integers(0, 0xFFFF)
odd_registers = st.one_of(registers, st.integers(-(2**20), 2**20), st.booleans())


def check_decode(p: Point, words: list[Any]) -> None:
    with example("modbus.decode") as verdict:
        try:
            value = decode(p, words)
        except DecodeError:
            verdict.rejected_by_parser()
            return
        check_value(p, words, value)


def check_value(p: Point, words: list[Any], value: Any) -> None:
    assert len(words) == p.width
    if p.kind in ("coil", "discrete") or p.type == "bool":
        assert isinstance(value, bool)
    elif p.type == "string":
        assert isinstance(value, str) and value.isprintable()
    elif p.type == "bitfield":
        assert isinstance(value, int) and 0 <= value < 1 << (16 * p.width)
    else:
        assert isinstance(value, int | float) and not isinstance(value, bool)
        assert math.isfinite(value)
    if p.type in ("uint16", "int16", "uint32", "int32", "bitfield"):
        assert isinstance(raw_value(p, words), int)


def check_map(raw: dict[str, Any]) -> None:
    """A random map file: a map, or MapError whose every line names the file."""
    with example("modbus.map") as verdict:
        try:
            map_from_dict(raw, "fuzz.toml")
        except MapError as exc:
            verdict.rejected_by_parser()
            assert exc.lines and all(line.startswith("fuzz.toml: ") for line in exc.lines)


@FAST
@given(spec=point_specs(), data=st.data())
def test_every_type_kind_and_option_decodes_or_raises_decode_error(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    p = build_point(spec)
    width = p.width
    length = data.draw(st.sampled_from([width, width, width, 0, width + 1, max(0, width - 1)]))
    words = data.draw(st.lists(registers, min_size=length, max_size=length))
    check_decode(p, words)


@FAST
@given(spec=point_specs(), data=st.data())
def test_out_of_range_and_non_integer_registers_are_decode_errors(
    spec: dict[str, Any], data: st.DataObject
) -> None:
    p = build_point(spec)
    words = data.draw(st.lists(odd_registers, min_size=p.width, max_size=p.width))
    check_decode(p, words)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_point_of_every_shipped_map(path: Path) -> None:
    points = list(load_map(path).points.values())

    @FILES
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        p = data.draw(st.sampled_from(points))
        words = data.draw(st.lists(registers, min_size=p.width, max_size=p.width))
        check_decode(p, words)

    one()


@FILES
@given(raw=st.dictionaries(st.sampled_from(["points", "device", "heartbeat", "x"]), toml_values))
def test_random_map_files_raise_map_error_only(raw: dict[str, Any]) -> None:
    check_map(raw)


@FILES
@given(points=st.dictionaries(st.text(max_size=6), toml_values, max_size=3))
def test_random_point_tables_raise_map_error_only(points: dict[str, Any]) -> None:
    check_map({"points": points})


# --- slow ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_modbus_decode_slow() -> None:
    @scaled(6_000)
    @given(spec=point_specs(), data=st.data())
    def one(spec: dict[str, Any], data: st.DataObject) -> None:
        p = build_point(spec)
        words = data.draw(st.lists(odd_registers, min_size=p.width, max_size=p.width))
        check_decode(p, words)

    one()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_modbus_map_files_slow() -> None:
    @scaled(1_500)
    @given(points=st.dictionaries(st.text(max_size=6), toml_values, max_size=3))
    def one(points: dict[str, Any]) -> None:
        check_map({"points": points})

    one()
