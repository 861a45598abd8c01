"""Event time per reader: how far each source of reads has got, and what that lets the engine
judge. Pure: times come in with the reads, with progress() and with the gateway clock that
tick() is given (reads are on that clock too: drivers correct reader clocks, see clock.py).

Stream processors (Flink, Beam) judge event time the same way: each source has a watermark
(here its `mark`: the newest reader time it delivered, or vouched for with a KEEPALIVE), and
what may be judged is the minimum over the *active* sources. So:

* Reads wait only until every active reader has passed their time (the read horizon), not a
  fixed window: with every reader reporting, a read is judged a report period after it came.
* A reader that reads nothing, is slow, or is gone does not hold the others back: once its mark
  is `idle_us` behind the newest one (or the gateway clock) it is left out. When its reads come
  after all (a backlog after a reconnect), they are judged then, tag by tag: only one tag's
  reads must be taken in order, so a read is late only for a tag that already has a newer read
  judged (Engine._judge_python), never because another reader got ahead.
* Absence is different: a tag is departed when no reader read it for a while, and a reader that
  is silent cannot say it did not. A source that stays silent for longer than its usual rhythm
  (learnt: `patience`), or that its driver reported down, holds absence judgments (the absence
  horizon) at its mark until it catches up, for at most `hold_us` (then it is let go, counted:
  a reader unplugged for good must not stop departures everywhere).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

NEVER = -(1 << 62)
_GAP_WEIGHT = 0.25  # EWMA weight of a mark's advances (the source's rhythm)
_PATIENCE_GAPS = 3.0  # silent for this many usual advances: the source holds absence
_DISORDER_DECAY = 0.9  # per batch: a source's disorder bound shrinks back after a burst


@dataclass(slots=True)
class Source:
    """One reader's progress in event time."""

    name: str
    mark: int = NEVER  # newest time it delivered or vouched for
    newest_read: int = NEVER  # newest time it delivered
    disorder: int = 0  # how far behind its own newest read it delivered reads lately (µs)
    latency: int = 0  # how long after a read it delivers it, at most lately (µs, gateway clock)
    gap: float = 0.0  # its usual advance of the mark (µs, EWMA)
    down: bool = False  # its driver reported the connection lost
    held_since: int | None = None  # gateway time since when it holds absence judgments
    let_go: bool = False  # held for hold_us: no longer holding, until it catches up
    behind: int = 0  # reads that came behind what was already judged (judged tag by tag)
    released: int = 0  # times it was let go after holding for hold_us

    def advance(self, t: int) -> None:
        if t <= self.mark:
            return
        if self.mark != NEVER:
            self.gap += _GAP_WEIGHT * ((t - self.mark) - self.gap)
        self.mark = t


class Sources:
    """The sources of one engine, by reader name."""

    def __init__(self, idle_us: int, hold_us: int) -> None:
        self.idle_us = idle_us
        self.hold_us = hold_us
        self._by_name: dict[str, Source] = {}

    def __iter__(self) -> Iterator[Source]:
        # A copy (made atomically): the metrics thread iterates while the loop adds sources.
        return iter(list(self._by_name.values()))

    def get(self, name: str) -> Source:
        src = self._by_name.get(name)
        if src is None:
            # A new reader's disorder is not known yet: assume the most a reader may have
            # (idle_us) and learn it down from its batches.
            src = self._by_name[name] = Source(name, disorder=self.idle_us)
        return src

    def delivered(self, name: str, oldest: int, newest: int, now: int | None = None) -> Source:
        """A batch from `name` with reads from `oldest` to `newest` came (at gateway time
        `now`, when known: the reader's delivery latency is learnt from it)."""
        src = self.get(name)
        src.down = False
        if now is not None:
            late = min(max(0, now - oldest), self.idle_us)  # a backlog is not its latency
            src.latency = max(late, int(src.latency * _DISORDER_DECAY))
        # Measured against its reads only: a KEEPALIVE may overtake reads the reader still
        # holds for its next report, and that is not disorder of the reads themselves.
        behind = src.newest_read - oldest
        src.disorder = int(src.disorder * _DISORDER_DECAY)
        if 0 < behind <= self.idle_us and behind > src.disorder:
            src.disorder = behind  # within a reader's own jitter; more is a backlog
        if newest > src.newest_read:
            src.newest_read = newest
        src.advance(newest)
        return src

    def progress(self, name: str, t: int) -> None:
        """`name` is alive and will deliver nothing older than `t` (a KEEPALIVE)."""
        src = self.get(name)
        src.down = False
        src.advance(t)

    def lost(self, name: str) -> None:
        """`name`'s connection is lost: hold absence judgments now, not after its patience."""
        self.get(name).down = True

    def retire(self, name: str) -> None:
        """`name` will send nothing more (a finished replay): it holds nothing back."""
        self._by_name.pop(name, None)

    def read_horizon(self, now: int | None = None) -> int | None:
        """Reads up to this time may be judged: every active source has passed it. A source
        `idle_us` behind the newest mark (or, at a tick, behind the gateway clock) or down is
        not active. None: no source yet."""
        if not self._by_name:
            return None
        marks = [(src, self._mark_at(src, now)) for src in self._by_name.values()]
        lead = max(mark for _, mark in marks)
        if now is not None and now > lead:
            lead = now
        floor = lead - self.idle_us
        horizon = lead
        active = 0
        for src, mark in marks:
            if mark >= floor and not src.down:
                active += 1
                # Its own reads may come this much out of order; what its latency vouches for
                # already covers the oldest read of a batch.
                h = max(src.mark - src.disorder, mark if mark > src.mark else NEVER)
                if h < horizon:
                    horizon = h
        if active == 1:
            # One reader alone cannot reorder a tag's reads (one connection delivers each tag's
            # reads in order; its disorder is between tags): no need to wait for it.
            return lead
        return horizon

    @staticmethod
    def _mark_at(src: Source, now: int | None) -> int:
        """A connected reader has delivered what it read up to its latency ago (a reader with
        nothing in its field says nothing between KEEPALIVEs, and must not be waited for)."""
        if now is None or src.down:
            return src.mark
        return max(src.mark, now - src.latency)

    def patience(self, src: Source) -> float:
        return max(float(self.idle_us), _PATIENCE_GAPS * src.gap)

    def absence_horizon(self, now: int) -> int:
        """Absence may be judged up to this time: the gateway clock less idle_us, held back
        to the mark of any source that is silent beyond its patience or down (for at most
        hold_us each)."""
        horizon = now - self.idle_us
        for src in self._by_name.values():
            if src.mark == NEVER:
                continue
            if src.down or now - src.mark > self.patience(src):
                if src.held_since is None:
                    src.held_since = now
                if now - src.held_since < self.hold_us:
                    if src.mark < horizon:
                        horizon = src.mark
                elif not src.let_go:
                    src.let_go = True
                    src.released += 1
            else:
                src.held_since = None
                src.let_go = False
        return horizon

    def lag_us(self, now: int) -> dict[str, int]:
        """How far each source's event time is behind the gateway clock."""
        return {src.name: now - src.mark for src in self if src.mark != NEVER}
