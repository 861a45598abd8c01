"""What an LLRP decoder process sends the gateway over its pipe: one message per `send_bytes`.

The hot message is a batch of one reader's parsed reads, packed as columns (one `array` per
field, the EPCs joined by newlines) rather than pickled: packing and unpacking are then a
handful of C calls per batch instead of a Python-level step per read, and the format is
checked exactly on arrival (`MalformedMessage`): a batch that does not add up is a bug in the
decoder process, not data, and the gateway restarts that process (gateway/decoders.py).

    R  reads     header (kind, reader index, count), then time_us q*n, rssi d*n,
                 antenna H*n, count I*n, then the EPCs: ASCII, n lines joined by b"\\n"
    P  progress  (kind, reader index, time_us): the reader has sent all it read before then
    S  state     kind, then JSON {"reader": i, "health": {...}}: a device state change
    H  health    kind, then JSON {"readers": {i: {...}}}: the heartbeat, every reader's health
    A  reloaded  (kind, generation): a SIGHUP's reload reached the process

Reader indexes are positions in the list of readers the gateway gave the process at start.
Standard library only, and nothing of the gateway but the model: both processes import it.
"""

from __future__ import annotations

import json
import struct
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from drivers.base import DeviceState, DriverHealth
from gateway.model import TagRead

READS, PROGRESS, STATE, HEALTH, RELOADED = b"R", b"P", b"S", b"H", b"A"

_READS_HEAD = struct.Struct("<cHI")
_PROGRESS = struct.Struct("<cHq")
_RELOADED = struct.Struct("<cI")
# The column layout after a reads header: (typecode, item size) in the order they are packed.
_COLUMNS = (("q", 8), ("d", 8), ("H", 2), ("I", 4))
_COLUMN_BYTES = sum(size for _code, size in _COLUMNS)
# The array typecodes' sizes are the platform's; the format assumes these (every Linux has them).
assert all(array(code).itemsize == size for code, size in _COLUMNS)  # noqa: S101


class MalformedMessage(ValueError):
    """A message from a decoder process that does not follow this format."""


# --- the decoder process's side -------------------------------------------------------------


def pack_reads(reader: int, reads: Sequence[TagRead]) -> bytes:
    """One reader's batch of reads (every read's `reader` is that reader: not sent)."""
    n = len(reads)
    parts = [
        _READS_HEAD.pack(READS, reader, n),
        array("q", [r.time_us for r in reads]).tobytes(),
        array("d", [r.rssi for r in reads]).tobytes(),
        array("H", [r.antenna for r in reads]).tobytes(),
        array("I", [r.count for r in reads]).tobytes(),
        "\n".join([r.epc for r in reads]).encode("ascii"),
    ]
    return b"".join(parts)


def pack_progress(reader: int, time_us: int) -> bytes:
    return _PROGRESS.pack(PROGRESS, reader, time_us)


def pack_state(reader: int, health: DriverHealth, offset_us: int | None) -> bytes:
    body = {"reader": reader, "health": health_json(health, offset_us)}
    return STATE + json.dumps(body).encode()


def pack_health(healths: dict[int, tuple[DriverHealth, int | None]]) -> bytes:
    body = {"readers": {str(i): health_json(h, off) for i, (h, off) in healths.items()}}
    return HEALTH + json.dumps(body).encode()


def pack_reloaded(generation: int) -> bytes:
    return _RELOADED.pack(RELOADED, generation)


def health_json(h: DriverHealth, offset_us: int | None) -> dict[str, Any]:
    """A DriverHealth with its raw fields (to_json() formats the times for people)."""
    return {
        "state": h.state,
        "since_us": h.since_us,
        "last_data_us": h.last_data_us,
        "reconnects": dict(h.reconnects),
        "errors": dict(h.errors),
        "detail": h.detail,
        "clock_offset_us": offset_us,
    }


# --- the gateway's side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reads:
    reader: int
    reads: list[TagRead]


@dataclass(frozen=True, slots=True)
class Progress:
    reader: int
    time_us: int


@dataclass(frozen=True, slots=True)
class State:
    reader: int
    health: DriverHealth
    clock_offset_us: int | None


@dataclass(frozen=True, slots=True)
class Health:
    readers: dict[int, tuple[DriverHealth, int | None]]


@dataclass(frozen=True, slots=True)
class Reloaded:
    generation: int


Message = Reads | Progress | State | Health | Reloaded


def unpack(data: bytes, names: Sequence[str]) -> Message:
    """One message; `names` are the process's readers by index. Raises MalformedMessage."""
    kind = data[:1]
    try:
        if kind == READS:
            return _unpack_reads(data, names)
        if kind == PROGRESS:
            _k, reader, time_us = _PROGRESS.unpack(data)
            return Progress(_check_reader(reader, names), time_us)
        if kind == STATE:
            body = json.loads(data[1:])
            health, offset = _health_of(body["health"])
            return State(_check_reader(body["reader"], names), health, offset)
        if kind == HEALTH:
            body = json.loads(data[1:])
            return Health(
                {_check_reader(int(i), names): _health_of(h) for i, h in body["readers"].items()}
            )
        if kind == RELOADED:
            return Reloaded(_RELOADED.unpack(data)[1])
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, MalformedMessage):
            raise
        raise MalformedMessage(f"{kind!r} message: {type(exc).__name__}: {exc}") from None
    raise MalformedMessage(f"unknown message kind {kind!r} ({len(data)} bytes)")


def _unpack_reads(data: bytes, names: Sequence[str]) -> Reads:
    _k, reader, n = _READS_HEAD.unpack_from(data)
    name = names[_check_reader(reader, names)]
    offset = _READS_HEAD.size
    columns: list[list[Any]] = []
    if len(data) < offset + n * _COLUMN_BYTES:
        raise MalformedMessage(f"a batch of {n} reads in {len(data)} bytes")
    for code, size in _COLUMNS:
        column = array(code)
        column.frombytes(data[offset : offset + n * size])
        columns.append(column.tolist())
        offset += n * size
    epcs = data[offset:].decode("ascii").split("\n") if n else []
    if len(epcs) != n or not all(epcs):
        raise MalformedMessage(f"a batch of {n} reads with {len(epcs)} EPCs")
    times, rssis, antennas, counts = columns
    readers = [name] * n
    return Reads(reader, list(map(TagRead, epcs, readers, antennas, rssis, times, counts)))


def _check_reader(index: Any, names: Sequence[str]) -> int:
    if not isinstance(index, int) or not 0 <= index < len(names):
        raise MalformedMessage(f"reader index {index!r} out of range ({len(names)} readers)")
    return index


_STATES = frozenset(get_args(DeviceState))


def _health_of(raw: dict[str, Any]) -> tuple[DriverHealth, int | None]:
    if raw["state"] not in _STATES:
        raise MalformedMessage(f"unknown device state {raw['state']!r}")
    health = DriverHealth(
        state=raw["state"],
        since_us=int(raw["since_us"]),
        last_data_us=raw["last_data_us"],
        reconnects=Counter(raw["reconnects"]),
        errors=Counter(raw["errors"]),
        detail=raw["detail"],
    )
    return health, raw.get("clock_offset_us")
