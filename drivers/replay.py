"""Replay driver: plays a recorded capture (JSON Lines) as if its reader were live.

    {"t": 12.5, "reader": "dock-03", "antenna": 2, "epc": "3034...", "rssi": -55}

It plays the lines that belong to its own `name`, at real or `speed`x speed, and resumes after
its stored cursor (the line number of the last read it handed over, committed by the outbox
with the movements those reads produced). Reader timestamps are the replay's start time (kept
as a cursor too, so a resumed replay keeps its timeline) plus t / speed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator

from drivers.base import Driver
from drivers.options import ReplayOptions
from gateway.model import TagRead, now_us

log = logging.getLogger("fc_edge.driver.replay")

BATCH = 500


class ReplayDriver(Driver):
    Options = ReplayOptions
    kind = "reader"

    @property
    def cursor_key(self) -> str:
        return f"replay:{self.name}:line"

    @property
    def epoch_key(self) -> str:
        return f"replay:{self.name}:epoch_us"

    # Not Driver.run's reconnect loop: a capture is played once and then the driver ends
    # ("stopped", which tells the engine this reader sends no more), where that loop never
    # ends; and an unreadable file is retried at a steady pace, with nothing to back off from.
    async def run(self) -> None:
        opts: ReplayOptions = self.options
        path = self.device.resolve(opts.file)
        while True:
            stored_line = None if opts.loop else self.sink.cursor(self.cursor_key)
            stored_epoch = None if opts.loop else self.sink.cursor(self.epoch_key)
            resume_after = -1 if stored_line is None else stored_line
            epoch = now_us() if stored_epoch is None else stored_epoch
            try:
                await self._play(path, resume_after, epoch, opts.speed)
            except OSError as exc:
                self.count_error("file")
                self.set_state("backoff", f"cannot read {path}: {exc.strerror}")
                await asyncio.sleep(5)
                continue
            if not opts.loop:
                self.set_state("stopped", "capture finished")
                return

    async def _play(self, path: object, resume_after: int, epoch_us: int, speed: float) -> None:
        self.set_state("up")
        batch: list[TagRead] = []
        last_line = resume_after
        cursors = {self.epoch_key: epoch_us}
        for line_no, t, read in self._reads(path, resume_after, epoch_us, speed):
            due = epoch_us + t * 1e6 / speed
            wait = (due - time.time_ns() / 1000) / 1e6
            if wait > 0.002 or len(batch) >= BATCH:
                self._flush(batch, last_line, cursors)
                batch = []
                if wait > 0:
                    # Nothing older than the next read will come: the engine need not wait
                    # for this reader meanwhile (a live reader's KEEPALIVE says the same).
                    self.sink.progress(self.name, int(due) - 1)
                    await asyncio.sleep(wait)
            batch.append(read)
            last_line = line_no
        self._flush(batch, last_line, cursors)

    def _flush(self, batch: list[TagRead], last_line: int, cursors: dict[str, int]) -> None:
        if not batch:
            return
        self.mark_data()
        moves = {} if self.options.loop else {**cursors, self.cursor_key: last_line}
        self.sink.reads(batch, moves)

    def _reads(
        self, path: object, resume_after: int, epoch_us: int, speed: float
    ) -> Iterator[tuple[int, float, TagRead]]:
        with open(path, encoding="utf-8") as f:  # type: ignore[call-overload]
            for line_no, line in enumerate(f):
                if line_no <= resume_after or not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if rec["reader"] != self.name:
                        continue
                    t = float(rec["t"])
                    read = TagRead(
                        epc=str(rec["epc"]).upper(),
                        reader=self.name,
                        antenna=int(rec["antenna"]),
                        rssi=float(rec.get("rssi", -60)),
                        time_us=int(epoch_us + t * 1e6 / speed),
                    )
                except (ValueError, KeyError, TypeError):
                    self.count_error("bad_line")
                    continue
                yield line_no, t, read
