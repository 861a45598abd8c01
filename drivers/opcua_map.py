"""OPC UA point maps: TOML files naming the nodes a PLC exposes and what each one means.

The same point model as the Modbus register maps (drivers/modbus_map.py), with a node id in
place of an address and no wire type (an OPC UA server says a value's type itself):

    [device]
    description = "PackML machine over OPC UA"

    [points.state]
    node = "ns=2;s=Packer.State"
    role = "state"                 # state | alarms | counter | value (default: from enum/bits)
    enum = { 2 = "Stopped", 6 = "Execute" }

    [points.alarms]
    node = "ns=2;s=Packer.Alarms"
    bits = { 0 = "EmergencyStop", 4 = "MaterialJam" }

    [heartbeat]
    point = "heartbeat"

    [handshake]                    # optional: the robot move record (docs/equipment.md)
    flag = "move_flag"             # Boolean (or an integer), raised by the robot
    seq = "move_seq"               # an unsigned integer, +1 per move
    from_station = "move_from"
    to_station = "move_to"
    epc = "move_epc"               # a String (hex), and/or
    tote = "move_tote"             # a String
    ack = "move_ack"               # writable: the gateway writes seq into it

Errors name the file and the dotted key (`packml.toml: points.state.node: ...`), as the
Modbus maps' do. Node ids are checked by their text form here, without asyncua, so that
`check-config` needs no OPC UA library. `interpret` turns a value the server sent into the
point's value and raises DecodeError on one it cannot be (the driver counts it, never crashes).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.modbus_map import (
    DecodeError,
    DeviceInfo,
    Handshake,
    MapError,
    RawMap,
    Role,
    build_points,
    effective_role,
    read_map_toml,
)
from gateway.confschema import Errors, build, join

__all__ = ["DecodeError", "MapError", "NodeMap", "NodePoint", "interpret", "load_map"]

# OPC UA Part 6 §5.3.1.10 text form: [ns=<index>;|nsu=<uri>;]<i|s|g|b>=<identifier>
_NODE_ID = re.compile(
    r"(?:(?:ns=\d+|nsu=[^;]+);)?"
    r"(?:i=\d+|s=.+|g=[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
    r"|b=[A-Za-z0-9+/=]+)",
    re.DOTALL,
)
_ALARM_BITS = 64  # an OPC UA alarm word is at most a UInt64


@dataclass(frozen=True, slots=True)
class NodePoint:
    node: str  # the node id in text form, e.g. "ns=2;s=Packer.State"
    role: Role | None = None
    enum: dict[int, str] | None = None  # integer value -> name
    bits: dict[int, str] | None = None  # bit number (0 = least significant) -> alarm name
    scale: float = 1.0  # value = raw * scale + offset (numbers only)
    offset: float = 0.0
    unit: str | None = None
    modulus: int | None = None  # counters: where the server's value wraps (e.g. 4294967296)
    description: str | None = None
    name: str = field(default="", init=False)  # the table key, set after parsing

    @property
    def effective_role(self) -> Role:
        return effective_role(self.role, self.enum, self.bits)


@dataclass(frozen=True, slots=True)
class NodeMap:
    path: str
    device: DeviceInfo
    points: Mapping[str, NodePoint]
    heartbeat: NodePoint | None
    handshake: Handshake | None = None

    @property
    def handshake_points(self) -> frozenset[str]:
        return self.handshake.points if self.handshake is not None else frozenset()


def load_map(path: str | Path) -> NodeMap:
    """Read and validate a point map; raises MapError listing every problem found."""
    path = Path(path)
    return map_from_dict(read_map_toml(path, "point map"), path.name, str(path))


def map_from_dict(raw: dict[str, Any], label: str = "map", path: str = "") -> NodeMap:
    errors = Errors()
    top = build(RawMap, raw, "", errors)  # a map file's tables, as a Modbus map's
    points: dict[str, NodePoint] = {}
    if top is not None:
        points = build_points(top.points, NodePoint, check_point, errors)
        check_duplicate_nodes(points, errors)
    heartbeat = None
    if top is not None and top.heartbeat is not None and not errors:
        heartbeat = points.get(top.heartbeat.point)
        if heartbeat is None:
            errors.add("heartbeat.point", f"unknown point {top.heartbeat.point!r}")
    if top is not None and top.handshake is not None and not errors:
        check_handshake(top.handshake, points, errors)
    if errors or top is None:
        raise MapError([f"{label}: {line}" for line in errors.lines])
    return NodeMap(path, top.device, points, heartbeat, top.handshake)


def check_point(p: NodePoint, here: str, errors: Errors) -> bool:
    before = len(errors.lines)
    if not _NODE_ID.fullmatch(p.node):
        errors.add(
            join(here, "node"), f"not an OPC UA node id (e.g. 'ns=2;s=Packer.State'): {p.node!r}"
        )
    role = p.effective_role
    if p.bits is not None:
        if role != "alarms":
            errors.add(join(here, "bits"), "bits belong to an alarms point")
        for bit in p.bits:
            if not 0 <= bit < _ALARM_BITS:
                errors.add(join(join(here, "bits"), str(bit)), "bit number out of range (0..63)")
    if p.enum is not None and role != "state":
        errors.add(join(here, "enum"), "enum belongs to a state point")
    if (p.scale != 1.0 or p.offset != 0.0) and role != "value":
        errors.add(join(here, "scale"), "scale/offset apply to value points only")
    if p.modulus is not None and (role != "counter" or p.modulus < 2):
        errors.add(join(here, "modulus"), "a counter's wrap value, at least 2")
    return len(errors.lines) == before


def check_duplicate_nodes(points: Mapping[str, NodePoint], errors: Errors) -> None:
    """One node, one point: a notification names its node, so the point must be unambiguous."""
    seen: dict[str, str] = {}
    for name, p in points.items():
        if p.node in seen:
            errors.add(join(join("points", name), "node"), f"same node as point {seen[p.node]!r}")
        seen.setdefault(p.node, name)


def check_handshake(hs: Handshake, points: Mapping[str, NodePoint], errors: Errors) -> None:
    """The move record's points exist and are plain values (the robot's record, no events)."""
    for f in dataclasses.fields(hs):
        ref = getattr(hs, f.name)
        if ref is None:
            continue
        here = join("handshake", f.name)
        if ref not in points:
            errors.add(here, f"unknown point {ref!r}")
        elif points[ref].effective_role != "value":
            errors.add(here, f"point {ref!r} is part of the move record: give it no role")
    if hs.epc is None and hs.tote is None:
        errors.add("handshake", "needs an epc or a tote point (or both)")


# --- interpreting values ------------------------------------------------------------------------


def interpret(point: NodePoint, value: Any) -> Any:
    """A value as the server sent it -> the point's value (an int for states, alarm words and
    counters; a number, bool or text for values). Raises DecodeError on one it cannot be."""
    role = point.effective_role
    if role == "alarms":
        if isinstance(value, bool):
            return int(value)
        return _whole(point, value, signed=False)
    if role in ("state", "counter"):
        if role == "state" and point.enum is None and isinstance(value, str | bool):
            return value
        return _whole(point, value, signed=role == "state")
    return _plain(point, value)


def _whole(point: NodePoint, value: Any, signed: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodeError(f"{point.name}: expected an integer, got {type(value).__name__}")
    if value < 0 and not signed:
        raise DecodeError(f"{point.name}: negative value {value}")
    return value


def _plain(point: NodePoint, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise DecodeError(f"{point.name}: not a finite number")
        if point.scale == 1.0 and point.offset == 0.0:
            return value
        return round(value * point.scale + point.offset, 9)  # no binary noise in reports
    if isinstance(value, str):
        if not value.isprintable():
            raise DecodeError(f"{point.name}: control characters in text")
        return value
    raise DecodeError(f"{point.name}: unsupported value type {type(value).__name__}")
