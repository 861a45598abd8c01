"""Register maps: parsing, validation errors that name the file and key, decoding of every
type and word order, read coalescing, and hypothesis on arbitrary register values."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus_map import (
    DecodeError,
    MapError,
    Point,
    decode,
    encode_register_value,
    load_map,
    map_from_dict,
    plan_reads,
    raw_value,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["packml", "conveyor", "robot"]


def point(**kw: Any) -> Point:
    """A validated single point, built through the map parser."""
    m = map_from_dict({"points": {"p": {"address": 0, "kind": "holding", **kw}}})
    return m.points["p"]


def words_of(fmt: str, value: Any) -> list[int]:
    data = struct.pack(">" + fmt, value)
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


# --- the shipped maps ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_maps_load(name: str) -> None:
    m = load_map(ROOT / "drivers" / "maps" / f"{name}.toml")
    assert m.heartbeat is not None
    assert m.points


def test_packml_map_has_every_state_code() -> None:
    m = load_map(ROOT / "drivers/maps/packml.toml")
    names = m.points["state"].enum
    assert names is not None
    assert sorted(names) == list(range(18))
    assert names[0] == "Undefined" and names[6] == "Execute" and names[17] == "Completed"
    assert m.points["good_count"].effective_role == "counter"
    assert "stop_reason" in m.points


def test_robot_map_handshake() -> None:
    m = load_map(ROOT / "drivers/maps/robot.toml")
    hs = m.handshake
    assert hs is not None
    assert {hs.flag, hs.seq, hs.ack, hs.epc, hs.tote, hs.from_station, hs.to_station} <= set(
        m.points
    )
    assert "move_seq" not in m.status_points()


def test_conveyor_map_reads_coalesce() -> None:
    m = load_map(ROOT / "drivers/maps/conveyor.toml")
    blocks = plan_reads(list(m.points.values()))
    # zones 0-3 in one read, ConveyStop alone, 20-25 in one read, the heartbeat bit alone
    assert [(b.kind, b.address, b.count) for b in blocks] == [
        ("discrete", 0, 1),
        ("input", 0, 4),
        ("input", 10, 1),
        ("input", 20, 6),
    ]


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "words", "expected"),
    [
        ({"type": "uint16"}, [65535], 65535),
        ({"type": "int16"}, [65535], -1),
        ({"type": "int16"}, [0x8000], -32768),
        ({"type": "uint32"}, [0x0001, 0x0002], 0x00010002),
        ({"type": "uint32", "word_order": "little"}, [0x0002, 0x0001], 0x00010002),
        ({"type": "int32"}, words_of("i", -123456), -123456),
        ({"type": "int32", "word_order": "little"}, words_of("i", -123456)[::-1], -123456),
        ({"type": "float32"}, words_of("f", 1.5), 1.5),
        ({"type": "float32", "word_order": "little"}, words_of("f", -2.25)[::-1], -2.25),
        ({"type": "float32"}, words_of("f", 0.1), 0.1),
        ({"type": "bool"}, [0], False),
        ({"type": "bool"}, [7], True),
        ({"type": "bitfield"}, [0b101], 5),
        ({"type": "bitfield", "length": 2}, [1, 2], 0x10002),
        ({"type": "string", "length": 3}, [0x4142, 0x4300, 0x0000], "ABC"),
        ({"type": "string", "length": 2}, [0x2041, 0x4220], "AB"),
        ({"type": "uint16", "scale": 0.1}, [123], 12.3),
        ({"type": "int16", "scale": 0.5, "offset": -10}, [words_of("h", -4)[0]], -12.0),
        ({"type": "uint32", "scale": 0.01, "word_order": "little"}, [0xE240, 0x0001], 1234.56),
    ],
)
def test_decode_every_type_and_word_order(
    kw: dict[str, Any], words: list[int], expected: Any
) -> None:
    assert decode(point(**kw), words) == expected


def test_decode_bits_kinds() -> None:
    coil = map_from_dict({"points": {"c": {"address": 5, "kind": "coil", "type": "bool"}}})
    assert decode(coil.points["c"], [True]) is True
    assert decode(coil.points["c"], [False]) is False


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"type": "float32"}, words_of("f", float("nan"))),
        ({"type": "float32"}, words_of("f", float("inf"))),
        ({"type": "string", "length": 1}, [0xFF41]),
        ({"type": "string", "length": 1}, [0x0741]),
        ({"type": "uint16"}, [70000]),
        ({"type": "uint32"}, [1]),
    ],
)
def test_garbage_raises_decode_error(kw: dict[str, Any], words: list[int]) -> None:
    with pytest.raises(DecodeError):
        decode(point(**kw), words)


def test_raw_value_and_ack_encoding() -> None:
    p = point(type="uint32", word_order="little")
    words = encode_register_value(p, 0x00010002)
    assert words == [0x0002, 0x0001]
    assert raw_value(p, words) == 0x00010002
    with pytest.raises(ValueError):
        encode_register_value(point(type="uint16"), 70000)


# --- read planning ------------------------------------------------------------------------------


def test_plan_reads_coalesces_adjacent_only() -> None:
    m = map_from_dict(
        {
            "points": {
                "a": {"address": 0, "kind": "holding", "type": "uint16"},
                "b": {"address": 1, "kind": "holding", "type": "uint32"},
                "c": {"address": 5, "kind": "holding", "type": "uint16"},
                "d": {"address": 0, "kind": "input", "type": "uint16"},
                "e": {"address": 3, "kind": "coil", "type": "bool"},
                "f": {"address": 4, "kind": "coil", "type": "bool"},
            }
        }
    )
    blocks = plan_reads(list(m.points.values()))
    assert [(b.kind, b.address, b.count) for b in blocks] == [
        ("coil", 3, 2),
        ("holding", 0, 3),
        ("holding", 5, 1),
        ("input", 0, 1),
    ]
    gap = plan_reads(list(m.points.values()), max_gap=2)
    assert ("holding", 0, 6) in [(b.kind, b.address, b.count) for b in gap]


def test_plan_reads_respects_the_125_register_limit() -> None:
    points = {
        f"s{i}": {"address": i * 100, "kind": "holding", "type": "string", "length": 100}
        for i in range(3)
    }
    m = map_from_dict({"points": points})
    blocks = plan_reads(list(m.points.values()))
    assert all(b.count <= 125 for b in blocks)
    assert sum(b.count for b in blocks) == 300


# --- bad maps -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "bad.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[points.x]\nkind='holding'\ntype='uint16'",
            "bad.toml: points.x.address: missing required key",
        ),
        (
            "[points.x]\naddress=0\nkind='register'\ntype='uint16'",
            "bad.toml: points.x.kind: must be one of 'holding', 'input', 'coil', 'discrete'",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='u16'",
            "bad.toml: points.x.type: must be one of",
        ),
        (
            "[points.x]\naddress=70000\nkind='holding'\ntype='uint16'",
            "bad.toml: points.x.address: must be between 0 and 65535",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='string'",
            "bad.toml: points.x.length: a string",
        ),
        (
            "[points.x]\naddress=0\nkind='coil'\ntype='uint16'",
            "bad.toml: points.x.type: a coil holds one bit",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='float32'\nenum={0='a'}",
            "bad.toml: points.x.enum: enum needs an integer type",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='bitfield'\nbits={16='a'}",
            "bad.toml: points.x.bits.16: bit number out of range",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint16'\nbits={1='a'}",
            "bad.toml: points.x.bits: bits need type = 'bitfield'",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint16'\nword_order='little'",
            "bad.toml: points.x.word_order: word_order applies to multi-register points",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint16'\nword_order='middle'",
            "bad.toml: points.x.word_order: must be one of 'big', 'little'",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint16'\nenum={zero='a'}",
            "bad.toml: points.x.enum.zero: key must be a whole number",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint16'\ncolour='red'",
            "bad.toml: points.x.colour: unknown key",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint32'\n"
            "[points.y]\naddress=1\nkind='holding'\ntype='uint16'",
            "bad.toml: points.y: holding address 1 overlaps point 'x' (0..1)",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='string'\nlength=2\nrole='counter'",
            "bad.toml: points.x.role: a counter needs an integer type",
        ),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint16'\n[heartbeat]\npoint='nope'",
            "bad.toml: heartbeat.point: unknown point 'nope'",
        ),
        ("[device]\ndescription='x'", "bad.toml: points: missing required key"),
        ("[points]", "bad.toml: points: a map needs at least one point"),
        ("[points.x\n", "bad.toml: not valid TOML"),
        (
            "[points.x]\naddress=0\nkind='holding'\ntype='uint16'\n[extra]",
            "bad.toml: extra: unknown key",
        ),
    ],
)
def test_bad_maps_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(MapError) as info:
        load_map(write(tmp_path, text))
    assert any(line.startswith(expected) for line in info.value.lines), info.value.lines


def test_bad_handshake(tmp_path: Path) -> None:
    text = """
[points.flag]
address = 0
kind = "holding"
type = "uint16"
[points.seq]
address = 1
kind = "holding"
type = "float32"
[points.ack]
address = 0
kind = "input"
type = "uint16"
[handshake]
flag = "flag"
seq = "seq"
from_station = "from"
to_station = "flag"
ack = "ack"
"""
    with pytest.raises(MapError) as info:
        load_map(write(tmp_path, text))
    assert "bad.toml: handshake.from_station: unknown point 'from'" in info.value.lines
    text = text.replace('from_station = "from"', 'from_station = "flag"')
    with pytest.raises(MapError) as info:
        load_map(write(tmp_path, text))
    lines = info.value.lines
    assert "bad.toml: handshake: needs an epc or a tote point (or both)" in lines
    assert "bad.toml: handshake.seq: point 'seq' must be uint16 or uint32" in lines
    assert "bad.toml: handshake.ack: the acknowledge point must be a holding register" in lines


def test_missing_map_file(tmp_path: Path) -> None:
    with pytest.raises(MapError, match="no such register map"):
        load_map(tmp_path / "nope.toml")


# --- hypothesis: any register contents, every type ------------------------------------------------

TYPES: list[dict[str, Any]] = [
    {"type": t, "word_order": w} for t in ("uint32", "int32", "float32") for w in ("big", "little")
] + [
    {"type": "uint16", "enum": {0: "a", 1: "b"}},
    {"type": "int16", "scale": 0.1, "offset": 3.0},
    {"type": "bool"},
    {"type": "bitfield", "bits": {0: "x", 15: "y"}},
    {"type": "bitfield", "length": 2, "word_order": "little"},
    {"type": "string", "length": 4},
]


@settings(max_examples=300, deadline=None)
@given(
    spec=st.sampled_from(TYPES),
    words=st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=0, max_size=6),
)
def test_decode_never_raises_anything_but_decode_error(
    spec: dict[str, Any], words: list[int]
) -> None:
    p = point(**spec)
    try:
        decode(p, words)
    except DecodeError:
        pass
    if len(words) == p.width and p.type in ("uint32", "int32", "uint16", "int16", "bitfield"):
        assert isinstance(raw_value(p, words), int)
