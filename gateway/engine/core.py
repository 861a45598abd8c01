"""The movement engine: batches of TagReads in, true stock movements out. Pure: no I/O, no
threads, no clock of its own (time comes in with the reads and with tick()).

How a read becomes a movement (docs/engine.md has the long form):

1. Reads wait in a buffer until every active reader has passed their time (event time per
   reader, sources.py), then are taken in reader-time order. A reader that fell behind (a
   backlog after a reconnect) has its reads judged when they come, tag by tag: a read is
   late only for a tag that already has a newer read judged.
2. antenna -> location (+ rssi_offset_db). Unknown antennas and weak reads are suppressed.
3. Each tag has one *current* location estimate with a smoothed RSSI, and at most one
   *challenger*. A challenger wins when its smoothed RSSI beats the current one by the current
   location's offset (full threshold while the tag is still read there, decaying with the
   time since it was last read there: EdgeX's mobility profile; "time" counted in the tag's
   own read rounds there, see _ROUNDS), with at least `min_reads`
   reads and a lead held for the new location's `confirm_s`. Reads much weaker than where the
   tag is (cross-reads between a reader's antennas, strays of parked tags near a portal) are
   never evidence.
4. A change of estimate is a movement by the spine's semantics, dated when the evidence shows
   it happened (a first sighting's first read, a challenger's taking the lead; the read that
   decided it is observed.last_seen): absent -> on-site = arrived
   (from = the offsite portal side it came through); on-site -> on-site = moved; on-site ->
   offsite = departed at once. Portal sides are locations, so the order in which a tag is seen
   strongest on each side is exactly the sequence of its estimates: seen on one side only, or
   turning back before the other side took the lead, is no crossing.
5. tick(): a present tag unread for its location's departed_after_s departs (to = null);
   an absent tag unread for forget_after_s is dropped.

Per-tag state lives in parallel typed arrays indexed by a slot number (about 90 bytes a tag)
so a million tracked tags fit in ~240 MB with their EPC strings and the index dict. The hot
loop over those arrays (Engine._judge_python) has a compiled copy, _hotloop.c, used wherever it
was built (Engine.compiled_loop); both decide identically.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import ClassVar

from gateway.engine.config import EngineConfig, LocationInfo, Place
from gateway.engine.sources import Source, Sources
from gateway.model import Movement, Observed, TagRead, TagState

try:  # the hot loop, compiled at install time when a C compiler is there (pyproject.toml)
    from gateway.engine import _hotloop
except ImportError:  # pragma: no cover - the Python loop decides alike, only slower
    _hotloop = None  # type: ignore[assignment]

NONE = -1  # "no location" in the location arrays
NEVER = -(1 << 62)  # "no time" in the time arrays
NO_EVIDENCE = 1 << 62  # "nothing undecided" in the evidence-start array (sorts after any time)
_NAN = float("nan")
_RECHECK_US = 60_000_000  # a present tag at a location that never departs is looked at every minute
_time_of = attrgetter("time_us")
# Silence at a location is judged in the tag's own read rounds there: its claim on the tag keeps
# the full threshold for at least _ROUNDS of the tag's usual intervals between reads (an
# exponential average, weight _IV_WEIGHT), so a tag a zone reader sees every few seconds is not
# taken by a neighbour's cross-reads whenever one round happens to miss it. The interval is
# capped so a long absence cannot make a location cling to a tag past half its departure time.
_ROUNDS = 4.0
_IV_WEIGHT = 0.25
_IV_CAP_NEVER_DEPARTS_US = 120_000_000
# A tag is read far more often where it is than by a neighbour's leaking antenna, while the
# levels of two antennas can swap for seconds (fading, antenna gains, a tag's orientation). So a
# challenger must also out-read the tag's current location: its reads less the current
# location's reads, counted from when that difference was last zero (a one-sided CUSUM of the
# read counts; _k_lead), must reach _OUTREAD before it can take the tag, and once it has, its
# level need only be within the profile's floor_db of the current one (the offset of a location
# long silent; the default lets it be 6 dB weaker), not beat it. A parked tag whose
# neighbour takes a share q of the two antennas' reads of it gets there by chance with a
# probability of about (q / (1 - q)) ** _OUTREAD per excursion: 1e-3 for q = 0.3, a dense store
# floor's 25 % cross-reads against a 60 % read rate. (8 on the tuning set: 6 left twice the
# parked false moves, 10 missed more fast-conveyor moves; docs/engine.md.)
_OUTREAD = 8
# A first sighting is a close contest until its location has this many more reads than the
# location contesting it, or the profile's threshold over it: the first reads of a tag come from
# every antenna that hears it.
_FIRST_OUTREAD = 4
# A single read confirms a first sighting only where the location has confirmed this many and
# read (almost) no tag that was elsewhere: see Engine._single_read_trusted.
_TRUST_SIGHTINGS = 100
# A move from one location to another (a portal crossing, a zone move) is decided early
# (Engine._let_go) only where the new location has taken the old one's tags _TRUST_CROSSINGS
# times and challenged them in vain at most once per _CROSSINGS_PER_LEAK of them: tags go from
# there to there only by moving. Where tags wait (by a dock door, on a shelf beside the next
# zone), the new location leaks reads of them as strong as a move's (a bursty link can silence
# the old one for seconds), and only _OUTREAD and a timed lead tell the two apart. Learnt per
# pair: a dock's pallets go on to staging, and that says nothing of the yard's leaks.
_TRUST_CROSSINGS = 20
_CROSSINGS_PER_LEAK = 10
# A passage (a tag that arrives by its first sighting and whose reads end, nothing contesting
# it: a case through a tunnel at belt speed) is dated by how long passages last where it was,
# learnt from the well-read ones (Loc.learn_dwell): a case read once, or in a burst of misses,
# was there before its first read and after its last. Only where passages last alike (mean
# deviation at most _DWELL_SPREAD of the mean, over at least _DWELL_LEARNT of them): a zone's
# stays tell nothing of one another. (A tunnel's passages of one length show a deviation of
# 0.13-0.30 of the mean from the reads' randomness alone, about six reads a passage; stays of
# 1.5 to 10 s, 0.6.) At most _WATCHED_PASSAGES a location are watched for their end at once: a
# sample, since they only teach (the ones watched are kept until they end, newer ones wait for
# room; 256 a location is ~0.3 byte a tag at 1 M tags, and a tunnel passing 100 cases a second
# still teaches about 40 a second).
_DWELL_WEIGHT = 1 / 16
_DWELL_LEARNT = 16
_DWELL_SPREAD = 1 / 3
_WATCHED_PASSAGES = 256

if _hotloop is not None:
    _hotloop.setup(NONE, NEVER, NO_EVIDENCE, _ROUNDS, _IV_WEIGHT, _OUTREAD)

# What the hot loop counts itself, in the order it returns the counts.
_HOT_LOOP_COUNTS = ("unknown_antenna", "weak", "late", "cross_read")

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
        "taken",
        "leaked",
        "dwell_us",
        "dwell_dev_us",
        "passages",
        "watch",
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
        # Learnt: first sightings confirmed here, and reads here of tags confirmed elsewhere
        # (cross-reads, strays, a neighbour's leaks): see Engine._single_read_trusted.
        self.sightings = 0
        self.foreign_reads = 0
        # Learnt, per location that challenged tags here: the challenges it won (the tag
        # went there) and those dropped (its leaks of tags that stayed): see Engine._let_go.
        self.taken: dict[int, int] = {}
        self.leaked: dict[int, int] = {}
        # Learnt: how long a passage lasts here, an exponential average and its mean deviation
        # (see _DWELL_WEIGHT); and the first sightings confirmed here whose end is awaited,
        # (slot, EPC, first read) (Engine._learn_dwells).
        self.dwell_us = 0.0
        self.dwell_dev_us = 0.0
        self.passages = 0
        self.watch: deque[tuple[int, str, int]] = deque()

    def learn_dwell(self, dwell_us: float) -> None:
        """One more passage, which lasted about `dwell_us` (Engine._learn_dwells)."""
        if self.passages:
            self.dwell_dev_us += _DWELL_WEIGHT * (abs(dwell_us - self.dwell_us) - self.dwell_dev_us)
            self.dwell_us += _DWELL_WEIGHT * (dwell_us - self.dwell_us)
        else:
            self.dwell_us = dwell_us
        self.passages += 1

    def unread_end_us(self, span_us: int) -> int:
        """How far each end of a passage whose reads here spanned `span_us` likely lies beyond
        its outermost read: half of what its reads left of the dwell learnt here (0 where
        passages do not last alike, or before enough of them were learnt)."""
        d = self.dwell_us
        if self.passages < _DWELL_LEARNT or self.dwell_dev_us > _DWELL_SPREAD * d or span_us >= d:
            return 0
        return int((d - span_us) / 2)

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


_new = object.__new__
_set_epc, _set_present, _set_location, _set_last_seen = (
    TagState.__dict__[name].__set__ for name in ("epc", "present", "location", "last_seen_us")
)


def tag_state(epc: str, present: bool, location: str | None, last_seen_us: int) -> TagState:
    """TagState(epc, present, location, last_seen_us), twice as fast: a frozen dataclass's
    __init__ sets each field through object.__setattr__; this fills its slots directly. (At 1 M
    tracked tags nearly every read refreshes a state, so this is on the hot path.)"""
    state = _new(TagState)
    _set_epc(state, epc)
    _set_present(state, present)
    _set_location(state, location)
    _set_last_seen(state, last_seen_us)
    return state


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
    # Judge reads with the compiled copy of _judge_python (gateway/engine/_hotloop.c) when it
    # was built; a subclass may turn it off (the tests run both loops).
    compiled_loop: ClassVar[bool] = _hotloop is not None

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
        # A tag not yet placed: its reads per location since its first read, [count, level]
        # (see _tally_contest); only tags with a tentative estimate have one.
        self._tally: dict[int, dict[int, list[float]]] = {}
        self._loc = array("h")  # current location estimate (NONE: unknown)
        self._tentative = array("b")  # 1: the estimate is not confirmed yet (nothing announced)
        self._n_cur = array("H")  # reads behind a tentative estimate
        self._t_since = array("q")  # since when the estimate holds (confirmed: the decision)
        self._s_cur = array("f")  # smoothed RSSI at the current location (NaN: unknown)
        self._t_cur = array("q")  # last read at the current location
        self._iv = array("f")  # usual interval between reads at the current location (µs, EWMA)
        self._cand = array("h")  # challenger location (NONE: none)
        self._s_cand = array("f")
        self._t_cand = array("q")  # last read at the challenger
        self._n_cand = array("H")  # reads of the challenger (or of an unconfirmed estimate)
        self._t_lead = array("q")  # since when the challenger leads (NEVER: it does not)
        self._k_lead = array("b")  # challenger reads less current-location reads (_OUTREAD)
        # While a challenger is pending, the read that last took _k_lead up from zero; else,
        # for a tag placed by its first sighting and contested by nothing since, that
        # sighting's first read (a passage's start: _check_absence dates its departure by it,
        # _learn_dwells learns from it). NEVER otherwise. (One array for both: a tag never
        # needs the two at once, and a tag's bytes are counted.)
        self._t_k0 = array("q")
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
        self.sources = Sources(0, 0)  # event time per reader (sources.py); set by _apply
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
                loc.taken, loc.leaked = old.taken, old.leaked
                loc.dwell_us, loc.dwell_dev_us = old.dwell_us, old.dwell_dev_us
                loc.passages, loc.watch = old.passages, old.watch
                self.locs[lid] = loc
        for loc in self.locs:
            # Evidence expires when its location has not read the tag for this long; a slow
            # profile (a shelf) keeps it at least for its confirmation time.
            loc.gap_us = max(self._gap_us, loc.confirm_us)
        self._per_location_lists()
        self._longest_us = max((loc.departed_after_us for loc in self.locs), default=0)
        places: dict[str, dict[int, tuple[int, float, Place]]] = {}
        for (reader, antenna), place in config.places.items():
            lid = self._loc_ids[place.location]
            places.setdefault(reader, {})[antenna] = (lid, place.rssi_offset_db, place)
        self._places = places
        # Who sighted a tag at a location, for a first sighting or a move decided after its
        # reads ended (_check_absence): the location's one reader and read point, else the
        # engine and none.
        sighted: dict[int, set[tuple[str, str]]] = {}
        self._portal_side = [False] * len(self.locs)  # a portal's inside or outside (_win)
        for (reader, _), place in config.places.items():
            lid = self._loc_ids[place.location]
            sighted.setdefault(lid, set()).add((reader, _via(place)))
            self._portal_side[lid] = self._portal_side[lid] or place.portal is not None
        self._sighted_by: list[tuple[str, str | None]] = [
            next(iter(sighted[lid])) if len(sighted.get(lid, ())) == 1 else ("engine", None)
            for lid in range(len(self.locs))
        ]
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

    def _per_location_lists(self) -> None:
        """The numbers the hot loop needs, by location id (a list index beats an attribute)."""
        locs = self.locs
        self._alpha = [loc.alpha for loc in locs]
        self._threshold = [loc.threshold for loc in locs]
        self._refresh = [loc.refresh_us for loc in locs]
        self._holdoff = [loc.holdoff_us for loc in locs]
        self._decay = [loc.decay_per_us for loc in locs]
        self._floor = [loc.floor for loc in locs]
        self._gap = [loc.gap_us for loc in locs]
        self._iv_cap = [
            (loc.departed_after_us or _IV_CAP_NEVER_DEPARTS_US) / (2 * _ROUNDS) for loc in locs
        ]
        # The name a present tag's state carries there; None at an offsite location (no refresh)
        self._present_state = [None if loc.offsite else loc.name for loc in locs]

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
            self._per_location_lists()
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
            engine._iv[i] = 0.0  # unknown: learnt again from the reads after the restart
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
            return tag_state(epc, False, None, self._seen[i])
        loc = self.locs[cur]
        return tag_state(epc, not loc.offsite, loc.name, self._seen[i])

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
            # Nothing this old is buffered, so everything up to the cutoff has been taken:
            # say so, or every following batch would sort the whole buffer again until the
            # reads span a window (quadratic at high read rates after a quiet spell).
            self._p_min = pending[0].time_us
            self._p_scanned = len(pending)
            self._judged_to = max(self._judged_to, cutoff)
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

    @property
    def hot_loop(self) -> str:
        """Which loop judges reads: "c" (compiled) or "python"."""
        return "c" if self.compiled_loop else "python"

    def _judge(self, reads: list[TagRead], step: Step) -> None:
        if self.compiled_loop:
            counts = _hotloop.judge(self, reads, step)
        else:
            counts = self._judge_python(reads, step)
        suppressed = self.suppressed
        for reason, n in zip(_HOT_LOOP_COUNTS, counts, strict=True):
            if n:
                suppressed[reason] += n

    def _judge_python(self, reads: list[TagRead], step: Step) -> tuple[int, int, int, int]:
        """The hot loop: kept flat, with locals, no method calls and no allocation for the
        common read (a confirmed tag read again where it is). Everything else goes to the slow
        paths below, which hold the rules; this loop only repeats the rules of that one case.
        gateway/engine/_hotloop.c is its compiled copy: change both (tests/unit/
        test_engine_golden.py holds each to the reference engine). Returns the counts of
        _HOT_LOOP_COUNTS."""
        places = self._places
        index = self._index
        loc_a = self._loc
        tentative = self._tentative
        s_cur = self._s_cur
        t_cur = self._t_cur
        iv = self._iv
        iv_cap = self._iv_cap
        iv_weight, rounds = _IV_WEIGHT, _ROUNDS
        cand_a = self._cand
        s_cand = self._s_cand
        t_cand = self._t_cand
        t_lead = self._t_lead
        k_lead = self._k_lead
        outread = _OUTREAD
        n_cand = self._n_cand
        t_since = self._t_since
        seen = self._seen
        ev = self._ev
        alpha = self._alpha
        refresh = self._refresh
        holdoff = self._holdoff
        decay = self._decay
        threshold = self._threshold
        floor_db = self._floor
        gap = self._gap
        drop_stale = self._drop_stale
        present_state = self._present_state
        epcs = self._epc
        states = step.states
        new_state = _new
        set_epc, set_present, set_location, set_last_seen = (
            _set_epc,
            _set_present,
            _set_location,
            _set_last_seen,
        )
        min_rssi = self._min_rssi
        margin = self._xr_margin
        xr_window = self._xr_window_us
        challenge = self._challenge
        tentative_read = self._tentative_read
        late_tentative_read = self._late_tentative_read
        slot = self._slot
        no_antennas: dict[int, tuple[int, float, Place]] = {}
        last_reader: str | None = None
        antennas = no_antennas
        unknown = weak = late = cross = 0
        for read in reads:
            reader = read.reader
            if reader is not last_reader:
                antennas = places.get(reader, no_antennas)
                last_reader = reader
            try:
                place = antennas[read.antenna]
            except KeyError:
                unknown += 1
                continue
            lid = place[0]
            rssi = read.rssi + place[1]
            t = read.time_us
            try:
                i = index[read.epc]
            except KeyError:
                if rssi < min_rssi:
                    weak += 1
                    continue
                i = slot(read.epc, t)
                prev_seen = t
            else:
                prev_seen = seen[i]
                if t > prev_seen:
                    seen[i] = t
                if rssi < min_rssi:
                    weak += 1
                    continue
            if t < prev_seen:
                # Older than a read of this tag already judged (its reader's report came
                # after another reader's newer one): judging it now would reorder the tag's
                # history. Only this tag's order matters, so a backlog of tags nobody else
                # read is judged in full when it comes (see Sources). Where the tag is
                # tentatively, it is still evidence that it was there (_late_tentative_read).
                if lid == loc_a[i] and tentative[i]:
                    late_tentative_read(i, lid, place[2], rssi, t, read, step)
                    continue
                late += 1
                continue
            if lid != loc_a[i]:
                challenge(i, lid, place[2], rssi, t, read, step)
                continue
            if tentative[i]:
                tentative_read(i, lid, place[2], rssi, t, read, step)
                continue
            s = s_cur[i]
            s = rssi if s != s else s + alpha[lid] * (rssi - s)
            s_cur[i] = s
            c = cand_a[i]
            if c != NONE and t - t_cand[i] > gap[c]:
                # A challenger no read has added to for its location's evidence gap is no
                # evidence any more: dropped (it also held back the tag's state refresh).
                drop_stale(i)
                c = NONE
            if c == NONE:
                last_here = t_cur[i]
                if t > last_here:
                    # (Engine._read_here, inlined.)
                    g: float = t - last_here
                    if g > iv_cap[lid]:
                        g = iv_cap[lid]
                    v = iv[i]
                    iv[i] = g if v == 0.0 else v + iv_weight * (g - v)
                    t_cur[i] = t
            else:
                k = k_lead[i]
                if k > 0:
                    k_lead[i] = k - 1  # read here: the challenger's count lead shrinks
                tc = t - t_cand[i]
                # Read far more strongly elsewhere right now (a stale challenger fades): a
                # cross-read of where it was, not a sign it is still there. It counts toward
                # this location's level (every read does: a level fed only by the luckier
                # reads would be biased), but does not reset the clock of the decaying offset.
                # (Loc.fade, inlined.)
                if (
                    tc <= xr_window
                    and rssi
                    < s_cand[i]
                    - (0.0 if tc <= holdoff[c] else decay[c] * (tc - holdoff[c]))
                    - margin
                ):
                    cross += 1
                else:
                    last_here = t_cur[i]
                    if t > last_here:
                        # (Engine._read_here, inlined.)
                        g = t - last_here
                        if g > iv_cap[lid]:
                            g = iv_cap[lid]
                        v = iv[i]
                        iv[i] = g if v == 0.0 else v + iv_weight * (g - v)
                        t_cur[i] = t
                if t_lead[i] != NEVER:
                    # (Engine._silence and Loc.offset, inlined.)
                    since: float = t - t_cur[i]
                    v = iv[i]
                    extra = rounds * v - holdoff[lid]
                    if extra > 0.0:
                        if n_cand[i] < rounds:
                            since -= extra
                    elif v > 0.0:
                        since *= holdoff[lid] / (rounds * v)
                    if since <= holdoff[lid]:
                        off = threshold[lid]
                    else:
                        off = threshold[lid] - decay[lid] * (since - holdoff[lid])
                        if off <= floor_db[lid]:
                            off = floor_db[lid]
                    if k_lead[i] >= outread:
                        off = floor_db[lid]
                    if s_cand[i] <= s + off:
                        t_lead[i] = NEVER  # read strongly where it is: the challenger lost its lead
                    continue
            if t - t_since[i] >= refresh[lid] and ev[i] == NO_EVIDENCE:
                name = present_state[lid]
                if name is not None:
                    # Persist a fresh last_seen_us for a tag that stays where it is (nothing
                    # pending); the persisted state now dates from here (see _challenge).
                    t_since[i] = t
                    state = new_state(TagState)  # tag_state(), inlined
                    set_epc(state, epcs[i])
                    set_present(state, True)
                    set_location(state, name)
                    set_last_seen(state, seen[i])
                    states.append(state)
        return unknown, weak, late, cross

    def _drop_stale(self, i: int) -> None:
        """Drop a challenger that no read has added to for its evidence gap (counted)."""
        self._drop_evidence(i, "outvoted")

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
        if i in self._tally:
            self._tally_read(i, lid, rssi)
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
        """A read where the tag tentatively is, older than its newest judged read (a backlog
        that came after the reader's first live reads): it moves nothing, so it cannot reorder
        the tag's history, but it is evidence that the tag was there from its time on; it
        counts toward the confirmation, judged at the tag's newest read. (Else a tag read once
        live and then only in the backlog would never arrive.)"""
        if i in self._tally:
            self._tally_read(i, lid, rssi)
        n = self._n_cur[i]
        if n < 65535:
            self._n_cur[i] = n + 1
        if t < self._t_since[i]:
            self._t_since[i] = t
            self._set_evidence(i, t)
        self._tentative_progress(i, self._seen[i], read.reader, place, step)

    def _first_sighting(
        self, i: int, lid: int, place: Place, rssi: float, t: int, read: TagRead, step: Step
    ) -> None:
        """A tentative estimate, confirmed by more evidence (see _tentative_progress)."""
        self._tentative_at(i, lid, rssi, t, 1, t)
        self._tally.pop(i, None)
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
        self._tally.pop(i, None)
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
            self._tally_read(i, lid, rssi)
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
                self._count_challenger_read(i, t)
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
            # resetting a true move's evidence). A challenger that no longer out-reads where
            # the tag is (count lead 0) protects nothing: a neighbour's cross-reads must not
            # hold off the zone the tag was really carried to.
            cl = self.locs[c]
            # (A single read is no evidence to protect: one weak stray must not hold off a
            # tag's strong reads at its real location while a first sighting is confirmed.)
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
            # (Out-read by _OUTREAD, the current location holds only as a long silent one does.)
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
        let_go = self._let_go(i, cur, new, t)
        if not outread and not let_go:
            return
        if not let_go and t - lead < self._confirm_us(i, cur, new):
            # Read no more before then (a case that left the field from its new zone), it has
            # held as well unless the old location read it: _check_absence judges it then.
            self._book(i, (lead + int(self._confirm_us(i, cur, new))) // self._tick_us + 1)
            return
        self._win(i, s, t, read.reader, _via(place), step)

    def _win(self, i: int, s: float, t: int, source: str, via: str | None, step: Step) -> None:
        """The challenger wins; `t`, the read that made it conclusive, is observed.last_seen:
        when it was decided. The movement is dated when the evidence shows the tag there:
        * into a zone, when the new location began to out-read the old one (the count lead's
          change point), if its lead came later: levels that swap for seconds start the lead
          late, seconds after an item was carried over;
        * through a portal, when the far side took the lead: it out-reads the near side from
          the crossing's middle, but a pallet has crossed only once the far side alone holds
          it (the date portal evaluations with a 2 s tolerance confirm)."""
        old, lid = self.locs[self._loc[i]], self._cand[i]
        old.taken[lid] = old.taken.get(lid, 0) + 1  # (see _let_go)
        n = self._n_cand[i]
        lead = self._t_lead[i]
        if not self._portal_side[lid]:
            lead = min(lead, self._t_k0[i])
        observed = Observed(n, float(self._peak[i]), lead, t)
        self._loc[i] = lid
        self._s_cur[i] = s
        self._t_cur[i] = t
        self._iv[i] = 0.0  # a new location: its read rounds are learnt from here
        self._n_cur[i] = min(n, 65535)
        self._t_since[i] = t
        self._cand[i] = NONE
        self._n_cand[i] = 0
        self._t_lead[i] = NEVER
        self._k_lead[i] = 0
        self._t_k0[i] = NEVER  # moved here: no passage of a first sighting
        self._clear_evidence(i)
        self._emit(i, old, self.locs[lid], lead, source, via, observed, step)

    def _let_go(self, i: int, cur: int, new: Loc, t: int) -> bool:
        """A move between locations where tags pass (see _TRUST_CROSSINGS) is decided once the
        new location has out-read the old one by _FIRST_OUTREAD and the old one has been silent
        for the confirmation time: the new location's lead need not also be timed (a late weak
        read on the old one restarts it, ~1 s of latency at p99)."""
        near = self.locs[cur]
        taken = near.taken.get(new.id, 0)
        return (
            taken >= _TRUST_CROSSINGS
            and near.leaked.get(new.id, 0) * _CROSSINGS_PER_LEAK <= taken
            and self._k_lead[i] >= _FIRST_OUTREAD
            and t - self._t_cur[i] >= self._confirm_us(i, cur, new)
        )

    def _out_reads_tentative(
        self, i: int, n: int, s: float, s_here: float, threshold: float
    ) -> bool:
        """The challenger to a tentative estimate has _FIRST_OUTREAD more reads than it and is
        within the threshold of its level (the close contest of _confirm_tentative, from the
        challenger's side): a tag is read far more often where it is."""
        return n - self._n_cur[i] >= _FIRST_OUTREAD and s_here - s < threshold

    def _count_challenger_read(self, i: int, t: int) -> None:
        """One more read at the challenger's location, evidence or not: the count lead counts
        them all, as it counts every read where the tag is (its bound on a parked tag's false
        moves assumes both sides are counted alike)."""
        k = self._k_lead[i]
        if k == 0:
            self._t_k0[i] = t  # the count lead starts (again) here
        self._k_lead[i] = min(k + 1, 127)  # (only up to _OUTREAD matters)

    def _read_here(self, i: int, lid: int, t: int) -> None:
        """A read at the tag's current location, newer than its last one there: learn the
        usual interval between its reads there (capped, see _ROUNDS)."""
        gap = min(t - self._t_cur[i], self._iv_cap[lid])
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
            if self._single_read_trusted(cur):  # judged once its reads have ended
                self._book(i, (t + max(cur.confirm_us, cur.gap_us)) // self._tick_us + 2)
            return
        loc = self.locs[self._loc[i]]
        confirm_at = self._t_since[i] + loc.confirm_us
        if t < confirm_at:
            # A tag read no more before then (it passed through) has held here just as well
            # unless another location read it: _check_absence judges it then.
            self._book(i, confirm_at // self._tick_us + 1)
            return
        self._confirm_tentative(i, t, source, _via(place), step)

    def _confirm_tentative(
        self, i: int, t: int, source: str, via: str | None, step: Step, ended: bool = False
    ) -> None:
        """Announce a tentative estimate that has held for its confirm_s (see
        _tentative_progress), unless another location contests it. `ended`: the tag is read
        no more (judged at the absence horizon): the contest is decided as it stands."""
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
                return  # a close contest: neither _FIRST_OUTREAD more reads nor the threshold
            self._drop_evidence(i, "outvoted")  # it lost: the decision leaves nothing pending
        if not self._portal_side[self._loc[i]] and not self._tally_decides(i, t, step, ended):
            return
        if not self._portal_side[self._loc[i]]:
            # In a zone, from the sighting's first read (its evidence began there): a tag heard
            # first by a neighbour, then out-read there, was where it is since then.
            since = min(since, self._ev[i])
        loc.sightings += 1
        self._tentative[i] = 0
        self._t_since[i] = t
        self._tally.pop(i, None)
        self._clear_evidence(i)
        # Dated by the first read of the evidence that confirmed it: the tag was there then;
        # a passage whose reads ended, earlier by what they left of the dwell learnt here.
        arrived = since - loc.unread_end_us(self._seen[i] - since) if ended else since
        if not loc.offsite:
            self._t_k0[i] = since  # the stay's start, while nothing contests it
            epc = self._epc[i]
            assert epc is not None
            if len(loc.watch) < _WATCHED_PASSAGES:
                loc.watch.append((i, epc, since))
        observed = Observed(n, float(self._s_cur[i]), since, t)
        self._emit(i, None, loc, arrived, source, via, observed, step)

    def _tally_read(self, i: int, lid: int, rssi: float) -> None:
        """Count a read of a tag not yet placed, evidence or not, toward its location's tally.
        The tally starts with the first read elsewhere than the tentative estimate: until
        then the estimate's read count and level are its tally (a tag read by one antenna
        only, the common case and every stray, costs nothing)."""
        tally = self._tally.get(i)
        if tally is None:
            cur, s = self._loc[i], self._s_cur[i]
            self._tally[i] = tally = {cur: [self._n_cur[i], s if s == s else rssi]}
        entry = tally.get(lid)
        if entry is None:
            tally[lid] = [1, rssi]
        else:
            entry[0] += 1
            entry[1] += self.locs[lid].alpha * (rssi - entry[1])

    def _tally_contest(self, i: int) -> tuple[int, bool]:
        """The first sighting's contest against every location that read the tag since its
        first read (the challenger is only the latest of them: on a dense floor three zones
        hear a new tag, and the one out-reading the tentative estimate may not be the one
        read last). Each is judged as the challenger is in _confirm_tentative: the tentative
        location is conclusive over it with _FIRST_OUTREAD more reads, or the threshold over
        its level on at least as many reads (or _OUTREAD). Returns (NONE, False) when it is
        over every one; else the rival, and whether that rival out-reads it
        (_out_reads_tentative's rule: _FIRST_OUTREAD more reads, within the threshold)."""
        tally = self._tally.get(i)
        cur = self._loc[i]
        if tally is None or cur not in tally:
            return NONE, False
        n_here, s_here = tally[cur]
        threshold = self.locs[cur].threshold
        close, n_close = NONE, 0.0
        for lid, (n, s) in tally.items():
            if lid == cur:
                continue
            if n - n_here >= _FIRST_OUTREAD and s_here - s < threshold:
                return lid, True
            if n_here - n >= _FIRST_OUTREAD or (
                s_here - s >= threshold and n_here >= min(n, _OUTREAD)
            ):
                continue
            if close == NONE or n > n_close:
                close, n_close = lid, n
        return close, False

    def _tally_decides(self, i: int, t: int, step: Step, ended: bool) -> bool:
        """Whether a first sighting in a zone may be confirmed where it tentatively is, by its
        tally (_tally_contest). A rival that out-reads it takes the estimate; a close contest
        waits for more reads (a check is booked for when they end) or, once they ended, goes
        to the location with more reads (ties: where it is)."""
        rival, outreads = self._tally_contest(i)
        if rival == NONE:
            return True
        cur = self._loc[i]
        tally = self._tally[i]
        if not outreads and not ended:
            gap = self.locs[cur].gap_us
            self._book(i, (self._seen[i] + gap) // self._tick_us + 2)
            return False
        if not outreads and tally[rival][0] <= tally[cur][0]:
            return True
        n, s = tally[rival]
        if self._cand[i] != NONE:
            self._drop_evidence(i, "outvoted")
        self._drop_current_evidence(i)
        self._tentative_at(i, rival, s, t, min(int(n), 65535), self._t_since[i])
        if ended:
            source, via = self._sighted_by[rival]
            self._confirm_tentative(i, t, source, via, step, ended)
        else:
            self._book(i, t // self._tick_us + 1)
        return False

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
        if c != NONE and cur != NONE and not self._tentative[i]:
            leaked = self.locs[cur].leaked
            leaked[c] = leaked.get(c, 0) + 1  # the challenge came to nothing (see _let_go)
        self._cand[i] = NONE
        self._n_cand[i] = 0
        self._t_lead[i] = NEVER
        self._k_lead[i] = 0
        self._t_k0[i] = NEVER  # (contested: a stay, not a clean passage)
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
        self._tally.pop(i, None)
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

    def _book(self, i: int, key: int) -> None:
        """Look at the tag at wheel key `key` (unless an earlier look is booked)."""
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
        self._learn_dwells(horizon)
        now_key = horizon // self._tick_us
        keys = self._wheel_keys
        while keys and keys[0] <= now_key:
            key = heapq.heappop(keys)
            for i in self._wheel.pop(key):
                if self._due[i] == key:
                    self._due[i] = 0
                    self._check_absence(i, horizon, step)
        return step

    def _learn_dwells(self, horizon: int) -> None:
        """Learn how long passages last at each location from the first sightings confirmed
        there whose reads have ended (unread for the location's evidence gap) with nothing
        contesting them: their reads' span plus one and a half of the tag's read intervals
        there (each end lies between half an interval beyond the outermost read, for a tag
        read in every round, and a whole one, for reads far apart and memoryless: at a 0.6
        read rate in 250 ms rounds, 0.7 of one; the backlog family's tunnels learn 2.3-2.7 s
        for their 2.5 s passages). Only well-read ones teach: confirmed while
        still read (min_reads reads over confirm_s); one still read when it would have
        departed was a stay, not a passage."""
        for loc in self.locs:
            watch = loc.watch
            while watch:
                i, epc, start = watch[0]
                if (
                    self._epc[i] is epc
                    and self._t_k0[i] == start
                    and self._cand[i] == NONE
                    and self._loc[i] == loc.id
                ):
                    seen = self._seen[i]
                    if horizon - seen > loc.gap_us:
                        if self._t_since[i] <= seen and self._iv[i] > 0.0:
                            loc.learn_dwell(seen - start + 1.5 * self._iv[i])
                    elif horizon - start <= (loc.departed_after_us or _RECHECK_US):
                        break  # still read: its end is awaited
                watch.popleft()

    def _still_catching_up(self, horizon: int) -> bool:
        if self._resume_at is None:
            self._resume_at = horizon
        if self._judged_to >= self._resume_at or horizon - self._resume_at >= self._longest_us:
            self._catching_up = False
        return self._catching_up

    def _ended_move_holds(self, i: int, cur: int, c: int, horizon: int) -> bool:
        """A challenger whose reads ended wins at the absence horizon when it had out-read the
        tag's location by _OUTREAD and led for confirm_s; or, once the tag is read no more at
        all (silent past the challenger's gap: it left the field), by _FIRST_OUTREAD for
        confirm_s, as a first sighting is decided, or by 2 while it leads on level (the
        offset beaten on min_reads reads). Its count lead cannot grow any more, and
        a parked tag is never silent: a case carried out of the field from its new zone, read
        there five times in a burst of misses, or six times 9 dB above the old zone's three
        leaks, has moved."""
        confirm = self._confirm_us(i, cur, self.locs[c])
        k, lead = self._k_lead[i], self._t_lead[i]
        if k >= _OUTREAD and lead != NEVER and horizon - lead >= confirm:
            return True
        if horizon - self._seen[i] <= self.locs[c].gap_us:
            return False
        if k < _FIRST_OUTREAD and (lead == NEVER or k < 2):
            # (A level lead counts too, beating the offset on min_reads reads, with two reads
            # more: one is a coin's toss between a dense floor's neighbours.)
            return False
        return horizon - (self._t_k0[i] if lead == NEVER else lead) >= confirm

    @staticmethod
    def _single_read_trusted(loc: Loc) -> bool:
        """A tag read once here, and nowhere else before its reads ended, was here: this
        location has confirmed many first sightings and read almost no tag that was elsewhere
        (a tunnel reader of its own). Where neighbours leak into each other, min_reads holds."""
        return loc.sightings >= _TRUST_SIGHTINGS and loc.foreign_reads * 100 <= loc.sightings

    def _check_absence(self, i: int, horizon: int, step: Step) -> None:
        seen = self._seen[i]
        cur = self._loc[i]
        c = self._cand[i]
        if c != NONE and not self._tentative[i] and self._ended_move_holds(i, cur, c, horizon):
            # A move whose reads ended before its confirmation time (a case that left the
            # field from its new zone): every read up to the horizon is judged, none undid it.
            source, via = self._sighted_by[c]
            if self._t_lead[i] == NEVER:  # (never led on level: dated by its count lead)
                self._t_lead[i] = self._t_k0[i]
            self._win(i, self._s_cand[i], self._t_cand[i], source, via, step)
            return
        if (
            cur != NONE
            and self._tentative[i]
            and (
                self._n_cur[i] >= self._min_reads
                or (
                    self._single_read_trusted(self.locs[cur])
                    and horizon - seen > self.locs[cur].gap_us
                )
            )
            and horizon - self._t_since[i] >= self.locs[cur].confirm_us
        ):
            # A first sighting whose reads ended before its confirm_s (a tag passing through a
            # tunnel or a door): every read up to the horizon is judged and none contradicted it.
            source, via = self._sighted_by[cur]
            ended = horizon - seen > self.locs[cur].gap_us
            self._confirm_tentative(i, horizon, source, via, step, ended)
            if not self._tentative[i]:
                return
        if cur != NONE and self._present(i):
            loc = self.locs[cur]
            after = loc.departed_after_us
            if after and horizon - seen >= after:
                start = self._t_k0[i] if self._cand[i] == NONE else NEVER
                self._drop_evidence(i, "outvoted")
                self._loc[i] = NONE
                self._t_since[i] = seen
                left = seen if start == NEVER else seen + loc.unread_end_us(seen - start)
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
        self._t_k0[i] = NEVER  # placed by a device: no passage of a first sighting
        self._tentative[i] = 0
        self._tally.pop(i, None)
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


class PythonLoopEngine(Engine):
    """The engine judging reads with its Python loop even where the compiled one is built:
    what a box without a C compiler runs (the bench measures both; the tests hold both to the
    reference engine)."""

    compiled_loop = False


def _via(place: Place) -> str:
    return place.portal or place.read_point
