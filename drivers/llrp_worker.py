"""An LLRP decoder process: the LLRP drivers of some readers (sllurp, sockets, parsing to
TagReads), run outside the gateway process so that decoding uses another core.

    python -m drivers.llrp_worker DATA_FD CONTROL_FD PARENT_PID

The gateway (gateway/decoders.py) starts it with two pipes: it writes llrp_wire messages to
DATA_FD (reads, progress, device states, a heartbeat with every reader's health each
HEARTBEAT_S) and reads pickled commands from CONTROL_FD: first ("init", {...}) with its
readers' settings, then ("reload", generation, readers) and ("stop",).

It runs each reader's LLRPDriver unchanged, with a sink that packs what the driver hands over
and writes it to the pipe. Writes block while the pipe is full, and the gateway stops reading
the pipe while its engine is behind: the driver's sllurp thread then stops reading its socket
and the reader buffers, exactly as in one process.

It never outlives the gateway: PR_SET_PDEATHSIG kills it with the gateway (checked against a
parent that died before it was set), and the control pipe's end of file (the gateway gone)
ends it too. SIGTERM, SIGINT and SIGHUP are ignored: a service stop or a terminal's ^C reach
the whole process group, and the gateway stops its decoders itself, after their last reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pickle
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from drivers import llrp_wire as wire
from drivers.base import DeviceEvent, DriverHealth
from drivers.llrp import LLRPDriver
from gateway.model import Movement, TagRead

if TYPE_CHECKING:
    from gateway.config import DeviceSettings

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
DRIVER_RESTART_DELAY_S = 5.0  # as the gateway's own driver supervision
_PR_SET_PDEATHSIG = 1


class PipeSink:
    """drivers.base.Sink for the drivers of this process: everything goes down the data pipe,
    from whichever thread calls (one lock keeps each message whole)."""

    def __init__(self, conn: Connection, names: Sequence[str]) -> None:
        self._conn = conn
        self._index = {name: i for i, name in enumerate(names)}
        self._lock = threading.Lock()
        self.drivers: dict[str, LLRPDriver] = {}

    def send(self, data: bytes) -> None:
        try:
            with self._lock:
                self._conn.send_bytes(data)
        except OSError:
            # The gateway is gone (or closed the pipe to restart us): nobody will take what
            # this process reads, and its readers buffer until the next session.
            os._exit(0)

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        if batch:
            self.send(wire.pack_reads(self._index[batch[0].reader], batch))

    def progress(self, source: str, time_us: int) -> None:
        self.send(wire.pack_progress(self._index[source], time_us))

    def device_state(self, device: str, health: DriverHealth) -> None:
        self.send(wire.pack_state(self._index[device], health, self._offset(device)))

    def event(self, event: DeviceEvent) -> None:
        log.warning("%s: event %s not forwarded by a decoder process", event.device, event.kind)

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        raise NotImplementedError("an LLRP reader reports no movements")

    def cursor(self, key: str) -> int | None:
        return None

    def heartbeat(self) -> None:
        healths = {
            self._index[name]: (driver.health(), self._offset(name))
            for name, driver in self.drivers.items()
        }
        self.send(wire.pack_health(healths))

    def _offset(self, name: str) -> int | None:
        driver = self.drivers.get(name)
        return driver.clock.offset_us if driver is not None else None


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL when the gateway ends, however it ends (Linux; elsewhere the pipe's EOF)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the gateway died before the prctl: too late for it
        os._exit(0)


def watch_control(
    ctrl: Connection, loop: asyncio.AbstractEventLoop, stop: asyncio.Event, sink: PipeSink
) -> None:
    """The control pipe's thread: commands from the gateway; its EOF means the gateway is gone."""
    while True:
        try:
            command = pickle.loads(ctrl.recv_bytes())  # noqa: S301 (our own parent's pipe)
        except (EOFError, OSError):
            os._exit(0)  # no parent, nobody to hand reads to: no orphan either
        if command[0] == "stop":
            loop.call_soon_threadsafe(stop.set)
        elif command[0] == "reload":
            _, generation, devices = command
            note_reload(list(sink.drivers.values()), devices)
            sink.send(wire.pack_reloaded(generation))


def note_reload(drivers: Sequence[LLRPDriver], devices: Sequence[DeviceSettings]) -> None:
    """A SIGHUP's config: what this process runs (readers) changes only with a restart, as in
    the gateway process; say so if it differs."""
    if [d.device for d in drivers] != list(devices):
        log.warning("decoder process: reader settings changed; they take effect after a restart")


async def supervise(driver: LLRPDriver) -> None:
    """As the gateway supervises its drivers: a crash of the driver's code restarts it."""
    while True:
        try:
            await driver.run()
            return
        except Exception:
            log.exception("driver %s crashed; restarting it", driver.name)
            driver.count_error("driver_crash")
            await asyncio.sleep(DRIVER_RESTART_DELAY_S)


async def beat(sink: PipeSink) -> None:
    """The heartbeat comes from the event loop: it proves the loop runs, not just a thread."""
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        sink.heartbeat()


async def serve(devices: Sequence[DeviceSettings], data: Connection, ctrl: Connection) -> None:
    sink = PipeSink(data, [d.name for d in devices])
    drivers = [LLRPDriver(device, sink) for device in devices]
    sink.drivers = {d.name: d for d in drivers}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(
        target=watch_control, args=(ctrl, loop, stop, sink), name="control", daemon=True
    ).start()
    tasks = [asyncio.create_task(supervise(d), name=f"driver:{d.name}") for d in drivers]
    heartbeat = asyncio.create_task(beat(sink), name="heartbeat")
    await stop.wait()
    heartbeat.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(heartbeat, *tasks, return_exceptions=True)
    sink.heartbeat()  # the final counters, after every session's last reads


def main(argv: Sequence[str]) -> None:
    data_fd, ctrl_fd, parent_pid = (int(x) for x in argv[:3])
    die_with_parent(parent_pid)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    data = Connection(data_fd, readable=False)
    ctrl = Connection(ctrl_fd, writable=False)
    kind, init = pickle.loads(ctrl.recv_bytes())  # noqa: S301 (our own parent's pipe)
    assert kind == "init"  # noqa: S101 (the parent's protocol)
    setup_logging(init)
    asyncio.run(serve(init["devices"], data, ctrl))
    with contextlib.suppress(OSError):
        data.close()
    # Every session is closed and its last reads are in the pipe. A sllurp thread whose close
    # timed out (abandoned) is not a daemon thread and would hold the interpreter's exit.
    logging.shutdown()
    os._exit(0)


def setup_logging(init: dict[str, Any]) -> None:
    from gateway import logs

    logs.setup(logging.getLevelName(init["log_level"]), json_lines=init["log_json"])


if __name__ == "__main__":
    main(sys.argv[1:])
