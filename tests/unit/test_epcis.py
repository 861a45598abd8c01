"""EPCIS 2.0 output, validated against GS1's official JSON Schema in tests/fixtures/epcis/.

jsonschema only checks `format` when a checker for it is installed; neither of the packages
it uses for "uri" and "date-time" (rfc3987, rfc3339-validator) is a dependency here, so the
validator gets small RFC 3986 / RFC 3339 checkers of its own — without them every id, every
time and every extension member name of the schema would go unchecked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import LocationSettings
from gateway.epcis import (
    CBV_BIZ_STEPS,
    CBV_DISPOSITIONS,
    SCHEMA,
    cbv_value,
    config_problems,
    encode_bare,
    epc_uri,
    epcis_document,
    epcis_outgoing,
    format_offset,
    raw_epc_uri,
)
from gateway.model import Movement, Outgoing
from gateway.outbox import encode
from tests.support.epcis import EPCIS_DIR, _checker, assert_valid, errors

SGTIN_HEX = "30352BD364424C80000003EB"  # docs/messages.md's example tag
SGTIN_URI = "urn:epc:id:sgtin:4912345.067890.1003"
SSCC_HEX = "3178E61C883950F59A000000"
SSCC_URI = "urn:epc:id:sscc:235634.35321345434"
NOT_GS1_HEX = "E2801160600002054B5B3A2F"  # header E2: no GS1 scheme (a TID-like value)
DOCK_SGLN = "urn:epc:id:sgln:4912345.00001.0"

LOCATIONS = {
    "YARD": LocationSettings(offsite=True),
    "DOCK-03": LocationSettings(biz_step="receiving", disposition="in_progress", sgln=DOCK_SGLN),
    "STORE": LocationSettings(biz_step="storing", disposition="sellable_accessible"),
    "TRAILER": LocationSettings(offsite=True, biz_step="shipping", disposition="in_transit"),
}


def us(text: str) -> int:
    """'2026-01-15T10:00:00.123Z' -> microseconds since the epoch."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


T0 = us("2026-01-15T10:00:00.123Z")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads((EPCIS_DIR / "EPCIS-JSON-Schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=_checker())


def example() -> dict[str, Any]:
    text = (EPCIS_DIR / "Example_9.6.1-ObjectEvent.jsonld").read_text(encoding="utf-8")
    return json.loads(text)


def test_the_standards_example_validates(validator: jsonschema.Draft7Validator) -> None:
    assert_valid(validator, example())


def test_the_validator_bites_on_a_wrong_action(validator: jsonschema.Draft7Validator) -> None:
    doc = example()
    doc["epcisBody"]["eventList"][0]["action"] = "LOOK"
    assert errors(validator, doc)


def test_the_validator_checks_formats(validator: jsonschema.Draft7Validator) -> None:
    for path, bad in (
        (("readPoint", "id"), "DOCK 03"),  # not a URI
        (("eventTime",), "2005-04-03 20:33:31"),  # not RFC 3339
        (("eventTime",), "2005-13-03T20:33:31Z"),  # month 13
    ):
        doc = example()
        event = doc["epcisBody"]["eventList"][0]
        for key in path[:-1]:
            event = event[key]
        event[path[-1]] = bad
        assert errors(validator, doc), f"{path}={bad!r} was accepted"


# --- building documents ----------------------------------------------------------------------


def move(
    type_: str = "arrived",
    epc: str | None = SGTIN_HEX,
    from_: str | None = "YARD",
    to: str | None = "DOCK-03",
    time_us: int = T0,
    via: str | None = "dock-03",
    biz_step: str | None = "receiving",
    disposition: str | None = "in_progress",
    object_id: str | None = None,
) -> Movement:
    return Movement(
        type=type_,  # type: ignore[arg-type]
        epc=epc,
        from_=from_,
        to=to,
        time_us=time_us,
        source="dock-03",
        via=via,
        biz_step=biz_step,
        disposition=disposition,
        object_id=object_id,
    )


def document(movements: list[Movement], **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "locations": LOCATIONS,
        "uri_prefix": "urn:fc-edge:",
        "timezone": "Asia/Tokyo",
        "site": "TYO-FC1",
        "gateway": "gw-dock-a",
        "created_us": T0 + 500_000,
    }
    kwargs.update(overrides)
    return epcis_document(movements, **kwargs)


def events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["epcisBody"]["eventList"]


def test_an_arrival_is_an_object_event_at_its_location(
    validator: jsonschema.Draft7Validator,
) -> None:
    m = move()
    doc = document([m])
    assert_valid(validator, doc)
    assert doc["@context"] == ["https://ref.gs1.org/standards/epcis/epcis-context.jsonld"]
    assert doc["type"] == "EPCISDocument"
    assert doc["schemaVersion"] == "2.0"
    assert doc["creationDate"] == "2026-01-15T10:00:00.623Z"
    assert "id" not in doc  # only when the caller gives one
    assert events(doc) == [
        {
            "type": "ObjectEvent",
            "eventID": f"urn:uuid:{m.id}",
            "eventTime": "2026-01-15T10:00:00.123Z",
            "eventTimeZoneOffset": "+09:00",
            "epcList": [SGTIN_URI],
            "action": "OBSERVE",
            "bizStep": "receiving",
            "disposition": "in_progress",
            "readPoint": {"id": "urn:fc-edge:TYO-FC1:rp:dock-03"},
            "bizLocation": {"id": DOCK_SGLN},  # the configured sgln wins
        }
    ]


def test_a_move_has_its_target_as_biz_location(validator: jsonschema.Draft7Validator) -> None:
    m = move(
        "moved",
        from_="DOCK-03",
        to="STORE",
        via="store-ceiling:4",
        biz_step="storing",
        disposition="sellable_accessible",
    )
    doc = document([m])
    assert_valid(validator, doc)
    (event,) = events(doc)
    assert event["bizLocation"] == {"id": "urn:fc-edge:TYO-FC1:loc:STORE"}
    # ':' is the separator of the URN form, so it is percent-encoded inside a name
    assert event["readPoint"] == {"id": "urn:fc-edge:TYO-FC1:rp:store-ceiling%3A4"}
    assert (event["bizStep"], event["disposition"]) == ("storing", "sellable_accessible")


def test_a_departure_through_a_portal_has_a_read_point_and_no_biz_location(
    validator: jsonschema.Draft7Validator,
) -> None:
    m = move(
        "departed", from_="DOCK-03", to="TRAILER", biz_step="shipping", disposition="in_transit"
    )
    doc = document([m])
    assert_valid(validator, doc)
    (event,) = events(doc)
    assert event["readPoint"] == {"id": "urn:fc-edge:TYO-FC1:rp:dock-03"}
    assert "bizLocation" not in event  # in transit: it is at no business location of ours
    assert (event["bizStep"], event["disposition"]) == ("shipping", "in_transit")


def test_a_departure_by_timeout_has_neither_read_point_nor_biz_location(
    validator: jsonschema.Draft7Validator,
) -> None:
    m = move("departed", from_="STORE", to=None, via=None, biz_step=None, disposition=None)
    doc = document([m])
    assert_valid(validator, doc)
    (event,) = events(doc)
    assert "readPoint" not in event and "bizLocation" not in event
    assert "bizStep" not in event and "disposition" not in event


def test_without_a_read_point_the_location_is_where_it_was_observed(
    validator: jsonschema.Draft7Validator,
) -> None:
    doc = document([move(via=None)])
    assert_valid(validator, doc)
    (event,) = events(doc)
    assert event["readPoint"] == event["bizLocation"] == {"id": DOCK_SGLN}


# --- identities ------------------------------------------------------------------------------


def test_epc_uris_pure_identity_and_raw(validator: jsonschema.Draft7Validator) -> None:
    assert epc_uri(SGTIN_HEX) == SGTIN_URI
    assert epc_uri(SGTIN_HEX.lower()) == SGTIN_URI
    assert epc_uri(SSCC_HEX) == SSCC_URI
    # GS1 TDS "EPC Raw URI": bit length, '.x', upper-case hex
    assert epc_uri(NOT_GS1_HEX) == "urn:epc:raw:96.xE2801160600002054B5B3A2F"
    assert raw_epc_uri("e280116060000205") == "urn:epc:raw:64.xE280116060000205"
    assert (
        epc_uri("E2801160600002054B5B3A2F0000") == "urn:epc:raw:112.xE2801160600002054B5B3A2F0000"
    )
    doc = document([move(epc=h) for h in (SGTIN_HEX, SSCC_HEX, NOT_GS1_HEX)])
    assert_valid(validator, doc)
    assert [e["epcList"] for e in events(doc)] == [
        [SGTIN_URI],
        [SSCC_URI],
        ["urn:epc:raw:96.xE2801160600002054B5B3A2F"],
    ]


def test_a_tote_without_an_epc_gets_a_private_identifier(
    validator: jsonschema.Draft7Validator,
) -> None:
    totes = [
        move("moved", epc=None, object_id="TOTE-0042", from_="STORE", to="DOCK-03", via="robot-1"),
        move("moved", epc=None, object_id="T 7/b", from_="STORE", to="DOCK-03", via="robot-1"),
        # already a URI (a GRAI-labelled tote): kept as it is
        move("moved", epc=None, object_id="urn:epc:id:grai:4912345.00001.42", via="robot-1"),
        move("moved", epc=None, object_id="A:17", via="robot-1"),  # a name, not a URI
    ]
    doc = document(totes)
    assert_valid(validator, doc)
    assert [e["epcList"] for e in events(doc)] == [
        ["urn:fc-edge:TYO-FC1:obj:TOTE-0042"],
        ["urn:fc-edge:TYO-FC1:obj:T%207%2Fb"],
        ["urn:epc:id:grai:4912345.00001.42"],
        ["urn:fc-edge:TYO-FC1:obj:A%3A17"],
    ]
    # an EPC, when there is one, is the identity
    (event,) = events(document([move(object_id="TOTE-0042")]))
    assert event["epcList"] == [SGTIN_URI]


def test_movements_without_a_usable_identity_are_skipped_and_reported(
    validator: jsonschema.Draft7Validator,
) -> None:
    good = move()
    nothing = move(epc=None, object_id=None)
    garbage = move(epc="30-35-ZZ")
    skipped: list[tuple[str, str]] = []
    doc = document([nothing, good, garbage], on_skip=lambda m, why: skipped.append((m.id, why)))
    assert_valid(validator, doc)
    assert [e["eventID"] for e in events(doc)] == [f"urn:uuid:{good.id}"]
    assert skipped == [
        (nothing.id, "movement has neither an EPC nor an object_id"),
        (garbage.id, "EPC '30-35-ZZ' is not hexadecimal"),
    ]


# --- location ids ----------------------------------------------------------------------------


def test_sgln_wins_else_a_uri_under_the_prefix(validator: jsonschema.Draft7Validator) -> None:
    doc = document([move(to="DOCK-03"), move(to="STORE")])
    assert_valid(validator, doc)
    assert [e["bizLocation"]["id"] for e in events(doc)] == [
        DOCK_SGLN,
        "urn:fc-edge:TYO-FC1:loc:STORE",
    ]


def test_an_http_prefix_joins_with_slashes_and_names_are_percent_encoded(
    validator: jsonschema.Draft7Validator,
) -> None:
    locations = {"Zone A/1?": LocationSettings(), "返品": LocationSettings()}
    ms = [move(to="Zone A/1?", via="gate:2"), move(to="返品", via="counter#1")]
    doc = document(ms, locations=locations, uri_prefix="https://id.example.com/fc", site="TYO 1")
    assert_valid(validator, doc)
    first, second = events(doc)
    assert first["bizLocation"]["id"] == "https://id.example.com/fc/TYO%201/loc/Zone%20A%2F1%3F"
    assert first["readPoint"]["id"] == "https://id.example.com/fc/TYO%201/rp/gate:2"
    assert second["bizLocation"]["id"] == "https://id.example.com/fc/TYO%201/loc/%E8%BF%94%E5%93%81"
    assert second["readPoint"]["id"] == "https://id.example.com/fc/TYO%201/rp/counter%231"


def test_configured_read_point_uris_win(validator: jsonschema.Draft7Validator) -> None:
    doc = document([move()], read_point_uris={"dock-03": "urn:epc:id:sgln:4912345.00001.3"})
    assert_valid(validator, doc)
    assert events(doc)[0]["readPoint"] == {"id": "urn:epc:id:sgln:4912345.00001.3"}


# --- vocabulary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("bizStep", "receiving", "receiving"),
        ("bizStep", "urn:epcglobal:cbv:bizstep:shipping", "shipping"),
        ("bizStep", "https://ref.gs1.org/cbv/BizStep-cycle_counting", "cycle_counting"),
        ("bizStep", "https://example.com/bizstep/kitting", "https://example.com/bizstep/kitting"),
        ("bizStep", "returning", "urn:fc-edge:bizstep:returning"),  # not CBV
        (
            "bizStep",
            "urn:epcglobal:cbv:bizstep:bogus",
            "urn:fc-edge:bizstep:urn%3Aepcglobal%3Acbv%3Abizstep%3Abogus",
        ),
        ("disposition", "returned", "returned"),
        ("disposition", "urn:epcglobal:cbv:disp:in_transit", "in_transit"),
        ("disposition", "https://ref.gs1.org/cbv/Disp-sellable_accessible", "sellable_accessible"),
        ("disposition", "on hold", "urn:fc-edge:disp:on%20hold"),
    ],
)
def test_cbv_values(
    validator: jsonschema.Draft7Validator, field: str, value: str, expected: str
) -> None:
    assert cbv_value(field, value, "urn:fc-edge:") == expected
    m = move(biz_step=value) if field == "bizStep" else move(disposition=value)
    doc = document([m])
    assert_valid(validator, doc)
    assert events(doc)[0][field] == expected


def test_every_cbv_value_validates(validator: jsonschema.Draft7Validator) -> None:
    ms = [move(biz_step=b, disposition=None) for b in sorted(CBV_BIZ_STEPS)]
    ms += [move(biz_step=None, disposition=d) for d in sorted(CBV_DISPOSITIONS)]
    assert_valid(validator, document(ms))


def test_config_problems() -> None:
    locations = {
        "A": LocationSettings(biz_step="returning", sgln="not a uri"),
        "B": LocationSettings(biz_step="receiving", disposition="urn:example:disp:held"),
    }
    assert config_problems(locations, "urn:fc-edge:") == [
        "locations.A.sgln: 'not a uri' is not a URI (e.g. urn:epc:id:sgln:4912345.00001.0)",
        "locations.A.biz_step: 'returning' is not a GS1 CBV 2.0 bizStep (nor a URI); "
        "EPCIS output would carry it as a private URI",
    ]
    assert config_problems({}, "fc-edge") == [
        "epcis.uri_prefix: 'fc-edge' is not an absolute URI "
        "(e.g. 'urn:fc-edge:' or 'https://id.example.com/fc/')"
    ]
    assert config_problems({}, "https://id.example.com/fc?x=1")[0].endswith(
        "must not contain '?' or '#'"
    )


# --- time zones ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "when", "offset"),
    [
        ("UTC", "2026-07-01T12:00:00.000Z", "+00:00"),
        ("Asia/Tokyo", "2026-07-01T12:00:00.000Z", "+09:00"),
        ("Europe/Berlin", "2026-01-15T12:00:00.000Z", "+01:00"),  # winter
        ("Europe/Berlin", "2026-07-01T12:00:00.000Z", "+02:00"),  # summer
        # the spring-forward instant: 2026-03-29 01:00 UTC
        ("Europe/Berlin", "2026-03-29T00:59:59.999Z", "+01:00"),
        ("Europe/Berlin", "2026-03-29T01:00:00.000Z", "+02:00"),
        # and back: 2026-10-25 01:00 UTC (local 03:00 CEST becomes 02:00 CET)
        ("Europe/Berlin", "2026-10-25T00:59:59.999Z", "+02:00"),
        ("Europe/Berlin", "2026-10-25T01:00:00.000Z", "+01:00"),
        ("America/Chicago", "2026-01-15T12:00:00.000Z", "-06:00"),
        ("America/Chicago", "2026-07-01T12:00:00.000Z", "-05:00"),
        ("Asia/Kolkata", "2026-07-01T12:00:00.000Z", "+05:30"),
        ("Pacific/Chatham", "2026-01-15T12:00:00.000Z", "+13:45"),
        ("Pacific/Kiritimati", "2026-01-15T12:00:00.000Z", "+14:00"),
    ],
)
def test_time_zone_offset_in_force_at_the_event(
    validator: jsonschema.Draft7Validator, zone: str, when: str, offset: str
) -> None:
    doc = document([move(time_us=us(when))], timezone=zone)
    assert_valid(validator, doc)
    (event,) = events(doc)
    assert event["eventTime"] == when  # always UTC
    assert event["eventTimeZoneOffset"] == offset


def test_one_document_spanning_a_dst_change_gives_each_event_its_offset(
    validator: jsonschema.Draft7Validator,
) -> None:
    ms = [
        move(time_us=us("2026-03-29T00:30:00.000Z")),
        move(time_us=us("2026-03-29T01:30:00.000Z")),
    ]
    doc = document(ms, timezone="Europe/Berlin")
    assert_valid(validator, doc)
    assert [e["eventTimeZoneOffset"] for e in events(doc)] == ["+01:00", "+02:00"]


def test_format_offset_rounds_historical_seconds() -> None:
    assert format_offset(timedelta(hours=-3, minutes=-30)) == "-03:30"
    assert format_offset(timedelta(minutes=19, seconds=32)) == "+00:20"  # Amsterdam, 1930s
    assert format_offset(timedelta(minutes=-44, seconds=-20)) == "-00:44"
    assert format_offset(timedelta(0)) == "+00:00"


# --- batches and the outbox message ----------------------------------------------------------


def many(n: int) -> Iterator[Movement]:
    kinds = [
        ("arrived", "YARD", "DOCK-03"),
        ("moved", "DOCK-03", "STORE"),
        ("departed", "STORE", "TRAILER"),
    ]
    for i in range(n):
        kind, from_, to = kinds[i % 3]
        epc = f"30352BD364424C8{i:09X}" if i % 5 else f"E28011606000{i:012X}"
        yield move(kind, epc=epc, from_=from_, to=to, time_us=T0 + i * 1_000)


def test_a_batch_of_many_movements(validator: jsonschema.Draft7Validator) -> None:
    ms = list(many(300))  # validating costs ~7 ms an event: the size of a big dock batch
    doc = document(ms, timezone="Europe/Berlin")
    assert_valid(validator, doc)
    evs = events(doc)
    assert [e["eventID"] for e in evs] == [f"urn:uuid:{m.id}" for m in ms]  # order kept
    assert len({e["eventID"] for e in evs}) == 300
    assert sum(e["epcList"][0].startswith("urn:epc:raw:96.x") for e in evs) == 60
    assert sum("bizLocation" in e for e in evs) == 200  # departures have none
    assert {e["eventTimeZoneOffset"] for e in evs} == {"+01:00"}


def outgoing(ms: list[Movement], **overrides: Any) -> Outgoing | None:
    kwargs: dict[str, Any] = {
        "locations": LOCATIONS,
        "uri_prefix": "urn:fc-edge:",
        "timezone": "Europe/Berlin",
        "site": "TYO-FC1",
        "gateway": "gw-dock-a",
        "created_us": T0,
    }
    kwargs.update(overrides)
    return epcis_outgoing(ms, **kwargs)


def test_the_outbox_message_wraps_the_document(validator: jsonschema.Draft7Validator) -> None:
    message = outgoing(list(many(10)))
    assert message is not None
    assert (message.stream, message.subtopic) == ("epcis", "epcis")
    assert list(message.body) == ["schema", "document"]
    assert message.body["schema"] == SCHEMA == "fc-edge/epcis/1"
    doc = message.body["document"]
    assert doc["id"] == f"urn:uuid:{message.id}"
    assert_valid(validator, doc)
    # what the outbox publishes today: schema/id/seq first, the document untouched inside
    published = json.loads(encode(message, 17))
    assert list(published) == ["schema", "id", "seq", "document"]
    assert (published["schema"], published["id"], published["seq"]) == (SCHEMA, message.id, 17)
    assert published["document"] == json.loads(json.dumps(doc))
    assert_valid(validator, published["document"])


def test_why_the_document_is_wrapped(validator: jsonschema.Draft7Validator) -> None:
    """encode()'s keys merged into the document itself break it: the schema allows only its
    own members and URI-named extensions on an EPCISDocument, and `id` must be a URI."""
    message = outgoing([move()])
    assert message is not None
    merged = {"schema": SCHEMA, "id": message.id, "seq": 1, **message.body["document"]}
    merged["id"] = message.id  # the bare UUID encode() writes
    problems = errors(validator, merged)
    assert any("'schema'" in p for p in problems)
    assert any("'seq'" in p for p in problems)
    assert any(message.id in p for p in problems)


def test_encode_bare_publishes_a_valid_document(validator: jsonschema.Draft7Validator) -> None:
    message = outgoing(list(many(5)))
    assert message is not None
    published = json.loads(encode_bare(message, 42))
    assert_valid(validator, published)
    assert published["id"] == f"urn:uuid:{message.id}"
    assert published["fcedge:seq"] == 42
    assert published["@context"][-1] == {"fcedge": "urn:fc-edge:ns:"}
    assert published["epcisBody"] == message.body["document"]["epcisBody"]
    # the stored message is not changed by encoding it
    assert "fcedge:seq" not in message.body["document"]
    assert len(message.body["document"]["@context"]) == 1


def test_no_message_when_no_movement_makes_an_event() -> None:
    assert outgoing([]) is None
    assert outgoing([move(epc=None, object_id=None)]) is None


# --- any names, any site: always a valid document --------------------------------------------

_names = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    site=_names,
    to=_names,
    via=st.none() | _names,
    object_id=st.none() | _names,
    epc=st.none() | st.from_regex(r"[0-9A-F]{4}(?:[0-9A-F]{4}){0,15}", fullmatch=True),
    prefix=st.sampled_from(["urn:fc-edge:", "urn:acme:fc", "https://id.example.com/fc/"]),
    kind=st.sampled_from(["arrived", "moved", "departed"]),
    when=st.integers(min_value=0, max_value=4_102_444_800_000_000),  # 1970..2100
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/St_Johns", "Australia/Lord_Howe"]),
)
def test_any_names_make_a_valid_document(
    validator: jsonschema.Draft7Validator,
    site: str,
    to: str,
    via: str | None,
    object_id: str | None,
    epc: str | None,
    prefix: str,
    kind: str,
    when: int,
    zone: str,
) -> None:
    m = move(kind, epc=epc, to=to, via=via, object_id=object_id, time_us=when)
    doc = document([m], locations={}, uri_prefix=prefix, site=site, timezone=zone)
    assert_valid(validator, doc)
    assert len(events(doc)) == (1 if epc or object_id else 0)
    assert datetime.fromisoformat(doc["creationDate"].replace("Z", "+00:00")).tzinfo == UTC
