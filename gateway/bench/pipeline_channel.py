"""The channel between an LLRP decoder process and the gateway, its candidates measured.

    python -m gateway.bench.pipeline_channel --json [--reads 300000] [--runs 3]

A child process hands the parent batches of 100 parsed reads (TagReads, as the driver makes
them) through each candidate; the parent turns each batch back into TagReads, as the engine
takes them. Per candidate: reads/s end to end, and CPU µs per read in the sender and in the
receiver (the receiver's is what the gateway process, which also runs the engine, pays):

- pipe_packed: os.pipe + Connection.send_bytes of drivers/llrp_wire's columns (what ships);
- pipe_pickle: the same pipe, each batch a pickled list of tuples;
- mp_queue: multiprocessing.Queue (a pipe, a feeder thread, pickle) of the same tuples;
- shm_ring: a single-producer single-consumer ring in shared memory carrying the packed
  columns, polled (no system call per batch; a sleep when empty or full).

Floor: the receiver's bare unpack of the same packed batches in one process (no channel).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import struct
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from typing import Any

from drivers import llrp_wire as wire
from gateway.bench.common import emit, machine
from gateway.model import TagRead

BATCH = 100
NAMES = ["r0"]
RING_BYTES = 4 << 20
_POS = struct.Struct("<QQ")  # bytes written, bytes read (monotonic)
_LEN = struct.Struct("<I")
_STOP = b"\0"


def batches(total: int) -> list[list[TagRead]]:
    """Realistic batches: SGTIN-96 EPCs, 2 antennas, fractional RSSI, µs stamps."""
    reads = [
        TagRead(f"30340000000{k % 1000:013X}", "r0", 1 + k % 2, -55.5 + k % 7, 10**15 + k, 1)
        for k in range(total)
    ]
    return [reads[i : i + BATCH] for i in range(0, total, BATCH)]


def as_tuples(batch: Sequence[TagRead]) -> list[tuple[Any, ...]]:
    return [(r.epc, r.antenna, r.rssi, r.time_us, r.count) for r in batch]


def from_tuples(rows: list[tuple[Any, ...]]) -> list[TagRead]:
    return [TagRead(epc, "r0", a, rssi, t, c) for epc, a, rssi, t, c in rows]


# --- senders (child process) ------------------------------------------------------------------


def send_packed(conn: Connection, work: list[list[TagRead]]) -> None:
    for batch in work:
        conn.send_bytes(wire.pack_reads(0, batch))
    conn.send_bytes(_STOP)


def send_pickled(conn: Connection, work: list[list[TagRead]]) -> None:
    for batch in work:
        conn.send_bytes(pickle.dumps(as_tuples(batch), protocol=5))
    conn.send_bytes(_STOP)


def send_queue(queue: Any, work: list[list[TagRead]]) -> None:
    for batch in work:
        queue.put(as_tuples(batch))
    queue.put(None)


class Ring:
    """SPSC byte ring in shared memory: records are a u32 length and the payload, either of
    which may wrap around the end."""

    def __init__(self, shm: shared_memory.SharedMemory) -> None:
        buf = shm.buf
        assert buf is not None  # noqa: S101 (open until close())
        self.buf: memoryview = buf
        self.cap = len(buf) - _POS.size

    def _positions(self) -> tuple[int, int]:
        written, read = _POS.unpack_from(self.buf, 0)
        return written, read

    def _copy_in(self, pos: int, data: bytes) -> None:
        start = pos % self.cap
        first = min(len(data), self.cap - start)
        base = _POS.size
        self.buf[base + start : base + start + first] = data[:first]
        if first < len(data):
            self.buf[base : base + len(data) - first] = data[first:]

    def _copy_out(self, pos: int, size: int) -> bytes:
        start = pos % self.cap
        first = min(size, self.cap - start)
        base = _POS.size
        out = bytes(self.buf[base + start : base + start + first])
        if first < size:
            out += bytes(self.buf[base : base + size - first])
        return out

    def put(self, data: bytes) -> None:
        record = _LEN.pack(len(data)) + data
        while True:
            written, read = self._positions()
            if self.cap - (written - read) >= len(record):
                break
            time.sleep(0.0001)  # full: the reader is behind
        self._copy_in(written, record)
        struct.pack_into("<Q", self.buf, 0, written + len(record))  # publish after the data

    def get(self) -> bytes:
        while True:
            written, read = self._positions()
            if written > read:
                break
            time.sleep(0.0001)  # empty
        (size,) = _LEN.unpack(self._copy_out(read, _LEN.size))
        data = self._copy_out(read + _LEN.size, size)
        struct.pack_into("<Q", self.buf, 8, read + _LEN.size + size)
        return data


def send_ring(name: str, work: list[list[TagRead]]) -> None:
    shm = shared_memory.SharedMemory(name)
    ring = Ring(shm)
    for batch in work:
        ring.put(wire.pack_reads(0, batch))
    ring.put(_STOP)
    del ring
    shm.close()


def child(kind: str, endpoint: Any, total: int, report: Connection) -> None:
    """The sender: makes its batches first, then sends them, and reports its CPU for that."""
    work = batches(total)
    report.recv_bytes()  # go
    cpu0 = time.process_time()
    SENDERS[kind](endpoint, work)
    report.send_bytes(struct.pack("<d", time.process_time() - cpu0))


SENDERS: dict[str, Callable[[Any, list[list[TagRead]]], None]] = {
    "pipe_packed": send_packed,
    "pipe_pickle": send_pickled,
    "mp_queue": send_queue,
    "shm_ring": send_ring,
}

# --- receivers (this process) -----------------------------------------------------------------


def receive(kind: str, endpoint: Any) -> int:
    n = 0
    if kind == "mp_queue":
        while (rows := endpoint.get()) is not None:
            n += len(from_tuples(rows))
        return n
    get = endpoint.get if kind == "shm_ring" else endpoint.recv_bytes
    while (data := get()) != _STOP:
        if kind == "pipe_pickle":
            n += len(from_tuples(pickle.loads(data)))  # noqa: S301 (our own child)
        else:
            message = wire.unpack(data, NAMES)
            assert isinstance(message, wire.Reads)  # noqa: S101
            n += len(message.reads)
    return n


def run_one(kind: str, total: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    report_parent, report_child = ctx.Pipe()
    shm = None
    if kind == "mp_queue":
        queue: Any = ctx.Queue(maxsize=64)
        mine, theirs = queue, queue
    elif kind == "shm_ring":
        shm = shared_memory.SharedMemory(create=True, size=RING_BYTES + _POS.size)
        mine, theirs = Ring(shm), shm.name
        mine.buf[: _POS.size] = bytes(_POS.size)
    else:
        mine, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(kind, theirs, total, report_child))
    proc.start()
    time.sleep(0.5)  # the child's imports and batches are not measured
    cpu0, t0 = time.process_time(), time.perf_counter()
    report_parent.send_bytes(b"go")
    got = receive(kind, mine)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    (child_cpu,) = struct.unpack("<d", report_parent.recv_bytes())
    proc.join(10)
    if shm is not None:
        del mine
        shm.close()
        shm.unlink()
    assert got == total, (kind, got, total)  # noqa: S101 (the bench's own check)
    return {
        "reads_per_s": round(total / wall),
        "receiver_us_per_read": round(cpu / total * 1e6, 3),
        "sender_us_per_read": round(child_cpu / total * 1e6, 3),
    }


def floor(total: int) -> dict[str, float]:
    packed = [wire.pack_reads(0, batch) for batch in batches(total)]
    cpu0 = time.process_time()
    for data in packed:
        wire.unpack(data, NAMES)
    cpu = time.process_time() - cpu0
    return {"receiver_us_per_read": round(cpu / total * 1e6, 3)}


def bench(total: int, runs: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in SENDERS}
    for _ in range(runs):
        for kind in SENDERS:  # interleaved, so load that comes and goes hits each alike
            results[kind].append(run_one(kind, total))
    medians = {
        kind: {key: sorted(r[key] for r in rows)[len(rows) // 2] for key in rows[0]}
        for kind, rows in results.items()
    }
    return {
        "bench": "pipeline_channel",
        "machine": machine(),
        "params": {"reads": total, "batch": BATCH, "runs": runs},
        "median": medians,
        "floor_unpack_in_process": floor(total),
        "runs": results,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.bench.pipeline_channel")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reads", type=int, default=300_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    doc = bench(args.reads, args.runs)
    emit(
        doc,
        args.json,
        lambda d: "\n".join(
            f"{kind:12} {m['reads_per_s']:>10,} reads/s  receiver {m['receiver_us_per_read']} "
            f"µs/read  sender {m['sender_us_per_read']} µs/read"
            for kind, m in d["median"].items()
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
