"""LLRP decoder processes: the gateway's side.

With `[gateway] decoder_processes = N` (N > 0) the LLRP readers' sessions (sllurp, sockets,
parsing to reads) run in N child processes (drivers/llrp_worker.py), readers dealt to them in
turn; this process keeps the engine, the outbox and the publisher. Each child hands over
compact batches of parsed reads on a pipe (drivers/llrp_wire.py); one thread per child reads
its pipe and gives them to the GatewaySink as a driver thread would, so the sink's
backpressure holds that thread back, the pipe fills, the child's writes block and its sllurp
threads stop reading their sockets: the readers buffer, as in one process.

A child that dies, hangs (no heartbeat for HANG_S while its pipe is being read) or sends a
malformed message is counted (fc_edge_decoder_restarts_total{cause}), logged, killed and
started again; its readers go to "backoff" meanwhile (the engine holds their absence
judgments, as for any lost connection) and reconnect from the new child. Everything the child
had written to its pipe before it died is still delivered, in order, before that.

In this process each pooled reader is a RemoteReader: a Driver whose health is what its child
last reported (plus the counters of the children before it), so /metrics, /readyz and the
retained device topics show the same as for a reader driven in this process.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import ClassVar, Literal

from prometheus_client.core import GaugeMetricFamily, Metric

from drivers import llrp_wire as wire
from drivers.base import Driver, DriverHealth, Sink
from drivers.runtime import Backoff
from gateway.config import DeviceSettings, Settings
from gateway.metrics import counter, gauge

log = logging.getLogger("fc_edge.decoders")

ROOT = Path(__file__).resolve().parents[1]
# A child that sends nothing (not even its 1 s heartbeat) this long, while its pipe is read,
# is hung: its event loop is stuck.
HANG_S = 10.0
WATCH_S = 0.25  # how often each child is checked
STOP_GRACE_S = 5.0  # beyond the readers' close_timeout_s, for a child to end after "stop"
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux

RestartCause = Literal["died", "hung", "malformed_batch"]


def process_count(setting: int | str, cores: int | None = None) -> int:
    """`decoder_processes` as a number. "auto" is the cores but one, leaving a core to the
    gateway process (engine, outbox, publisher), except on two cores, where it is two: there
    the gateway process needs a third of a core at 120k reads/s while one decoder process is
    one GIL and stops at one core (84k reads/s; two sustained 115-121k on a quiet 2-core box,
    docs/performance.md)."""
    if setting != "auto":
        return int(setting)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    return cores if cores <= 2 else cores - 1


def pooled_readers(settings: Settings) -> list[DeviceSettings]:
    """The readers decoder processes serve: the LLRP ones, unless decoding is in-process."""
    if process_count(settings.gateway.decoder_processes) == 0:
        return []
    return [d for d in settings.readers if d.driver == "llrp"]


def deal(devices: Sequence[DeviceSettings], processes: int) -> list[list[DeviceSettings]]:
    """Readers dealt to the processes in turn; no process without a reader."""
    groups: list[list[DeviceSettings]] = [[] for _ in range(min(processes, len(devices)))]
    for k, device in enumerate(devices):
        groups[k % len(groups)].append(device)
    return groups


class RemoteReader(Driver):
    """An LLRP reader driven in a decoder process, as this process sees it."""

    kind: ClassVar[Literal["reader", "handheld", "equipment"]] = "reader"

    def __init__(self, device: DeviceSettings, sink: Sink) -> None:
        super().__init__(device, sink)
        self.clock = _ClockOffset()
        self._reported = DriverHealth()  # the current child's last report
        self._carried_reconnects: Counter[str] = Counter()  # earlier children's counters
        self._carried_errors: Counter[str] = Counter()

    async def run(self) -> None:
        raise NotImplementedError("a decoder process runs this reader (gateway/decoders.py)")

    def report(self, health: DriverHealth, clock_offset_us: int | None) -> None:
        """What the child says (its pipe's thread): kept, the earlier children's counts added."""
        self.clock.offset_us = clock_offset_us
        merged = DriverHealth(
            state=health.state,
            since_us=health.since_us,
            last_data_us=health.last_data_us,
            reconnects=health.reconnects + self._carried_reconnects,
            errors=health.errors + self._carried_errors,
            detail=health.detail,
        )
        with self._health_lock:
            self._reported = health
            self._health = merged

    def lost(self, cause: RestartCause) -> None:
        """Its child is gone: its counters carry over, the restart counts as a reconnect, and
        the reader is down until the next child connects it."""
        with self._health_lock:
            self._carried_reconnects += self._reported.reconnects
            self._carried_reconnects[f"decoder_{cause}"] += 1
            self._carried_errors += self._reported.errors
            self._reported = DriverHealth()
            self._health.reconnects = Counter(self._carried_reconnects)
            self._health.errors = Counter(self._carried_errors)
        self.set_state("backoff", f"its decoder process {cause.replace('_', ' ')}; restarting")


class _ClockOffset:
    """What gateway.health reads of a reader's clock: its offset estimate."""

    offset_us: int | None = None


class Worker:
    """One decoder process: the child, its two pipes and the thread reading its data pipe."""

    def __init__(self, slot: int, devices: Sequence[DeviceSettings], pool: DecoderPool) -> None:
        self.slot = slot
        self.devices = list(devices)
        self.names = [d.name for d in devices]
        self.pool = pool
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctrl: Connection | None = None
        self.reader_thread: threading.Thread | None = None
        self.last_heard = time.monotonic()
        self.delivering = False  # inside the sink (perhaps held back): silence is not a hang
        self.malformed: str | None = None
        self.reload_generation = 0

    def start(self) -> None:
        """Spawn the child (from the event loop's thread: PR_SET_PDEATHSIG is bound to the
        thread that forks) and hand it its readers."""
        data_r, data_w = os.pipe()
        _widen(data_w)
        ctrl_r, ctrl_w = os.pipe()
        argv = [str(data_w), str(ctrl_r), str(os.getpid())]
        try:
            self.proc = subprocess.Popen(  # noqa: S603 (our interpreter, our module)
                [sys.executable, "-m", "drivers.llrp_worker", *argv],
                pass_fds=(data_w, ctrl_r),
                cwd=ROOT,
            )
        finally:
            os.close(data_w)
            os.close(ctrl_r)
        data = Connection(data_r, writable=False)
        self.ctrl = Connection(ctrl_w, readable=False)
        root = logging.getLogger()
        json_lines = any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers)
        init = {
            "devices": self.devices,
            "log_level": root.getEffectiveLevel(),
            "log_json": json_lines,
        }
        self.ctrl.send_bytes(pickle.dumps(("init", init)))
        self.last_heard = time.monotonic()
        self.reader_thread = threading.Thread(
            target=self._read, args=(data,), name=f"decoder-{self.slot}", daemon=True
        )
        self.reader_thread.start()

    # --- the data pipe's thread ---------------------------------------------------------------

    def _read(self, data: Connection) -> None:
        try:
            while True:
                try:
                    raw = data.recv_bytes()
                except (EOFError, OSError):
                    return  # the child is gone and its pipe drained
                self.last_heard = time.monotonic()
                try:
                    message = wire.unpack(raw, self.names)
                except wire.MalformedMessage as exc:
                    self.malformed = str(exc)
                    return
                self.delivering = True
                try:
                    self.pool.deliver(self.names, message, self)
                finally:
                    self.delivering = False
                    self.last_heard = time.monotonic()
        finally:
            data.close()

    # --- the event loop's side ----------------------------------------------------------------

    def failure(self, now: float) -> RestartCause | None:
        assert self.proc is not None
        if self.malformed is not None:
            return "malformed_batch"
        if self.proc.poll() is not None:
            return "died"
        if not self.delivering and now - self.last_heard > HANG_S:
            return "hung"
        return None

    def command(self, *command: object) -> None:
        if self.ctrl is None:
            return
        try:
            self.ctrl.send_bytes(pickle.dumps(command))
        except OSError:
            pass  # the child is gone: its watch restarts it

    async def finish(self) -> None:
        """Once the child is gone (or killed): wait until its pipe is read to the end (the
        sink is never held back then for long: bounded, so a stop cannot hang on it)."""
        if self.ctrl is not None:
            self.ctrl.close()
            self.ctrl = None
        deadline = time.monotonic() + STOP_GRACE_S
        while self.reader_thread is not None and self.reader_thread.is_alive():
            if time.monotonic() > deadline:
                log.warning("decoder process %d: its last reads still wait for room", self.slot)
                return
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    async def exited(self, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def describe_exit(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _widen(fd: int) -> None:
    """A 1 MiB data pipe (Linux's default 64 KiB holds ~1,800 reads, 18 ms at 100k reads/s):
    the engine holds this process's GIL for a whole batch, and meanwhile the child should
    keep decoding into the pipe rather than stall its sockets."""
    try:
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # above /proc/sys/fs/pipe-max-size for an unprivileged user: keep 64 KiB
        pass


class DecoderPool:
    """The decoder processes and the RemoteReaders they serve. Supervised like a driver by
    the daemon (`name`, `run`, `count_error`)."""

    name = "decoders"

    def __init__(self, devices: Sequence[DeviceSettings], processes: int, sink: Sink) -> None:
        self.sink = sink
        self.readers = {d.name: RemoteReader(d, sink) for d in devices}
        self.groups = deal(devices, processes)
        self.workers: list[Worker] = []
        self.restarts: Counter[tuple[str, str]] = Counter()  # (slot, cause)
        self.internal_errors = 0
        self.generation = 0
        self._close_timeout_s = max((d.options.close_timeout_s for d in devices), default=5.0)

    # --- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start every child, restart any that fails, and stop them all when cancelled."""
        self.workers = [Worker(slot, group, self) for slot, group in enumerate(self.groups)]
        for worker in self.workers:
            worker.start()
        log.info(
            "%d LLRP readers decoded in %d processes (pids %s)",
            len(self.readers),
            len(self.workers),
            ", ".join(str(w.proc.pid) for w in self.workers if w.proc is not None),
        )
        try:
            await asyncio.gather(*(self._watch(slot) for slot in range(len(self.workers))))
        finally:
            await self._stop_all()

    async def _watch(self, slot: int) -> None:
        backoff = Backoff(initial_s=0.5, cap_s=30.0)
        started = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            worker = self.workers[slot]
            cause = worker.failure(time.monotonic())
            if cause is None:
                continue
            if time.monotonic() - started > 60:
                backoff.reset()  # it ran a good while: the next restart is fast again
            await self._replace(slot, cause, backoff)
            started = time.monotonic()

    async def _replace(self, slot: int, cause: RestartCause, backoff: Backoff) -> None:
        old = self.workers[slot]
        old.kill()
        await old.exited(STOP_GRACE_S)
        await old.finish()  # what it wrote before it ended still counts, before "backoff"
        self.restarts[(str(slot), cause)] += 1
        detail = f": {old.malformed}" if cause == "malformed_batch" else ""
        log.error(
            "decoder process %d (readers %s) %s (%s)%s; restarting it",
            slot,
            ", ".join(old.names),
            cause.replace("_", " "),
            old.describe_exit(),
            detail,
        )
        for name in old.names:
            self.readers[name].lost(cause)
        await backoff.sleep()
        new = Worker(slot, old.devices, self)
        self.workers[slot] = new
        new.start()
        if self.generation:
            new.command("reload", self.generation, new.devices)

    async def _stop_all(self) -> None:
        """Ask every child to stop (their drivers close their sessions and send their last
        reads), wait for them within the readers' close timeout, kill what is left."""
        for worker in self.workers:
            worker.command("stop")
        for worker in self.workers:
            if not await worker.exited(self._close_timeout_s + STOP_GRACE_S):
                log.warning("decoder process %d did not stop; killing it", worker.slot)
                worker.kill()
                await worker.exited(STOP_GRACE_S)
            await worker.finish()

    # --- the pipes' threads -------------------------------------------------------------------

    def deliver(self, names: Sequence[str], message: wire.Message, worker: Worker) -> None:
        """One message from a child, on its pipe's thread."""
        match message:
            case wire.Reads(_reader, reads):
                self.sink.reads(reads)
            case wire.Progress(reader, time_us):
                self.sink.progress(names[reader], time_us)
            case wire.State(reader, health, offset):
                remote = self.readers[names[reader]]
                remote.report(health, offset)
                self.sink.device_state(remote.name, remote.health())
            case wire.Health(healths):
                for reader, (health, offset) in healths.items():
                    self.readers[names[reader]].report(health, offset)
            case wire.Reloaded(generation):
                worker.reload_generation = generation

    # --- the daemon's side --------------------------------------------------------------------

    def reload(self, settings: Settings) -> None:
        """SIGHUP: every child gets the new config's version of its readers (which, as for
        in-process drivers, change only with a restart) and acknowledges it."""
        self.generation += 1
        new = {d.name: d for d in settings.readers}
        for worker in self.workers:
            devices = [new.get(d.name, d) for d in worker.devices]
            worker.command("reload", self.generation, devices)

    def count_error(self, kind: str, n: int = 1) -> None:
        self.internal_errors += n

    def collect(self) -> list[Metric]:
        return [
            gauge(
                "decoder_processes",
                "LLRP decoder processes running",
                sum(1 for w in self.workers if w.proc is not None and w.proc.poll() is None),
            ),
            counter(
                "decoder_restarts_total",
                "LLRP decoder processes restarted, by cause (died, hung, malformed_batch)",
                {key: n for key, n in self.restarts.items()},
                ["process", "cause"],
            ),
            self._reload_generations(),
        ]

    def _reload_generations(self) -> Metric:
        family = GaugeMetricFamily(
            "fc_edge_decoder_reload_generation",
            "The last SIGHUP reload each decoder process acknowledged (1 = the first)",
            labels=["process"],
        )
        for worker in self.workers:
            family.add_metric([str(worker.slot)], worker.reload_generation)
        return family
