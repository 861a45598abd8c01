"""Only the outbox's own thread touches SQLite: `stats()` is called by the event loop (status
line, drain) and the HTTP thread (/metrics, /readyz), and must answer from figures the outbox
thread keeps, never with a query of its own. Checked with SQLite's own trace callback, which
names every statement run on the connection, and the thread that ran it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.model import Outgoing
from gateway.outbox import Outbox


def message(n: int) -> Outgoing:
    return Outgoing("movements", "movements", {"schema": "test/1", "n": n})


def test_stats_from_other_threads_never_touch_the_connection(tmp_path: Path) -> None:
    own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
    statements: list[tuple[str, str]] = []  # (thread name, SQL)

    def open_traced() -> Outbox:
        box = Outbox(tmp_path / "outbox.db")
        box.conn.set_trace_callback(
            lambda sql: statements.append((threading.current_thread().name, sql))
        )
        return box

    box = own.submit(open_traced).result()
    own.submit(box.commit, [message(n) for n in range(5)]).result()
    leased = own.submit(box.lease, 2).result()
    own.submit(box.ack, [row.rowid for row in leased]).result()
    first_created = own.submit(lambda: box.peek(1)[0].created_us).result()
    assert statements and all(name.startswith("outbox") for name, _ in statements)
    statements.clear()

    seen = []
    for _ in range(3):  # the HTTP thread, and the event loop's (here: this one)
        reader = threading.Thread(target=lambda: seen.append(box.stats()), name="http")
        reader.start()
        reader.join()
        seen.append(box.stats())

    assert statements == []  # not one statement from another thread
    for stats in seen:
        assert (stats.depth, stats.appended, stats.acked) == (3, 5, 2)
        assert stats.oldest_created_us == first_created
        assert stats.last_seq == {"movements": 5}
    own.submit(box.close).result()
    own.shutdown()


def test_stats_follow_every_change_the_outbox_thread_makes(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=1500)  # room for a few rows only
    assert (box.stats().depth, box.stats().bytes, box.stats().oldest_created_us) == (0, 0, None)
    box.commit([message(n) for n in range(3)])
    after_commit = box.stats()
    assert after_commit.depth == 3 and after_commit.bytes > 0
    assert after_commit.oldest_created_us is not None
    box.commit([message(n) for n in range(3, 40)])  # full: the oldest are dropped, a notice
    full = box.stats()
    assert full.dropped["movements"] > 0 and full.depth < 40 - full.dropped["movements"] + 5
    assert full.last_seq == {"movements": 40, "notices": 1}
    box.ack([row.rowid for row in box.lease(1000)])
    empty = box.stats()
    assert (empty.depth, empty.bytes, empty.oldest_created_us) == (0, 0, None)
    assert after_commit.depth == 3  # a snapshot handed out earlier is not changed afterwards
    box.close()
