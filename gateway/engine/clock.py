"""Reader clocks, put on the gateway's clock. Pure: arrival times come in with every call.

A reader stamps its reads with its own clock; that clock may run seconds ahead or behind,
drift, or step when NTP corrects it, and its reports may reach the gateway late (a slow link,
a backlog after a reconnect). Reads of two readers can be compared only on one clock, so each
reader's offset is estimated and every read is put on the gateway clock (EdgeX corrects per
reader too: AdjustLastReadOnByOrigin).

The estimate is NTP's minimum filter: `arrival - stamp` is the offset plus a delay that is
never negative, so its minimum over recent reads is the offset plus the link's least delay.
A read delayed more (a backlog, a congested link) keeps its own time: it happened then. One
way cannot tell a clock that lags from a slow link: see shift() for what is corrected. The
minimum ages upwards slowly (MAX_DRIFT: a clock drifting the other way) and is reset when
every read of a whole WINDOW_US says alike that it is wrong (a clock stepped backwards, or a
link that got permanently slower; a backlog draining does not say it alike).

A read whose stamp is later than its arrival by more than `max_step_us` beyond the estimate
cannot be true (a clock stepped forwards, a corrupt stamp): it is put at its arrival time and
counted as impossible, and does not move the estimate; if every read of a whole window says
so, the clock did step and the estimate follows.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DRIFT = 1e-3  # the estimate ages by 1 ms a second (crystal drift is ~50 ppm)
WINDOW_US = 10_000_000  # evidence of a step must hold this long before the estimate jumps
STEADY_US = 1_000_000  # ...and agree this closely


@dataclass(slots=True)
class ReaderClock:
    """One reader's clock offset estimate; correct() puts a stamp on the gateway clock."""

    max_step_us: int = 5_000_000
    offset_us: int | None = None  # the estimate: arrival - stamp at the least delay
    impossible: int = 0  # reads with a stamp later than they could be (put at arrival)
    _at: int = 0  # arrival time of the estimate's last update (for aging)
    _window_start: int | None = None  # since when every read disagreed with the estimate
    _window_min: int = 0  # their least arrival - stamp
    _window_max: int = 0  # and their greatest

    def correct(self, stamp_us: int, arrival_us: int) -> int:
        """`stamp_us` on the gateway clock (arrival_us: when its report came)."""
        delay = arrival_us - stamp_us
        est = self._aged(arrival_us)
        if est is None:
            self._set(delay, arrival_us)
            return stamp_us + self.shift(delay)
        if delay >= est:
            if delay - est > self.max_step_us:
                self._disagrees(delay, arrival_us)  # far later than ever: a step back?
            else:
                self._window_start = None
            return stamp_us + self.shift(est)
        if est - delay <= self.max_step_us:
            self._set(delay, arrival_us)  # a little less delay than seen so far
            return stamp_us + self.shift(delay)
        self.impossible += 1  # later than it could be: not a time to trust
        self._disagrees(delay, arrival_us)
        return arrival_us

    def shift(self, offset_us: int) -> int:
        """What a stamp is moved by, for an estimated offset. A negative offset is certainly
        the clock (a read cannot arrive before it happened): all of it is corrected. A small
        positive one cannot be told from a slow link or a reader that holds its reports, and
        a reader's clock is usually NTP-synchronised: trusted. Beyond max_step_us it is the
        clock again (no link holds reports that long)."""
        if offset_us < 0 or offset_us > self.max_step_us:
            return offset_us
        return 0

    def _aged(self, now_us: int) -> int | None:
        if self.offset_us is None:
            return None
        return self.offset_us + int(MAX_DRIFT * max(0, now_us - self._at))

    def _set(self, offset_us: int, now_us: int) -> None:
        self.offset_us = offset_us
        self._at = now_us
        self._window_start = None

    def _disagrees(self, delay: int, arrival_us: int) -> None:
        """One more read disagreeing with the estimate. When every read of a whole window did,
        alike (within STEADY_US: a clock that stepped, a link that got slower, not a backlog
        draining), the estimate jumps to their least delay."""
        if self._window_start is None:
            self._window_start = arrival_us
            self._window_min = self._window_max = delay
            return
        self._window_min = min(self._window_min, delay)
        self._window_max = max(self._window_max, delay)
        if self._window_max - self._window_min > STEADY_US:
            self._window_start = None  # not one steady new offset: start over
        elif arrival_us - self._window_start >= WINDOW_US:
            self._set(self._window_min, arrival_us)


class ReaderClocks:
    """A ReaderClock per reader (a bench or a replay of several readers' reads)."""

    def __init__(self, max_step_us: int = 5_000_000) -> None:
        self.max_step_us = max_step_us
        self.by_reader: dict[str, ReaderClock] = {}

    def correct(self, reader: str, stamp_us: int, arrival_us: int) -> int:
        clock = self.by_reader.get(reader)
        if clock is None:
            clock = self.by_reader[reader] = ReaderClock(self.max_step_us)
        return clock.correct(stamp_us, arrival_us)
