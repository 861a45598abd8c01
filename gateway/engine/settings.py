"""Config of the movement engine: location profiles and global thresholds.

Lives with the engine (it owns the meaning of every number here); gateway.config embeds it
as `[engine]` and `[profiles.NAME]`. docs/engine.md explains each rule these numbers tune.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confschema import duration


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """How a location reacts: a dock door within a second, a shelf stays put for minutes.

    A tag leaves its current location only when another location's smoothed RSSI beats the
    current one by an offset: `threshold_db` while the tag was read at its current location
    within `holdoff_s`, then shrinking by `decay_db_per_s` (down to `floor_db`) the longer the
    current location has not read it (EdgeX's mobility profile, in seconds). The lead must then
    hold for the new location's `confirm_s`.
    """

    confirm_s: float = duration(1.0)  # a location change (or a first sighting) must hold this long
    departed_after_s: float | None = duration(None)  # absent this long -> departed (None: never)
    forget_after_s: float = duration(3600.0)  # absent this long (and not present) -> dropped
    threshold_db: float = 6.0  # how much stronger another location must be to take the tag
    holdoff_s: float = duration(0.5)  # the full threshold applies this long after the last read
    decay_db_per_s: float = 8.0  # then the threshold shrinks this fast...
    floor_db: float = -6.0  # ...down to this (negative: a stale location loses to weaker reads)
    window_reads: int = 5  # RSSI smoothing: an exponential average over about this many reads

    def __post_init__(self) -> None:
        if self.window_reads < 1:
            raise ValueError("window_reads: must be at least 1")
        if self.decay_db_per_s < 0:
            raise ValueError("decay_db_per_s: must not be negative")
        if self.floor_db > self.threshold_db:
            raise ValueError("floor_db: must not exceed threshold_db")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    min_rssi_dbm: float = -80.0  # weaker reads (after rssi_offset_db) are suppressed as weak
    min_reads: int = 2  # reads needed before a tag counts as seen at a location
    max_tags: int = 2_000_000  # tracked tags; the least recently seen are evicted beyond it
    # A reader whose event time is this far behind the others' (or the gateway clock's) no
    # longer holds their reads back: its reads are judged tag by tag when they come.
    reorder_window_s: float = duration(0.5)
    # A reader silent beyond its usual rhythm (or down) holds departures by absence for at
    # most this long, so that what it buffered can still prove a tag stayed or moved.
    silent_reader_hold_s: float = duration(120.0)
    tick_s: float = duration(0.25)  # how often absence (departures, forgetting) is checked
    # A read at another location this much weaker than the tag's smoothed RSSI where it is,
    # within cross_read_window_s of a read there, is a cross-read/stray: never evidence.
    cross_read_margin_db: float = 6.0
    cross_read_window_s: float = duration(2.0)
    # Evidence for a new location expires when that location has not read the tag this long.
    evidence_gap_s: float = duration(3.0)

    def __post_init__(self) -> None:
        if self.min_reads < 1:
            raise ValueError("min_reads: must be at least 1")
        if self.max_tags < 1:
            raise ValueError("max_tags: must be at least 1")
        if self.cross_read_margin_db < 0:
            raise ValueError("cross_read_margin_db: must not be negative")
