"""`fc-edge bench llrp [--json]`: how fast tag reads get through the LLRP path.

Three figures from the same run, on the same pre-encoded RO_ACCESS_REPORTs (encoded by the LLRP
simulator's own codec with exactly the TagReportContentSelector the driver asks for):

* ``sllurp_decode``: `LLRPMessage(msgbytes=frame)` alone on every frame: the floor, since the
  driver never bypasses sllurp's decoder.
* ``driver``: the same bytes fed, in 4096-byte recv-sized chunks, through the driver's own sllurp
  client (framing, sllurp decode and state machine, tag callback, TagRead conversion, batching)
  into a sink. No socket: this isolates what the driver adds to the floor.
* ``driver_tcp`` (unless --no-tcp): the real thing over loopback: the simulator in a child
  process pushing reports as fast as the client drains them, the driver's run() here.
  Its CPU figure is this process only (driver, sllurp thread, event loop).

Each gives tags/s and CPU seconds per 100k tags (`time.process_time`, all threads). Pass your own
sink to `bench_driver()` / `bench_tcp()` to measure a longer path (e.g. the whole gateway).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from drivers.base import DeviceEvent, DriverHealth, Sink
from gateway.model import Movement, TagRead

CHUNK = 4096  # what sllurp's main loop asks recv() for


class CountingSink:
    """A Sink that only counts reads (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tags = 0
        self.batches = 0

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        with self._lock:
            self.tags += len(batch)
            self.batches += 1

    def event(self, event: DeviceEvent) -> None:
        pass

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def progress(self, source: str, time_us: int) -> None:
        pass

    def device_state(self, device: str, health: DriverHealth) -> None:
        pass

    def cursor(self, key: str) -> int | None:
        return None


def encode_reports(tags: int, tags_per_report: int, distinct: int = 1000) -> list[bytes]:
    """RO_ACCESS_REPORT frames for `tags` reads of `distinct` 96-bit EPCs on antennas 1-2."""
    from simulators.llrp import codec

    selector = codec.Selector(
        antenna_id=True, peak_rssi=True, first_seen=True, last_seen=True, tag_seen_count=True
    )
    encoder = codec.ReportEncoder(selector)
    now_us = time.time_ns() // 1000
    epcs = [bytes.fromhex("30340000000000") + i.to_bytes(5, "big") for i in range(distinct)]
    frames: list[bytes] = []
    for start in range(0, tags, tags_per_report):
        count = min(tags_per_report, tags - start)
        reads = [
            codec.TagRead(epcs[(start + k) % distinct], 1 + (start + k) % 2, -55, now_us, now_us)
            for k in range(count)
        ]
        frames.append(encoder.report(len(frames) + 1, reads))
    return frames


def _figures(tags: int, wall_s: float, cpu_s: float) -> dict[str, float]:
    return {
        "tags": tags,
        "wall_s": round(wall_s, 4),
        "tags_per_s": round(tags / wall_s) if wall_s > 0 else 0,
        "cpu_s_per_100k": round(cpu_s * 100_000 / tags, 4) if tags else 0.0,
    }


def bench_sllurp_decode(frames: Sequence[bytes]) -> dict[str, float]:
    from sllurp.llrp import LLRPMessage

    tags = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for frame in frames:
        msg = LLRPMessage(msgbytes=frame)
        tags += len(msg.msgdict["RO_ACCESS_REPORT"]["TagReportData"])
    return _figures(tags, time.perf_counter() - wall0, time.process_time() - cpu0)


def _bench_device(port: int = 5084) -> Any:
    from drivers.llrp import LLRPOptions
    from gateway.config import AntennaSettings, DeviceSettings

    antennas = {1: AntennaSettings("BENCH-1"), 2: AntennaSettings("BENCH-2")}
    # Reports are pre-encoded with the encode-time clock: never re-stamp them as skewed.
    options = LLRPOptions(host="127.0.0.1", port=port, max_clock_skew_s=86_400.0)
    return DeviceSettings("bench", "llrp", antennas, options)


def bench_driver(frames: Sequence[bytes], sink: Sink | None = None) -> dict[str, float]:
    """The driver's client path without a socket, into `sink` (a CountingSink by default)."""
    from drivers.llrp import LLRPDriver, _Session

    counting = CountingSink()
    target: Sink = counting if sink is None else _Tee(counting, sink)
    session = _Session(LLRPDriver(_bench_device(), target))
    data = b"".join(frames)
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    feed = session.client.raw_data_received
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for chunk in chunks:
        feed(chunk)
    result = _figures(counting.tags, time.perf_counter() - wall0, time.process_time() - cpu0)
    result["batches"] = counting.batches
    return result


# --- over TCP, with the simulator in a child process -----------------------------------------


def _serve_generator(tags_per_report: int) -> int:
    """Child process: one simulated reader pushing reports as fast as the client reads them.
    Prints {"port": N}, then serves until stdin closes."""
    from simulators.llrp import Generator, ReaderSpec, SimServer

    generator = Generator(
        tags=1000, rate=10_000_000.0, tags_per_report=tags_per_report, antennas=(1, 2)
    )
    with SimServer([ReaderSpec("bench", generator=generator)]).running() as sim:
        print(json.dumps({"port": sim.reader("bench").port}), flush=True)
        sys.stdin.read()
    return 0


def bench_tcp(
    seconds: float, tags_per_report: int, sink: Sink | None = None, warmup_s: float = 1.0
) -> dict[str, float]:
    """The driver's run() against a simulator child process for `seconds` once inventorying."""
    from drivers.llrp import LLRPDriver

    counting = CountingSink()
    target: Sink = counting if sink is None else _Tee(counting, sink)
    child = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "gateway.bench.llrp", "--serve-generator", str(tags_per_report)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        port = json.loads(child.stdout.readline())["port"]
        driver = LLRPDriver(_bench_device(port), target)
        return asyncio.run(_measure(driver, counting, seconds, warmup_s))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def _measure(
    driver: Any, counting: CountingSink, seconds: float, warmup_s: float
) -> dict[str, float]:
    task = asyncio.create_task(driver.run())
    try:
        deadline = time.monotonic() + 30
        while driver.health().state != "up":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the driver did not come up: {driver.health().to_json()}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(warmup_s)
        tags0, wall0, cpu0 = counting.tags, time.perf_counter(), time.process_time()
        await asyncio.sleep(seconds)
        tags, wall, cpu = counting.tags - tags0, time.perf_counter() - wall0, time.process_time()
        result = _figures(tags, wall, cpu - cpu0)
        result["reconnects"] = sum(driver.health().reconnects.values())
        return result
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


class _Tee:
    """Counts, then passes every call on to the sink under measurement."""

    def __init__(self, counting: CountingSink, inner: Sink) -> None:
        self.counting = counting
        self.inner = inner

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        self.inner.reads(batch, cursors)
        self.counting.reads(batch)

    def event(self, event: DeviceEvent) -> None:
        self.inner.event(event)

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        return self.inner.movement(move, cursors)

    def progress(self, source: str, time_us: int) -> None:
        self.inner.progress(source, time_us)

    def device_state(self, device: str, health: DriverHealth) -> None:
        self.inner.device_state(device, health)

    def cursor(self, key: str) -> int | None:
        return self.inner.cursor(key)


# --- command ---------------------------------------------------------------------------------


def run_bench(
    tags: int = 200_000,
    tags_per_report: Sequence[int] = (100, 1),
    tcp_seconds: float | None = 3.0,
    sink: Sink | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"python": sys.version.split()[0], "runs": []}
    for per_report in tags_per_report:
        frames = encode_reports(tags, per_report)
        floor = bench_sllurp_decode(frames)
        driver = bench_driver(frames, sink)
        run: dict[str, Any] = {
            "tags_per_report": per_report,
            "sllurp_decode": floor,
            "driver": driver,
            "driver_vs_floor": round(driver["tags_per_s"] / floor["tags_per_s"], 3),
        }
        if tcp_seconds:
            tcp = bench_tcp(tcp_seconds, per_report, sink)
            run["driver_tcp"] = tcp
            run["driver_tcp_vs_floor"] = round(tcp["tags_per_s"] / floor["tags_per_s"], 3)
        out["runs"].append(run)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fc-edge bench llrp", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tags", type=int, default=200_000, help="tags per offline run")
    parser.add_argument(
        "--tags-per-report", type=int, action="append", help="report size(s) (default 100 and 1)"
    )
    parser.add_argument("--tcp-seconds", type=float, default=3.0, help="TCP run length")
    parser.add_argument("--no-tcp", action="store_true", help="skip the loopback TCP run")
    parser.add_argument("--serve-generator", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_generator:
        return _serve_generator(args.serve_generator)
    if args.tags <= 0:
        parser.error("--tags must be positive")
    result = run_bench(
        tags=args.tags,
        tags_per_report=args.tags_per_report or (100, 1),
        tcp_seconds=None if args.no_tcp else args.tcp_seconds,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for run in result["runs"]:
            print(f"{run['tags_per_report']} tag(s) per report:")
            for key in ("sllurp_decode", "driver", "driver_tcp"):
                if key in run:
                    fig = run[key]
                    print(
                        f"  {key:14} {fig['tags_per_s']:>9,} tags/s  "
                        f"{fig['cpu_s_per_100k']:.3f} CPU-s/100k tags"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
