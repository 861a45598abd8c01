"""Event time per reader (gateway/engine/sources.py, clock.py): readers that reconnect with a
backlog, run skewed clocks, sit on slow links or read nothing. Each case is delivered the way
the gateway receives it: per reader, by arrival time, reader stamps put on the gateway clock
by a ReaderClock, KEEPALIVEs as progress(), a lost connection as source_down(). Each failed on
the engine before event time per reader (one global window, advanced by the newest read)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace as NS

from gateway.engine import Engine, EngineConfig
from gateway.engine.clock import ReaderClock
from gateway.model import Movement, TagRead

T0 = 1_764_000_000_000_000
TICK_US = 250_000
STEP_US = 50_000


def two_zone_site() -> EngineConfig:
    """Reader r1 covers zone P, reader r2 zone Q (the default zone profile)."""

    def ant(location: str) -> NS:
        return NS(location=location, read_point=None, rssi_offset_db=0.0)

    def loc() -> NS:
        return NS(offsite=False, biz_step=None, disposition=None, profile=None)

    return EngineConfig.build(
        [("r1", {1: ant("P")}), ("r2", {1: ant("Q")})], {"P": loc(), "Q": loc()}, {}
    )


@dataclass
class Reader:
    """A simulated reader: its reads (true time), its clock offset, its link delay, and
    outages during which it buffers and after which it sends the backlog at once."""

    name: str
    reads: list[tuple[int, str]] = field(default_factory=list)  # (true µs, epc)
    clock_ahead_us: int = 0
    delay_us: int = 2_000
    outages: list[tuple[int, int]] = field(default_factory=list)  # (from, to) true µs

    def arrival(self, t: int) -> int:
        for start, end in self.outages:
            if start <= t < end:
                return end + self.delay_us  # buffered, sent when it is back
        return t + self.delay_us

    def down_at(self, now: int) -> bool:
        return any(start <= now < end for start, end in self.outages)


def play(engine: Engine, readers: list[Reader], end_us: int) -> list[Movement]:
    """Deliver every reader's reads at their arrival, ticking the gateway clock."""
    clocks = {r.name: ReaderClock() for r in readers}
    queued = {r.name: sorted((r.arrival(t), t, epc) for t, epc in r.reads) for r in readers}
    moves: list[Movement] = []
    now = T0
    while now < end_us:
        now += STEP_US
        for r in readers:
            q = queued[r.name]
            k = 0
            while k < len(q) and q[k][0] <= now:
                k += 1
            batch = [
                TagRead(epc, r.name, 1, -50.0, clocks[r.name].correct(t + r.clock_ahead_us, a))
                for a, t, epc in q[:k]
            ]
            del q[:k]
            if batch:
                moves += engine.feed(batch, r.name).movements
            if r.down_at(now):
                engine.source_down(r.name)
            elif now % TICK_US == 0:
                engine.progress(r.name, now - r.delay_us)  # its KEEPALIVE
        if now % TICK_US == 0:
            moves += engine.tick(now).movements
    return moves


def present(epc: str, start_s: float, for_s: float, every_s: float = 0.4) -> list[tuple[int, str]]:
    n = int(for_s / every_s) + 1
    return [(T0 + round((start_s + k * every_s) * 1e6), epc) for k in range(n)]


def test_a_backlog_after_a_reconnect_loses_no_epc() -> None:
    # Two readers, 1,200 EPCs each, every EPC present 2.5 s (7 reads); each reader is away
    # twice for a few seconds (r2 a little after r1), buffering, and sends its backlog when it
    # is back: behind what the other reader's reads have already had judged.
    readers = [Reader("r1"), Reader("r2")]
    for n, r in enumerate(readers):
        for k in range(1200):
            r.reads += present(f"{n:02X}{k:022X}", 0.025 * k, 2.5)
        r.outages = [
            (T0 + (6_000_000 + n * 2_000_000), T0 + (10_000_000 + n * 2_000_000)),
            (T0 + (16_000_000 + n * 1_000_000), T0 + (19_000_000 + n * 1_000_000)),
        ]
    engine = Engine(two_zone_site())
    moves = play(engine, readers, T0 + 80_000_000)
    arrived = Counter(m.epc for m in moves if m.type == "arrived")
    assert len(arrived) == 2400 and set(arrived.values()) == {1}
    assert not [m for m in moves if m.type == "moved"]
    departed = Counter(m.epc for m in moves if m.type == "departed")
    assert len(departed) == 2400 and set(departed.values()) == {1}
    assert engine.suppressed["late"] == 0
    # Each backlog came behind the other reader's progress, and was judged all the same.
    assert engine.source("r1").behind > 500 and engine.source("r2").behind > 500


def test_skewed_clocks_and_a_slow_link_keep_every_move() -> None:
    # The pick reader's clock runs 2 s ahead, the pack reader's reports arrive 1.2 s late;
    # 96 totes dwell 4 s at pick, then 4 s at pack.
    pick = Reader("r1", clock_ahead_us=2_000_000)
    pack = Reader("r2", delay_us=1_200_000)
    for k in range(96):
        epc = f"AA{k:022X}"
        start = 0.5 * k
        pick.reads += present(epc, start, 4.0, every_s=0.2)
        pack.reads += present(epc, start + 4.2, 4.0, every_s=0.2)
    engine = Engine(two_zone_site())
    moves = play(engine, [pick, pack], T0 + 120_000_000)
    kinds = Counter((m.type, m.from_, m.to) for m in moves)
    assert kinds[("arrived", None, "P")] == 96
    assert kinds[("moved", "P", "Q")] == 96
    assert kinds[("departed", "Q", None)] == 96
    assert sum(kinds.values()) == 3 * 96
    by_epc = {m.epc: m for m in moves if m.type == "moved"}
    for k in range(96):  # dated by reader time on the gateway clock, not by arrival
        move = by_epc[f"AA{k:022X}"]
        truth = T0 + round((0.5 * k + 4.2) * 1e6)
        # 2 s of decision on the reader's clock; put on arrival time it would be 3.2 s.
        assert truth <= move.time_us <= truth + 2_000_000


def test_an_idle_reader_holds_nobody_back_and_a_lost_one_holds_departures() -> None:
    engine = Engine(two_zone_site())
    epc = "BB" * 12
    reads = [TagRead(epc, "r1", 1, -50.0, T0 + k * 100_000) for k in range(20)]
    engine.progress("r2", T0)  # r2 is connected and reads nothing: KEEPALIVEs only
    moves = engine.feed(reads, "r1").movements
    assert [(m.type, m.to) for m in moves] == [("arrived", "P")]  # judged at once
    # (A new reader's disorder is assumed to be reorder_window_s until its batches show
    # less: its newest 0.5 s of reads wait.)
    assert engine.pending_reads <= 5
    # r1 loses its connection: its tag is not judged absent while what it buffered may come.
    engine.source_down("r1")
    last = reads[-1].time_us
    for s in range(1, 100):
        now = last + s * 1_000_000
        engine.progress("r2", now)
        assert not engine.tick(now).movements
    # r1 is back: its backlog shows the tag stayed 40 s more, then left: departed after that.
    back = [TagRead(epc, "r1", 1, -50.0, last + k * 1_000_000) for k in range(1, 41)]
    engine.feed(back, "r1")
    now = last + 100_000_000
    engine.progress("r1", now)
    moves = engine.tick(now).movements
    assert [(m.type, m.from_, m.time_us) for m in moves] == [("departed", "P", back[-1].time_us)]


def test_a_reader_lost_for_good_stops_holding_departures_after_the_hold_limit() -> None:
    engine = Engine(two_zone_site())
    epc = "CC" * 12
    engine.feed([TagRead(epc, "r1", 1, -50.0, T0 + k * 100_000) for k in range(20)], "r1")
    engine.source_down("r1")
    hold_s = engine.config.settings.silent_reader_hold_s
    departed_at = None
    for s in range(1, int(hold_s) + 40):
        moves = engine.tick(T0 + s * 1_000_000).movements
        if moves:
            departed_at = s
            break
    assert departed_at is not None and hold_s <= departed_at <= hold_s + 2
    assert engine.source("r1").released == 1


def test_reader_clock_estimates_offset_keeps_backlog_times_and_follows_a_step() -> None:
    clock = ReaderClock(max_step_us=5_000_000)
    arrival = T0
    ahead = 2_000_000
    assert clock.correct(arrival + ahead - 3_000, arrival) == arrival
    # A backlog read 60 s old keeps its time (on the gateway clock).
    old = arrival + ahead - 60_000_000
    assert clock.correct(old, arrival + 1_000) == old - ahead + 3_000 + 1  # (aged 1 µs)
    # The reader's clock steps back by 20 s (NTP): after a steady window the estimate follows.
    t = arrival
    for _ in range(120):
        t += 100_000
        got = clock.correct(t + ahead - 20_000_000 - 3_000, t)
    assert got == t
    assert clock.offset_us == -ahead + 20_000_000 + 3_000
