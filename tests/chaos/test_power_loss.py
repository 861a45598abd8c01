"""Chaos: a power cut, simulated at every step of a stream of outbox commits and acks.

`kill -9` (test_kill9.py) keeps the page cache, so a write that was never synced survives it. A
power cut does not. Here the outbox runs its own statements (its commit() and ack(), with its
own pragmas) on an apsw connection whose VFS records every write, truncate and sync
(tests/support/power_cut_vfs.py). Then, for a cut after each recorded write or sync, the disk
is rebuilt as a power cut leaves it — each file as of its last sync, every later write lost —
and the outbox is reopened from it the way the daemon does (`Outbox`, stdlib sqlite3).

What must hold at every cut:
- the file opens: quick_check (in Outbox) and integrity_check are ok;
- the state is exactly the one some prefix of the stream's transactions left (each commit or
  ack wholly there or wholly gone; compared row by row: messages, streams, tag states, cursors);
- `synchronous = full`: every transaction whose commit() or ack() returned before the cut is
  there;
- `synchronous = normal`: every transaction that returned before the WAL's last sync is there.
  SQLite syncs the WAL in this mode only when a checkpoint begins, so the commits since the last
  checkpoint can be lost (rolled back, never half there); the test shows that they are.

A second run keeps, at each cut, a random part of the writes since each file's last sync (a
disk may write back any of them before the power goes): the same must hold.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import apsw
import pytest

from gateway.model import Outgoing, TagState
from gateway.outbox import Outbox
from tests.support.power_cut_vfs import Disk, Op, Recording, RecordingVFS, restore

TRANSACTIONS = 250  # enough WAL for three checkpoints (SQLite's default: every 1,000 pages)
CUT_EVERY = 4  # cut after every 4th recorded write or truncate, and after every sync


@dataclass
class Stream:
    """One recorded run: the state after each transaction, and where in the ops each began and
    returned (`started[t]` ops had happened when transaction t began, `returned[t]` when its
    call returned)."""

    directory: Path
    ops: list[Op]
    disk: Disk
    states: list[str] = field(default_factory=list)  # states[t]: after t transactions
    started: list[int] = field(default_factory=list)
    returned: list[int] = field(default_factory=list)


def state_digest(conn: Any) -> str:
    """Everything the outbox keeps across a restart, as one hash (same on sqlite3 and apsw)."""
    digest = hashlib.sha256()
    for query in (
        "SELECT rowid, id, stream, seq, subtopic, payload, size FROM messages ORDER BY rowid",
        "SELECT stream, last_seq FROM streams ORDER BY stream",
        "SELECT epc, present, location, last_seen_us FROM tag_states ORDER BY epc",
        "SELECT key, value FROM cursors ORDER BY key",
        "SELECT name, value FROM counters ORDER BY name",
    ):
        digest.update(repr(conn.execute(query).fetchall()).encode())
    return digest.hexdigest()


def movement(rnd: random.Random, n: int) -> tuple[Outgoing, TagState]:
    epc = f"3034{rnd.getrandbits(80):020X}"
    location = rnd.choice(("dock-1", "staging", "aisle-07", "packing"))
    body = {
        "schema": "fc-edge/movement/1",
        "epc": epc,
        "from": "staging",
        "to": location,
        "time": "2026-12-07T01:00:00.000Z",
        "observed": {"reads": rnd.randint(3, 40), "readers": ["portal-1", "portal-2"]},
        "n": n,
    }
    return Outgoing("movements", "movements", body), TagState(epc, True, location, n)


def one_transaction(box: Outbox, rnd: random.Random, t: int) -> None:
    """Two commits of a batch to one ack of what the publisher holds, like the daemon's mix."""
    if t % 3 == 2:
        leased = box.lease(rnd.randint(1, 60))
        if leased:
            box.ack([m.rowid for m in leased[: rnd.randint(1, len(leased))]])
            box.rewind()  # whatever was not acked goes out again
            return
    batch = [movement(rnd, t * 100 + i) for i in range(rnd.randint(1, 25))]
    box.commit([m for m, _ in batch], [s for _, s in batch], {"portal-1": t, "portal-2": t // 2})


def apsw_connect(vfs: RecordingVFS) -> Callable[[Path], sqlite3.Connection]:
    def connect(path: Path) -> sqlite3.Connection:
        # Not a sqlite3.Connection, but it has what the outbox calls (execute, executemany,
        # fetchone/fetchall, close) and runs in autocommit like the outbox's isolation_level=None.
        return cast(sqlite3.Connection, apsw.Connection(str(path), vfs=vfs.name))

    return connect


def record_stream(directory: Path, synchronous: str, seed: int) -> Stream:
    path = directory / "outbox.db"
    Outbox(path, synchronous=synchronous).close()  # an earlier run made the file (durably)
    vfs = RecordingVFS(f"power-cut-{synchronous}-{seed}")
    try:
        box = Outbox(path, synchronous=synchronous, connect=apsw_connect(vfs))
        ops = vfs.recording.ops
        stream = Stream(directory, ops, Disk(vfs.recording), [state_digest(box.conn)])
        rnd = random.Random(seed)
        for t in range(TRANSACTIONS):
            stream.started.append(len(ops))
            one_transaction(box, rnd, t)
            stream.returned.append(len(ops))
            stream.states.append(state_digest(box.conn))
        box.close()
    finally:
        vfs.close()
    return stream


def recovered_state(images: dict[str, bytes], stream: Stream, target: Path, mode: str) -> str:
    """Reopen the outbox from what the cut left, as the daemon would, and read its state."""
    restore(images, stream.directory, target)
    box = Outbox(target / "outbox.db", synchronous=mode)  # raises OutboxError if quick_check fails
    try:
        assert box.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return state_digest(box.conn)
    finally:
        # This copy is thrown away: its closing checkpoint need not wait for the disk (the
        # fsyncs were 40% of the test's time).
        box.conn.execute("PRAGMA synchronous=OFF")
        box.close()
        shutil.rmtree(target)  # thousands of cuts, up to 4 MB of WAL each


def last_wal_sync(ops: list[Op], cut: int) -> int:
    """How many ops had happened when the WAL was last synced before the cut (0: never)."""
    for i in range(cut - 1, -1, -1):
        if ops[i].kind == "sync" and ops[i].path.endswith("-wal"):
            return i + 1
    return 0


def must_survive(stream: Stream, cut: int, mode: str) -> int:
    """How many transactions the mode promises are there after a cut at `cut` ops."""
    durable_at = cut if mode == "full" else last_wal_sync(stream.ops, cut)
    return sum(1 for r in stream.returned if r <= durable_at)


def cut_points(stream: Stream) -> list[int]:
    """After every CUT_EVERY-th op and after every sync, from the reopen to the last return."""
    first, last = stream.started[0], stream.returned[-1]
    every = range(first, last + 1, CUT_EVERY)
    syncs = (i + 1 for i in range(first, last) if stream.ops[i].kind == "sync")
    return sorted({*every, *syncs})


@dataclass
class Findings:
    cuts: int = 0
    lost_after_return: int = 0  # most transactions that had returned yet were gone after a cut
    checkpoints: int = 0  # each ends with a sync of the main file


def cut_everywhere(stream: Stream, mode: str, work: Path, keep_unsynced: bool) -> Findings:
    rnd = random.Random(7)
    found = Findings()
    index = {state: t for t, state in enumerate(stream.states)}
    for cut in cut_points(stream):
        stream.disk.advance_to(cut)
        images = stream.disk.durable(rnd if keep_unsynced else None)
        state = recovered_state(images, stream, work / "cut", mode)
        assert state in index, f"cut after op {cut}: a state no prefix of the stream left"
        survived = index[state]
        began = sum(1 for s in stream.started if s < cut)
        promised = must_survive(stream, cut, mode)
        assert promised <= survived <= began, (cut, promised, survived, began)
        returned = sum(1 for r in stream.returned if r <= cut)
        found.lost_after_return = max(found.lost_after_return, returned - survived)
        found.cuts += 1
    cut_ops = stream.ops[stream.started[0] : stream.returned[-1]]
    found.checkpoints = sum(1 for op in cut_ops if op.kind == "sync" and op.path.endswith(".db"))
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("keep_unsynced", [False, True], ids=["unsynced-lost", "unsynced-some"])
@pytest.mark.parametrize("mode", ["full", "normal"])
def test_a_power_cut_anywhere_in_a_stream_keeps_what_the_mode_promises(
    tmp_path: Path, mode: str, keep_unsynced: bool
) -> None:
    stream = record_stream(tmp_path / "live", mode, seed=16)
    found = cut_everywhere(stream, mode, tmp_path / "cuts", keep_unsynced)
    stream.disk.advance_to(len(stream.ops))
    assert stream.disk.live() == {
        str(p): p.read_bytes() for p in (tmp_path / "live").iterdir() if p.suffix == ".db"
    }, "the replay rebuilds the real file"
    print(f"{mode}, {'some' if keep_unsynced else 'no'} unsynced writes kept: {found}")
    assert found.cuts > 1000 and found.checkpoints >= 3, "the cuts cover checkpoints"
    if mode == "full":
        assert found.lost_after_return == 0
    elif not keep_unsynced:
        # The weaker promise is a real one: commits that had returned were lost.
        assert found.lost_after_return > 0


def test_the_simulated_power_cut_keeps_synced_writes_and_drops_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    Outbox(path).close()  # the file exists before the recording: durable
    vfs = RecordingVFS("power-cut-sanity")
    try:
        conn = apsw.Connection(str(path), vfs=vfs.name)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("INSERT INTO cursors VALUES ('synced', 1)")  # a commit: the WAL is synced
        conn.execute("PRAGMA synchronous=OFF")  # no sync at all from here on
        conn.execute("INSERT INTO cursors VALUES ('never-synced', 2)")
        assert sorted(conn.execute("SELECT key FROM cursors")) == [("never-synced",), ("synced",)]
        disk = Disk(vfs.recording)
        disk.advance_to(len(vfs.recording.ops))
        images = disk.durable()
        assert disk.live()[str(path) + "-wal"] != images[str(path) + "-wal"]
        conn.close()
    finally:
        vfs.close()
    restore(images, tmp_path, tmp_path / "after-cut")
    box = Outbox(tmp_path / "after-cut" / "t.db")
    try:
        assert box.cursors() == {"synced": 1}
    finally:
        box.close()


def test_a_power_cut_drops_each_files_writes_since_its_sync_and_files_never_synced() -> None:
    recording = Recording(
        initial={"/d/o.db": b"old page"},
        ops=[
            Op("write", "/d/o.db", 0, b"new"),
            Op("create", "/d/o.db-wal"),
            Op("write", "/d/o.db-wal", 0, b"frame 1"),
            Op("sync", "/d/o.db-wal"),
            Op("write", "/d/o.db-wal", 7, b", frame 2"),
        ],
    )
    disk = Disk(recording)
    disk.advance_to(3)
    assert disk.durable() == {"/d/o.db": b"old page"}, "a new file is lost until its first sync"
    disk.advance_to(5)
    assert disk.live() == {"/d/o.db": b"new page", "/d/o.db-wal": b"frame 1, frame 2"}
    assert disk.durable() == {"/d/o.db": b"old page", "/d/o.db-wal": b"frame 1"}
