"""The movement engine: batches of TagReads in, true stock movements out. Pure: no I/O, no
threads, no clock of its own (time comes in with the reads and with tick()).

This is the spine's minimal engine: first confirmed sighting at an on-site location ->
`arrived`; a change between on-site locations -> `moved`; a read at an offsite portal side
after being present -> `departed`; absence past the location's departed_after_s -> `departed`.
The engine issue replaces the location decision; this interface stays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gateway.engine.config import EngineConfig, Place
from gateway.model import Movement, Observed, TagRead, TagState


@dataclass(slots=True)
class Step:
    """What one feed/tick produced: movements, and the tag states they changed (to persist)."""

    movements: list[Movement] = field(default_factory=list)
    states: list[TagState] = field(default_factory=list)


@dataclass(slots=True)
class _Tag:
    present: bool
    location: str | None
    last_seen_us: int
    # evidence at the candidate location, reset when the candidate changes
    candidate: str | None = None
    reads: int = 0
    rssi_peak: float = -1000.0
    first_seen_us: int = 0
    via_offsite: str | None = None  # the offsite location it was last seen at (for `from`)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.tags: dict[str, _Tag] = {}
        self.suppressed: dict[str, int] = {"weak": 0, "unknown_antenna": 0}
        self.movement_counts: dict[str, int] = {"arrived": 0, "moved": 0, "departed": 0}

    @classmethod
    def restore(cls, states: Iterable[TagState], config: EngineConfig) -> Engine:
        engine = cls(config)
        for s in states:
            engine.tags[s.epc] = _Tag(s.present, s.location, s.last_seen_us)
        return engine

    def reload(self, config: EngineConfig) -> None:
        """New locations/portals/profiles; tag states are kept."""
        self.config = config

    def state_of(self, epc: str) -> TagState | None:
        tag = self.tags.get(epc)
        if tag is None:
            return None
        return TagState(epc, tag.present, tag.location, tag.last_seen_us)

    def feed(self, reads: Sequence[TagRead]) -> Step:
        step = Step()
        places = self.config.places
        min_rssi = self.config.settings.min_rssi_dbm
        for read in reads:
            place = places.get((read.reader, read.antenna))
            if place is None:
                self.suppressed["unknown_antenna"] += 1
                continue
            rssi = read.rssi + place.rssi_offset_db
            if rssi < min_rssi:
                self.suppressed["weak"] += 1
                continue
            self._observe(read, place, rssi, step)
        return step

    def _observe(self, read: TagRead, place: Place, rssi: float, step: Step) -> None:
        tag = self.tags.get(read.epc)
        if tag is None:
            tag = self.tags[read.epc] = _Tag(False, None, read.time_us)
        tag.last_seen_us = max(tag.last_seen_us, read.time_us)
        if place.offsite:
            if tag.present and place.side == "outside":
                self._emit(step, read.epc, tag, "departed", place.location, read, place)
                tag.present, tag.location = False, None
            tag.via_offsite = place.location
            tag.candidate = None
            return
        if tag.present and tag.location == place.location:
            tag.candidate = None
            return
        if tag.candidate != place.location:
            tag.candidate = place.location
            tag.reads = 0
            tag.rssi_peak = rssi
            tag.first_seen_us = read.time_us
        tag.reads += read.count
        tag.rssi_peak = max(tag.rssi_peak, rssi)
        if tag.reads < self.config.settings.min_reads:
            return
        kind = "moved" if tag.present else "arrived"
        self._emit(step, read.epc, tag, kind, place.location, read, place)
        tag.present, tag.location, tag.candidate = True, place.location, None

    def _emit(
        self,
        step: Step,
        epc: str,
        tag: _Tag,
        kind: str,
        to: str,
        read: TagRead,
        place: Place,
    ) -> None:
        from_ = tag.location if tag.present else tag.via_offsite
        target = self.config.locations[to]
        observed = Observed(
            reads=max(tag.reads, 1),
            rssi_peak=max(tag.rssi_peak, read.rssi),
            first_seen_us=tag.first_seen_us or read.time_us,
            last_seen_us=read.time_us,
        )
        movement = Movement(
            type=kind,  # type: ignore[arg-type]
            epc=epc,
            from_=from_,
            to=to,
            time_us=read.time_us,
            source=read.reader,
            via=place.portal or place.read_point,
            biz_step=target.biz_step,
            disposition=target.disposition,
            observed=observed,
        )
        self.movement_counts[kind] += 1
        step.movements.append(movement)
        present = kind != "departed"
        step.states.append(TagState(epc, present, to if present else None, tag.last_seen_us))

    def tick(self, now_us: int) -> Step:
        """Departures by absence and forgetting, judged against `now_us` (the gateway clock)."""
        step = Step()
        locations = self.config.locations
        forget: list[str] = []
        for epc, tag in self.tags.items():
            if tag.present and tag.location is not None:
                info = locations.get(tag.location)
                after = info.profile.departed_after_s if info else None
                if after is not None and now_us - tag.last_seen_us > after * 1e6:
                    self._depart_by_absence(step, epc, tag, now_us)
            elif not tag.present:
                if now_us - tag.last_seen_us > self._forget_after_us(tag):
                    forget.append(epc)
        for epc in forget:
            del self.tags[epc]
        return step

    def _forget_after_us(self, tag: _Tag) -> float:
        info = self.config.locations.get(tag.location or "")
        return (info.profile.forget_after_s if info else 3600.0) * 1e6

    def _depart_by_absence(self, step: Step, epc: str, tag: _Tag, now_us: int) -> None:
        source_loc = self.config.locations[tag.location or ""]
        movement = Movement(
            type="departed",
            epc=epc,
            from_=tag.location,
            to=None,
            time_us=now_us,
            source="engine",
            via=None,
            biz_step=source_loc.biz_step,
            disposition=source_loc.disposition,
            observed=None,
        )
        self.movement_counts["departed"] += 1
        step.movements.append(movement)
        tag.present, tag.location = False, None
        step.states.append(TagState(epc, False, None, tag.last_seen_us))

    def apply(self, movement: Movement) -> Step:
        """A movement reported by a device (robot, handheld booking) updates the tag's state."""
        step = Step()
        if movement.epc is None:
            return step
        present = movement.type != "departed" and movement.to is not None
        location = movement.to if present else None
        tag = self.tags.get(movement.epc)
        if tag is None:
            tag = self.tags[movement.epc] = _Tag(present, location, movement.time_us)
        tag.present, tag.location, tag.candidate = present, location, None
        tag.last_seen_us = max(tag.last_seen_us, movement.time_us)
        step.states.append(TagState(movement.epc, present, location, tag.last_seen_us))
        return step

    @property
    def tracked(self) -> int:
        return len(self.tags)
