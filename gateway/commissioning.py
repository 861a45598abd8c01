"""The commissioning tap: what each antenna read lately and how the engine placed those tags.

Commissioning a portal (antenna placement, power, which antenna sees what) needs to see, per
antenna, the tags it reads, their RSSI and what the engine made of each read. Ingest hands the
tap every read hand-over after the engine has judged it (`observe`, on the ingest loop's
thread, the only thread that may ask the engine anything); the web page's HTTP thread reads
copies (`snapshot`).

The ingest path is hot, so the tap is off unless someone looks: `watch()` (the page's antenna
API) turns it on for WATCH_S; while off, `observe` costs one clock read and a comparison per
hand-over and holds nothing. While on, every read is counted per antenna (the read rate) and at
most CLASSIFY_PER_S reads a second are classified and kept (a token bucket, spread evenly over a
hand-over), each antenna's window at most READS_PER_ANTENNA long and MAX_WINDOW_S old: at most
CLASSIFY_PER_S * MAX_WINDOW_S kept reads (~120 bytes each, ~15 MB) however busy the site.

A read's class (docs/install.md, "The local web page"), judged against the engine's view of its
tag once the read's hand-over was fed (a read the engine still holds in its reorder window is
judged against the tag's state before it):
- unmapped: the (reader, antenna) is not in the config (the engine ignores it);
- weak: below [engine] min_rssi_dbm after the antenna's rssi_offset_db (the engine ignores it);
- pending: the engine has placed the tag nowhere yet (a new tag whose first reads are still in
  the reorder window or not yet confirmed, or a tag that departed to no known place);
- counted: the engine places the tag where this antenna is;
- cross_read: the engine places the tag elsewhere, at a location this same reader also reads
  (a portal's other side, a neighbouring antenna: the engine's own "cross_read");
- stray: the engine places the tag at a location this reader does not read (another reader's
  zone: the engine's own "stray").
A leaking antenna shows many cross-reads or strays; the first reads of a tag moving here show
as them too, until the move is confirmed.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.model import Outgoing, TagRead

if TYPE_CHECKING:
    from gateway.engine import Engine

WATCH_S = 60.0  # the tap stays on this long after the page last asked
MAX_WINDOW_S = 60.0  # the longest window the page may ask for
READS_PER_ANTENNA = 2_000  # classified reads kept per antenna
CLASSIFY_PER_S = 2_000  # reads classified a second, over all antennas
MAX_UNMAPPED_ANTENNAS = 64  # (reader, antenna) pairs outside the config kept at once
TOP_TAGS = 20  # tags listed per antenna, most read first
MOVEMENTS_KEPT = 50
RSSI_BINS = tuple(range(-100, -15, 5))  # histogram bin starts, dBm; the ends take the rest

CLASSES = ("counted", "cross_read", "stray", "pending", "weak", "unmapped")
COUNTED, CROSS_READ, STRAY, PENDING, WEAK, UNMAPPED = range(len(CLASSES))

Key = tuple[str, int]  # (reader, antenna)
Kept = tuple[float, str, float, int]  # (monotonic time, EPC, RSSI dBm, class)


@dataclass(frozen=True, slots=True)
class Antenna:
    """What one antenna means, as the engine's config says (None: not in the config)."""

    reader: str
    antenna: int
    location: str | None
    read_point: str | None
    floor_dbm: float | None  # reads below this RSSI (as reported) are weak


class _Window:
    """One antenna's recent reads: every read counted per second, classified ones kept."""

    __slots__ = ("info", "kept", "per_second")

    def __init__(self, info: Antenna) -> None:
        self.info = info
        self.kept: deque[Kept] = deque(maxlen=READS_PER_ANTENNA)
        self.per_second: deque[list[int]] = deque(maxlen=int(MAX_WINDOW_S) + 1)  # [second, n]

    def count(self, second: int, n: int) -> None:
        if self.per_second and self.per_second[-1][0] == second:
            self.per_second[-1][1] += n
        else:
            self.per_second.append([second, n])

    def forget_before(self, t: float) -> None:
        kept = self.kept
        while kept and kept[0][0] < t:
            kept.popleft()


class CommissioningTap:
    """Thread-safe: `observe` and `committed` on the ingest loop, the rest on any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._watch_until = -math.inf  # one float, written whole: read without the lock
        self._windows: dict[Key, _Window] = {}
        self._tokens = float(CLASSIFY_PER_S)
        self._tokens_at = clock()
        self._since: float | None = None  # when the tap last turned on
        self._pruned_at = 0  # the second old reads were last dropped
        self._movements: deque[dict[str, Any]] = deque(maxlen=MOVEMENTS_KEPT)
        self.unmapped_dropped = 0  # reads of unmapped antennas beyond MAX_UNMAPPED_ANTENNAS
        self._readers_at: tuple[object, dict[str, frozenset[str]]] = (None, {})

    # --- the page's side ----------------------------------------------------------------------

    def watch(self) -> None:
        """Someone is looking: keep the tap on for WATCH_S from now."""
        self._watch_until = self._clock() + WATCH_S

    @property
    def watching(self) -> bool:
        return self._clock() < self._watch_until

    def snapshot(self, window_s: float) -> tuple[float, dict[Key, dict[str, Any]]]:
        """(seconds the tap has been collecting, capped at window_s; per antenna seen, its view
        over the last window_s seconds). Copies are taken under the lock, summed outside it."""
        now = self._clock()
        since = now - window_s
        with self._lock:  # plain copies (C speed): the loop waits on this lock
            copies = [
                (key, w.info, list(w.kept), list(w.per_second)) for key, w in self._windows.items()
            ]
            collecting = 0.0 if self._since is None else min(window_s, now - self._since)
        rate_span_s = max(1.0, collecting)  # a tap on for 3 s of a 10 s window: per 3 s
        views = {
            key: antenna_view(
                info, [r for r in kept if r[0] >= since], per_second, now, window_s, rate_span_s
            )
            for key, info, kept, per_second in copies
        }
        return collecting, views

    def movements(self) -> list[dict[str, Any]]:
        """The last committed movements, newest first."""
        with self._lock:
            return list(reversed(self._movements))

    # --- the ingest loop's side ---------------------------------------------------------------

    def observe(self, reads: Sequence[TagRead], engine: Engine) -> None:
        """A hand-over the engine has just been fed. Nearly free while nobody watches."""
        now = self._clock()
        if now >= self._watch_until:
            if self._since is not None:
                self._stop()
            return
        chosen = self._choose(reads, now)
        places = engine.config.places
        min_rssi = engine.config.settings.min_rssi_dbm
        readers_at = self._readers_by_location(engine)
        kept = [
            (
                place_key(read),
                now,
                read.epc,
                read.rssi,
                classify(read, places, engine, min_rssi, readers_at),
            )
            for read in chosen
        ]
        counts = Counter((read.reader, read.antenna) for read in reads)
        with self._lock:
            if self._since is None:
                self._since = now
            self._record(counts, kept, int(now), now, places, min_rssi)

    def committed(self, messages: Sequence[Outgoing]) -> None:
        """After a commit: keep the batch's last movements (always on; a few per batch)."""
        recent: list[dict[str, Any]] = []
        for message in reversed(messages):
            if message.stream == "movements":
                recent.append(movement_summary(message.body))
                if len(recent) == MOVEMENTS_KEPT:
                    break
        if recent:
            with self._lock:
                self._movements.extend(reversed(recent))

    def _readers_by_location(self, engine: Engine) -> dict[str, frozenset[str]]:
        """Which readers read each location, for the engine's config now (a reload makes a
        new config object)."""
        config, readers_at = self._readers_at
        if config is not engine.config:
            readers_at = readers_by_location(engine.config.places)
            self._readers_at = (engine.config, readers_at)
        return readers_at

    def _choose(self, reads: Sequence[TagRead], now: float) -> Sequence[TagRead]:
        """The reads to classify: all of them while the budget lasts, else an even spread."""
        self._tokens = min(
            float(CLASSIFY_PER_S), self._tokens + (now - self._tokens_at) * CLASSIFY_PER_S
        )
        self._tokens_at = now
        take = min(len(reads), int(self._tokens))
        self._tokens -= take
        if take == len(reads):
            return reads
        if take == 0:
            return ()
        step = len(reads) / take
        return [reads[int(i * step)] for i in range(take)]

    def _record(
        self,
        counts: Counter[Key],
        kept: Iterable[tuple[Key, float, str, float, int]],
        second: int,
        now: float,
        places: Any,
        min_rssi: float,
    ) -> None:
        for key, n in counts.items():
            window = self._window(key, places, min_rssi)
            if window is None:
                self.unmapped_dropped += n
            else:
                window.count(second, n)
        for key, t, epc, rssi, cls in kept:
            window = self._windows.get(key)
            if window is not None:
                window.kept.append((t, epc, rssi, cls))
        if second != self._pruned_at:  # once a second: no window holds reads past the longest
            self._pruned_at = second
            for window in self._windows.values():
                window.forget_before(now - MAX_WINDOW_S)

    def _window(self, key: Key, places: Any, min_rssi: float) -> _Window | None:
        info = antenna_info(key, places.get(key), min_rssi)  # as of now: a SIGHUP may change it
        window = self._windows.get(key)
        if window is not None:
            window.info = info
            return window
        if info.location is None:
            unmapped = sum(1 for w in self._windows.values() if w.info.location is None)
            if unmapped >= MAX_UNMAPPED_ANTENNAS:
                return None
        window = self._windows[key] = _Window(info)
        return window

    def _stop(self) -> None:
        """Nobody looked for WATCH_S: drop what was kept (the memory goes back)."""
        with self._lock:
            self._windows.clear()
            self._since = None


# --- classification (on the ingest loop) ----------------------------------------------------


def place_key(read: TagRead) -> Key:
    return (read.reader, read.antenna)


def readers_by_location(places: Any) -> dict[str, frozenset[str]]:
    readers: dict[str, set[str]] = {}
    for (reader, _), place in places.items():
        readers.setdefault(place.location, set()).add(reader)
    return {location: frozenset(names) for location, names in readers.items()}


def classify(
    read: TagRead,
    places: Any,
    engine: Engine,
    min_rssi: float,
    readers_at: dict[str, frozenset[str]],
) -> int:
    """A read's class (see the module docstring); asks the engine, so on the ingest loop only."""
    place = places.get((read.reader, read.antenna))
    if place is None:
        return UNMAPPED
    if read.rssi + place.rssi_offset_db < min_rssi:
        return WEAK
    state = engine.state_of(read.epc)
    if state is None or state.location is None:
        return PENDING
    if state.location == place.location:
        return COUNTED
    return CROSS_READ if read.reader in readers_at.get(state.location, ()) else STRAY


def antenna_info(key: Key, place: Any, min_rssi: float) -> Antenna:
    if place is None:
        return Antenna(key[0], key[1], None, None, None)
    floor = min_rssi - place.rssi_offset_db
    return Antenna(key[0], key[1], place.location, place.read_point, floor)


def movement_summary(body: dict[str, Any]) -> dict[str, Any]:
    return {name: body.get(name) for name in ("type", "epc", "from", "to", "via", "source", "time")}


# --- what the page shows (on the HTTP thread, from copies) ------------------------------------


def antenna_view(
    info: Antenna,
    kept: list[Kept],
    per_second: list[list[int]],
    now: float,
    window_s: float,
    rate_span_s: float | None = None,
) -> dict[str, Any]:
    """One antenna over the window: read rate (over rate_span_s, the part of the window the
    tap was on; default all of it), classes, RSSI distribution, the tags it read."""
    first_second = int(now - window_s) + 1  # whole seconds inside the window
    reads = sum(n for second, n in per_second if second >= first_second)
    classes = Counter(CLASSES[cls] for _, _, _, cls in kept)
    rssi = [r for _, _, r, _ in kept]
    return {
        "reader": info.reader,
        "antenna": info.antenna,
        "location": info.location,
        "read_point": info.read_point,
        "floor_dbm": info.floor_dbm,
        "reads": reads,
        "reads_per_s": round(reads / (rate_span_s or window_s), 1),
        "classified": len(kept),
        "classes": {name: classes.get(name, 0) for name in CLASSES},
        "tags": len({epc for _, epc, _, _ in kept}),
        "rssi": rssi_summary(rssi),
        "top": top_tags(kept, now),
        "last_read_age_s": round(now - kept[-1][0], 1) if kept else None,
    }


def rssi_summary(rssi: list[float]) -> dict[str, Any]:
    """Min, median, max and a histogram in 5 dB bins (RSSI_BINS; the end bins take the rest)."""
    bins = [0] * len(RSSI_BINS)
    for value in rssi:
        index = int((value - RSSI_BINS[0]) // 5)
        bins[min(max(index, 0), len(bins) - 1)] += 1
    if not rssi:
        return {"min": None, "median": None, "max": None, "bins_from": RSSI_BINS[0], "bins": bins}
    return {
        "min": min(rssi),
        "median": statistics.median(rssi),
        "max": max(rssi),
        "bins_from": RSSI_BINS[0],
        "bins": bins,
    }


def top_tags(kept: list[Kept], now: float) -> list[dict[str, Any]]:
    """The TOP_TAGS most read tags: reads, RSSI, their latest read's class, its age."""
    by_epc: dict[str, list[Kept]] = {}
    for entry in kept:
        by_epc.setdefault(entry[1], []).append(entry)
    busiest = sorted(by_epc.items(), key=lambda item: (-len(item[1]), item[0]))[:TOP_TAGS]
    out = []
    for epc, entries in busiest:
        levels = [r for _, _, r, _ in entries]
        last = entries[-1]
        out.append(
            {
                "epc": epc,
                "reads": len(entries),
                "rssi_max": max(levels),
                "rssi_mean": round(statistics.fmean(levels), 1),
                "class": CLASSES[last[3]],
                "age_s": round(now - last[0], 1),
            }
        )
    return out
