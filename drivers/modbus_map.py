"""Modbus register maps: TOML files describing what a PLC or robot cell exposes.

A map names points (one value each) and says where they live and how to decode them:

    [device]
    description = "PackML machine"

    [points.state]
    address = 0            # protocol address, 0-based, as on the wire
    kind = "holding"       # holding | input | coil | discrete
    type = "uint16"        # uint16 int16 uint32 int32 float32 bool bitfield string
    role = "state"         # state | alarms | counter | value (default: from enum/bits)
    enum = { 0 = "Undefined", 1 = "Clearing" }

    [heartbeat]            # optional: a point that must keep changing
    point = "heartbeat"

    [handshake]            # optional: the robot move record (see docs/equipment.md)
    flag = "move_flag"
    seq = "move_seq"
    ...

Parsing goes through gateway.confschema so errors read like config errors and name the
file and the dotted key: `robot.toml: points.move_seq.type: must be one of ...`.

Decoding is pure (registers in, value out) and raises DecodeError on garbage, so the driver
can count it and carry on; nothing here does I/O except `load_map`.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.confschema import Errors, build, join, read_toml

Kind = Literal["holding", "input", "coil", "discrete"]
PointType = Literal["uint16", "int16", "uint32", "int32", "float32", "bool", "bitfield", "string"]
Role = Literal["state", "alarms", "counter", "value"]
WordOrder = Literal["big", "little"]

REGISTER_KINDS: frozenset[str] = frozenset({"holding", "input"})
BIT_KINDS: frozenset[str] = frozenset({"coil", "discrete"})
# Modbus limits per read request (spec: 125 registers for FC3/FC4, 2000 bits for FC1/FC2).
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000

_FIXED_WIDTH = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "float32": 2, "bool": 1}
_INTEGER_TYPES = frozenset({"uint16", "int16", "uint32", "int32"})


P = TypeVar("P")


def effective_role(role: Role | None, enum: object, bits: object) -> Role:
    """A point's role as given, else from what it has: bits -> alarms, enum -> state."""
    if role is not None:
        return role
    if bits:
        return "alarms"
    if enum:
        return "state"
    return "value"


class MapError(ValueError):
    """A register map that cannot be used; `lines` name the file and the dotted key."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class DecodeError(ValueError):
    """Registers that do not decode to a value of the point's type (garbage from the device)."""


@dataclass(frozen=True, slots=True)
class Point:
    address: int
    kind: Kind
    type: PointType
    word_order: WordOrder = "big"  # "big": the first register holds the high word
    length: int | None = None  # registers, for string (required) and bitfield (1 or 2)
    scale: float = 1.0  # value = raw * scale + offset
    offset: float = 0.0
    unit: str | None = None
    enum: dict[int, str] | None = None  # raw value -> name
    bits: dict[int, str] | None = None  # bit number (0 = least significant) -> alarm name
    role: Role | None = None
    description: str | None = None
    # Set from the table key after parsing (not a TOML key: init=False keeps it out of the schema).
    name: str = field(default="", init=False)

    @property
    def width(self) -> int:
        """Registers (or bits, for coil/discrete points) this point occupies."""
        if self.kind in BIT_KINDS:
            return 1
        if self.type in ("string", "bitfield"):
            return self.length or 1
        return _FIXED_WIDTH[self.type]

    @property
    def effective_role(self) -> Role:
        return effective_role(self.role, self.enum, self.bits)

    @property
    def modulus(self) -> int | None:
        """For counters: where the raw value wraps around."""
        if self.type in ("uint16", "int16"):
            return 1 << 16
        if self.type in ("uint32", "int32"):
            return 1 << 32
        return None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    description: str | None = None
    vendor: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    point: str


@dataclass(frozen=True, slots=True)
class Handshake:
    """The robot move record. The robot fills the record, then raises `flag`; the gateway
    books the move, and only once it is durable writes `seq` into `ack`."""

    flag: str
    seq: str
    from_station: str
    to_station: str
    ack: str
    epc: str | None = None
    tote: str | None = None

    @property
    def points(self) -> frozenset[str]:
        """The names of the record's points."""
        names = [self.flag, self.seq, self.from_station, self.to_station, self.ack]
        return frozenset(n for n in (*names, self.epc, self.tote) if n)


@dataclass(frozen=True, slots=True)
class RawMap:
    points: dict[str, Any]
    device: DeviceInfo = field(default_factory=DeviceInfo)
    heartbeat: Heartbeat | None = None
    handshake: Handshake | None = None


@dataclass(frozen=True, slots=True)
class RegisterMap:
    path: str
    device: DeviceInfo
    points: Mapping[str, Point]
    heartbeat: Point | None
    handshake: Handshake | None

    @property
    def handshake_points(self) -> frozenset[str]:
        return self.handshake.points if self.handshake is not None else frozenset()

    def status_points(self) -> dict[str, Point]:
        """Points that describe the equipment (everything but the move record)."""
        skip = self.handshake_points
        return {n: p for n, p in self.points.items() if n not in skip}


# --- loading -----------------------------------------------------------------------------------


def load_map(path: str | Path) -> RegisterMap:
    """Read and validate a map file; raises MapError listing every problem found."""
    path = Path(path)
    return map_from_dict(read_map_toml(path, "register map"), path.name, str(path))


def read_map_toml(path: Path, what: str) -> dict[str, Any]:
    """A map file's TOML (raises MapError naming the file if it cannot be read or parsed)."""
    try:
        return read_toml(path, what)
    except ValueError as exc:
        raise MapError([str(exc)]) from None


def build_points(
    raw_points: Mapping[str, Any],
    cls: type[P],
    check: Callable[[P, str, Errors], bool],
    errors: Errors,
) -> dict[str, P]:
    """`[points.NAME]` tables -> points of `cls` (a frozen dataclass with a `name` field set
    here), those that pass `check`; every problem goes to `errors` under `points.NAME`."""
    if not raw_points:
        errors.add("points", "a map needs at least one point")
    points: dict[str, P] = {}
    for name, value in raw_points.items():
        here = join("points", name)
        point = build(cls, value, here, errors)
        if point is None:
            continue
        object.__setattr__(point, "name", name)  # frozen: the one write, right after build
        if check(point, here, errors):
            points[name] = point
    return points


def map_from_dict(raw: dict[str, Any], label: str = "map", path: str = "") -> RegisterMap:
    errors = Errors()
    top = build(RawMap, raw, "", errors)
    points: dict[str, Point] = {}
    if top is not None:
        points = build_points(top.points, Point, check_point, errors)
        check_overlaps(points, errors)
    heartbeat = handshake = None
    if top is not None and not errors:
        if top.heartbeat is not None:
            heartbeat = points.get(top.heartbeat.point)
            if heartbeat is None:
                errors.add("heartbeat.point", f"unknown point {top.heartbeat.point!r}")
        if top.handshake is not None:
            handshake = top.handshake
            check_handshake(handshake, points, errors)
    if errors or top is None:
        raise MapError([f"{label}: {line}" for line in errors.lines])
    return RegisterMap(path, top.device, points, heartbeat, handshake)


def check_point(p: Point, here: str, errors: Errors) -> bool:
    before = len(errors.lines)
    if not 0 <= p.address <= 0xFFFF:
        errors.add(join(here, "address"), f"must be between 0 and 65535, got {p.address}")
    if p.kind in BIT_KINDS and p.type != "bool":
        errors.add(join(here, "type"), f"a {p.kind} holds one bit: type must be 'bool'")
    if p.type == "string":
        if p.length is None or not 1 <= p.length <= MAX_REGISTERS_PER_READ:
            errors.add(join(here, "length"), "a string needs length = registers (1 to 125)")
    elif p.type == "bitfield":
        if p.length not in (None, 1, 2):
            errors.add(join(here, "length"), "a bitfield is 1 or 2 registers")
    elif p.length is not None:
        errors.add(join(here, "length"), "only string and bitfield points have a length")
    if p.enum is not None and p.type not in _INTEGER_TYPES:
        errors.add(join(here, "enum"), f"enum needs an integer type, not {p.type!r}")
    if p.bits is not None:
        if p.type != "bitfield":
            errors.add(join(here, "bits"), "bits need type = 'bitfield'")
        else:
            for bit in p.bits:
                if not 0 <= bit < 16 * (p.length or 1):
                    errors.add(join(join(here, "bits"), str(bit)), "bit number out of range")
    if (p.scale != 1.0 or p.offset != 0.0) and p.type not in (*_INTEGER_TYPES, "float32"):
        errors.add(join(here, "scale"), f"scale/offset apply to numbers, not {p.type!r}")
    if p.word_order != "big" and p.width < 2:
        errors.add(join(here, "word_order"), "word_order applies to multi-register points")
    if p.address + p.width > 0x10000:
        errors.add(join(here, "address"), "point runs past address 65535")
    role = p.effective_role
    if role == "counter" and p.type not in _INTEGER_TYPES:
        errors.add(join(here, "role"), "a counter needs an integer type")
    if role == "alarms" and p.type not in ("bitfield", "bool"):
        errors.add(join(here, "role"), "alarms need a bitfield (with bits) or a bool")
    if role == "state" and p.type not in (*_INTEGER_TYPES, "bool", "string"):
        errors.add(join(here, "role"), f"a state cannot be a {p.type}")
    return len(errors.lines) == before


def check_overlaps(points: Mapping[str, Point], errors: Errors) -> None:
    by_kind: dict[str, list[Point]] = {}
    for p in points.values():
        by_kind.setdefault(p.kind, []).append(p)
    for same_kind in by_kind.values():
        same_kind.sort(key=lambda p: p.address)
        for a, b in zip(same_kind, same_kind[1:], strict=False):
            if b.address < a.address + a.width:
                errors.add(
                    join("points", b.name),
                    f"{b.kind} address {b.address} overlaps point {a.name!r} "
                    f"({a.address}..{a.address + a.width - 1})",
                )


def check_handshake(hs: Handshake, points: Mapping[str, Point], errors: Errors) -> None:
    for f in dataclasses.fields(hs):
        ref = getattr(hs, f.name)
        if ref is not None and ref not in points:
            errors.add(join("handshake", f.name), f"unknown point {ref!r}")
    if errors:
        return
    if hs.epc is None and hs.tote is None:
        errors.add("handshake", "needs an epc or a tote point (or both)")
    for key in ("seq", "ack"):
        p = points[getattr(hs, key)]
        if p.type not in ("uint16", "uint32"):
            errors.add(join("handshake", key), f"point {p.name!r} must be uint16 or uint32")
    if points[hs.ack].kind != "holding":
        errors.add("handshake.ack", "the acknowledge point must be a holding register")
    for key in ("epc", "tote"):
        ref = getattr(hs, key)
        if ref is not None and points[ref].type != "string":
            errors.add(join("handshake", key), f"point {ref!r} must be a string")


# --- decoding ----------------------------------------------------------------------------------


def decode(point: Point, raw: Sequence[int] | Sequence[bool]) -> Any:
    """Registers (or one bit) -> the point's value. Raises DecodeError on garbage."""
    if len(raw) != point.width:
        raise DecodeError(f"{point.name}: expected {point.width} words, got {len(raw)}")
    if point.kind in BIT_KINDS:
        return bool(raw[0])
    words = [int(w) for w in raw]
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise DecodeError(f"{point.name}: register value out of range")
    if point.word_order == "little":
        words.reverse()
    t = point.type
    if t == "bool":
        return words[0] != 0
    if t == "string":
        return decode_string(point, words)
    value = combine(words)
    if t == "bitfield":
        return value
    if t == "int16":
        value = value - 0x10000 if value & 0x8000 else value
    elif t == "int32":
        value = value - 0x1_0000_0000 if value & 0x8000_0000 else value
    elif t == "float32":
        number = struct.unpack(">f", value.to_bytes(4, "big"))[0]
        if not math.isfinite(number):
            raise DecodeError(f"{point.name}: not a finite number")
        # A float32 carries ~7 significant digits; report those, not float64 noise.
        return scaled(point, float(f"{number:.7g}"))
    return scaled(point, value)


def combine(words: Sequence[int]) -> int:
    value = 0
    for w in words:
        value = value << 16 | w
    return value


def scaled(point: Point, value: float | int) -> float | int:
    if point.scale == 1.0 and point.offset == 0.0:
        return value
    result = value * point.scale + point.offset
    # Round away binary noise so 0.1 * 3 reports as 0.3, not 0.30000000000000004.
    return round(result, 9)


def decode_string(point: Point, words: Sequence[int]) -> str:
    """Two ASCII characters per register, high byte first; NUL padding and spaces trimmed."""
    data = b"".join(w.to_bytes(2, "big") for w in words)
    data = data.split(b"\x00", 1)[0]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError(f"{point.name}: not ASCII text") from None
    if not text.isprintable():
        raise DecodeError(f"{point.name}: control characters in text")
    return text.strip()


def raw_value(point: Point, raw: Sequence[int] | Sequence[bool]) -> int | None:
    """The unscaled integer of an integer point (for enums, counters and handshakes)."""
    if point.type not in _INTEGER_TYPES and point.type != "bitfield":
        return None
    words = [int(w) for w in raw]
    if point.word_order == "little":
        words.reverse()
    value = combine(words)
    if point.type == "int16" and value & 0x8000:
        value -= 0x10000
    if point.type == "int32" and value & 0x8000_0000:
        value -= 0x1_0000_0000
    return value


def encode_register_value(point: Point, value: int) -> list[int]:
    """An unsigned integer -> the registers of a uint16/uint32 point (for the ack write)."""
    if point.type == "uint16":
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{point.name}: {value} does not fit a uint16")
        return [value]
    if not 0 <= value <= 0xFFFF_FFFF:
        raise ValueError(f"{point.name}: {value} does not fit a uint32")
    words = [value >> 16, value & 0xFFFF]
    return words[::-1] if point.word_order == "little" else words


# --- read planning -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: `count` registers (or bits) of `kind` from `address`."""

    kind: Kind
    address: int
    count: int
    points: tuple[Point, ...]

    def slice_for(self, point: Point, values: Sequence[Any]) -> Sequence[Any]:
        start = point.address - self.address
        return values[start : start + point.width]


def plan_reads(points: Sequence[Point], max_gap: int = 0) -> list[ReadBlock]:
    """Coalesce points into as few requests as possible: points of one kind whose address
    ranges touch (or are at most `max_gap` apart) share a request, up to the protocol limit.
    The default gap is 0: reading unmapped addresses makes many PLCs answer an exception."""
    blocks: list[ReadBlock] = []
    by_kind: dict[str, list[Point]] = {}
    for p in points:
        by_kind.setdefault(p.kind, []).append(p)
    for kind in ("coil", "discrete", "holding", "input"):
        group = sorted(by_kind.get(kind, []), key=lambda p: p.address)
        limit = MAX_BITS_PER_READ if kind in BIT_KINDS else MAX_REGISTERS_PER_READ
        current: list[Point] = []
        start = end = 0
        for p in group:
            p_end = p.address + p.width
            if current and p.address <= end + max_gap and max(end, p_end) - start <= limit:
                current.append(p)
                end = max(end, p_end)
                continue
            if current:
                blocks.append(ReadBlock(kind, start, end - start, tuple(current)))  # type: ignore[arg-type]
            current, start, end = [p], p.address, p_end
        if current:
            blocks.append(ReadBlock(kind, start, end - start, tuple(current)))  # type: ignore[arg-type]
    return blocks
