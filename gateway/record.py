"""`fc-edge record -c FILE --out capture.jsonl [--duration-s S]`: record live reads.

Runs the configured readers' real drivers (no engine, no outbox, no MQTT) and writes every
read as a line of the replay capture format, so a portal can be tuned offline with the
`replay` driver and `fc-edge score`:

    {"t": 12.5, "reader": "dock-03", "antenna": 2, "epc": "3034...", "rssi": -55}

`t` is seconds since the first read, from the readers' own timestamps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import IO

from drivers.base import DeviceEvent, DriverHealth, driver_class
from gateway import config as config_mod
from gateway.model import Movement, TagRead


class CaptureSink:
    """A Sink that writes reads to a capture file (thread-safe) and ignores the rest."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.start_us: int | None = None
        self.recorded = 0

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        with self.lock:
            for read in batch:
                if self.start_us is None:
                    self.start_us = read.time_us
                line = {
                    "t": round((read.time_us - self.start_us) / 1e6, 6),
                    "reader": read.reader,
                    "antenna": read.antenna,
                    "epc": read.epc,
                    "rssi": read.rssi,
                }
                self.out.write(json.dumps(line) + "\n")
            self.recorded += len(batch)
            self.out.flush()

    def event(self, event: DeviceEvent) -> None:
        pass

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        future: Future[None] = Future()
        future.set_exception(RuntimeError("recording: device-reported moves are not booked"))
        return future

    def progress(self, source: str, time_us: int) -> None:
        pass  # a recording keeps reads only

    def device_state(self, device: str, health: DriverHealth) -> None:
        print(
            json.dumps({"device": device, "state": health.state, "detail": health.detail}),
            file=sys.stderr,
            flush=True,
        )

    def cursor(self, key: str) -> int | None:
        return None


async def record(
    settings: config_mod.Settings, sink: CaptureSink, duration_s: float | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(driver_class(d.driver)(d, sink).run())  # type: ignore[arg-type]
        for d in settings.readers
        if d.driver != "replay"
    ]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration_s):  # (not wait_for: see Pipeline._ingest_loop)
            await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge record", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--out", required=True, help="capture file to write (JSON Lines)")
    p.add_argument("--duration-s", type=float, help="stop after this long (default: until Ctrl-C)")
    args = p.parse_args(argv)
    try:
        settings = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return config_mod.EX_CONFIG
    with open(args.out, "w", encoding="utf-8") as out:
        sink = CaptureSink(out)
        asyncio.run(record(settings, sink, args.duration_s))
    print(json.dumps({"recorded": sink.recorded, "out": args.out}), file=sys.stderr)
    return 0
