"""REFERENCE COPY of gateway/engine/core.py before the speed work (issue 4), with the rule changes
made since (issue 13: event time per reader, per-tag lateness, read-count leads, first
sightings whose reads ended): the optimised engine must decide exactly as this one
(tests/unit/test_engine_golden.py). Change it only with a rule change of core.py.

The movement engine: batches of TagReads in, true stock movements out. Pure: no I/O, no
threads, no clock of its own (time comes in with the reads and with tick()).

How a read becomes a movement (docs/engine.md has the long form):

1. Reads wait `reorder_window_s` in a buffer and are then taken in reader-time order, so a
   late batch from a slow reader is still placed where it belongs.
2. antenna -> location (+ rssi_offset_db). Unknown antennas and weak reads are suppressed.
3. Each tag has one *current* location estimate with a smoothed RSSI, and at most one
   *challenger*. A challenger wins when its smoothed RSSI beats the current one by the current
   location's offset (full threshold while the tag is still read there, decaying with the
   time since it was last read there: EdgeX's mobility profile), with at least `min_reads`
   reads and a lead held for the new location's `confirm_s`. Reads much weaker than where the
   tag is (cross-reads between a reader's antennas, strays of parked tags near a portal) are
   never evidence.
4. A change of estimate is a movement by the spine's semantics: absent -> on-site = arrived
   (from = the offsite portal side it came through); on-site -> on-site = moved; on-site ->
   offsite = departed at once. Portal sides are locations, so the order in which a tag is seen
   strongest on each side is exactly the sequence of its estimates: seen on one side only, or
   turning back before the other side took the lead, is no crossing.
5. tick(): a present tag unread for its location's departed_after_s departs (to = null);
   an absent tag unread for forget_after_s is dropped.

Per-tag state lives in parallel typed arrays indexed by a slot number (about 60 bytes a tag)
so a million tracked tags fit in ~250 MB with their EPC strings and the index dict.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from gateway.engine.config import EngineConfig, LocationInfo, Place
from gateway.engine.sources import Source, Sources
from gateway.model import Movement, Observed, TagRead, TagState

NONE = -1  # "no location" in the location arrays
NEVER = -(1 << 62)  # "no time" in the time arrays
NO_EVIDENCE = 1 << 62  # "nothing undecided" in the evidence-start array (sorts after any time)
_NAN = float("nan")
_RECHECK_US = 60_000_000  # a present tag at a location that never departs is looked at every minute
_time_of = attrgetter("time_us")
# (Ported from core.py with the read-round rule, see core._ROUNDS.)
_ROUNDS = 4.0
_IV_WEIGHT = 0.25
_IV_CAP_NEVER_DEPARTS_US = 120_000_000
# A challenger must out-read the current location by this many reads (a CUSUM of its reads less
# the current location's) before it takes the tag; then it need only be within the profile's
# floor_db of the current level.
_OUTREAD = 8
# A first sighting is a close contest until it has this many more reads than its challenger.
_FIRST_OUTREAD = 4
# Passages (issue 13): a location's passage length is an exponential average (weight 1/16) of
# the span of well-read passages plus 1.5 read intervals, with its mean deviation; used once 16
# were learnt and while the deviation is at most a third of the mean; 256 watched a location.
_DWELL_WEIGHT = 1 / 16
_DWELL_LEARNT = 16
_DWELL_SPREAD = 1 / 3
_WATCHED = 256

SUPPRESSION_REASONS = (
    "unknown_antenna",  # the (reader, antenna) is not in the config
    "weak",  # below min_rssi_dbm after the antenna's rssi_offset_db
    "cross_read",  # much weaker than where the tag is, read by a reader that also reads there
    "stray",  # much weaker than where the tag is, from another reader
    "portal_stray",  # as stray, at a portal antenna (a parked tag near a door)
    "single",  # evidence for a location that never reached min_reads
    "outvoted",  # evidence for a location that never beat the current one
    "late",  # older than the reorder window already judged: kept only as a sighting
    "stale",  # older than the decision that placed the tag (re-fed after a restart)
)


@dataclass(slots=True)
class Step:
    """What one feed/tick produced: movements, and the tag states they changed (to persist)."""

    movements: list[Movement] = field(default_factory=list)
    states: list[TagState] = field(default_factory=list)


def _trusts_one_read(loc: Loc) -> bool:
    """100 first sightings confirmed here, and at most one read of a tag that was elsewhere
    per 100 of them: a tag read here once, then nowhere, was here."""
    return loc.sightings >= 100 and loc.foreign_reads * 100 <= loc.sightings


class Loc:
    """Runtime view of one location: its config plus its profile in microseconds."""

    __slots__ = (
        "id",
        "name",
        "offsite",
        "info",
        "alpha",
        "confirm_us",
        "departed_after_us",
        "forget_after_us",
        "threshold",
        "holdoff_us",
        "decay_per_us",
        "floor",
        "readers",
        "gap_us",
        "refresh_us",
        "sightings",
        "foreign_reads",
        "crossings",
        "leaks",
        "dwell",
        "dwell_dev",
        "passages",
        "watched",
    )

    def __init__(self, lid: int, info: LocationInfo, readers: frozenset[str]) -> None:
        p = info.profile
        self.id = lid
        self.name = info.name
        self.offsite = info.offsite
        self.info = info
        self.alpha = 2.0 / (p.window_reads + 1)
        self.confirm_us = int(p.confirm_s * 1e6)
        self.departed_after_us = 0 if p.departed_after_s is None else int(p.departed_after_s * 1e6)
        self.forget_after_us = int(p.forget_after_s * 1e6)
        self.threshold = p.threshold_db
        self.holdoff_us = int(p.holdoff_s * 1e6)
        self.decay_per_us = p.decay_db_per_s / 1e6
        self.floor = p.floor_db
        self.readers = readers
        self.gap_us = self.confirm_us  # raised to the engine's evidence_gap_s by Engine._apply
        # A present tag's persisted state is refreshed when its last_seen_us is this old, so a
        # restart never judges its absence from a stale time (never, for "never departs").
        self.refresh_us = self.departed_after_us // 2 if self.departed_after_us else 1 << 62
        self.sightings = 0  # first sightings confirmed here
        self.foreign_reads = 0  # reads here of tags confirmed elsewhere
        self.crossings: Counter[int] = Counter()  # tags here taken, by the location that won
        self.leaks: Counter[int] = Counter()  # ...and its challenges that came to nothing
        self.dwell = 0.0  # how long a passage lasts here (µs), and its mean deviation
        self.dwell_dev = 0.0
        self.passages = 0
        self.watched: deque[tuple[int, str, int]] = deque()  # (slot, EPC, start), _WATCHED at most

    def beyond_reads(self, span: int) -> int:
        """Each end of a passage read over `span` here: this far beyond its outermost read."""
        if self.passages < _DWELL_LEARNT:
            return 0
        if self.dwell_dev > _DWELL_SPREAD * self.dwell or span >= self.dwell:
            return 0
        return int((self.dwell - span) / 2)

    def fade(self, since_us: float) -> float:
        """How much a level measured here `since_us` ago has faded: a location's claim on a
        tag weakens, after its holdoff, at the decay rate of the offset."""
        if since_us <= self.holdoff_us:
            return 0.0
        return self.decay_per_us * (since_us - self.holdoff_us)

    def offset(self, since_us: float) -> float:
        """How much stronger a challenger must be, `since_us` after the last read here."""
        if since_us <= self.holdoff_us:
            return self.threshold
        off = self.threshold - self.decay_per_us * (since_us - self.holdoff_us)
        return off if off > self.floor else self.floor


def make_movement(
    kind: str,
    epc: str,
    old: Loc | None,
    new: Loc | None,
    time_us: int,
    source: str,
    via: str | None,
    observed: Observed | None,
) -> Movement:
    """A movement with its business meaning. Arrivals and moves carry the target location's
    biz_step/disposition; a departure carries the offsite target's when it has them (a
    trailer: shipping/in_transit), else those of the location it left (a ship door)."""
    biz = new.info if new is not None else None
    if kind == "departed" and (biz is None or (biz.biz_step is None and biz.disposition is None)):
        biz = old.info if old is not None else None
    return Movement(
        type=kind,  # type: ignore[arg-type]
        epc=epc,
        from_=old.name if old is not None else None,
        to=new.name if new is not None else None,
        time_us=time_us,
        source=source,
        via=via,
        biz_step=biz.biz_step if biz else None,
        disposition=biz.disposition if biz else None,
        observed=observed,
    )


def transition_kind(old: Loc | None, new: Loc | None) -> str | None:
    """The spine's movement semantics for a change of location estimate (None: no movement)."""
    was_present = old is not None and not old.offsite
    if new is None or new.offsite:
        return "departed" if was_present else None
    if was_present:
        return "moved" if old is not new else None
    return "arrived"


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.suppressed: dict[str, int] = dict.fromkeys(SUPPRESSION_REASONS, 0)
        self.movement_counts: dict[str, int] = {"arrived": 0, "moved": 0, "departed": 0}
        self.evicted: dict[str, int] = {"present": 0, "absent": 0}
        self.locs: list[Loc] = []  # append-only: ids stay valid across reloads
        self._loc_ids: dict[str, int] = {}
        # per tag, by slot
        self._index: dict[str, int] = {}
        self._epc: list[str | None] = []
        self._free: list[int] = []
        # Per tag not yet placed: reads per location since its first read, and their level.
        self._heard: dict[int, dict[int, int]] = {}
        self._heard_level: dict[int, dict[int, float]] = {}
        # Per tag placed by its first sighting and never contested since: that sighting's first
        # read (a passage's start).
        self._stay_start: dict[int, int] = {}
        self._loc = array("h")  # current location estimate (NONE: unknown)
        self._tentative = array("b")  # 1: the estimate is not confirmed yet (nothing announced)
        self._n_cur = array("H")  # reads behind a tentative estimate
        self._t_since = array("q")  # since when the estimate holds (confirmed: the decision)
        self._s_cur = array("f")  # smoothed RSSI at the current location (NaN: unknown)
        self._t_cur = array("q")  # last read at the current location
        self._iv = array("f")  # usual interval between reads at the current location
        self._cand = array("h")  # challenger location (NONE: none)
        self._s_cand = array("f")
        self._t_cand = array("q")  # last read at the challenger
        self._n_cand = array("H")  # reads of the challenger (or of an unconfirmed estimate)
        self._t_lead = array("q")  # since when the challenger leads (NEVER: it does not)
        self._k_lead = array("b")  # challenger reads less current-location reads (_OUTREAD)
        self._t_k0 = array("q")  # the challenger read that last took _k_lead up from zero
        self._peak = array("f")
        self._seen = array("q")  # last read anywhere
        self._due = array("q")  # wheel key of the tag's live absence check (0: none)
        # Earliest reader time of a read behind the tag's undecided evidence (a tentative
        # estimate, a challenger that leads or has too few reads yet); NO_EVIDENCE: none.
        # resume_floor_us() is the minimum over tags (a heap of (time, slot), lazily cleaned).
        self._ev = array("q")
        self._ev_heap: list[tuple[int, int]] = []
        self._n_ev = 0
        # absence checks: wheel key (tick-sized slots of reader time) -> slots, plus a heap of keys
        self._wheel: dict[int, list[int]] = {}
        self._wheel_keys: list[int] = []
        # reorder buffer; _pending[:_p_scanned] holds no read older than _p_min
        self._pending: list[TagRead] = []
        self._p_scanned = 0
        self._p_min = NO_EVIDENCE
        self._pending_max = NEVER
        self._judged_to = NEVER  # every read at or before this time has been taken
        self.sources = Sources(0, 0)  # event time per reader: the engine's own (sources.py)
        # After a restore, absence is not judged until the re-fed reads have caught up with the
        # restart (the first tick's horizon), or no reader delivered for the longest
        # departed_after_s: until then a tag's newest reads may still be on their way.
        self._catching_up = False
        self._resume_at: int | None = None
        self._apply(config)

    # --- config -------------------------------------------------------------------------------

    def _apply(self, config: EngineConfig) -> None:
        self.config = config
        s = config.settings
        self._gap_us = int(s.evidence_gap_s * 1e6)
        readers_of: dict[str, set[str]] = {}
        for (reader, _), place in config.places.items():
            readers_of.setdefault(place.location, set()).add(reader)
        for name, info in config.locations.items():
            lid = self._loc_ids.get(name)
            loc = Loc(lid if lid is not None else len(self.locs), info, frozenset())
            loc.readers = frozenset(readers_of.get(name, ()))
            if lid is None:
                self._loc_ids[name] = loc.id
                self.locs.append(loc)
            else:
                old = self.locs[lid]  # what was learnt there stays
                loc.sightings, loc.foreign_reads = old.sightings, old.foreign_reads
                loc.crossings, loc.leaks = old.crossings, old.leaks
                loc.dwell, loc.dwell_dev = old.dwell, old.dwell_dev
                loc.passages, loc.watched = old.passages, old.watched
                self.locs[lid] = loc
        for loc in self.locs:
            # Evidence expires when its location has not read the tag for this long; a slow
            # profile (a shelf) keeps it at least for its confirmation time.
            loc.gap_us = max(self._gap_us, loc.confirm_us)
        self._alpha = [loc.alpha for loc in self.locs]
        self._threshold = [loc.threshold for loc in self.locs]
        self._refresh = [loc.refresh_us for loc in self.locs]
        self._longest_us = max((loc.departed_after_us for loc in self.locs), default=0)
        places: dict[str, dict[int, tuple[int, float, Place]]] = {}
        for (reader, antenna), place in config.places.items():
            lid = self._loc_ids[place.location]
            places.setdefault(reader, {})[antenna] = (lid, place.rssi_offset_db, place)
        self._places = places
        self._min_rssi = s.min_rssi_dbm
        self._min_reads = s.min_reads
        self._max_tags = s.max_tags
        self._window_us = int(s.reorder_window_s * 1e6)
        self.sources.idle_us = self._window_us
        self.sources.hold_us = int(s.silent_reader_hold_s * 1e6)
        self._tick_us = max(1000, int(s.tick_s * 1e6))
        self._xr_margin = s.cross_read_margin_db
        self._xr_window_us = int(s.cross_read_window_s * 1e6)
        self._default_forget_us = max(
            (loc.forget_after_us for loc in self.locs), default=3_600_000_000
        )

    def _loc_named(self, name: str) -> int:
        """The id of a location, registering one the config no longer has (a restored state, a
        device's move) as a plain zone so its tags are kept, not forgotten."""
        lid = self._loc_ids.get(name)
        if lid is None:
            from gateway.engine.config import DEFAULT_PROFILES

            info = LocationInfo(name, False, None, None, DEFAULT_PROFILES["zone"])
            lid = len(self.locs)
            self._loc_ids[name] = lid
            loc = Loc(lid, info, frozenset())
            loc.gap_us = max(self._gap_us, loc.confirm_us)
            self.locs.append(loc)
            self._alpha.append(loc.alpha)
            self._threshold.append(loc.threshold)
            self._refresh.append(loc.refresh_us)
        return lid

    @classmethod
    def restore(cls, states: Iterable[TagState], config: EngineConfig) -> Engine:
        """An engine that knows where tags were before a restart (the outbox's tag states).

        Present tags come back at their location, absent ones at the offsite location they were
        last seen at (or nowhere), each with the time of the decision that placed it: re-fed
        reads from before that time cannot undo it (suppressed as `stale`), so a replay from
        resume_floor_us() neither re-announces a persisted decision nor moves a tag back.
        Absent tags older than the longest forget_after_s (before the newest state) are not
        restored: they would have been forgotten anyway."""
        engine = cls(config)
        engine._catching_up = True
        states = list(states)
        newest = max((s.last_seen_us for s in states), default=0)
        forget = engine._default_forget_us
        for s in states:
            if not s.present and newest - s.last_seen_us >= forget:
                continue
            lid = NONE if s.location is None else engine._loc_named(s.location)
            if s.present and (lid == NONE or engine.locs[lid].offsite):
                continue  # not a state this engine wrote: nothing to hold on to
            i = engine._index.get(s.epc)
            if i is None:
                i = engine._slot(s.epc, s.last_seen_us)
            engine._loc[i] = lid
            engine._t_since[i] = s.last_seen_us
            engine._s_cur[i] = _NAN  # unknown: the first read after the restart sets it
            engine._t_cur[i] = s.last_seen_us
            engine._iv[i] = 0.0
            engine._seen[i] = s.last_seen_us
            engine._due[i] = 0
            engine._schedule(i, s.last_seen_us)
        return engine

    def reload(self, config: EngineConfig) -> None:
        """New locations/portals/profiles; tag states are kept (location ids never change)."""
        self._apply(config)

    # --- queries ------------------------------------------------------------------------------

    def state_of(self, epc: str) -> TagState | None:
        i = self._index.get(epc)
        if i is None:
            return None
        return self._state(i)

    def _state(self, i: int) -> TagState:
        """present + location; an absent tag keeps the offsite location it was confirmed at
        (the `from` of its next arrival), else None."""
        epc = self._epc[i]
        assert epc is not None
        cur = self._loc[i]
        if cur == NONE or self._tentative[i]:
            return TagState(epc, False, None, self._seen[i])
        loc = self.locs[cur]
        return TagState(epc, not loc.offsite, loc.name, self._seen[i])

    def _present(self, i: int) -> bool:
        cur = self._loc[i]
        return cur != NONE and not self.locs[cur].offsite and not self._tentative[i]

    @property
    def tracked(self) -> int:
        return len(self._index)

    @property
    def pending_reads(self) -> int:
        return len(self._pending)

    def resume_floor_us(self) -> int | None:
        """The earliest reader time of any read whose effect is not yet decided (waiting in the
        reorder window, or behind a tentative estimate or a challenger that may still win), or
        None. A source may commit its cursor past a read only when the read is older than this:
        after a crash, reads re-fed from here rebuild exactly the evidence that was lost."""
        floor = self._pending_floor()
        heap = self._ev_heap
        ev = self._ev
        while heap:
            t, i = heap[0]
            if ev[i] != t:
                heapq.heappop(heap)  # superseded or decided
            elif self._evidence_dead(i):
                heapq.heappop(heap)  # expired: the tag's next read starts afresh
                self._clear_evidence(i)
            else:
                return t if floor is None or t < floor else floor
        return floor

    def _pending_floor(self) -> int | None:
        pending = self._pending
        if not pending:
            return None
        lo = self._p_min
        for k in range(self._p_scanned, len(pending)):
            t = pending[k].time_us
            if t < lo:
                lo = t
        self._p_min = lo
        self._p_scanned = len(pending)
        return lo

    def _evidence_dead(self, i: int) -> bool:
        """No read still to come can add to this tag's evidence: its locations have not read
        it for their evidence gap, measured up to the reads already judged."""
        last = NEVER
        gap = self._gap_us
        cur = self._loc[i]
        if cur != NONE and self._tentative[i]:
            last = self._t_cur[i]
            gap = self.locs[cur].gap_us
        c = self._cand[i]
        if c != NONE:
            if self._t_cand[i] > last:
                last = self._t_cand[i]
            gap = max(gap, self.locs[c].gap_us)
        return last == NEVER or self._judged_to - last >= gap

    def _set_evidence(self, i: int, t: int) -> None:
        """Undecided evidence of tag i starts at read time t (no later than what it holds)."""
        ev = self._ev[i]
        if t >= ev:
            return
        if ev == NO_EVIDENCE:
            self._n_ev += 1
        self._ev[i] = t
        heapq.heappush(self._ev_heap, (t, i))

    def _clear_evidence(self, i: int) -> None:
        if self._ev[i] == NO_EVIDENCE:
            return
        self._ev[i] = NO_EVIDENCE
        self._n_ev -= 1
        heap = self._ev_heap
        if len(heap) > 4 * self._n_ev + 4096:  # mostly stale entries: rebuild (amortised O(1))
            ev = self._ev
            self._ev_heap = [(t, j) for t, j in heap if ev[j] == t]
            heapq.heapify(self._ev_heap)

    # --- reads --------------------------------------------------------------------------------

    def feed(
        self, reads: Sequence[TagRead], source: str | None = None, now_us: int | None = None
    ) -> Step:
        """Take a batch; judge every read that every active reader has passed (in time
        order; see sources.py). `source`: the one reader every read of the batch is from (a
        driver's batch), else each read's reader is taken. `now_us`: the gateway clock at
        arrival, when known (each reader's delivery latency is learnt from it)."""
        step = Step()
        if not reads:
            return step
        self._pending.extend(reads)
        top = NEVER
        for name, batch in _by_source(reads, source):
            newest = self._delivered(name, batch, now_us)
            if newest > top:
                top = newest
        if top > self._pending_max:
            self._pending_max = top
        horizon = self.sources.read_horizon(now_us)
        if horizon is not None and horizon > self._judged_to:
            self._flush(horizon, step)
        return step

    def _delivered(self, name: str, reads: Sequence[TagRead], now_us: int | None) -> int:
        """Note a source's batch (its event time; reads behind what was already judged are
        counted: they are judged tag by tag). Returns the batch's newest time."""
        oldest = min(map(_time_of, reads))
        newest = max(map(_time_of, reads))
        src = self.sources.delivered(name, oldest, newest, now_us)
        judged = self._judged_to
        if oldest <= judged:
            src.behind += sum(1 for read in reads if read.time_us <= judged)
        return newest

    def progress(self, source: str, time_us: int) -> None:
        """`source` is alive and will send nothing older than `time_us` (a KEEPALIVE, an
        empty report): it holds neither reads nor absence judgments back."""
        self.sources.progress(source, time_us)

    def source_down(self, source: str) -> None:
        """`source`'s connection is lost: absence is not judged past its last reads until it
        is back and has delivered what it buffered meanwhile (or for silent_reader_hold_s)."""
        self.sources.lost(source)

    def source_retired(self, source: str) -> None:
        """`source` will send nothing more (a replay that finished): it holds nothing back."""
        self.sources.retire(source)

    def source(self, name: str) -> Source:
        return self.sources.get(name)

    def flush(self) -> Step:
        """Judge every buffered read now (shutdown, end of a replay, tests): no later read can
        reorder them. Undecided evidence stays undecided (resume_floor_us() still covers it)."""
        step = Step()
        if self._pending:
            self._flush(self._pending_max, step)
        return step

    def _flush(self, cutoff: int, step: Step) -> None:
        pending = self._pending
        if not pending:
            return
        pending.sort(key=_time_of)
        k = bisect_right(pending, cutoff, key=_time_of)
        if k == 0:
            self._p_min = pending[0].time_us
            self._p_scanned = len(pending)
            self._judged_to = max(self._judged_to, cutoff)  # (fixed in both: see core._flush)
            return
        if k == len(pending):
            ready = pending
            self._pending = []
            self._p_min = NO_EVIDENCE
            self._p_scanned = 0
        else:
            ready = pending[:k]
            del pending[:k]
            self._p_min = pending[0].time_us
            self._p_scanned = len(pending)
        self._judged_to = max(self._judged_to, cutoff)
        self._judge(ready, step)

    def _judge(self, reads: list[TagRead], step: Step) -> None:
        """The hot loop: kept flat, with locals, and allocation-free for the common read (a tag
        read again where it already is, confirmed)."""
        suppressed = self.suppressed
        places = self._places
        index = self._index
        loc_a = self._loc
        tentative = self._tentative
        s_cur = self._s_cur
        t_cur = self._t_cur
        cand_a = self._cand
        s_cand = self._s_cand
        t_cand = self._t_cand
        t_lead = self._t_lead
        seen = self._seen
        alpha = self._alpha
        locs = self.locs
        min_rssi = self._min_rssi
        margin = self._xr_margin
        xr_window = self._xr_window_us
        challenge = self._challenge
        tentative_read = self._tentative_read
        refresh_state = self._refresh_state
        t_since = self._t_since
        refresh = self._refresh
        last_reader: str | None = None
        antennas: dict[int, tuple[int, float, Place]] | None = None
        unknown = weak = late = cross = 0
        for read in reads:
            reader = read.reader
            if reader is not last_reader:
                antennas = places.get(reader)
                last_reader = reader
            place = antennas.get(read.antenna) if antennas is not None else None
            if place is None:
                unknown += 1
                continue
            lid = place[0]
            rssi = read.rssi + place[1]
            t = read.time_us
            i = index.get(read.epc)
            if rssi < min_rssi:
                weak += 1
                if i is not None and t > seen[i]:
                    seen[i] = t
                continue
            if i is None:
                i = self._slot(read.epc, t)
                prev_seen = t
            else:
                prev_seen = seen[i]
                if t > prev_seen:
                    seen[i] = t
            if t < prev_seen:  # a newer read of this tag was already judged
                if lid == loc_a[i] and tentative[i]:  # still evidence of being there
                    self._late_tentative_read(i, lid, place[2], rssi, t, read, step)
                    continue
                late += 1
                continue
            if lid != loc_a[i]:
                challenge(i, lid, place[2], rssi, t, read, step)
                continue
            if tentative[i]:
                tentative_read(i, lid, place[2], rssi, t, read, step)
                continue
            c = cand_a[i]
            holds = True
            if c != NONE and t - t_cand[i] > locs[c].gap_us:
                self._drop_evidence(i, "outvoted")  # stale: no evidence any more
                c = NONE
            if c != NONE and self._k_lead[i] > 0:
                self._k_lead[i] -= 1  # read here: the challenger's count lead shrinks
            if c != NONE and t - t_cand[i] <= xr_window:
                # Read far more strongly elsewhere right now (a stale challenger fades): a
                # cross-read of where it was, not a sign it is still there. It counts toward
                # this location's level (every read does: a level fed only by the luckier
                # reads would be biased), but does not reset the clock of the decaying offset.
                if rssi < s_cand[i] - locs[c].fade(t - t_cand[i]) - margin:
                    cross += 1
                    holds = False
            s = s_cur[i]
            s = rssi if s != s else s + alpha[lid] * (rssi - s)
            s_cur[i] = s
            if holds and t > t_cur[i]:
                self._read_here(i, lid, t)
            if c != NONE and t_lead[i] != NEVER:
                off = locs[lid].offset(self._silence(i, lid, t))
                if self._k_lead[i] >= _OUTREAD:
                    off = locs[lid].floor
                if s_cand[i] <= s + off:
                    t_lead[i] = NEVER  # read strongly where it is: the challenger lost its lead
            elif t - t_since[i] >= refresh[lid]:
                refresh_state(i, t, step)
        if unknown:
            suppressed["unknown_antenna"] += unknown
        if weak:
            suppressed["weak"] += weak
        if late:
            suppressed["late"] += late
        if cross:
            suppressed["cross_read"] += cross

    def _refresh_state(self, i: int, t: int, step: Step) -> None:
        """Persist a fresh last_seen_us for a tag that stays where it is (nothing pending)."""
        if self._ev[i] != NO_EVIDENCE or not self._present(i):
            return
        self._t_since[i] = t  # the persisted state now dates from here (see _challenge)
        step.states.append(self._state(i))

    def _tentative_read(
        self, i: int, lid: int, place: Place, rssi: float, t: int, read: TagRead, step: Step
    ) -> None:
        """A read where the tag tentatively is (first seen, nothing announced yet)."""
        loc = self.locs[lid]
        if t - self._t_cur[i] > loc.gap_us:
            # The tentative estimate went stale: a single read long ago is no evidence.
            self._forget_estimate(i)
            self._first_sighting(i, lid, place, rssi, t, read, step)
            return
        if i in self._heard:  # (heard elsewhere too: else n_cur and s_cur say it all)
            self._hear(i, lid, rssi)
        c = self._cand[i]
        if c != NONE and self._k_lead[i] > 0:
            self._k_lead[i] -= 1
        if c != NONE and t - self._t_cand[i] <= self._xr_window_us:
            faded = self._s_cand[i] - self.locs[c].fade(t - self._t_cand[i])
            if rssi < faded - self._xr_margin:
                self.suppressed["cross_read"] += 1  # a leak: not evidence of being here
                return
        s = self._s_cur[i]
        s = rssi if s != s else s + loc.alpha * (rssi - s)
        self._s_cur[i] = s
        if t > self._t_cur[i]:
            self._read_here(i, lid, t)
        if c != NONE and self._t_lead[i] != NEVER and self._s_cand[i] <= s:
            self._t_lead[i] = NEVER
        n = self._n_cur[i]
        if n < 65535:
            self._n_cur[i] = n + 1
        self._tentative_progress(i, t, read.reader, place, step)

    def _late_tentative_read(
        self, i: int, lid: int, place: Place, rssi: float, t: int, read: TagRead, step: Step
    ) -> None:
        """An older read where the tag tentatively is: evidence, not a reordering."""
        if i in self._heard:
            self._hear(i, lid, rssi)
        if self._n_cur[i] < 65535:
            self._n_cur[i] += 1
        if t < self._t_since[i]:
            self._t_since[i] = t
            self._set_evidence(i, t)
        self._tentative_progress(i, self._seen[i], read.reader, place, step)

    def _first_sighting(
        self, i: int, lid: int, place: Place, rssi: float, t: int, read: TagRead, step: Step
    ) -> None:
        """A tentative estimate, confirmed by more evidence (see _tentative_progress)."""
        self._tentative_at(i, lid, rssi, t, 1, t)
        self._forget_heard(i)
        self._set_evidence(i, t)
        self._tentative_progress(i, t, read.reader, place, step)

    def _forget_estimate(self, i: int) -> None:
        """Drop an unconfirmed estimate and any challenger to it (counted)."""
        self._drop_current_evidence(i)
        if self._cand[i] != NONE:
            self._drop_evidence(i, "outvoted")
        self._loc[i] = NONE
        self._tentative[i] = 0
        self._n_cur[i] = 0
        self._forget_heard(i)
        self._clear_evidence(i)

    def _challenge(
        self, i: int, lid: int, place: Place, rssi: float, t: int, read: TagRead, step: Step
    ) -> None:
        """A read somewhere other than the tag's current location estimate."""
        if t < self._t_since[i]:
            # Older than the decision that placed the tag (reads re-fed after a restart, or a
            # device's move): it cannot undo that decision.
            self.suppressed["stale"] += 1
            return
        cur = self._loc[i]
        if cur == NONE:
            self._first_sighting(i, lid, place, rssi, t, read, step)
            return
        is_tentative = self._tentative[i]
        if not is_tentative:
            self.locs[lid].foreign_reads += 1
        if is_tentative and t - self._t_cur[i] > self.locs[cur].gap_us:
            self._forget_estimate(i)  # stale, never confirmed: this read is a first sighting
            self._first_sighting(i, lid, place, rssi, t, read, step)
            return
        if is_tentative:
            if i not in self._heard:  # the first read elsewhere: the estimate's own reads so far
                here = self._s_cur[i]
                self._heard[i] = {cur: self._n_cur[i]}
                self._heard_level[i] = {cur: here if here == here else rssi}
            self._hear(i, lid, rssi)
        s_here = self._s_cur[i]
        if s_here != s_here:  # restored after a restart: assume it was here just as strongly
            s_here = rssi
            self._s_cur[i] = rssi
            self._t_cur[i] = t
        elif (
            not is_tentative
            and rssi < s_here - self._xr_margin
            and t - self._t_cur[i] <= self._xr_window_us
        ):
            # Far weaker than where the tag is (confirmed: a tentative level proves nothing
            # yet, it may be a lucky cross-read itself): never evidence. When this location is
            # already a challenger, the read still counts toward its level (else only its
            # luckiest reads would, and a parked tag's strays would add up to a move).
            c = self._cand[i]
            if c == lid and t - self._t_cand[i] <= self.locs[c].gap_us:
                sc = self._s_cand[i]
                self._s_cand[i] = sc + self.locs[c].alpha * (rssi - sc)
                self._count_challenger_read(i, t)  # the count lead counts every read there
            self._suppress_stray(place, read.reader, cur)
            return
        new = self.locs[lid]
        c = self._cand[i]
        if (
            c != NONE
            and c != lid
            and t - self._t_cand[i] <= self.locs[c].gap_us
            and (is_tentative or self._k_lead[i] > 0)
        ):
            # Another location is gathering evidence: this read replaces it only when it beats
            # it as a challenger beats a current location, and only once that location has
            # gone quiet (else cross-reads between two neighbours, or one outlier, would keep
            # resetting a true move's evidence).
            cl = self.locs[c]
            fresh = t - self._t_cand[i] <= cl.holdoff_us and self._n_cand[i] >= self._min_reads
            if fresh or rssi <= self._s_cand[i] + cl.threshold:
                if rssi > self._s_cand[i]:
                    # Not enough to take over, but stronger: the challenger is not the clear
                    # winner it must be while its lead is timed.
                    self._t_lead[i] = NEVER
                self._suppress_stray(place, read.reader, c)
                return
        if c != lid or t - self._t_cand[i] > new.gap_us:
            if c != NONE:
                self._drop_evidence(i, "outvoted")
            self._stay_start.pop(i, None)  # contested: no clean passage
            self._cand[i] = lid
            self._s_cand[i] = rssi
            self._n_cand[i] = 1
            self._k_lead[i] = 1
            self._t_k0[i] = t
            self._peak[i] = rssi
            self._t_lead[i] = NEVER
            s = rssi
            self._set_evidence(i, t)
        else:
            s = self._s_cand[i]
            s += new.alpha * (rssi - s)
            self._s_cand[i] = s
            self._n_cand[i] = min(self._n_cand[i] + 1, 65535)
            self._count_challenger_read(i, t)
            if rssi > self._peak[i]:
                self._peak[i] = rssi
        self._t_cand[i] = t
        old = self.locs[cur]
        # A tentative estimate yields to a stronger location; a confirmed one holds by the offset
        # of its profile, decaying with the time since it last read the tag.
        # (Tentatively, the stronger location must also have been read at least as often: a
        # tag is read far more often where it is than by a neighbour's leaking antenna.)
        n = self._n_cand[i]
        outread = self._k_lead[i] >= _OUTREAD
        if is_tentative:
            # (Fewer reads may still take it when clearly stronger: the profile's threshold
            # over min_reads reads; cross-reads are a neighbour's weaker echoes.)
            losing = not self._out_reads_tentative(i, n, s, s_here, old.threshold) and (
                s <= s_here
                or (n < self._n_cur[i] and (n < self._min_reads or s - s_here < old.threshold))
            )
        else:
            off = old.floor if outread else old.offset(self._silence(i, cur, t))
            losing = s <= s_here + off
        if losing:
            self._t_lead[i] = NEVER
            if not is_tentative and n >= self._min_reads:
                # Settled for now: nothing is about to be decided from these reads, so a
                # restart need not replay them (the challenger rebuilds from newer reads).
                self._clear_evidence(i)
            return
        if n < self._min_reads:
            return  # (one lucky read does not start the lead's clock: min_reads reads do)
        lead = self._t_lead[i]
        if lead == NEVER:
            self._t_lead[i] = lead = t
            self._set_evidence(i, t)
        if is_tentative:
            self._drop_current_evidence(i)
            self._cand[i] = NONE
            self._t_lead[i] = NEVER
            self._tentative_at(i, lid, s, t, n, lead)
            self._tentative_progress(i, t, read.reader, place, step)
            return
        early = self._near_side_let_go(i, cur, lid, t)
        if not outread and not early:
            return
        if not early and t - lead < self._confirm_us(i, cur, new):
            self._book(i, (lead + int(self._confirm_us(i, cur, new))) // self._tick_us + 1)
            return
        self._win(i, s, t, read.reader, _via(place), step)

    def _near_side_let_go(self, i: int, cur: int, lid: int, t: int) -> bool:
        """A move to a location that took the old one's tags at least 20 times and
        challenged them in vain at most once per 10 of them: 4 reads more there, and the old
        location silent for the confirmation time, decide it."""
        near = self.locs[cur]
        if near.crossings[lid] < 20 or near.leaks[lid] * 10 > near.crossings[lid]:
            return False
        silent = t - self._t_cur[i]
        return self._k_lead[i] >= _FIRST_OUTREAD and silent >= self._confirm_us(
            i, cur, self.locs[lid]
        )

    def _out_reads_tentative(
        self, i: int, n: int, s: float, s_here: float, threshold: float
    ) -> bool:
        """The challenger to a tentative estimate has _FIRST_OUTREAD more reads than it and is
        within the threshold of its level (the close contest of _confirm_tentative, from the
        challenger's side): a tag is read far more often where it is."""
        return n - self._n_cur[i] >= _FIRST_OUTREAD and s_here - s < threshold

    def _count_challenger_read(self, i: int, t: int) -> None:
        if self._k_lead[i] == 0:
            self._t_k0[i] = t
        self._k_lead[i] = min(self._k_lead[i] + 1, 127)

    def _win(self, i: int, s: float, t: int, source: str, via: str | None, step: Step) -> None:
        """The challenger wins: dated when it took the lead, or (into a zone) began to
        out-read the old location if that came first; `t` (the deciding read) is
        observed.last_seen."""
        old = self.locs[self._loc[i]]
        lid = self._cand[i]
        old.crossings[lid] += 1
        n = self._n_cand[i]
        lead = self._t_lead[i]
        portal_sides = {p.location for p in self.config.places.values() if p.portal is not None}
        if self.locs[lid].name not in portal_sides:  # a zone: from the count lead's start
            lead = min(lead, self._t_k0[i])
        observed = Observed(n, float(self._peak[i]), lead, t)
        self._loc[i] = lid
        self._s_cur[i] = s
        self._t_cur[i] = t
        self._iv[i] = 0.0
        self._n_cur[i] = min(n, 65535)
        self._t_since[i] = t
        self._cand[i] = NONE
        self._n_cand[i] = 0
        self._t_lead[i] = NEVER
        self._k_lead[i] = 0
        self._stay_start.pop(i, None)
        self._clear_evidence(i)
        self._emit(i, old, self.locs[lid], lead, source, via, observed, step)

    def _read_here(self, i: int, lid: int, t: int) -> None:
        loc = self.locs[lid]
        cap = (loc.departed_after_us or _IV_CAP_NEVER_DEPARTS_US) / (2 * _ROUNDS)
        gap = min(t - self._t_cur[i], cap)
        v = self._iv[i]
        self._iv[i] = gap if v == 0.0 else v + _IV_WEIGHT * (gap - v)  # the first: as it is
        self._t_cur[i] = t

    def _silence(self, i: int, cur: int, t: int) -> float:
        """How long the current location has not read the tag, less what its usual read
        rounds excuse beyond the profile's holdoff: the time Loc.offset decays by. Nothing is
        excused once the challenger has read the tag as many times as the rounds excused: a
        tag read that often elsewhere and not here has moved (a crossing, not a cross-read)."""
        since = t - self._t_cur[i]
        v = self._iv[i]
        holdoff = self.locs[cur].holdoff_us
        extra = _ROUNDS * v - holdoff
        if extra > 0.0:
            return since - extra if self._n_cand[i] < _ROUNDS else since
        if v > 0.0:
            # Read in quick rounds here (a conveyor): silence weighs more. _ROUNDS missed
            # rounds count as the profile's whole holdoff; the tag's own rhythm sets the clock.
            return since * (holdoff / (_ROUNDS * v))
        return since

    def _confirm_us(self, i: int, cur: int, new: Loc) -> float:
        """How long a challenger's lead must hold: the new location's confirm_s, shortened in
        the same measure as _silence lengthens silence for a tag read in quick rounds where
        it was (a case on a conveyor dwells too briefly for a shelf's patience)."""
        v = self._iv[i]
        holdoff = self.locs[cur].holdoff_us
        if v > 0.0 and _ROUNDS * v < holdoff:
            return new.confirm_us * (_ROUNDS * v / holdoff)
        return new.confirm_us

    def _tentative_at(self, i: int, lid: int, s: float, t: int, n: int, since: int) -> None:
        """Take `lid` as the tag's tentative estimate: where it seems to be, not yet announced."""
        self._loc[i] = lid
        self._tentative[i] = 1
        self._s_cur[i] = s
        self._t_cur[i] = t
        self._iv[i] = 0.0
        self._n_cur[i] = n
        self._t_since[i] = since
        self._peak[i] = s

    def _tentative_progress(self, i: int, t: int, source: str, place: Place, step: Step) -> None:
        """A tentative estimate is confirmed by min_reads reads over its location's confirm_s
        with no other location leading. Offsite ones too: where a tag was seen offsite is the
        `from` of its arrival, so a stray read there must not count."""
        if self._n_cur[i] < self._min_reads:
            cur = self.locs[self._loc[i]]
            if _trusts_one_read(cur):
                self._book(i, (t + max(cur.confirm_us, cur.gap_us)) // self._tick_us + 2)
            return
        loc = self.locs[self._loc[i]]
        if t - self._t_since[i] < loc.confirm_us:
            self._book_confirmation(i)  # read no more, it has held as well: _check_absence
            return
        self._confirm_tentative(i, t, source, _via(place), step)

    def _confirm_tentative(
        self, i: int, t: int, source: str, via: str | None, step: Step, ended: bool = False
    ) -> None:
        n = self._n_cur[i]
        loc = self.locs[self._loc[i]]
        since = self._t_since[i]
        if self._cand[i] != NONE:
            if self._t_lead[i] != NEVER or self._s_cand[i] > self._s_cur[i]:
                return  # another location is stronger right now: not conclusive yet
            if (
                t - self._t_cand[i] <= self.locs[self._cand[i]].gap_us
                and n - self._n_cand[i] < _FIRST_OUTREAD
                and (
                    self._s_cur[i] - self._s_cand[i] < loc.threshold
                    or n < min(self._n_cand[i], _OUTREAD)
                )
            ):
                return  # a close contest
            self._drop_evidence(i, "outvoted")  # it lost: the decision leaves nothing pending
        portal_sides = {p.location for p in self.config.places.values() if p.portal is not None}
        if loc.name not in portal_sides:
            if not self._heard_settles(i, t, step, ended):
                return
            since = min(since, self._ev[i])  # a zone: from the sighting's first read
        loc.sightings += 1
        self._tentative[i] = 0
        self._t_since[i] = t
        self._forget_heard(i)
        self._clear_evidence(i)
        # Dated by the first read of the evidence that confirmed it: the tag was there then;
        # a passage whose reads ended, as much earlier as its reads left of the learnt dwell.
        date = since
        if ended:
            date = since - loc.beyond_reads(self._seen[i] - since)
        if not loc.offsite:
            epc = self._epc[i]
            assert epc is not None
            self._stay_start[i] = since
            if len(loc.watched) < _WATCHED:  # (a full watch takes no more: they only teach)
                loc.watched.append((i, epc, since))
        observed = Observed(n, float(self._s_cur[i]), since, t)
        self._emit(i, None, loc, date, source, via, observed, step)

    def _hear(self, i: int, lid: int, rssi: float) -> None:
        counts = self._heard.setdefault(i, {})
        levels = self._heard_level.setdefault(i, {})
        if lid in counts:
            counts[lid] += 1
            levels[lid] += self.locs[lid].alpha * (rssi - levels[lid])
        else:
            counts[lid] = 1
            levels[lid] = rssi

    def _forget_heard(self, i: int) -> None:
        self._heard.pop(i, None)
        self._heard_level.pop(i, None)

    def _heard_settles(self, i: int, t: int, step: Step, ended: bool) -> bool:
        """A first sighting in a zone against every other zone that heard the tag since its
        first read: confirmed only when over each by _FIRST_OUTREAD reads, or by the threshold
        on as many reads (or _OUTREAD). One that out-reads it by _FIRST_OUTREAD within the
        threshold takes it; a close contest waits while the tag is read, and once its reads
        ended goes to the one with more reads (ties: where it is)."""
        cur = self._loc[i]
        counts, levels = self._heard.get(i, {}), self._heard_level.get(i, {})
        if cur not in counts:
            return True
        mine, level = counts[cur], levels[cur]
        threshold = self.locs[cur].threshold
        taker, contested = NONE, NONE
        for lid in counts:
            if lid == cur:
                continue
            more = counts[lid] - mine
            if more >= _FIRST_OUTREAD and level - levels[lid] < threshold:
                taker = lid
                break
            settled = -more >= _FIRST_OUTREAD or (
                level - levels[lid] >= threshold and mine >= min(counts[lid], _OUTREAD)
            )
            if not settled and (contested == NONE or counts[lid] > counts[contested]):
                contested = lid
        if taker == NONE and contested == NONE:
            return True
        if taker == NONE and not ended:
            self._book(i, (self._seen[i] + self.locs[cur].gap_us) // self._tick_us + 2)
            return False
        if taker == NONE:
            if counts[contested] <= mine:
                return True
            taker = contested
        if self._cand[i] != NONE:
            self._drop_evidence(i, "outvoted")
        self._drop_current_evidence(i)
        self._tentative_at(i, taker, levels[taker], t, min(counts[taker], 65535), self._t_since[i])
        if not ended:
            self._book(i, t // self._tick_us + 1)
            return False
        source, via = self._sighted(taker)
        self._confirm_tentative(i, t, source, via, step, ended)
        return False

    def _book_confirmation(self, i: int) -> None:
        """Look at a tentative estimate again when it has been held for its confirm_s."""
        key = (self._t_since[i] + self.locs[self._loc[i]].confirm_us) // self._tick_us + 1
        self._book(i, key)

    def _drop_current_evidence(self, i: int) -> None:
        n = self._n_cur[i]
        if n:
            self.suppressed["single" if n < self._min_reads else "outvoted"] += n

    def _suppress_stray(self, place: Place, reader: str, cur: int) -> None:
        if reader in self.locs[cur].readers:
            self.suppressed["cross_read"] += 1
        elif place.portal is not None:
            self.suppressed["portal_stray"] += 1
        else:
            self.suppressed["stray"] += 1

    def _drop_evidence(self, i: int, reason: str) -> None:
        """Drop the challenger (counted); a confirmed tag then holds nothing undecided."""
        n = self._n_cand[i]
        if n:
            self.suppressed["single" if n < self._min_reads else reason] += n
        cur, c = self._loc[i], self._cand[i]
        if not self._tentative[i] and NONE not in (cur, c):
            self.locs[cur].leaks[c] += 1
        self._cand[i] = NONE
        self._n_cand[i] = 0
        self._t_lead[i] = NEVER
        self._k_lead[i] = 0
        if not self._tentative[i]:
            self._clear_evidence(i)

    def _emit(
        self,
        i: int,
        old: Loc | None,
        new: Loc | None,
        time_us: int,
        source: str,
        via: str | None,
        observed: Observed | None,
        step: Step,
    ) -> None:
        """A decision: its movement (if the spine's semantics make one) and the tag's new state
        (always: an offsite sighting is the `from` of a later arrival, and a restart must know
        it)."""
        kind = transition_kind(old, new)
        epc = self._epc[i]
        assert epc is not None
        if kind is not None:
            step.movements.append(
                make_movement(kind, epc, old, new, time_us, source, via, observed)
            )
            self.movement_counts[kind] += 1
        step.states.append(self._state(i))
        self._schedule(i, self._seen[i])

    # --- slots --------------------------------------------------------------------------------

    def _slot(self, epc: str, t: int) -> int:
        """A fresh slot for a tag seen for the first time (evicting the stalest when full)."""
        if len(self._index) >= self._max_tags:
            self._evict(max(1, self._max_tags // 100))
        if self._free:
            i = self._free.pop()
            self._epc[i] = epc
            self._loc[i] = NONE
            self._tentative[i] = 0
            self._n_cur[i] = 0
            self._t_since[i] = NEVER
            self._s_cur[i] = _NAN
            self._t_cur[i] = NEVER
            self._iv[i] = 0.0
            self._cand[i] = NONE
            self._s_cand[i] = _NAN
            self._t_cand[i] = NEVER
            self._n_cand[i] = 0
            self._t_lead[i] = NEVER
            self._k_lead[i] = 0
            self._t_k0[i] = NEVER
            self._peak[i] = _NAN
            self._seen[i] = t
            self._due[i] = 0
            self._ev[i] = NO_EVIDENCE
        else:
            i = len(self._epc)
            self._epc.append(epc)
            self._loc.append(NONE)
            self._tentative.append(0)
            self._n_cur.append(0)
            self._t_since.append(NEVER)
            self._s_cur.append(_NAN)
            self._t_cur.append(NEVER)
            self._iv.append(0.0)
            self._cand.append(NONE)
            self._s_cand.append(_NAN)
            self._t_cand.append(NEVER)
            self._n_cand.append(0)
            self._t_lead.append(NEVER)
            self._k_lead.append(0)
            self._t_k0.append(NEVER)
            self._peak.append(_NAN)
            self._seen.append(t)
            self._due.append(0)
            self._ev.append(NO_EVIDENCE)
        self._index[epc] = i
        self._schedule(i, t)
        return i

    def _release(self, i: int) -> None:
        epc = self._epc[i]
        if epc is not None:
            del self._index[epc]
        self._forget_heard(i)
        self._stay_start.pop(i, None)
        self._clear_evidence(i)
        self._epc[i] = None
        self._due[i] = 0
        self._loc[i] = NONE
        self._cand[i] = NONE
        self._free.append(i)

    def _evict(self, n: int) -> None:
        """Drop the `n` least recently seen tags (counted): the cap keeps memory bounded."""
        seen = self._seen
        for i in heapq.nsmallest(n, self._index.values(), key=seen.__getitem__):
            self.evicted["present" if self._present(i) else "absent"] += 1
            self._release(i)

    # --- absence ------------------------------------------------------------------------------

    def _schedule(self, i: int, deadline_us: int) -> None:
        """Make sure the tag is looked at no later than `deadline_us` (plus its limit)."""
        cur = self._loc[i]
        if cur != NONE and self._present(i):
            after = self.locs[cur].departed_after_us or _RECHECK_US
        elif cur != NONE:
            after = self.locs[cur].forget_after_us
        else:
            after = self._default_forget_us
        self._book(i, (deadline_us + after) // self._tick_us + 1)

    def _sighted(self, lid: int) -> tuple[str, str | None]:
        """The one reader and read point of a location, else the engine and none."""
        places = self.config.places.items()
        readers = {(p.location, reader, _via(p)) for (reader, _), p in places}
        here = [(r, v) for loc, r, v in readers if loc == self.locs[lid].name]
        return here[0] if len(here) == 1 else ("engine", None)

    def _book(self, i: int, key: int) -> None:
        due = self._due[i]
        if due and due <= key:
            return  # an earlier check is already booked; it will re-book
        self._due[i] = key
        bucket = self._wheel.get(key)
        if bucket is None:
            self._wheel[key] = bucket = []
            heapq.heappush(self._wheel_keys, key)
        bucket.append(i)

    def tick(self, now_us: int) -> Step:
        """At `now_us` (the gateway clock): buffered reads of readers that went quiet are
        judged, then departures by absence and forgetting up to the absence horizon (the clock
        less the reorder window, held back by silent readers: sources.py)."""
        step = Step()
        if self._pending:
            cutoff = self.sources.read_horizon(now_us)
            if cutoff is not None:
                self._flush(cutoff, step)
        horizon = self.sources.absence_horizon(now_us)
        if self._catching_up and self._still_catching_up(horizon):
            return step
        for loc in self.locs:
            self._passages_ended(loc, horizon)
        now_key = horizon // self._tick_us
        keys = self._wheel_keys
        while keys and keys[0] <= now_key:
            key = heapq.heappop(keys)
            for i in self._wheel.pop(key):
                if self._due[i] == key:
                    self._due[i] = 0
                    self._check_absence(i, horizon, step)
        return step

    def _passages_ended(self, loc: Loc, horizon: int) -> None:
        """The watched first sightings at `loc`, oldest first, until one is still read: each
        that ended (unread for the gap) uncontested, confirmed while still read, teaches the
        passage length (reads' span + 1.5 read intervals); one still read at departed_after_s (or a
        minute) is a stay; one contested, moved, gone or forgotten is no passage."""
        while loc.watched:
            i, epc, start = loc.watched[0]
            clean = (
                self._epc[i] == epc
                and self._stay_start.get(i) == start
                and self._loc[i] == loc.id
                and self._cand[i] == NONE
            )
            if clean:
                seen = self._seen[i]
                if horizon - seen <= loc.gap_us:
                    if horizon - start <= (loc.departed_after_us or _RECHECK_US):
                        return
                elif self._t_since[i] <= seen and self._iv[i] > 0.0:
                    sample = seen - start + 1.5 * self._iv[i]
                    if loc.passages == 0:
                        loc.dwell = sample
                    else:
                        loc.dwell_dev += _DWELL_WEIGHT * (abs(sample - loc.dwell) - loc.dwell_dev)
                        loc.dwell += _DWELL_WEIGHT * (sample - loc.dwell)
                    loc.passages += 1
            loc.watched.popleft()

    def _still_catching_up(self, horizon: int) -> bool:
        if self._resume_at is None:
            self._resume_at = horizon
        if self._judged_to >= self._resume_at or horizon - self._resume_at >= self._longest_us:
            self._catching_up = False
        return self._catching_up

    def _move_held(self, i: int, cur: int, c: int, horizon: int) -> bool:
        """Out-read by _OUTREAD with a lead that held confirm_s; or, once the tag is read no
        more (silent past the gap), out-read by _FIRST_OUTREAD, or by 2 while leading on
        level, for confirm_s."""
        confirm = self._confirm_us(i, cur, self.locs[c])
        k, lead = self._k_lead[i], self._t_lead[i]
        if k >= _OUTREAD and lead != NEVER and horizon - lead >= confirm:
            return True
        if horizon - self._seen[i] <= self.locs[c].gap_us:
            return False
        if k < _FIRST_OUTREAD and (lead == NEVER or k < 2):
            return False
        return horizon - (self._t_k0[i] if lead == NEVER else lead) >= confirm

    def _check_absence(self, i: int, horizon: int, step: Step) -> None:
        seen = self._seen[i]
        cur = self._loc[i]
        c = self._cand[i]
        if c != NONE and not self._tentative[i] and self._move_held(i, cur, c, horizon):
            # A move whose reads ended before its confirmation time: nothing undid it.
            source, via = self._sighted(c)
            if self._t_lead[i] == NEVER:
                self._t_lead[i] = self._t_k0[i]
            self._win(i, self._s_cand[i], self._t_cand[i], source, via, step)
            return
        if (
            cur != NONE
            and self._tentative[i]
            and (
                self._n_cur[i] >= self._min_reads
                or (_trusts_one_read(self.locs[cur]) and horizon - seen > self.locs[cur].gap_us)
            )
            and horizon - self._t_since[i] >= self.locs[cur].confirm_us
        ):
            # A first sighting whose reads ended before its confirm_s: nothing contradicted it.
            source, via = self._sighted(cur)
            ended = horizon - seen > self.locs[cur].gap_us
            self._confirm_tentative(i, horizon, source, via, step, ended)
            if not self._tentative[i]:
                return
        if cur != NONE and self._present(i):
            loc = self.locs[cur]
            after = loc.departed_after_us
            if after and horizon - seen >= after:
                start = self._stay_start.pop(i, None)
                self._drop_evidence(i, "outvoted")
                self._loc[i] = NONE
                self._t_since[i] = seen
                left = seen
                if start is not None:
                    left = seen + loc.beyond_reads(seen - start)
                self._emit(i, loc, None, left, "engine", None, None, step)
                return
            self._schedule(i, seen if after else horizon)
            return
        forget = self.locs[cur].forget_after_us if cur != NONE else self._default_forget_us
        if horizon - seen >= forget:
            if self._cand[i] != NONE:
                self._drop_evidence(i, "outvoted")
            if self._tentative[i]:
                self._drop_current_evidence(i)  # never confirmed: counted as single/outvoted
            self._release(i)
        else:
            self._schedule(i, seen)

    # --- devices ------------------------------------------------------------------------------

    def apply(self, movement: Movement) -> Step:
        """A movement reported by a device (robot, handheld booking) updates the tag's state."""
        step = Step()
        if movement.epc is None:
            return step
        t = movement.time_us
        i = self._index.get(movement.epc)
        if i is None:
            i = self._slot(movement.epc, t)
        elif t > self._seen[i]:
            self._seen[i] = t
        if self._cand[i] != NONE:
            self._drop_evidence(i, "outvoted")
        self._stay_start.pop(i, None)
        self._tentative[i] = 0
        self._forget_heard(i)
        self._clear_evidence(i)
        self._t_since[i] = t
        if movement.type == "departed" or movement.to is None:
            self._loc[i] = NONE if movement.to is None else self._loc_named(movement.to)
        else:
            self._loc[i] = self._loc_named(movement.to)
            self._s_cur[i] = _NAN
            self._t_cur[i] = t
            self._iv[i] = 0.0
        step.states.append(self._state(i))
        self._schedule(i, self._seen[i])
        return step


def _via(place: Place) -> str:
    return place.portal or place.read_point


def _by_source(
    reads: Sequence[TagRead], source: str | None
) -> Iterable[tuple[str, Sequence[TagRead]]]:
    """The batch split by reader (one part when the caller named its one source)."""
    if source is not None:
        return ((source, reads),)
    parts: dict[str, list[TagRead]] = {}
    for read in reads:
        part = parts.get(read.reader)
        if part is None:
            parts[read.reader] = part = []
        part.append(read)
    return parts.items()
