"""The data that flows through the gateway: reads in, movements and other messages out.

These types are the contract between drivers, the movement engine, the outbox and the
publisher (see docs/messages.md). They are plain slotted dataclasses: cheap to build on the
hot path and easy to read in tests.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

MovementType = Literal["arrived", "moved", "departed"]
STREAMS = ("movements", "counts", "equipment", "epcis", "notices")


@dataclass(slots=True, frozen=True)
class TagRead:
    """One sighting of one tag by one antenna, as the reader reported it."""

    epc: str  # upper-case hex
    reader: str  # reader name from the config
    antenna: int
    rssi: float  # dBm
    time_us: int  # reader's UTC timestamp, microseconds
    count: int = 1  # TagSeenCount the reader aggregated into this report


@dataclass(slots=True)
class Observed:
    """What the reads behind a movement looked like: evidence for the IMS and for tuning."""

    reads: int
    rssi_peak: float
    first_seen_us: int
    last_seen_us: int

    def to_json(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "rssi_peak": round(self.rssi_peak, 1),
            "first_seen": iso_ms(self.first_seen_us),
            "last_seen": iso_ms(self.last_seen_us),
        }


@dataclass(slots=True)
class Movement:
    """A true stock movement of one object, following the movement semantics of docs/messages.md."""

    type: MovementType
    epc: str | None  # upper-case hex; None for a non-RFID object (then object_id is set)
    from_: str | None
    to: str | None
    time_us: int
    source: str  # device name
    via: str | None = None  # portal or read point
    biz_step: str | None = None
    disposition: str | None = None
    observed: Observed | None = None
    object_id: str | None = None
    id: str = field(default_factory=lambda: new_id())


@dataclass(slots=True, frozen=True)
class TagState:
    """The part of a tag's state that must survive a restart (persisted with the outbox batch)."""

    epc: str
    present: bool
    location: str | None
    last_seen_us: int


@dataclass(slots=True)
class Outgoing:
    """A message on its way into the outbox. The outbox assigns `seq` and serialises `body`."""

    stream: str  # one of STREAMS
    subtopic: str  # topic below {prefix}/{site}/{gateway}/, e.g. "movements", "equipment/sorter-1"
    body: dict[str, Any]
    id: str = field(default_factory=lambda: new_id())


# --- ids -------------------------------------------------------------------------------------

_uuid_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so ids sort like the messages were made.

    Python 3.11 has no uuid.uuid7; the 12-bit rand_a field carries a per-millisecond counter
    so ids made in the same millisecond still sort in creation order.
    """
    global _last_ms, _counter
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        counter = _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


# --- time ------------------------------------------------------------------------------------


def iso_ms(time_us: int) -> str:
    """UTC ISO-8601 with milliseconds and a Z, the one time format of every message."""
    dt = datetime.fromtimestamp(time_us / 1_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def now_us() -> int:
    return time.time_ns() // 1000


# --- EPC identity ----------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def decode_epc(epc_hex: str) -> dict[str, Any] | None:
    """Decode a binary EPC (hex) into its GS1 identity, or None when it is not a GS1 EPC.

    Done once per movement, never per read (epcpy takes tens of microseconds per EPC). The
    cache covers a tag's few movements (arrived, moved, departed) in a busy few minutes; at
    ~600 bytes an entry it holds 2.4 MB (it had 65,536 entries, 39 MB once full: half the
    30-minute soak's RSS growth, 8,400 new EPCs, was this cache).
    """
    import epcpy  # imported lazily: the CLI's fast paths should not pay for it

    try:
        tag: Any = epcpy.hex_to_tag_encodable(epc_hex)  # the scheme's class: SGTIN, SSCC, ...
        uri = tag.epc_uri
    except Exception:  # epcpy raises several types for unknown headers and bad partitions
        return None
    scheme = type(tag).__name__.lower()
    item: dict[str, Any] = {"scheme": scheme, "uri": uri}
    if scheme == "sgtin":
        item["gtin"] = tag.gtin()
        item["serial"] = uri.rsplit(".", 1)[1]
    else:
        try:
            item["gs1_key"] = tag.gs1_key()
        except Exception:  # noqa: S110 (some EPC schemes, e.g. GID, have no GS1 key)
            pass
    return item


def movement_body(m: Movement, site: str, gateway: str) -> dict[str, Any]:
    """The published form of a movement (schema gateway/schemas/movement.json), without seq."""
    return {
        "schema": "fc-edge/movement/1",
        "id": m.id,
        "site": site,
        "gateway": gateway,
        "type": m.type,
        "epc": m.epc,
        "object_id": m.object_id,
        "item": decode_epc(m.epc) if m.epc else None,
        "from": m.from_,
        "to": m.to,
        "via": m.via,
        "biz_step": m.biz_step,
        "disposition": m.disposition,
        "source": m.source,
        "time": iso_ms(m.time_us),
        "observed": m.observed.to_json() if m.observed else None,
    }
