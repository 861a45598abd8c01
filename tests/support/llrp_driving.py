"""Driving the real LLRP driver (sllurp inside) against the LLRP simulator over loopback TCP,
for the driver tests of every reader profile: fast timings, a device, the driver's run() on its
own loop thread as the gateway runs it, and proof that reads flow end to end."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from drivers.llrp import LLRPDriver, LLRPOptions
from gateway.config import AntennaSettings, DeviceSettings
from simulators.llrp import ReaderSpec, SimServer
from tests.support.helpers import RecordingSink, wait_for

READER = "dock-07"
_serials = itertools.count(1)

# Fast timings for tests: liveness fires after 2 x 0.3 s, a stuck handshake after 1.5 s.
FAST = {"keepalive_s": 0.3, "handshake_timeout_s": 1.5, "reconnect_max_s": 2.0}


# A stream of EPCs through each reader's field (the backlog and decoder-process tests): a new
# EPC enters every EVERY_S and is read READS_EACH times, READ_EVERY_S apart.
EPCS_PER_READER = 400
EVERY_S = 0.04
READS_EACH = 6
READ_EVERY_S = 0.4


def field_epc(reader: int, k: int, family: int = 0) -> str:
    """The k-th EPC through reader `reader`'s field (`family` keeps two tests' EPCs apart)."""
    return f"3034257BF7194E4{family:X}{reader:02X}{k:06X}"


def field_reads(reader: int, family: int = 0) -> list[tuple[float, int, str, int]]:
    """(t, antenna, epc, rssi): each EPC read 6 times over 2 s, entering every 40 ms."""
    reads = []
    for k in range(EPCS_PER_READER):
        start = 1.0 + k * EVERY_S
        epc = field_epc(reader, k, family)
        reads += [(start + n * READ_EVERY_S, 1, epc, -50) for n in range(READS_EACH)]
    return sorted(reads)


def unique_epc() -> str:
    return f"30340000000000{next(_serials):010X}"


def device(port: int, antennas: tuple[int, ...] = (1, 2), **options: Any) -> DeviceSettings:
    opts = LLRPOptions(host="127.0.0.1", port=port, **{**FAST, **options})
    ants = {n: AntennaSettings(location=f"LOC-{n}", read_point=f"rp-{n}") for n in antennas}
    return DeviceSettings(READER, "llrp", ants, opts)


class Running:
    """A driver's run() on its own asyncio loop thread, as the gateway's daemon runs it."""

    def __init__(self, driver: LLRPDriver) -> None:
        self.driver = driver
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.future = asyncio.run_coroutine_threadsafe(self._run(), self.loop)

    async def _run(self) -> None:
        try:
            await self.driver.run()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # run() must never end on a device error
            self.error = exc
        finally:
            self.done.set()

    def stop(self, timeout: float = 15.0) -> float:
        """Cancel run(); returns how long it took to finish."""
        started = time.monotonic()
        self.future.cancel()
        assert self.done.wait(timeout), "run() did not finish after cancel"
        took = time.monotonic() - started
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        assert self.error is None, f"run() raised {self.error!r}"
        return took


@contextmanager
def simulated(reads: list[Any] | None = None, port: int = 0) -> Iterator[SimServer]:
    with SimServer([ReaderSpec(READER, reads=reads or [], port=port)]).running() as sim:
        yield sim


@contextmanager
def driving(port: int, **kw: Any) -> Iterator[tuple[LLRPDriver, RecordingSink, Running]]:
    sink = RecordingSink()
    drv = LLRPDriver(device(port, **kw), sink)
    running = Running(drv)
    try:
        yield drv, sink, running
    finally:
        if not running.done.is_set():
            running.stop()


def epcs(sink: RecordingSink) -> set[str]:
    return {r.epc for r in sink.all_reads}


def reads_flow(sim: SimServer, sink: RecordingSink, timeout: float = 30.0) -> str:
    """Prove reads get through end to end now: keep offering a fresh EPC until it arrives."""
    reader = sim.reader(READER)
    epc = unique_epc()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reader.active:
            reader.add_reads_in(0.0, [(1, epc, -55)])
            try:
                wait_for(lambda: epc in epcs(sink), timeout=1.0)
                return epc
            except AssertionError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"no read got through within {timeout}s: {reader.status()}")


def reconnects(drv: LLRPDriver, cause: str) -> int:
    return drv.health().reconnects[cause]


def no_sllurp_thread_for(port: int) -> bool:
    return not any(
        t.name.endswith(f"-{port}") and t.name.startswith("sllurp-reader") and t.is_alive()
        for t in threading.enumerate()
    )
