"""The movement engine, rule by rule, with hand-built read sequences (gateway/engine)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable
from types import SimpleNamespace as NS

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.engine import Engine, EngineConfig, Step
from gateway.engine.core import PythonLoopEngine
from gateway.engine.settings import EngineSettings
from gateway.model import Movement, TagRead, TagState
from tests.support.engine_site import EPC, T0, keepalive, site


def reads_at(
    reader: str,
    antenna: int,
    start_s: float,
    end_s: float,
    rssi: float = -50.0,
    every_s: float = 0.1,
    epc: str = EPC,
) -> list[TagRead]:
    n = round((end_s - start_s) / every_s)
    return [
        TagRead(epc, reader, antenna, rssi, T0 + round((start_s + k * every_s) * 1e6))
        for k in range(n)
    ]


def run(
    engine: Engine, reads: Iterable[TagRead], until_s: float, batch: int = 10
) -> list[Movement]:
    """Feed in time order in small batches, ticking every 0.25 s of the same clock."""
    ordered = sorted(reads, key=lambda r: r.time_us)
    moves: list[Movement] = []
    k = 0
    t = 0.0
    while t <= until_s:
        t += 0.25
        now = T0 + round(t * 1e6)
        chunk = []
        while k < len(ordered) and ordered[k].time_us < now:
            chunk.append(ordered[k])
            k += 1
        for j in range(0, len(chunk), batch):
            moves += engine.feed(chunk[j : j + batch]).movements
        keepalive(engine, now)
        moves += engine.tick(now).movements
    return moves + engine.flush().movements


def kinds(moves: list[Movement]) -> list[tuple[str, str | None, str | None]]:
    return [(m.type, m.from_, m.to) for m in moves]


def secs(m: Movement) -> float:
    return (m.time_us - T0) / 1e6


def crossing(near: tuple[str, int], far: tuple[str, int], t: float, d: float) -> list[TagRead]:
    """A tag through a door: near side for 60% of d, far side from 40% on (both in between)."""
    return reads_at(*near, t, t + 0.6 * d) + reads_at(*far, t + 0.4 * d, t + d)


def test_dock_crossing_arrives_from_the_yard_with_receiving_meaning() -> None:
    engine = Engine(site())
    reads = reads_at("dock", 1, 0, 5) + crossing(("dock", 1), ("dock", 2), 5, 4)
    reads += reads_at("dock", 2, 9, 20)
    moves = run(engine, reads, 20)
    assert kinds(moves) == [("arrived", "YARD", "DOCK")]
    m = moves[0]
    assert (m.via, m.biz_step, m.disposition, m.source) == (
        "dock-door",
        "receiving",
        "in_progress",
        "dock",
    )
    # Dated when the inside took the lead, after the yard side went quiet (7.4 s), not at the
    # crossing's middle when the inside began to out-read it: a pallet has crossed once the far
    # side alone holds it.
    assert 7.4 < secs(m) < 10.0
    assert m.observed is not None and m.observed.reads >= 2
    assert engine.state_of(EPC) == TagState(EPC, True, "DOCK", reads[-1].time_us)


def test_turning_back_inside_a_portal_is_no_crossing() -> None:
    engine = Engine(site())
    # In the yard, into the door's middle (both sides read it, the far side weaker), and back.
    reads = reads_at("dock", 1, 0, 5) + reads_at("dock", 1, 5, 7, rssi=-52)
    reads += reads_at("dock", 2, 5.5, 6.5, rssi=-56) + reads_at("dock", 1, 7, 15)
    assert run(engine, reads, 15) == []
    # Absent, but known to be in the yard: the `from` of a later arrival.
    assert engine.state_of(EPC) == TagState(EPC, False, "YARD", reads[-1].time_us)


def test_seen_on_the_inside_only_is_an_arrival_from_nowhere() -> None:
    engine = Engine(site())
    moves = run(engine, reads_at("dock", 2, 1, 5), 6)
    assert kinds(moves) == [("arrived", None, "DOCK")]


def test_outbound_departs_at_once_with_the_trailers_shipping_meaning() -> None:
    engine = Engine(site())
    reads = reads_at("ship", 2, 0, 5) + crossing(("ship", 2), ("ship", 1), 5, 4)
    reads += reads_at("ship", 1, 9, 20)
    moves = run(engine, reads, 20)
    assert kinds(moves) == [("arrived", None, "SHIP"), ("departed", "SHIP", "TRAILER")]
    departed = moves[1]
    assert (departed.biz_step, departed.disposition, departed.via) == (
        "shipping",
        "in_transit",
        "ship-door",
    )
    assert secs(departed) < 10.0  # at once, not after an absence
    assert engine.state_of(EPC) == TagState(EPC, False, "TRAILER", reads[-1].time_us)


def test_moved_between_zones_and_departed_by_absence_then_forgotten() -> None:
    engine = Engine(site())
    reads = reads_at("zones", 1, 0, 10) + reads_at("zones", 2, 10, 20)
    moves = run(engine, reads, 60)
    assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "B"), ("departed", "B", None)]
    assert secs(moves[1]) == 10.0  # B's first read: it out-read A from then on
    assert moves[1].observed is not None and moves[1].observed.last_seen_us < T0 + 12_500_000
    # A departure by absence is dated when the tag was last seen (zones: 30 s of silence).
    assert secs(moves[2]) == (reads[-1].time_us - T0) / 1e6
    assert engine.tracked == 1
    run(engine, [], 4000)
    assert engine.tracked == 0  # forgotten after forget_after_s


def test_parked_tag_with_strays_and_cross_reads_never_moves() -> None:
    rng = random.Random(7)
    engine = Engine(site())
    reads = []
    for k in range(3000):  # 5 minutes at A: read in 70% of 100 ms rounds, sigma 5 dB
        t = k * 0.1
        if rng.random() < 0.7:
            reads.append(TagRead(EPC, "zones", 1, -55 + rng.gauss(0, 5), T0 + round(t * 1e6)))
        if rng.random() < 0.25:  # cross-reads on the neighbour antenna, 8 dB down
            reads.append(TagRead(EPC, "zones", 2, -63 + rng.gauss(0, 5), T0 + round(t * 1e6)))
        if rng.random() < 0.05:  # strays on both sides of the dock door, 10 dB down
            side = rng.choice((1, 2))
            reads.append(TagRead(EPC, "dock", side, -65 + rng.gauss(0, 5), T0 + round(t * 1e6)))
    moves = run(engine, reads, 300)
    assert kinds(moves) == [("arrived", None, "A")]
    assert secs(moves[0]) < 2.0
    s = engine.suppressed
    assert s["cross_read"] > 0 and s["portal_stray"] + s["stray"] > 0


def test_a_tag_read_every_few_seconds_is_not_taken_by_weaker_cross_reads() -> None:
    # A zone reader sees the tag at A every 3 s. One round misses it, and the neighbouring
    # antenna's weaker leaks come in: 2.2 s of silence would let them win by the profile's
    # clock alone (holdoff 0.5 s, then 8 dB/s down to -6 dB), but silence is counted in the
    # tag's own read rounds at A, and A has missed less than one.
    engine = Engine(site())
    reads = reads_at("zones", 1, 0, 60, rssi=-55, every_s=3.0)
    reads += [TagRead(EPC, "zones", 2, -58, T0 + round(s * 1e6)) for s in (59.2, 59.6, 60.0)]
    reads += reads_at("zones", 1, 63, 90, rssi=-55, every_s=3.0)
    assert kinds(run(engine, reads, 90)) == [("arrived", None, "A")]


def test_a_tag_read_often_elsewhere_and_not_where_it_was_moves_at_the_profiles_pace() -> None:
    # The same slow-read tag really moves: B reads it every 0.3 s (3 dB weaker than A used
    # to). Once B has read it as many times as A's rounds excuse, A's silence counts again.
    engine = Engine(site())
    reads = reads_at("zones", 1, 0, 60, rssi=-55, every_s=3.0)
    reads += reads_at("zones", 2, 59.2, 70, rssi=-58, every_s=0.3)
    moves = run(engine, reads, 70)
    assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "B")]
    # A's claim is long gone by 59.2 s (2.2 s of silence), and B out-reads A from its first
    # read: the move is dated then. It is decided once B has out-read A by _OUTREAD (8) reads
    # and led for the profile's confirm_s: at B's 8th read, 61.3 s.
    assert secs(moves[1]) == 59.2
    assert moves[1].observed is not None
    assert (moves[1].observed.last_seen_us - T0) / 1e6 <= 59.2 + 7 * 0.3 + 0.01


def test_a_parked_tag_whose_neighbour_is_louder_for_a_while_but_reads_it_less_stays() -> None:
    # A parked tag's link to its own antenna fades out for 2.5 s (a burst of misses) while the
    # neighbouring antenna cross-reads it at its usual level. By level and silence alone B
    # wins (A's claim decays: the engine before issue 13's read-count rule moved it there and
    # back); but B read it 7 times, and a move needs B to out-read A by _OUTREAD (8) reads: A
    # resumes and the tag stays.
    engine = Engine(site())
    reads = reads_at("zones", 1, 0, 10, rssi=-55, every_s=0.2)
    reads += reads_at("zones", 2, 10, 12.5, rssi=-55, every_s=0.4)
    reads += reads_at("zones", 1, 12.5, 40, rssi=-55, every_s=0.2)
    assert kinds(run(engine, reads, 40)) == [("arrived", None, "A")]


def test_a_tag_that_out_reads_its_old_place_moves_though_its_new_antenna_is_weaker() -> None:
    # A case on a fast conveyor moves from A to B, whose antenna reads everything 4 dB weaker
    # (its gain); A keeps cross-reading it, weaker still. By level, B never beats A by the
    # threshold (A is read, so its claim never decays); B out-reads A 5 to 1, so it moves.
    engine = Engine(site())
    reads = reads_at("zones", 1, 0, 5, rssi=-48, every_s=0.05)
    reads += reads_at("zones", 2, 5, 7, rssi=-52, every_s=0.05)
    reads += reads_at("zones", 1, 5.02, 7, rssi=-55, every_s=0.25)
    moves = run(engine, reads, 10)
    assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "B")]
    # Dated when B began to out-read A for good (5.05 s: A's cross-read at 5.02 s evened the
    # count after B's first read), decided within about a second.
    assert secs(moves[1]) == 5.05
    assert moves[1].observed is not None and moves[1].observed.last_seen_us < T0 + 6_500_000


def test_a_case_that_leaves_the_field_from_its_new_zone_before_confirmation_moved_there() -> None:
    # A case out-reads A at B for 0.4 s (8 reads) and leaves the field: by the time B's lead
    # would have held its confirmation time nothing is read at all. Nothing contradicted it,
    # so it moved to B and later departs from B, not from A.
    engine = Engine(site())
    reads = reads_at("zones", 1, 0, 5, rssi=-48, every_s=0.2)
    reads += reads_at("zones", 2, 5, 5.45, rssi=-47, every_s=0.05)
    moves = run(engine, reads, 45)
    assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "B"), ("departed", "B", None)]
    assert 5.0 <= secs(moves[1]) <= 5.45


def test_a_first_sighting_whose_reads_end_before_its_confirm_time_still_arrives() -> None:
    # A tag through a tunnel, read twice in 0.3 s (a zone confirms in 0.75 s): nothing
    # contradicts it when its confirm_s has passed, so it was there (one read is not enough).
    engine = Engine(site())
    reads = [TagRead(EPC, "zones", 1, -60, T0 + 1_000_000)]
    reads.append(TagRead(EPC, "zones", 1, -61, T0 + 1_300_000))
    reads.append(TagRead("3074257BF7194E4000001A86", "zones", 1, -60, T0 + 1_000_000))
    moves = run(engine, reads, 5)
    assert kinds(moves) == [("arrived", None, "A")]
    assert (moves[0].epc, secs(moves[0]), moves[0].source, moves[0].via) == (
        EPC,
        1.0,
        "zones",
        "zones:1",
    )


def test_a_first_sighting_read_no_more_while_contested_does_not_arrive() -> None:
    engine = Engine(site())
    reads = [TagRead(EPC, "zones", 1, -60, T0 + 1_000_000)]
    reads.append(TagRead(EPC, "zones", 2, -59, T0 + 1_100_000))
    reads.append(TagRead(EPC, "zones", 1, -60, T0 + 1_200_000))
    reads.append(TagRead(EPC, "zones", 2, -60, T0 + 1_300_000))
    assert run(engine, reads, 5) == []


def test_one_weak_stray_does_not_hold_off_a_first_sightings_real_location() -> None:
    # Found on an unseen harsh variant: a parked tag is first read by the neighbouring antenna
    # (B), a single weak stray from a third place (the dock) becomes the challenger, and while
    # that one read was "fresh" (its holdoff) it held off every strong read at A. By then B had
    # been read more often than A: there B was confirmed and the tag "moved" to A 3 s later;
    # here no location ever won. A single read is no evidence to protect.
    # (B's cross-reads are 7 dB down: at exactly the threshold, 6 dB, B's reads -- half as many
    # again as A's -- out-read A within it, and B takes the tag by _out_reads_tentative's rule,
    # which the first-sighting tally applies to every zone's reads since the first.)
    engine = Engine(site())
    reads = [TagRead(EPC, "zones", 2, -57, T0), TagRead(EPC, "dock", 2, -71, T0 + 40_000)]
    reads += reads_at("zones", 1, 0.07, 10, rssi=-52, every_s=0.15)
    reads += reads_at("zones", 2, 0.25, 10, rssi=-59, every_s=0.1)
    assert kinds(run(engine, reads, 10)) == [("arrived", None, "A")]


def test_cross_read_storm_between_one_readers_antennas() -> None:
    engine = Engine(site())
    epcs = [f"30742{k:019X}" for k in range(50)]
    reads = []
    for epc in epcs:
        reads += reads_at("zones", 1, 0, 20, rssi=-50, every_s=0.2, epc=epc)
        reads += reads_at("zones", 2, 0.05, 20, rssi=-60, every_s=0.05, epc=epc)  # 4x as many
    moves = run(engine, reads, 20)
    assert sorted(kinds(moves)) == [("arrived", None, "A")] * 50
    assert engine.suppressed["cross_read"] > 10_000


def test_weak_single_and_unknown_reads_never_make_a_movement() -> None:
    engine = Engine(site(min_rssi_dbm=-75.0))
    reads = reads_at("zones", 1, 0, 5, rssi=-80)  # weak
    reads += [TagRead("AA" * 12, "zones", 2, -50, T0 + 1_000_000)]  # a single read
    reads += reads_at("nowhere", 1, 0, 5)  # unknown reader
    assert run(engine, reads, 10) == []
    s = engine.suppressed
    assert s["weak"] == 50 and s["unknown_antenna"] == 50
    run(engine, [], 4000)
    assert s["single"] == 1 and engine.tracked == 0


def two_readers_at_the_dock() -> EngineConfig:
    """The dock door's inside watched by two readers: dock's antenna 2 and dock-b's 1."""

    def ant(location: str) -> NS:
        return NS(location=location, read_point=None, rssi_offset_db=0.0)

    def loc(offsite: bool = False) -> NS:
        return NS(offsite=offsite, biz_step=None, disposition=None, profile=None)

    return EngineConfig.build(
        [("dock", {1: ant("YARD"), 2: ant("DOCK")}), ("dock-b", {1: ant("DOCK")})],
        {"YARD": loc(offsite=True), "DOCK": loc()},
        {"dock-door": NS(outside=("dock:1",), inside=("dock:2", "dock-b:1"))},
    )


def test_late_and_out_of_order_reads_are_placed_as_if_in_order() -> None:
    """Two readers see the same tag; dock-b's reports arrive 0.3 s after dock's. Each
    connection delivers its reads in order; the engine must interleave them by reader time."""
    reads = reads_at("dock", 1, 0, 5) + crossing(("dock", 1), ("dock", 2), 5, 4)
    reads += reads_at("dock", 2, 9, 15)
    reads = [
        TagRead(r.epc, "dock-b", 1, r.rssi, r.time_us) if r.antenna == 2 and k % 2 else r
        for k, r in enumerate(reads)
    ]
    expected = run(Engine(two_readers_at_the_dock()), reads, 15)
    assert kinds(expected) == [("arrived", "YARD", "DOCK")]
    engine = Engine(two_readers_at_the_dock())
    arrival = sorted(
        (
            (r.time_us + (300_000 if r.reader == "dock-b" else 2_000), k, r)
            for k, r in enumerate(reads)
        )
    )
    got: list[Movement] = []
    now = T0
    while arrival:
        now += 50_000
        for name in ("dock", "dock-b"):
            batch = [r for a, _, r in arrival if a <= now and r.reader == name]
            if batch:
                got += engine.feed(batch, name).movements
        arrival = [x for x in arrival if x[0] > now]
    got += engine.flush().movements
    assert kinds(got) == kinds(expected)
    assert [m.time_us for m in got] == [m.time_us for m in expected]
    # (dock-b's very first read: a reader not heard from yet cannot hold the others back.)
    assert engine.suppressed["late"] <= 1
    # A read older than a read of its tag already judged only counts as a sighting.
    late = engine.suppressed["late"]
    stale = TagRead(EPC, "dock", 1, -40, T0)
    engine.feed([stale])
    engine.flush()
    assert engine.suppressed["late"] == late + 1
    assert engine.state_of(EPC) is not None and engine.state_of(EPC).location == "DOCK"  # type: ignore[union-attr]


def test_lateness_is_per_tag_not_per_reader() -> None:
    # Only one tag's reads must be judged in order: a read older than what was judged is late
    # only when its own tag already has a newer read judged. (Before event time per reader,
    # every read a window older than the newest was late, whatever its tag: a reader's backlog
    # after a reconnect was thrown away.)
    engine = Engine(site())
    engine.feed([TagRead(EPC, "zones", 1, -50, T0 + 10_000_000)])
    engine.flush()  # judged up to 10 s
    engine.feed([TagRead("AB" * 12, "zones", 1, -50, T0 + 9_400_000)])  # 0.6 s older
    engine.feed([TagRead(EPC, "zones", 2, -50, T0 + 9_700_000)])  # older than its own, at B
    engine.flush()
    assert engine.suppressed["late"] == 1
    assert engine.source("zones").behind == 2  # both came behind what was judged
    assert engine.state_of("AB" * 12) is not None


def test_a_backlog_older_than_a_tags_first_live_read_still_confirms_where_it_was() -> None:
    # A reader reconnects and a tag's newest read comes live before the backlog of its older
    # reads. Judged after a newer one, they cannot move it (late), but where the tag already
    # tentatively is they are evidence that it was there: it arrives, from its first read.
    # (Found by the backlog e2e test: such a tag never arrived.)
    engine = Engine(site())
    engine.feed([TagRead(EPC, "zones", 1, -50, T0 + 10_000_000)])
    engine.flush()
    backlog = [TagRead(EPC, "zones", 1, -50, T0 + 8_000_000 + k * 400_000) for k in range(5)]
    moves = engine.feed(backlog).movements + engine.flush().movements
    assert kinds(moves) == [("arrived", None, "A")]
    assert secs(moves[0]) == 8.0
    assert (
        engine.suppressed["late"] == 4
    )  # the backlog's first read confirmed it; the rest add nothing


def test_restart_with_persisted_state_neither_reannounces_nor_forgets() -> None:
    engine = Engine(site())
    first = run(engine, reads_at("zones", 1, 0, 5), 5)
    assert kinds(first) == [("arrived", None, "A")]
    persisted = [s for m in [Step(first, [engine.state_of(EPC)])] for s in m.states]  # type: ignore[list-item]
    restarted = Engine.restore(persisted, site())
    assert restarted.state_of(EPC) == persisted[0]
    assert run(restarted, reads_at("zones", 1, 6, 10), 10) == []  # still at A: nothing new
    moves = run(restarted, reads_at("zones", 2, 10, 15), 15)
    assert kinds(moves) == [("moved", "A", "B")]


def test_restored_tag_that_moved_while_down_moves_once() -> None:
    state = TagState(EPC, True, "A", T0)
    engine = Engine.restore([state], site())
    moves = run(engine, reads_at("zones", 2, 1, 10), 10)
    assert kinds(moves) == [("moved", "A", "B")]


def test_reload_keeps_tags_and_applies_new_profiles() -> None:
    engine = Engine(site())
    run(engine, reads_at("zones", 1, 0, 5), 5)
    engine.reload(site(min_reads=3))
    assert engine.state_of(EPC) == TagState(EPC, True, "A", reads_at("zones", 1, 0, 5)[-1].time_us)
    assert run(engine, reads_at("zones", 1, 5, 8), 8) == []
    # A location removed by the reload keeps its tags (as a plain zone).
    smaller = EngineConfig(
        {k: v for k, v in site().places.items() if v.location != "A"},
        {k: v for k, v in site().locations.items() if k != "A"},
        site().portals,
        EngineSettings(),
    )
    engine.reload(smaller)
    assert engine.state_of(EPC).location == "A"  # type: ignore[union-attr]
    moves = run(engine, reads_at("zones", 2, 9, 14), 14)
    assert kinds(moves) == [("moved", "A", "B")]


def test_device_reported_move_updates_the_tag() -> None:
    engine = Engine(site())
    run(engine, reads_at("zones", 1, 0, 5), 5)
    robot = Movement("moved", EPC, "A", "B", T0 + 6_000_000, "robot-1")
    step = engine.apply(robot)
    assert step.movements == []  # the device's own movement is published by the pipeline
    assert step.states == [TagState(EPC, True, "B", T0 + 6_000_000)]
    assert run(engine, reads_at("zones", 2, 6, 9), 9) == []  # read where the robot put it
    assert (
        engine.apply(Movement("moved", None, "A", "B", T0, "robot-1", object_id="x")).states == []
    )


def test_tracked_tags_are_capped_with_counted_eviction() -> None:
    engine = Engine(site(max_tags=100))
    reads = [
        TagRead(f"30742{k:019X}", "zones", 1, -50, T0 + k * 1000 + j * 100_000_000)
        for j in range(3)
        for k in range(150)
    ]
    reads.sort(key=lambda r: r.time_us)
    engine.feed(reads)
    engine.flush()
    assert engine.tracked <= 100
    assert sum(engine.evicted.values()) >= 50


# --- properties -------------------------------------------------------------------------------

own_reads = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=600_000_000),  # time within 10 minutes
        st.sampled_from([("zones", 1), ("dock", 2)]),  # A, or DOCK: both its own antennas below
        st.floats(min_value=-95, max_value=-20, allow_nan=False),
        st.integers(min_value=1, max_value=3),
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(own_reads, st.integers(min_value=1, max_value=50), st.booleans())
def test_a_stationary_tag_never_moves(
    spec: list[tuple[int, tuple[str, int], float, int]], batch: int, at_dock: bool
) -> None:
    """Whatever the timing, strength, order, duplicates and batching of the reads of a tag
    standing at one location, the engine announces at most its arrival there."""
    where = ("dock", 2) if at_dock else ("zones", 1)
    reads = [TagRead(EPC, *where, rssi, T0 + t, count) for t, _, rssi, count in spec]
    engine = Engine(site())
    moves: list[Movement] = []
    for k in range(0, len(reads), batch):
        moves += engine.feed(reads[k : k + batch]).movements
    moves += engine.flush().movements
    assert [m.type for m in moves] in ([], ["arrived"])
    assert all(m.to == ("DOCK" if at_dock else "A") for m in moves)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_weaker_cross_reads_never_move_a_tag_that_is_read_where_it_is(data: st.DataObject) -> None:
    """Cross-reads on a neighbour, each weaker than the tag's reads where it is by more than
    the threshold, while its own location keeps reading it: never a move."""
    engine = Engine(site())
    reads = []
    t = 0
    for _ in range(data.draw(st.integers(min_value=10, max_value=200))):
        t += data.draw(st.integers(min_value=1, max_value=400_000))  # within the holdoff
        own = data.draw(st.floats(min_value=-70, max_value=-40))
        reads.append(TagRead(EPC, "zones", 1, own, T0 + t))
        if data.draw(st.booleans()):
            weaker = own - data.draw(st.floats(min_value=6.5, max_value=30))
            reads.append(TagRead(EPC, "zones", 2, weaker, T0 + t + 1))
    moves = engine.feed(reads).movements + engine.flush().movements
    assert [(m.type, m.to) for m in moves] in ([], [("arrived", "A")])


# --- crash and resume -------------------------------------------------------------------------

CRASH_BATCH_S = 0.5


def _noisy(
    rng: random.Random,
    reader: str,
    antenna: int,
    start_s: float,
    end_s: float,
    epc: str,
    rssi: float = -52.0,
    rate: float = 0.8,
) -> list[TagRead]:
    """Reads in 100 ms rounds with a read rate and 3 dB of noise."""
    out = []
    for k in range(round((end_s - start_s) / 0.1)):
        if rng.random() < rate:
            t = start_s + k * 0.1 + rng.uniform(0, 0.1)
            out.append(TagRead(epc, reader, antenna, rssi + rng.gauss(0, 3), T0 + round(t * 1e6)))
    return out


def _story() -> list[TagRead]:
    """Five tags, every kind of decision: a parked tag with cross-reads and strays, an inbound
    crossing then a move then a departure by absence, a ship-door departure, a single read,
    and a tag that departs by absence and comes back."""
    rng = random.Random(11)
    parked, inbound, shipped, single, back = (f"30740000000000000000000{k}" for k in range(5))
    reads = _noisy(rng, "zones", 1, 0, 60, parked)
    reads += _noisy(rng, "zones", 2, 0, 60, parked, rssi=-60, rate=0.25)  # cross-reads
    reads += _noisy(rng, "dock", 1, 0, 60, parked, rssi=-64, rate=0.05)  # strays
    reads += _noisy(rng, "dock", 2, 0, 60, parked, rssi=-64, rate=0.05)
    reads += _noisy(rng, "dock", 1, 2, 10.4, inbound) + _noisy(rng, "dock", 2, 9.6, 25, inbound)
    reads += _noisy(rng, "zones", 1, 25.5, 40, inbound)
    reads += _noisy(rng, "ship", 2, 3, 17.4, shipped) + _noisy(rng, "ship", 1, 16.6, 30, shipped)
    reads += [TagRead(single, "zones", 2, -50.0, T0 + 20_000_000)]
    reads += _noisy(rng, "zones", 2, 5, 10, back) + _noisy(rng, "zones", 2, 50, 60, back)
    return sorted(reads, key=lambda r: r.time_us)


class _Run:
    """Drive an engine batch by batch like the pipeline: feed, tick, then release the source
    cursors (a batch index here) older than resume_floor_us(); commit moves + states."""

    def __init__(self, engine: Engine, batches: list[list[TagRead]], start: int = 0) -> None:
        self.engine = engine
        self.moves: list[Movement] = []
        self.states: dict[str, TagState] = {}
        self.cursor = start - 1  # last batch whose reads need never be re-fed
        self.history: list[tuple[int, int, dict[str, TagState]]] = []  # per batch, committed
        checkpoints: list[tuple[int, int]] = []
        for k in range(start, len(batches)):
            batch = batches[k]
            self._take(engine.feed(batch))
            now = T0 + round((k + 1) * CRASH_BATCH_S * 1e6)
            keepalive(engine, now)
            self._take(engine.tick(now))
            if batch:
                checkpoints.append((max(r.time_us for r in batch), k))
            floor = engine.resume_floor_us()
            while checkpoints and (floor is None or checkpoints[0][0] < floor):
                self.cursor = checkpoints.pop(0)[1]
            self.history.append((len(self.moves), self.cursor, dict(self.states)))
        self._take(engine.flush())  # the pipeline's shutdown

    def _take(self, step: Step) -> None:
        self.moves += step.movements
        for state in step.states:
            assert state.last_seen_us > T0 - 1, state
            self.states[state.epc] = state


def _keys(moves: Iterable[Movement]) -> list[tuple[str, str | None, str | None, str | None]]:
    return sorted((m.type, m.epc, m.from_, m.to) for m in moves)


def test_a_crash_at_any_batch_boundary_loses_nothing_and_repeats_nothing() -> None:
    reads = _story()
    n = round(120 / CRASH_BATCH_S)  # 60 s of reads, then long enough for every departure
    batches: list[list[TagRead]] = [[] for _ in range(n)]
    for r in reads:
        batches[int((r.time_us - T0) / 1e6 / CRASH_BATCH_S)].append(r)
    whole = _Run(Engine(site()), batches)
    expected = _keys(whole.moves)
    assert [(t, f, to) for t, _, f, to in expected].count(("arrived", "YARD", "DOCK")) == 1
    assert len(expected) == 11, expected  # P x2, X x3, Y x2, W x4 (arrive and depart, each)
    with_reads = [k for k, batch in enumerate(batches) if batch]
    lag = [max(j for j in with_reads if j <= k) - c for k, (_, c, _) in enumerate(whole.history)]
    assert max(lag) <= 10, "the cursor trails the reads by a few seconds at most"
    for k, (n_moves, cursor, states) in enumerate(whole.history):
        restarted = _Run(Engine.restore(states.values(), site()), batches, start=cursor + 1)
        got = _keys(whole.moves[:n_moves] + restarted.moves)
        assert got == expected, f"crash after batch {k} (cursor {cursor})"


def test_resume_floor_covers_waiting_reads_and_undecided_evidence() -> None:
    engine = Engine(site())
    assert engine.resume_floor_us() is None
    first = reads_at("zones", 1, 1, 1.3)  # 3 reads: judged later, tentative
    engine.feed(first)
    assert engine.resume_floor_us() == first[0].time_us  # waiting in the reorder window
    engine.feed(reads_at("zones", 2, 2, 2.1, epc="AA" * 12))  # pushes the window on
    assert engine.pending_reads < 4
    assert engine.resume_floor_us() == first[0].time_us  # judged, but a tentative sighting
    moves = engine.feed(reads_at("zones", 1, 1.3, 3)).movements + engine.flush().movements
    assert kinds(moves) == [("arrived", None, "A")]
    # Decided; what remains is the other tag's single read, until its evidence expires.
    assert engine.resume_floor_us() == T0 + 2_000_000
    engine.feed([TagRead(EPC, "zones", 1, -50, T0 + 9_000_000)])
    engine.flush()
    assert engine.resume_floor_us() is None
    assert engine.state_of("AA" * 12).present is False  # type: ignore[union-attr]


def test_a_restored_departed_tag_does_not_rearrive_on_its_old_reads() -> None:
    engine = Engine(site())
    reads = reads_at("zones", 2, 0, 5)
    moves = run(engine, reads, 40)
    assert kinds(moves) == [("arrived", None, "B"), ("departed", "B", None)]
    persisted = engine.state_of(EPC)
    assert persisted == TagState(EPC, False, None, reads[-1].time_us)
    restarted = Engine.restore([persisted], site())
    assert run(restarted, reads, 40) == []  # re-fed from an old cursor: nothing again
    # (older than the tag's persisted last read: late for that tag; the newest equals it)
    assert restarted.suppressed["late"] == len(reads) - 1
    assert kinds(run(restarted, reads_at("zones", 2, 50, 55), 55)) == [("arrived", None, "B")]


def test_a_restored_tag_is_not_judged_absent_before_the_reads_catch_up() -> None:
    """The persisted last_seen_us may be old (the time of the last decision); after a restart
    the re-fed reads arrive behind the gateway clock. No departure until they caught up."""
    engine = Engine.restore([TagState(EPC, True, "A", T0)], site())
    moves: list[Movement] = []
    reads = reads_at("zones", 1, 100, 110)
    for k in range(0, len(reads), 10):  # the gateway clock runs 5 s ahead of the replay
        moves += engine.feed(reads[k : k + 10]).movements
        moves += engine.tick(reads[k].time_us + 5_000_000).movements
    assert moves == []
    state = engine.state_of(EPC)
    assert state is not None and (state.present, state.location) == (True, "A")


def test_a_stationary_tag_refreshes_its_persisted_last_seen() -> None:
    engine = Engine(site())
    states: list[TagState] = []
    reads = reads_at("zones", 1, 0, 60, every_s=0.5)
    for k in range(0, len(reads), 4):
        states += engine.feed(reads[k : k + 4]).states
    states += engine.flush().states
    assert [s.present and s.location == "A" for s in states] == [True] * len(states)
    gaps = [
        (b.last_seen_us - a.last_seen_us) / 1e6 for a, b in zip(states, states[1:], strict=False)
    ]
    assert len(states) >= 4 and max(gaps) <= 15.5  # half the zone's departed_after_s


def test_a_case_on_a_fast_conveyor_moves_before_it_leaves_the_field() -> None:
    """Silence counted in the tag's own read rounds: zone A read the case every 60 ms (with
    a cross-read on B now and then); after 1.5 s it is on B, read as strongly every 60 ms for
    1 s, then leaves. A's holdoff and decay, in seconds, used to outlast B's reads: the
    case was reported departed from A and never moved."""
    reads = reads_at("zones", 1, 0, 1.5, every_s=0.06)
    reads += reads_at("zones", 2, 0.03, 1.5, rssi=-59.0, every_s=0.6)  # cross-reads
    reads += reads_at("zones", 2, 2.0, 3.0, every_s=0.06)
    reads += reads_at("zones", 1, 2.03, 3.0, rssi=-59.0, every_s=0.6)  # cross-reads
    moves = run(Engine(site()), reads, 60)
    assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "B"), ("departed", "B", None)]
    assert moves[1].time_us <= T0 + 2_500_000  # decided while B still reads it


def test_a_first_sighting_waits_out_a_close_contest() -> None:
    """A tag on a dense floor is first read by the neighbour zone B about as often and as
    strongly as by its own zone A (cross-reads only ~7 dB down, sigma 5 dB). B is not confirmed
    while A is within min_reads reads and the threshold of it; A's strong reads then take the
    estimate with fewer reads than B (clearly stronger: the threshold over min_reads reads).
    The old engine announced B, then moved the tag to A."""

    def read(antenna: int, t: float, rssi: float) -> TagRead:
        return TagRead(EPC, "zones", antenna, rssi, T0 + round(t * 1e6))

    reads = [read(1, 0.05, -62), read(2, 0.15, -59), read(2, 0.34, -62), read(1, 0.55, -64)]
    reads += [read(1, 0.75, -66), read(2, 0.99, -62), read(1, 1.11, -54), read(1, 1.22, -50)]
    reads += [read(1, 1.6 + 0.4 * k, -52) for k in range(10)]
    reads += [read(2, 2.1 + 0.8 * k, -60) for k in range(5)]
    moves = run(Engine(site()), reads, 8)
    assert kinds(moves) == [("arrived", None, "A")]


def test_a_first_sighting_heard_first_by_a_neighbour_is_dated_from_its_first_read() -> None:
    """A tag put down in zone A is heard first by the neighbouring antenna B (three reads, B
    tentatively holds it); A's reads then take the estimate. The tag has been on the floor since
    its first read: the arrival at A is dated 0.0, not when A began to lead (the old engine
    dated it then, 1-2 s late on a dense floor and 4-8 s with fading)."""
    reads = reads_at("zones", 2, 0.0, 0.5, rssi=-58, every_s=0.2)
    reads += reads_at("zones", 1, 0.9, 8, rssi=-50, every_s=0.15)
    reads += reads_at("zones", 2, 1.1, 8, rssi=-60, every_s=0.6)
    moves = run(Engine(site()), reads, 10)
    assert kinds(moves) == [("arrived", None, "A")]
    assert secs(moves[0]) == 0.0


def test_a_level_lead_on_a_few_reads_does_not_decide_against_a_rival_that_out_reads_it() -> None:
    """A tag put down in A. Neighbour B reads it first, once 14 dB above its usual level (an
    outlier, as fading and antenna gains make), then every 0.6 s; A reads it every 0.2 s, 4 dB
    above B's usual level. By A's confirmation time B's smoothed level is still 6 dB ahead on
    two reads against A's four: the old engine confirmed B (and moved the tag to A seconds
    later). A level lead now decides only on as many reads as the rival's (or _OUTREAD)."""
    reads = [TagRead(EPC, "zones", 2, -40.0, T0)]
    reads += reads_at("zones", 2, 0.6, 20, rssi=-58, every_s=0.6)
    reads += reads_at("zones", 1, 0.08, 20, rssi=-54, every_s=0.2)
    moves = run(Engine(site()), reads, 20)
    assert kinds(moves) == [("arrived", None, "A")]
    assert secs(moves[0]) == 0.0


def test_a_rival_that_out_reads_a_tentative_estimate_takes_it_though_a_little_weaker() -> None:
    """A tag put down in A; neighbour B reads it twice, strongly (-50, -51: fading), A every
    0.25 s, 5 dB weaker than those two. The old engine let a tentative estimate yield only to
    a stronger location: B held the tag until it went stale, and the arrival at A came as a
    new sighting seconds later. Out-read by _FIRST_OUTREAD, with no level lead of the
    threshold on as many reads, B gives the estimate to A; the arrival is dated from the
    sighting's first read."""
    reads = [TagRead(EPC, "zones", 2, -50.0, T0), TagRead(EPC, "zones", 2, -51.0, T0 + 1_000_000)]
    reads += reads_at("zones", 1, 0.05, 20, rssi=-56, every_s=0.25)
    moves = run(Engine(site()), reads, 20)
    assert kinds(moves) == [("arrived", None, "A")]
    assert secs(moves[0]) == 0.0


def test_a_case_read_a_few_times_in_its_new_zone_before_it_leaves_the_field_has_moved() -> None:
    """A case on a conveyor: zone A reads it for 1.5 s, zone B five times in 0.8 s (a burst of
    misses), then it leaves the field. B never out-read A by _OUTREAD, so the old engine
    reported it departed from A. Read no more at all, out-read by _FIRST_OUTREAD as a first
    sighting must be, it moved to B (dated when B's reads began) and departed from there."""
    reads = reads_at("zones", 1, 0, 1.5, rssi=-50, every_s=0.05)
    reads += [
        TagRead(EPC, "zones", 2, -50.0, T0 + round(t * 1e6)) for t in (1.6, 1.7, 1.9, 2.2, 2.4)
    ]
    moves = run(Engine(site()), reads, 40)
    assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "B"), ("departed", "B", None)]
    assert secs(moves[1]) == 1.6


def test_a_tunnel_that_reads_no_foreign_tag_trusts_a_single_read_once_it_has_learnt_that() -> None:
    """A tunnel reader of its own (zone A; B is another reader's) passes 150 cases, each read
    three times; then one read only once (a burst of misses). A has confirmed 150 sightings and
    never read a tag that was elsewhere, so the case read once was there: it arrives, dated at
    that read, and departs. The same single read in a zone that hears its neighbour's tags
    (B's, 20 cross-reads) stays a `single`, as on a new site before 100 sightings (the old
    engine never trusted one read)."""
    from tests.support import engine_reference

    def cases(n: int, start_s: float) -> list[TagRead]:
        reads = []
        for k in range(n):
            epc = f"30742{k:019X}"
            t = start_s + 0.4 * k
            reads += [
                TagRead(epc, "zones", 1, -55.0, T0 + round((t + d) * 1e6)) for d in (0, 0.1, 0.2)
            ]
        return reads

    once = TagRead(EPC, "zones", 1, -60.0, T0 + 70_000_000)
    for make in (Engine, PythonLoopEngine, engine_reference.Engine):
        moves = run(make(site()), [*cases(150, 0.0), once], 110)
        mine = [m for m in moves if m.epc == EPC]
        assert kinds(mine) == [("arrived", None, "A"), ("departed", "A", None)], make
        assert secs(mine[0]) == 70.0
        leaky = [*cases(150, 0.0), once]
        leaky += reads_at("zones", 1, 65, 67, rssi=-70, every_s=0.1, epc="3074257BF7194E4000009999")
        leaky += reads_at(
            "zones", 2, 60, 100, rssi=-50, every_s=0.1, epc="3074257BF7194E4000009999"
        )
        engine = make(site())
        assert [m for m in run(engine, leaky, 110) if m.epc == EPC] == [], make
        fresh = make(site())
        assert [m for m in run(fresh, [*cases(50, 0.0), once], 110) if m.epc == EPC] == []


def three_zones() -> EngineConfig:
    """Zones A, B and C on one reader's antennas 1-3 (a dense floor's neighbours)."""
    zone = NS(offsite=False, biz_step=None, disposition=None, profile=None)
    ants = {k: NS(location=z, read_point=None, rssi_offset_db=0.0) for k, z in enumerate("ABC", 1)}
    return EngineConfig.build([("floor", ants)], dict.fromkeys("ABC", zone), {})


def test_a_challenger_that_does_not_out_read_the_tags_location_yields_to_one_that_does() -> None:
    """A tag parked in A is carried to C at t=10. Neighbour B cross-reads it a second apart
    and stronger than C (-52 dB against -55), and A still hears it now and then: B is the
    challenger but never out-reads A. The old engine let B hold the challenger's place (C was
    never 6 dB stronger than B), so C's reads were thrown away and the move never came; a
    challenger whose count lead is gone now yields to the next location read."""
    reads = reads_at("floor", 1, 0, 10, rssi=-58, every_s=0.3)
    reads += reads_at("floor", 1, 10.5, 40, rssi=-66, every_s=1.0)
    reads += reads_at("floor", 2, 10.05, 40, rssi=-52, every_s=1.0)
    reads += reads_at("floor", 3, 10.1, 40, rssi=-55, every_s=0.3)
    moves = run(Engine(three_zones()), reads, 40)
    assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "C")]
    assert 10.0 <= secs(moves[1]) <= 11.0


def test_one_outlier_read_does_not_start_a_challengers_lead() -> None:
    """A parked tag at A (read every 0.3 s) gets one outlier read at B, 13 dB above A's level
    (sigma 5 dB makes one now and then), and B's next cross-read a second later at its usual
    level. The old engine timed B's lead from the outlier and moved the tag on that second
    read; a lead now starts when the challenger has min_reads reads."""
    reads = reads_at("zones", 1, 0, 10, rssi=-62.0, every_s=0.3)
    reads += [TagRead(EPC, "zones", 2, -49.0, T0 + 6_350_000)]
    reads += [TagRead(EPC, "zones", 2, -66.0, T0 + 7_370_000)]
    moves = run(Engine(site()), reads, 12)
    assert kinds(moves) == [("arrived", None, "A")]


def test_a_movement_is_dated_when_the_reads_show_it_happened() -> None:
    """An arrival is dated by the first read of the evidence that confirmed it, a move by the
    read from which the new location led; the read that decided each is observed.last_seen.
    (The old engine dated both by the deciding read: a confirmation time late.)"""
    reads = reads_at("zones", 1, 0, 5) + reads_at("zones", 2, 5, 10)
    arrived, moved = run(Engine(site()), reads, 10)[:2]
    assert (arrived.type, moved.type) == ("arrived", "moved")
    assert arrived.time_us == T0 == arrived.observed.first_seen_us  # type: ignore[union-attr]
    assert arrived.observed.last_seen_us >= T0 + 750_000  # type: ignore[union-attr]  # confirm_s
    assert moved.time_us == moved.observed.first_seen_us  # type: ignore[union-attr]
    assert T0 + 5_000_000 <= moved.time_us < moved.observed.last_seen_us  # type: ignore[union-attr]


def test_a_stale_one_read_challenger_does_not_stop_state_refreshes() -> None:
    """A parked tag read at A every 3 s gets one cross-read at B 2.5 s after an A read (past
    the cross-read window: a one-read challenger). Its evidence used to stay "undecided" for
    good, and the tag's persisted state stopped being refreshed: after a restart it came back
    with an old last_seen_us. A challenger stale for its evidence gap is now dropped."""
    engine = Engine(site())
    reads = reads_at("zones", 1, 0, 90, every_s=3.0)
    reads.append(TagRead(EPC, "zones", 2, -70.0, T0 + 5_500_000))
    refreshed: list[int] = []
    for read in sorted(reads, key=lambda r: r.time_us):
        step = engine.feed([read], "zones")
        refreshed += [s.last_seen_us for s in step.states if s.epc == EPC and s.present]
    assert len(refreshed) >= 5, refreshed  # the old engine: none after the cross-read
    gaps = [b - a for a, b in itertools.pairwise(refreshed)]
    assert max(gaps) <= 16_000_000, gaps  # zone: refreshed every 15 s
    assert refreshed[-1] >= T0 + 70_000_000


def four_zones() -> EngineConfig:
    """Zones A, B, C and D on one reader's antennas 1-4 (a dense store floor)."""
    zone = NS(offsite=False, biz_step=None, disposition=None, profile=None)
    ants = {k: NS(location=z, read_point=None, rssi_offset_db=0.0) for k, z in enumerate("ABCD", 1)}
    return EngineConfig.build([("floor", ants)], dict.fromkeys("ABCD", zone), {})


def test_a_first_sighting_is_contested_by_every_zone_that_reads_it_not_only_the_last() -> None:
    """A tag put down in A on a dense floor under fading (the first 2.8 s are a tuning
    instance's reads: dense-floor+bursty seed 3). All four zones hear it; A reads it 8 times,
    B 5, C 3 and D 4. The engine keeps one challenger: B took the tentative estimate on a
    level lead, then single reads of C and D held the challenger's place, so A's reads counted
    for nothing and the old engine confirmed B at 2.7 s (and moved the tag to A at 6.8 s: a
    parked tag's false move). Counted against every zone that read it since its first read,
    B's sighting is a close contest until A out-reads it; the arrival is A's, dated from the
    first read."""
    from tests.support import engine_reference

    first = [
        (0.018, "A", -53.0), (0.068, "B", -53.0), (0.334, "A", -59.0), (0.553, "A", -54.0),
        (0.804, "C", -50.0), (0.935, "D", -57.0), (1.059, "B", -49.0), (1.194, "C", -53.0),
        (1.516, "D", -58.0), (1.595, "A", -60.0), (1.631, "D", -52.0), (1.725, "B", -52.0),
        (1.944, "A", -65.0), (1.994, "D", -57.0), (2.065, "A", -57.0), (2.131, "C", -61.0),
        (2.134, "B", -54.0), (2.239, "A", -63.0), (2.524, "A", -64.0), (2.698, "B", -49.0),
        (2.782, "A", -51.0),
    ]  # fmt: skip
    antenna = {z: k for k, z in enumerate("ABCD", 1)}
    reads = [TagRead(EPC, "floor", antenna[z], r, T0 + round(t * 1e6)) for t, z, r in first]
    reads += reads_at("floor", 1, 2.9, 30, rssi=-54, every_s=0.3)
    reads += reads_at("floor", 2, 3.0, 30, rssi=-56, every_s=0.9)
    reads += reads_at("floor", 3, 3.1, 30, rssi=-60, every_s=1.5)
    reads += reads_at("floor", 4, 3.2, 30, rssi=-60, every_s=1.5)
    for make in (Engine, PythonLoopEngine, engine_reference.Engine):
        moves = run(make(four_zones()), reads, 30)
        assert kinds(moves) == [("arrived", None, "A")], make
        assert secs(moves[0]) == 0.018


def _passages(n: int, start_s: float, dwell_s: float, every_s: float = 0.4) -> list[TagRead]:
    """`n` cases through tunnel zone A (reader "zones", antenna 1) 0.5 s apart, each read every
    `every_s` from 0.2 s into its passage of `dwell_s` (or a list: one dwell each, in turn)."""
    reads = []
    for k in range(n):
        epc = f"30743{k:019X}"
        t = start_s + 0.5 * k
        d = 0.2
        while d < dwell_s:
            reads.append(TagRead(epc, "zones", 1, -55.0, T0 + round((t + d) * 1e6)))
            d += every_s
    return reads


def test_a_passage_read_once_or_twice_is_dated_by_the_dwell_learnt_from_the_well_read() -> None:
    """A tunnel (zone A) passes 40 cases, each in the field 2.5 s and read every 0.4 s from
    0.2 s in: spans of 2.0 s plus 1.5 read intervals, a passage lasts 2.6 s there. Then a case
    read once at 70 s, in a burst of misses, and one read twice (69.5 and 70.0 s). Their reads
    cover little of their passage, so each end lies beyond them by half of what they left of
    the 2.6 s: the one read once arrived at 68.7 s and left at 71.3 s; the one read twice left
    at 71.05 s (its arrival was announced at its confirm_s, before its reads were known to have
    ended: dated at its first read). The old engine dated both ends at the reads (the single
    read: arrival and departure at the same instant), 1-2 s off a scorer's truth. A well-read
    case arrives at its first read, as before, and leaves 0.3 s (3/4 of a read interval) after
    its last: at 2.5 s, when it left (was 2.2 s)."""
    from tests.support import engine_reference

    twice = "3074257BF7194E4000008888"
    for make in (Engine, PythonLoopEngine, engine_reference.Engine):
        engine = make(site())
        for _ in range(100):  # A has confirmed 100 sightings and read no foreign tag
            engine.locs[engine._loc_named("A")].sightings += 1
        reads = _passages(40, 0.0, 2.5)
        reads.append(TagRead(EPC, "zones", 1, -60.0, T0 + 70_000_000))
        reads += [TagRead(twice, "zones", 1, -58.0, T0 + round(t * 1e6)) for t in (69.5, 70.0)]
        moves = run(engine, reads, 110)
        once = [(m.type, round(secs(m), 3)) for m in moves if m.epc == EPC]
        assert once == [("arrived", 68.7), ("departed", 71.3)], make
        two = [(m.type, round(secs(m), 3)) for m in moves if m.epc == twice]
        assert two == [("arrived", 69.5), ("departed", 71.05)], make
        first = [round(secs(m), 3) for m in moves if m.epc == "30743" + f"{0:019X}"]
        assert first == [0.2, 2.5], make


def test_where_stays_differ_a_passage_is_dated_at_its_reads() -> None:
    """The same tunnel, but its 40 cases stay 1.5, 2.5, 5 or 10 s in turn: stays that do not
    last alike tell nothing of one another, so the case read twice (69.5, 70.0 s) is dated at
    its reads."""
    from tests.support import engine_reference

    twice = "3074257BF7194E4000008888"
    for make in (Engine, PythonLoopEngine, engine_reference.Engine):
        reads: list[TagRead] = []
        for k, dwell in zip(range(40), itertools.cycle((1.5, 2.5, 5.0, 10.0))):
            reads += [
                TagRead(f"30743{k:019X}", r.reader, r.antenna, r.rssi, r.time_us + 500_000 * k)
                for r in _passages(1, 0.0, dwell)
            ]
        reads += [TagRead(twice, "zones", 1, -58.0, T0 + round(t * 1e6)) for t in (69.5, 70.0)]
        moves = run(make(site()), reads, 110)
        two = [(m.type, round(secs(m), 3)) for m in moves if m.epc == twice]
        assert two == [("arrived", 69.5), ("departed", 70.0)], make


def test_a_case_that_leaves_from_its_new_zone_leading_on_level_though_few_reads_ahead_moved() -> (
    None
):
    """A case read in zone A every 60 ms for a second, carried to B: B reads it six times at
    -49 dB in 1.4 s (a burst of misses), A three times more at -60 dB (leaks), then it leaves
    the field. B's count lead ends at 3, short of the 4 a silent challenger needed, though it
    leads A by 9 dB on six reads: the old engine let the case depart from A, which it had left.
    A challenger still out-reading and leading on level when the tag falls silent has moved."""
    from tests.support import engine_reference

    def at(antenna: int, times: tuple[float, ...], rssi: float) -> list[TagRead]:
        return [TagRead(EPC, "zones", antenna, rssi, T0 + round(t * 1e6)) for t in times]

    reads = reads_at("zones", 1, 0, 1.0, rssi=-52, every_s=0.06)
    reads += at(2, (1.6, 1.9, 2.2, 2.7, 2.9, 3.0), -49.0) + at(1, (2.25, 2.75, 2.8), -60.0)
    for make in (Engine, PythonLoopEngine, engine_reference.Engine):
        moves = run(make(site()), reads, 40)
        assert [(m.type, m.from_, m.to, secs(m)) for m in moves] == [
            ("arrived", None, "A", 0.0),
            ("moved", "A", "B", 1.6),
            ("departed", "B", None, 3.0),
        ], make


def test_the_passages_a_location_watches_for_their_end_are_bounded() -> None:
    """1,000 cases confirmed in zone A within a second, none ended yet: A watches 256 of them
    for their end (they only teach its passage length; a busy site must not pay a byte a tag
    for them), and once they have ended it has learnt from them and watches none."""
    reads = []
    for k in range(1000):
        epc = f"30744{k:019X}"
        reads += [TagRead(epc, "zones", 1, -55.0, T0 + round(t * 1e6)) for t in (0.1, 0.5, 0.9)]
    engine = Engine(site())
    run(engine, reads, 1.5)
    a = engine.locs[engine._loc_named("A")]
    assert len(a.watch) == 256
    run(engine, [], 10.0)
    assert len(a.watch) == 0 and a.passages == 256


def _clean_moves(near: tuple[str, int], far: tuple[str, int], count: int) -> list[TagRead]:
    """`count` other tags, each read at `near` and then moved cleanly to `far`: what teaches
    a location that its tags go there only by moving."""
    reads: list[TagRead] = []
    for k in range(count):
        epc = f"{EPC[:-2]}{k:02X}"
        passing = reads_at(*near, 0, 5) + crossing(near, far, 5 + 0.5 * k, 4)
        reads += [TagRead(epc, r.reader, r.antenna, r.rssi, r.time_us) for r in passing]
    return reads


def _a_crossing_with_a_slow_far_side(
    engine: Engine, learnt: int, waiting: int = 0, reader: str = "dock"
) -> Movement:
    """`learnt` tags go from the reader's antenna 1 to its antenna 2 cleanly first (through
    the dock door, or from zone A to zone B), while `waiting` others stay at antenna 1, antenna
    2 catching each now and then; then one whose antenna 2 reads it every 0.3 s once antenna 1
    has stopped at 25 s: the move's decision."""
    reads = _clean_moves((reader, 1), (reader, 2), learnt)
    for k in range(waiting):
        epc = f"{EPC[:-2]}{0x80 + k:02X}"
        leaks = [reads_at(reader, 2, t, t + 0.2, rssi=-53) for t in (3.0, 8.0, 13.0, 18.0)]
        staying = reads_at(reader, 1, 0, 20) + [r for leak in leaks for r in leak]
        reads += [TagRead(epc, r.reader, r.antenna, r.rssi, r.time_us) for r in staying]
    reads += reads_at(reader, 1, 20, 25) + reads_at(reader, 2, 25, 30, every_s=0.3)
    moves = [m for m in run(engine, reads, 30) if m.epc == EPC]
    if reader == "dock":  # (the yard is offsite: no movement for a tag seen there)
        assert kinds(moves) == [("arrived", "YARD", "DOCK")]
    else:
        assert kinds(moves) == [("arrived", None, "A"), ("moved", "A", "B")]
    return moves[-1]


def test_a_crossing_from_a_side_tags_pass_through_is_decided_once_the_near_side_is_silent() -> None:
    # 20 clean crossings teach the engine that tags leave the yard side only by crossing: then
    # 4 far-side reads more and the near side silent for confirm_s decide (about 26.2 s, once
    # the yard's level has decayed), not 8 reads more and a lead held for confirm_s (27.1 s).
    learnt = _a_crossing_with_a_slow_far_side(Engine(site()), learnt=20)
    assert learnt.observed is not None and learnt.observed.last_seen_us <= T0 + 26_500_000
    unlearnt = _a_crossing_with_a_slow_far_side(Engine(site()), learnt=0)
    assert unlearnt.observed is not None and unlearnt.observed.last_seen_us >= T0 + 27_000_000


def test_a_crossing_from_a_side_where_tags_wait_by_the_door_still_needs_the_full_lead() -> None:
    # The same 20 crossings, but the inside antenna also catches pallets waiting in the yard
    # (challenges that come to nothing): there a crossing's silence may be a bad link, and the
    # count lead of 8 with a timed lead decides, as before.
    engine = Engine(site())
    leaky = _a_crossing_with_a_slow_far_side(engine, learnt=20, waiting=5)
    assert leaky.observed is not None and leaky.observed.last_seen_us >= T0 + 27_000_000
    assert engine.suppressed["outvoted"] + engine.suppressed["single"] > 0


def test_a_move_from_a_zone_tags_pass_through_is_decided_once_the_old_zone_is_silent() -> None:
    # As at a portal: 20 clean moves from A to B teach the engine that tags leave A for B only
    # by moving, and then 4 reads more in B with A silent for confirm_s decide.
    # (The old engine, which learnt this at portal sides only, decided at 27.1 s.)
    learnt = _a_crossing_with_a_slow_far_side(Engine(site()), learnt=20, reader="zones")
    assert learnt.observed is not None and learnt.observed.last_seen_us <= T0 + 26_500_000
    unlearnt = _a_crossing_with_a_slow_far_side(Engine(site()), learnt=0, reader="zones")
    assert unlearnt.observed is not None and unlearnt.observed.last_seen_us >= T0 + 27_000_000
    # Where B also leaks reads of tags that stay in A, a silence in A may be a bad link.
    leaky = _a_crossing_with_a_slow_far_side(Engine(site()), 20, waiting=5, reader="zones")
    assert leaky.observed is not None and leaky.observed.last_seen_us >= T0 + 27_000_000


def test_what_a_location_learns_of_moves_is_per_destination() -> None:
    # 20 pallets go on from the dock to zone A (another reader): that teaches nothing of the
    # yard, where pallets by the door may leak reads. A tag that leaves the dock for the yard
    # still needs the full lead (27.1 s, not the 26.2 s an early decision gives).
    reads = _clean_moves(("dock", 2), ("zones", 1), 20)
    reads += reads_at("dock", 2, 20, 25) + reads_at("dock", 1, 25, 30, every_s=0.3)
    engine = Engine(site())
    moves = [m for m in run(engine, reads, 30) if m.epc == EPC]
    assert kinds(moves) == [("arrived", None, "DOCK"), ("departed", "DOCK", "YARD")]
    dock = engine.locs[engine._loc_named("DOCK")]
    assert dock.taken[engine._loc_named("A")] == 20  # (it did learn the dock's moves to A)
    assert moves[1].observed is not None
    assert moves[1].observed.last_seen_us >= T0 + 27_000_000
