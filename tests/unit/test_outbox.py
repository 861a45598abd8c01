"""The outbox on real SQLite files: one transaction per batch, seq per stream, delete only on
ack, bounded size with counted drops and a dropped notice, migrations, and refusing to run
without durability."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.model import Outgoing, TagState
from gateway.outbox import SCHEMA_VERSION, Outbox, OutboxError


def movement(n: int, stream: str = "movements") -> Outgoing:
    return Outgoing(stream, stream, {"schema": "fc-edge/movement/1", "n": n, "pad": "x" * 100})


def test_seq_is_gapless_per_stream_and_ids_are_stored(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    out = box.commit([movement(1), movement(2), movement(3, "counts"), movement(4)])
    assert out == [("movements", 1), ("movements", 2), ("counts", 1), ("movements", 3)]
    rows = box.lease(10)
    assert [(r.stream, r.seq) for r in rows] == out
    body = json.loads(rows[0].payload)
    assert (
        list(body)[:3] == ["schema", "id", "seq"] and body["seq"] == 1 and body["id"] == rows[0].id
    )


def test_batch_states_and_cursors_commit_together_and_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.commit([movement(1)], [TagState("E1", True, "DOCK", 5)], {"replay:a:line": 41})
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert list(again.tag_states()) == [TagState("E1", True, "DOCK", 5)]
    assert again.cursors() == {"replay:a:line": 41}
    assert again.commit([movement(2)]) == [("movements", 2)]  # seq continues after restart


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.commit([movement(1)], cursors={"c": 1})
    bad = Outgoing("movements", "movements", {"schema": "x", "not_json": object()})
    with pytest.raises(TypeError):
        box.commit([movement(2), bad], [TagState("E9", True, "X", 1)], {"c": 2})
    assert box.cursors() == {"c": 1}
    assert list(box.tag_states()) == []
    assert box.stats().depth == 1


def test_rows_leave_only_on_ack_and_are_leased_once_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.commit([movement(i) for i in range(10)])
    first = box.lease(4)
    second = box.lease(100)
    assert [r.seq for r in first + second] == list(range(1, 11))
    assert box.lease(5) == []
    box.ack([r.rowid for r in first])
    assert box.stats().depth == 6
    # acked rows do not come back; unacked ones do on a new publisher session
    box.commit([movement(99)])
    assert [r.seq for r in box.lease(100)] == [11]  # rowids are never reused
    box.rewind()
    assert [r.seq for r in box.lease(100)] == list(range(5, 12))


def notices(box: Outbox) -> list[dict[str, object]]:
    return [json.loads(r.payload) for r in box.peek(1000, "notices")]


def test_full_drop_oldest_counts_drops_and_enqueues_a_notice(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=3000, when_full="drop_oldest")
    box.commit([movement(i) for i in range(30)])
    st = box.stats()
    assert st.bytes <= 3000 + 400  # the notice itself may overshoot by its own size
    kept = [r.seq for r in box.peek(100, "movements")]
    assert kept == list(range(31 - len(kept), 31)), "the newest are kept"
    (notice,) = notices(box)
    assert notice["type"] == "dropped" and notice["stream"] == "movements"
    assert (notice["from_seq"], notice["to_seq"]) == (1, 30 - len(kept))
    assert st.dropped == {"movements": 30 - len(kept)}


def test_full_drop_newest_keeps_the_oldest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=3000, when_full="drop_newest")
    box.commit([movement(i) for i in range(30)])
    kept = [r.seq for r in box.peek(100, "movements")]
    assert kept == list(range(1, len(kept) + 1))
    (notice,) = notices(box)
    assert (notice["from_seq"], notice["to_seq"]) == (len(kept) + 1, 30)
    # once space returns (acks), new messages are kept again, seq continuing
    box.ack([r.rowid for r in box.lease(100) if r.stream == "movements"])
    box.commit([movement(100)])
    assert [r.seq for r in box.peek(100, "movements")] == [31]


def test_leased_messages_are_not_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=3000)
    box.commit([movement(i) for i in range(5)])
    in_flight = box.lease(5)
    box.commit([movement(i) for i in range(30)])
    still = {r.seq for r in box.peek(100, "movements")}
    assert {r.seq for r in in_flight} <= still


def test_schema_version_is_recorded_and_a_newer_one_refused(tmp_path: Path) -> None:
    Outbox(tmp_path / "o.db").close()
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    db.execute("INSERT INTO schema_version VALUES (?, 'future')", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match="newer than this fc-edge"):
        Outbox(tmp_path / "o.db")


def test_corrupt_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="cannot be used"):
        Outbox(path)


def test_unwritable_location_is_refused_clearly(tmp_path: Path) -> None:
    # A regular file where the state directory should be: fails for root too.
    blocker = tmp_path / "state"
    blocker.write_text("")
    with pytest.raises(OutboxError, match="cannot be created"):
        Outbox(blocker / "o.db")


def test_prune_forgets_only_absent_old_tags(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.commit(
        [],
        [
            TagState("OLD-ABSENT", False, "YARD", 10),
            TagState("NEW-ABSENT", False, None, 1000),
            TagState("OLD-PRESENT", True, "DOCK", 10),
        ],
    )
    assert box.prune_tag_states(absent_before_us=500) == 1
    assert {s.epc for s in box.tag_states()} == {"NEW-ABSENT", "OLD-PRESENT"}
