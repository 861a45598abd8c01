"""The handheld workflows (gateway.handheld) with hand-built event sequences: counts (sessions,
parts, misplaced stock, rejections), returns (booking, dedup) and finds."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.base import DeviceEvent
from drivers.tsl import TSLDriver
from gateway.config import DeviceSettings, LocationSettings
from gateway.handheld import Workflow, WorkflowOutput, quantities_of
from gateway.model import TagRead, TagState
from simulators.tsl.scenario import sgtin96

T0 = 1_800_000_000_000_000  # µs
S = 1_000_000
DEVICE = "hh-1"
LOCATIONS = {
    "SHELF-A1": LocationSettings(barcode="LOC-SHELF-A1", disposition="sellable_accessible"),
    "SHELF-B2": LocationSettings(barcode="LOC-SHELF-B2"),
    "BACKROOM": LocationSettings(barcode="LOC-BACKROOM"),
    "RETURNS": LocationSettings(biz_step="receiving", disposition="returned"),
}
A = [sgtin96("0614141", "812345", n) for n in range(1, 25)]  # GTIN 80614141123458
B = [sgtin96("0614141", "712346", n) for n in range(100, 112)]
GTIN_A, GTIN_B = "80614141123458", "70614141123468"


def workflow(
    engine: dict[str, TagState] | None = None, **options: Any
) -> tuple[Workflow, dict[str, TagState]]:
    states = engine if engine is not None else {}
    opts = TSLDriver.Options(port="/dev/null", **options)
    device = DeviceSettings(DEVICE, "tsl", {}, opts)
    return Workflow(device, LOCATIONS, states.get), states


def reads(epcs: list[str], at: int, rssi: float = -55.0) -> list[TagRead]:
    return [TagRead(e, DEVICE, 1, rssi, at) for e in epcs]


def scan(wf: Workflow, code: str, at: int) -> WorkflowOutput:
    return wf.on_event(DeviceEvent(DEVICE, "barcode", {"barcode": code}, at), at)


def trigger(wf: Workflow, state: str, at: int) -> WorkflowOutput:
    event = DeviceEvent(DEVICE, "trigger", {"state": state, "pulled": state != "off"}, at)
    return wf.on_event(event, at)


def count(wf: Workflow, epcs: list[str], start: int, hold_s: float = 1.0) -> WorkflowOutput:
    """Pull, read in rounds while held, release, and let the release grace pass."""
    out = WorkflowOutput()
    out.extend(trigger(wf, "single", start))
    end = start + int(hold_s * S)
    t = start
    while t < end:
        out.extend(wf.on_reads(reads(epcs, t), t))
        t += 150_000
    out.extend(trigger(wf, "off", end))
    out.extend(wf.tick(end + S))
    return out


# --- count -------------------------------------------------------------------------------------


def test_count_session_produces_one_message() -> None:
    wf, _ = workflow()
    assert scan(wf, "LOC-SHELF-A1", T0).feedback == ["ok"]
    out = count(wf, A + B, T0 + S, hold_s=1.5)
    assert out.movements == []
    assert out.feedback == ["ok"]
    (msg,) = out.counts
    assert msg["location"] == "SHELF-A1" and msg["device"] == DEVICE
    assert (msg["part"], msg["of"], msg["total"]) == (1, 1, 36)
    assert msg["epcs"] == sorted(set(A + B))
    assert msg["quantities"] == {GTIN_B: 12, GTIN_A: 24} and msg["unidentified"] == 0
    assert msg["started"] == "2027-01-15T08:00:01.000Z"
    assert msg["ended"] == "2027-01-15T08:00:02.500Z"
    assert "counted 36 tags at SHELF-A1" in out.log[-1]


def test_session_closes_only_after_release_grace() -> None:
    wf, _ = workflow(release_grace_s=0.5)
    scan(wf, "LOC-SHELF-A1", T0)
    trigger(wf, "single", T0 + S)
    wf.on_reads(reads(A[:3], T0 + S), T0 + S)
    assert trigger(wf, "off", T0 + 2 * S).counts == []
    # the reader's last round finishes after the release: still part of the count
    assert wf.on_reads(reads(A[3:5], T0 + 2 * S + 200_000), T0 + 2 * S + 200_000).counts == []
    assert wf.busy
    out = wf.tick(T0 + 2 * S + 600_000)
    assert out.counts[0]["epcs"] == sorted(A[:5])
    assert not wf.busy


def test_count_window_ends_a_held_trigger() -> None:
    wf, _ = workflow(count_window_s=2.0)
    scan(wf, "LOC-SHELF-A1", T0)
    trigger(wf, "single", T0)
    wf.on_reads(reads(A[:2], T0 + S), T0 + S)
    out = wf.on_reads(reads(A[2:4], T0 + 3 * S), T0 + 3 * S)  # after the window
    assert out.counts[0]["epcs"] == sorted(A[:2])
    assert out.counts[0]["ended"] == "2027-01-15T08:00:02.000Z"
    assert any("window elapsed" in line for line in out.log)
    # still held: these reads belong to no session, and no new session starts
    assert wf.on_reads(reads(A, T0 + 4 * S), T0 + 4 * S).counts == []
    assert wf.tick(T0 + 10 * S).counts == []
    assert trigger(wf, "off", T0 + 11 * S).counts == []
    assert count(wf, A[:1], T0 + 12 * S).counts[0]["epcs"] == A[:1]


def test_misplaced_tags_yield_moved_movements() -> None:
    engine = {
        A[0]: TagState(A[0], True, "SHELF-A1", T0),  # where it belongs: no movement
        B[0]: TagState(B[0], True, "SHELF-B2", T0),  # misplaced
        B[1]: TagState(B[1], True, "BACKROOM", T0),  # misplaced
        B[2]: TagState(B[2], False, None, T0),  # departed earlier: left to reconciliation
    }
    wf, _ = workflow(engine)
    scan(wf, "LOC-SHELF-A1", T0)
    out = count(wf, A[:3] + B[:4], T0 + S)
    moves = {m.epc: m for m in out.movements}
    assert set(moves) == {B[0], B[1]}
    m = moves[B[0]]
    assert (m.type, m.from_, m.to) == ("moved", "SHELF-B2", "SHELF-A1")
    assert (m.biz_step, m.disposition) == ("cycle_counting", "sellable_accessible")
    assert m.source == DEVICE and m.observed is not None and m.observed.reads >= 6
    assert "misplaced stock found: 2" in out.log[-1]
    assert out.counts[0]["total"] == 7  # the count still holds every tag


def test_two_thousand_tags_arrive_complete_across_parts() -> None:
    epcs = [sgtin96("0614141", "812345", n) for n in range(2000)]
    epcs += [sgtin96("4012345", "077889", n) for n in range(500)]
    epcs.append("E2801160600002054C8D2A3F")  # a TID-like EPC with no GTIN
    wf, _ = workflow(count_part_size=500)
    scan(wf, "LOC-SHELF-A1", T0)
    out = count(wf, epcs, T0 + S, hold_s=0.5)
    parts = out.counts
    assert [p["part"] for p in parts] == [1, 2, 3, 4, 5, 6]
    assert {p["of"] for p in parts} == {6} and len({p["session"] for p in parts}) == 1
    assert {p["total"] for p in parts} == {2501}
    assert all(len(p["epcs"]) <= 500 for p in parts)
    received = [e for p in parts for e in p["epcs"]]
    assert len(received) == len(set(received)) == 2501 and set(received) == set(epcs)
    totals: dict[str, int] = {}
    for p in parts:
        for gtin, n in p["quantities"].items():
            totals[gtin] = totals.get(gtin, 0) + n
    assert totals == {"80614141123458": 2000, "04012345778892": 500}
    assert sum(p["unidentified"] for p in parts) == 1


def test_empty_shelf_is_a_count_too() -> None:
    wf, _ = workflow()
    scan(wf, "LOC-BACKROOM", T0)
    out = count(wf, [], T0 + S)
    assert [(c["location"], c["epcs"], c["of"]) for c in out.counts] == [("BACKROOM", [], 1)]


def test_count_without_location_is_rejected_and_not_booked() -> None:
    wf, _ = workflow()
    out = count(wf, A, T0)
    assert out.counts == [] and out.movements == []
    assert out.feedback == ["error"]
    assert out.log == [f"{DEVICE}: count rejected: no location scanned"]


def test_unknown_barcode_clears_the_location() -> None:
    wf, _ = workflow()
    scan(wf, "LOC-SHELF-A1", T0)
    out = scan(wf, "LOC-NOWHERE", T0 + S)
    assert out.feedback == ["error"] and "unknown location barcode" in out.log[0]
    assert count(wf, A, T0 + 2 * S).feedback == ["error"]


def test_location_not_allowed_for_device() -> None:
    wf, _ = workflow(allowed_locations=("SHELF-A1",))
    out = scan(wf, "LOC-BACKROOM", T0)
    assert out.feedback == ["error"] and "not allowed" in out.log[0]
    out = count(wf, A, T0 + S)
    assert out.counts == [] and out.feedback == ["error"]
    scan(wf, "LOC-SHELF-A1", T0 + 5 * S)
    assert count(wf, A, T0 + 6 * S).counts[0]["location"] == "SHELF-A1"


def test_stale_location_scan_is_rejected() -> None:
    wf, _ = workflow(location_timeout_s=60)
    scan(wf, "LOC-SHELF-A1", T0)
    out = count(wf, A, T0 + 61 * S)
    assert out.counts == [] and "expired" in out.log[0]


def test_location_stays_for_several_pulls_and_double_press_is_not_a_count() -> None:
    wf, _ = workflow()
    scan(wf, "LOC-SHELF-A1", T0)
    assert trigger(wf, "double", T0 + S).counts == []
    trigger(wf, "off", T0 + S)
    first = count(wf, A[:2], T0 + 2 * S)
    second = count(wf, A[2:4], T0 + 5 * S)
    assert first.counts[0]["session"] != second.counts[0]["session"]
    assert second.counts[0]["epcs"] == sorted(A[2:4])


def test_pull_again_within_grace_closes_the_last_session() -> None:
    wf, _ = workflow(release_grace_s=1.0)
    scan(wf, "LOC-SHELF-A1", T0)
    trigger(wf, "single", T0 + S)
    wf.on_reads(reads(A[:2], T0 + S), T0 + S)
    trigger(wf, "off", T0 + 2 * S)
    out = trigger(wf, "single", T0 + 2 * S + 100_000)
    assert out.counts[0]["epcs"] == sorted(A[:2])
    wf.on_reads(reads(B[:1], T0 + 3 * S), T0 + 3 * S)
    trigger(wf, "off", T0 + 4 * S)
    assert wf.tick(T0 + 6 * S).counts[0]["epcs"] == B[:1]


def test_reads_without_a_session_are_ignored() -> None:
    wf, _ = workflow()
    scan(wf, "LOC-SHELF-A1", T0)
    out = wf.on_reads(reads(A, T0 + S), T0 + S)
    assert not out.counts and not out.movements


def test_malformed_events_are_ignored() -> None:
    wf, _ = workflow()
    assert not wf.on_event(DeviceEvent(DEVICE, "barcode", {"barcode": None}, T0), T0)
    assert not wf.on_event(DeviceEvent(DEVICE, "trigger", {"state": "triple"}, T0), T0)
    assert not wf.on_event(DeviceEvent(DEVICE, "equipment", {}, T0), T0)


def test_quantities_of() -> None:
    assert quantities_of([A[0], A[1], B[0], "ZZ"]) == ({GTIN_B: 1, GTIN_A: 2}, 1)


# --- returns -----------------------------------------------------------------------------------


def test_returns_books_each_tag_once() -> None:
    engine = {B[0]: TagState(B[0], True, "SHELF-B2", T0), B[1]: TagState(B[1], False, None, T0)}
    wf, _ = workflow(engine, workflow="returns", returns_location="RETURNS", dedup_window_s=60)
    out = wf.on_reads(reads(A[:2] + B[:2] + A[:2], T0), T0)
    moves = {m.epc: m for m in out.movements}
    assert set(moves) == {A[0], A[1], B[0], B[1]}
    assert (moves[A[0]].type, moves[A[0]].from_, moves[A[0]].to) == ("arrived", None, "RETURNS")
    assert (moves[B[0]].type, moves[B[0]].from_) == ("moved", "SHELF-B2")
    assert moves[B[1]].type == "arrived"
    assert {(m.biz_step, m.disposition) for m in out.movements} == {("receiving", "returned")}
    assert moves[A[0]].observed is not None and moves[A[0]].observed.reads == 2
    assert out.feedback == ["ok"] and "4 returned tags" in out.log[0]
    # read again within the window: nothing new (the engine may not have applied them yet)
    again = wf.on_reads(reads(A[:2], T0 + 10 * S), T0 + 10 * S)
    assert not again.movements and not again.feedback


def test_returns_dedup_window_expires_and_engine_state_counts() -> None:
    engine: dict[str, TagState] = {}
    wf, _ = workflow(engine, workflow="returns", returns_location="RETURNS", dedup_window_s=60)
    assert len(wf.on_reads(reads(A[:1], T0), T0).movements) == 1
    wf.tick(T0 + 61 * S)
    # still in the returns location per the engine: not booked twice
    engine[A[0]] = TagState(A[0], True, "RETURNS", T0)
    assert wf.on_reads(reads(A[:1], T0 + 62 * S), T0 + 62 * S).movements == []
    # sold and brought back again a month later: booked again
    engine[A[0]] = TagState(A[0], False, None, T0 + 100 * S)
    later = T0 + 30 * 86400 * S
    assert [m.type for m in wf.on_reads(reads(A[:1], later), later).movements] == ["arrived"]


def test_returns_needs_a_location() -> None:
    opts = TSLDriver.Options(port="/dev/null", workflow="returns", returns_location="NOPE")
    with pytest.raises(ValueError, match="returns_location"):
        Workflow(DeviceSettings(DEVICE, "tsl", {}, opts), LOCATIONS, lambda epc: None)


def test_returns_warns_about_a_wrong_disposition() -> None:
    wf, _ = workflow(workflow="returns", returns_location="SHELF-A1")
    out = wf.on_reads(reads(A[:1], T0), T0)
    assert "not 'returned'" in out.log[0]
    assert out.movements[0].disposition == "sellable_accessible"


def test_returns_ignore_trigger_and_barcodes() -> None:
    wf, _ = workflow(workflow="returns", returns_location="RETURNS")
    assert not trigger(wf, "single", T0) and not scan(wf, "LOC-SHELF-A1", T0)


# --- find --------------------------------------------------------------------------------------


def test_find_reports_rssi_and_books_nothing() -> None:
    wf, _ = workflow(workflow="find")
    batch = reads(A[:2], T0, rssi=-60) + reads(A[:1], T0 + 1000, rssi=-42)
    out = wf.on_reads(batch, T0 + 2000)
    assert out.movements == [] and out.counts == []
    (msg,) = out.find
    assert msg["device"] == DEVICE and msg["target"] is None
    assert msg["tags"] == [
        {"epc": A[0], "rssi": -42.0, "reads": 2},
        {"epc": A[1], "rssi": -60.0, "reads": 1},
    ]


def test_find_narrows_to_a_scanned_gtin_or_epc() -> None:
    wf, _ = workflow(workflow="find")
    assert scan(wf, GTIN_B, T0).feedback == ["ok"]
    out = wf.on_reads(reads(A[:3] + B[:2], T0), T0)
    assert {t["epc"] for t in out.find[0]["tags"]} == set(B[:2])
    assert out.find[0]["target"] == GTIN_B
    assert wf.on_reads(reads(A[:3], T0), T0).find == []
    scan(wf, A[2].lower(), T0 + S)
    assert [t["epc"] for t in wf.on_reads(reads(A[:3], T0), T0).find[0]["tags"]] == [A[2]]
    assert scan(wf, "not a product", T0).feedback == ["error"]
