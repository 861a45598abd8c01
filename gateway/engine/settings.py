"""Config of the movement engine: location profiles and global thresholds.

Lives with the engine (it owns the meaning of every number here); gateway.config embeds it
as `[engine]` and `[profiles.NAME]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.confschema import duration


@dataclass(frozen=True, slots=True)
class ProfileSettings:
    """How quickly a location reacts. A dock door confirms within a second; a shelf is stable."""

    confirm_s: float = duration(1.0)  # a location change must hold this long
    departed_after_s: float | None = duration(None)  # absent this long -> departed (None: never)
    forget_after_s: float = duration(3600.0)  # absent this long -> state dropped


@dataclass(frozen=True, slots=True)
class EngineSettings:
    min_rssi_dbm: float = -80.0  # weaker reads are ignored
    min_reads: int = 2  # reads needed before a tag counts as seen at a location
    max_tags: int = 2_000_000  # tracked tags; the least recently seen are evicted beyond it
    reorder_window_s: float = duration(0.5)  # late reads within this window are still placed
    tick_s: float = duration(0.25)  # how often absence (departures, forgetting) is checked
