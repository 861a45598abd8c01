"""Movements as GS1 EPCIS 2.0 JSON-LD: one `EPCISDocument` per outbox batch (stream `epcis`).

Pure: no I/O, no clock (the caller passes `created_us`). Each movement becomes one
`ObjectEvent` with `action` OBSERVE:

- `eventID`: `urn:uuid:` + the movement id, so a retried or replayed batch carries the same
  event ids (EPCIS 2.0 allows any URI; the movement id is already a UUIDv7).
- `eventTime`: the movement's time, UTC with milliseconds and `Z`; `eventTimeZoneOffset`: the
  offset of `[gateway] timezone` in force at that instant (so DST is right per event).
- `epcList`: the pure-identity EPC URI (`urn:epc:id:sgtin:...`). An EPC that does not decode as
  a GS1 EPC is given as an EPC Raw URI, `urn:epc:raw:<bits>.x<HEX>` (GS1 Tag Data Standard,
  "EPC Raw URI", §12 and the decoding procedure §15.2.1: the bit length as a decimal numeral, a
  period, then `x` and the value in upper-case hexadecimal).
- A non-RFID object (a tote a robot moved: `epc` None, `object_id` set) is NOT skipped: it is
  identified by a private URI under `[epcis] uri_prefix` (`...:<site>:obj:<object_id>`), or by
  `object_id` itself when that is already a `urn:` or `http(s)://` URI (a GRAI URN, a Digital
  Link). CBV 2.0
  ch. 8 allows such user-vocabulary instance identifiers, and an IMS reading only EPCIS would
  otherwise lose every robot move. A movement with neither is skipped and reported.
- `bizStep`/`disposition`: standard CBV 2.0 values as the bare words the EPCIS 2.0 JSON-LD
  context maps (`"receiving"`); the official JSON Schema rejects the `urn:epcglobal:cbv:` forms
  in these fields (gs1/EPCIS pull request #421), so such URNs (and `https://ref.gs1.org/cbv/`
  URLs) are turned back into bare words. Any other absolute URI is user vocabulary and kept; a
  bare word that is not CBV (a typo like "returning") becomes a URI under `uri_prefix`
  (`...:bizstep:returning`) rather than a document the schema rejects.
- `readPoint`: where the movement was observed (`movement.via`: the portal or read point);
  without one, the target location for arrivals and moves; none for a departure.
- `bizLocation`: where the object is now, for `arrived` and `moved` the target location. A
  `departed` object has left the site: its `to` (a trailer, the street) is offsite by
  definition, and EPCIS reports in-transit objects without a bizLocation (the standard's
  Example 9.6.1: shipping / in_transit with only a readPoint), so a departure has none; the
  IMS reads it from bizStep/disposition plus readPoint.
- Location ids: the location's configured `sgln`, else `<uri_prefix><site>:loc:<name>` (for a
  `http(s)://` prefix the parts are joined with `/` instead of `:`); every part is
  percent-encoded beyond RFC 3986 `pchar`, and the separator itself is encoded too.

Publishing: the outbox's encode() puts `schema`, `id` (a bare UUID) and `seq` first in every
published message. The official schema allows on an EPCISDocument only its own members and
URI-named extensions, and `id` must be a URI, so those keys would make the document invalid.
`epcis_outgoing()` therefore wraps the document: body `{"schema": "fc-edge/epcis/1",
"document": {...}}`, which encode() publishes as `{"schema", "id", "seq", "document"}` with the
document unchanged inside. A deployment that wants the bare document on the wire instead lets
encode() call `encode_bare()` for the `epcis` stream (see its docstring).
"""

from __future__ import annotations

import json
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import quote

from gateway.model import Movement, Outgoing, decode_epc, iso_ms, new_id

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/epcis-context.jsonld"
SCHEMA = "fc-edge/epcis/1"
STREAM = "epcis"
SUBTOPIC = "epcis"
# encode_bare()'s document-level extension members live in this JSON-LD namespace.
EXTENSION_PREFIX = "fcedge"
EXTENSION_NAMESPACE = "urn:fc-edge:ns:"

# CBV 2.0 standard values, exactly the bare words the EPCIS 2.0 JSON Schema enumerates.
CBV_BIZ_STEPS = frozenset(
    """accepting arriving assembling collecting commissioning consigning creating_class_instance
    cycle_counting decommissioning departing destroying disassembling dispensing encoding
    entering_exiting holding inspecting installing killing loading other packing picking
    receiving removing repackaging repairing replacing reserving retail_selling shipping
    staging_outbound stock_taking stocking storing transporting unloading unpacking
    void_shipping sensor_reporting sampling""".split()
)
CBV_DISPOSITIONS = frozenset(
    """active container_closed damaged destroyed dispensed disposed encoded expired in_progress
    in_transit inactive no_pedigree_match non_sellable_other partially_dispensed recalled
    reserved retail_sold returned sellable_accessible sellable_not_accessible stolen unknown
    available completeness_verified completeness_inferred conformant container_open
    mismatch_instance mismatch_class mismatch_quantity needs_replacement non_conformant
    unavailable""".split()
)
# The URI forms of standard values: CBV 1.x URNs and CBV 2.0 web URIs (and the draft host).
_CBV_URI = {
    "bizStep": re.compile(
        r"(?:urn:epcglobal:cbv:bizstep:|https?://(?:ref|ns)\.gs1\.org/cbv/BizStep-)(\w+)"
    ),
    "disposition": re.compile(
        r"(?:urn:epcglobal:cbv:disp:|https?://(?:ref|ns)\.gs1\.org/cbv/Disp-)(\w+)"
    ),
}
# The schema forbids user-vocabulary URIs in these namespaces (they are CBV's own).
_CBV_NAMESPACES = ("urn:epcglobal:cbv:", "http://ns.gs1.org/cbv/", "https://ns.gs1.org/cbv/")
_STANDARD = {"bizStep": CBV_BIZ_STEPS, "disposition": CBV_DISPOSITIONS}
_USER_VOCAB_SEGMENT = {"bizStep": "bizstep", "disposition": "disp"}

_IDENTITY_SCHEMES = ("urn:", "http://", "https://")
_ABSOLUTE_URI = re.compile(
    r"[A-Za-z][A-Za-z0-9+.\-]*:"
    r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?\[\]]|%[0-9A-Fa-f]{2})*"
    r"(?:#(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})*)?"
)
_HEX = re.compile(r"[0-9A-Fa-f]+")
# RFC 3986 pchar minus the separators we join with; quote() encodes the rest as UTF-8.
_PCHAR_SAFE = "-._~!$&'()*+,;=@"


class LocationLike(Protocol):
    """What this module reads of a location (gateway.config.LocationSettings)."""

    @property
    def sgln(self) -> str | None: ...


SkipHandler = Callable[[Movement, str], None]


@dataclass(frozen=True, slots=True)
class _Context:
    locations: Mapping[str, LocationLike]
    read_point_uris: Mapping[str, str]
    uri_prefix: str
    site: str
    zone: zoneinfo.ZoneInfo


# --- the document ----------------------------------------------------------------------------


def epcis_document(
    movements: Sequence[Movement],
    *,
    locations: Mapping[str, LocationLike],
    uri_prefix: str,
    timezone: str,
    site: str,
    gateway: str,
    created_us: int,
    document_id: str | None = None,
    read_point_uris: Mapping[str, str] | None = None,
    on_skip: SkipHandler | None = None,
) -> dict[str, Any]:
    """One EPCISDocument holding an ObjectEvent per movement that has an identity.

    `document_id`, when given, must be a URI (e.g. "urn:uuid:..."); `read_point_uris` maps a
    read point / portal name to a configured URI (an SGLN) and wins over the `uri_prefix` form;
    `on_skip(movement, reason)` hears of each movement left out (the caller counts them).
    `gateway` is taken for symmetry with the other message builders but not written: EPCIS
    has no member for the capturing device (`sender`/`receiver` belong to the business
    document header), and the topic already names it.
    """
    del gateway
    ctx = _Context(
        locations=locations,
        read_point_uris=read_point_uris or {},
        uri_prefix=uri_prefix,
        site=site,
        zone=_zone(timezone),
    )
    events = []
    for movement in movements:
        event = _object_event(movement, ctx, on_skip)
        if event is not None:
            events.append(event)
    doc: dict[str, Any] = {"@context": [EPCIS_CONTEXT], "type": "EPCISDocument"}
    if document_id is not None:
        doc["id"] = document_id
    doc["schemaVersion"] = "2.0"
    doc["creationDate"] = iso_ms(created_us)
    doc["epcisBody"] = {"eventList": events}
    return doc


def epcis_outgoing(
    movements: Sequence[Movement],
    *,
    locations: Mapping[str, LocationLike],
    uri_prefix: str,
    timezone: str,
    site: str,
    gateway: str,
    created_us: int,
    read_point_uris: Mapping[str, str] | None = None,
    on_skip: SkipHandler | None = None,
) -> Outgoing | None:
    """The outbox message for one batch, or None when no movement made an event.

    The document's `id` is `urn:uuid:` + the message id, so the document is the same on every
    retry. The body wraps it (see the module docstring): encode() adds schema/id/seq around it.
    """
    message_id = new_id()
    doc = epcis_document(
        movements,
        locations=locations,
        uri_prefix=uri_prefix,
        timezone=timezone,
        site=site,
        gateway=gateway,
        created_us=created_us,
        document_id=f"urn:uuid:{message_id}",
        read_point_uris=read_point_uris,
        on_skip=on_skip,
    )
    if not doc["epcisBody"]["eventList"]:
        return None
    body = {"schema": SCHEMA, "document": doc}
    return Outgoing(stream=STREAM, subtopic=SUBTOPIC, body=body, id=message_id)


def encode_bare(message: Outgoing, seq: int) -> bytes:
    """The published bytes when the `epcis` stream carries the bare EPCISDocument.

    For outbox.encode(): `if message.stream == "epcis": return epcis.encode_bare(message, seq)`.
    The document keeps its own `id` (`urn:uuid:` + message id: deduplicate on it) and gets
    `seq` as a document-level extension member `fcedge:seq`, its prefix declared in
    `@context`; both stay valid against the official schema (extension members are allowed
    when their names are URIs). A consumer then reads the seq from `fcedge:seq`.
    """
    doc = dict(message.body["document"])
    doc["@context"] = [*doc["@context"], {EXTENSION_PREFIX: EXTENSION_NAMESPACE}]
    doc[f"{EXTENSION_PREFIX}:seq"] = seq
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# --- one event -------------------------------------------------------------------------------


def _object_event(
    movement: Movement, ctx: _Context, on_skip: SkipHandler | None
) -> dict[str, Any] | None:
    identity = object_uri(movement, ctx.uri_prefix, ctx.site)
    if isinstance(identity, Skip):
        if on_skip is not None:
            on_skip(movement, identity.reason)
        return None
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventID": f"urn:uuid:{movement.id}",
        "eventTime": iso_ms(movement.time_us),
        "eventTimeZoneOffset": zone_offset(movement.time_us, ctx.zone),
        "epcList": [identity],
        "action": "OBSERVE",
    }
    for key, value in (("bizStep", movement.biz_step), ("disposition", movement.disposition)):
        if value:
            event[key] = cbv_value(key, value, ctx.uri_prefix)
    read_point = _read_point(movement, ctx)
    if read_point is not None:
        event["readPoint"] = {"id": read_point}
    if movement.type != "departed" and movement.to is not None:
        event["bizLocation"] = {"id": location_uri(movement.to, ctx)}
    return event


def _read_point(movement: Movement, ctx: _Context) -> str | None:
    if movement.via:
        configured = ctx.read_point_uris.get(movement.via)
        return configured or private_uri(ctx.uri_prefix, ctx.site, "rp", movement.via)
    if movement.type != "departed" and movement.to is not None:
        return location_uri(movement.to, ctx)  # observed at the place it is now
    return None  # a departure by timeout was not observed anywhere


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


def object_uri(movement: Movement, uri_prefix: str, site: str) -> str | Skip:
    """The epcList entry for a movement's object, or why there is none."""
    if movement.epc:
        if not _HEX.fullmatch(movement.epc):
            return Skip(f"EPC {movement.epc!r} is not hexadecimal")
        return epc_uri(movement.epc)
    if movement.object_id:
        # Only identity schemes count as "already a URI": a tote id like "A:17" is a name.
        if movement.object_id.lower().startswith(_IDENTITY_SCHEMES) and _ABSOLUTE_URI.fullmatch(
            movement.object_id
        ):
            return movement.object_id
        return private_uri(uri_prefix, site, "obj", movement.object_id)
    return Skip("movement has neither an EPC nor an object_id")


def epc_uri(epc_hex: str) -> str:
    """Pure-identity EPC URI, or the EPC Raw URI for an EPC that is not a GS1 EPC."""
    item = decode_epc(epc_hex.upper())
    if item is not None:
        return str(item["uri"])
    return raw_epc_uri(epc_hex)


def raw_epc_uri(epc_hex: str) -> str:
    """TDS EPC Raw URI, hex form: `urn:epc:raw:` bit length `.x` upper-case hex digits."""
    return f"urn:epc:raw:{len(epc_hex) * 4}.x{epc_hex.upper()}"


@lru_cache(maxsize=1024)
def cbv_value(field: str, value: str, uri_prefix: str) -> str:
    """A bizStep/disposition as EPCIS 2.0 JSON-LD wants it (see module docstring)."""
    accepted = _accepted_form(field, value)
    if accepted is not None:
        return accepted
    return _join(uri_prefix, [_USER_VOCAB_SEGMENT[field], value])


def _accepted_form(field: str, value: str) -> str | None:
    """The value as the schema accepts it (a CBV bare word or a user-vocabulary URI), or None
    when it is neither (an unknown bare word, or a CBV-namespace URI of no CBV value)."""
    standard = _STANDARD[field]
    if value in standard:
        return value
    match = _CBV_URI[field].fullmatch(value)
    if match:
        return match.group(1) if match.group(1) in standard else None
    if value.lower().startswith(_CBV_NAMESPACES):
        return None
    return value if _ABSOLUTE_URI.fullmatch(value) else None


# --- ids -------------------------------------------------------------------------------------


def location_uri(name: str, ctx: _Context) -> str:
    loc = ctx.locations.get(name)
    sgln = getattr(loc, "sgln", None) if loc is not None else None
    return sgln or private_uri(ctx.uri_prefix, ctx.site, "loc", name)


@lru_cache(maxsize=8192)  # a site has a bounded set of names; quote() costs ~10 us a call
def private_uri(uri_prefix: str, site: str, kind: str, name: str) -> str:
    """`urn:fc-edge:` + `TYO-FC1:loc:DOCK-03`, or `https://x/fc/` + `TYO-FC1/loc/DOCK-03`."""
    return _join(uri_prefix, [site, kind, name])


def _join(uri_prefix: str, parts: Sequence[str]) -> str:
    sep = "/" if _is_hierarchical(uri_prefix) else ":"
    safe = _PCHAR_SAFE + (":" if sep == "/" else "")
    encoded = [quote(part, safe=safe) for part in parts]
    if not uri_prefix.endswith(sep):
        uri_prefix += sep
    return uri_prefix + sep.join(encoded)


def _is_hierarchical(uri_prefix: str) -> bool:
    return uri_prefix.lower().startswith(("http://", "https://"))


def uri_prefix_problem(uri_prefix: str) -> str | None:
    """Why `[epcis] uri_prefix` cannot prefix URIs, or None (for config validation)."""
    if not _ABSOLUTE_URI.fullmatch(uri_prefix):
        example = "'urn:fc-edge:' or 'https://id.example.com/fc/'"
        return f"{uri_prefix!r} is not an absolute URI (e.g. {example})"
    if "?" in uri_prefix or "#" in uri_prefix:
        return f"{uri_prefix!r} must not contain '?' or '#'"
    return None


def config_problems(locations: Mapping[str, Any], uri_prefix: str) -> list[str]:
    """Dotted-key problems in the settings EPCIS output depends on, for config cross_check."""
    problems = []
    if (why := uri_prefix_problem(uri_prefix)) is not None:
        problems.append(f"epcis.uri_prefix: {why}")
    for name, loc in locations.items():
        sgln = getattr(loc, "sgln", None)
        if sgln is not None and not _ABSOLUTE_URI.fullmatch(sgln):
            example = "urn:epc:id:sgln:4912345.00001.0"
            problems.append(f"locations.{name}.sgln: {sgln!r} is not a URI (e.g. {example})")
        for key, field in (("biz_step", "bizStep"), ("disposition", "disposition")):
            value = getattr(loc, key, None)
            if value is None or _accepted_form(field, value) is not None:
                continue
            problems.append(
                f"locations.{name}.{key}: {value!r} is not a GS1 CBV 2.0 {field} "
                f"(nor a URI); EPCIS output would carry it as a private URI"
            )
    return problems


# --- time ------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def zone_offset(time_us: int, zone: zoneinfo.ZoneInfo) -> str:
    """The zone's UTC offset at that instant as `+HH:MM` (EPCIS eventTimeZoneOffset)."""
    local = datetime.fromtimestamp(time_us / 1_000_000, tz=UTC).astimezone(zone)
    offset = local.utcoffset()
    return format_offset(offset if offset is not None else timedelta(0))


def format_offset(offset: timedelta) -> str:
    """`+09:00`; a historical offset with seconds (LMT) is rounded to the minute."""
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


__all__ = [
    "CBV_BIZ_STEPS",
    "CBV_DISPOSITIONS",
    "EPCIS_CONTEXT",
    "SCHEMA",
    "cbv_value",
    "config_problems",
    "encode_bare",
    "epc_uri",
    "epcis_document",
    "epcis_outgoing",
    "raw_epc_uri",
    "zone_offset",
]
