"""Two reference location rules the engine is measured against (fc-edge bench accuracy).

Both share the engine's location map, movement semantics (arrived / moved / departed, portal
sides as locations, `from` = the offsite location last seen), business meaning and departure
thresholds; only the per-read decision of where a tag is differs:

* last-antenna-wins: a tag is wherever it was read last;
* EdgeX (app-rfid-llrp-inventory's published asset-tracking mobility profile): per location a
  mean over the last 20 RSSI samples; a tag moves when the new location has at least two
  samples and its mean beats the current location's by an offset of 6 dB, held for 500 ms
  after the last read at the current location, then falling by 0.008 dB per ms.

Plain dicts and objects: they are yardsticks, not products.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from gateway.engine.config import EngineConfig
from gateway.engine.core import Loc, Step, make_movement, transition_kind
from gateway.model import TagRead

EDGEX_THRESHOLD_DB = 6.0
EDGEX_HOLDOFF_MS = 500.0
EDGEX_SLOPE_DB_PER_MS = -0.008
EDGEX_WINDOW = 20


class _Tag:
    __slots__ = ("loc", "seen", "stats")

    def __init__(self, seen: int) -> None:
        self.loc: Loc | None = None
        self.seen = seen
        self.stats: dict[int, tuple[deque[float], list[int]]] = {}


class Baseline:
    """feed/tick/flush like the Engine; subclasses decide the location per read."""

    name = "baseline"

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.locs = [Loc(i, info, frozenset()) for i, info in enumerate(config.locations.values())]
        by_name = {loc.name: loc for loc in self.locs}
        self.places = {
            key: (by_name[p.location], p.rssi_offset_db, p.portal or p.read_point)
            for key, p in config.places.items()
        }
        self.tags: dict[str, _Tag] = {}
        self.min_rssi = config.settings.min_rssi_dbm

    def feed(self, reads: Sequence[TagRead]) -> Step:
        step = Step()
        for read in reads:
            place = self.places.get((read.reader, read.antenna))
            if place is None:
                continue
            loc, offset, via = place
            rssi = read.rssi + offset
            if rssi < self.min_rssi:
                continue
            tag = self.tags.get(read.epc)
            if tag is None:
                tag = self.tags[read.epc] = _Tag(read.time_us)
            tag.seen = max(tag.seen, read.time_us)
            new = self.decide(tag, loc, rssi, read.time_us)
            if new is not None and new is not tag.loc:
                kind = transition_kind(tag.loc, new)
                if kind is not None:
                    step.movements.append(
                        make_movement(
                            kind, read.epc, tag.loc, new, read.time_us, read.reader, via, None
                        )
                    )
                tag.loc = new
        return step

    def decide(self, tag: _Tag, loc: Loc, rssi: float, t: int) -> Loc | None:
        raise NotImplementedError

    def progress(self, source: str, time_us: int) -> None:
        """A reader is alive up to `time_us`: the baselines keep no event time (no-op)."""

    def source_down(self, source: str) -> None:
        """A reader's connection was lost: the baselines do not hold departures (no-op)."""

    def flush(self) -> Step:
        return Step()

    def tick(self, now_us: int) -> Step:
        """Departure by absence with the engine's thresholds (time: last seen)."""
        step = Step()
        for epc, tag in self.tags.items():
            loc = tag.loc
            if loc is None or loc.offsite or not loc.departed_after_us:
                continue
            if now_us - tag.seen >= loc.departed_after_us:
                step.movements.append(
                    make_movement("departed", epc, loc, None, tag.seen, "engine", None, None)
                )
                tag.loc = None
                tag.stats.clear()
        return step


class LastAntennaWins(Baseline):
    name = "last_antenna_wins"

    def decide(self, tag: _Tag, loc: Loc, rssi: float, t: int) -> Loc | None:
        return loc


class EdgeXRule(Baseline):
    name = "edgex"

    def decide(self, tag: _Tag, loc: Loc, rssi: float, t: int) -> Loc | None:
        stats = tag.stats.get(loc.id)
        if stats is None:
            stats = tag.stats[loc.id] = (deque(maxlen=EDGEX_WINDOW), [t])
        stats[0].append(rssi)
        stats[1][0] = max(stats[1][0], t)
        current = tag.loc
        if current is None or current is loc:
            return loc
        here = tag.stats.get(current.id)
        if here is None or not here[0]:
            return loc
        if len(stats[0]) < 2:
            return None
        since_ms = (t - here[1][0]) / 1000.0
        intercept = EDGEX_THRESHOLD_DB - EDGEX_SLOPE_DB_PER_MS * EDGEX_HOLDOFF_MS
        offset = min(EDGEX_THRESHOLD_DB, EDGEX_SLOPE_DB_PER_MS * since_ms + intercept)
        mean_new = sum(stats[0]) / len(stats[0])
        mean_here = sum(here[0]) / len(here[0])
        return loc if mean_new > mean_here + offset else None
