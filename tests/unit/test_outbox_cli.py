"""`fc-edge outbox stats|peek|export -c FILE`: what an operator sees of the waiting messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.model import Outgoing
from gateway.outbox import Outbox
from tests.support.gateway import ROOT, gateway_toml
from tests.support.spine import ZONE_READER


def outbox_cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "outbox", *args, "-c", str(conf)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stats_peek_and_export(tmp_path: Path) -> None:
    state = tmp_path / "state"
    box = Outbox(state / "outbox.db")
    box.commit(
        [
            Outgoing("movements", "movements", {"schema": "fc-edge/movement/1", "n": i})
            for i in range(30)
        ]
    )
    box.commit([Outgoing("counts", "counts", {"schema": "fc-edge/count/1", "n": 0})])
    box.close()
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(state, "mqtt://127.0.0.1:1", ZONE_READER.format(capture="x.jsonl", speed=1.0))
    )

    stats = outbox_cli(conf, "stats")
    assert stats.returncode == 0, stats.stderr
    body = json.loads(stats.stdout)
    assert body["depth"] == 31 and body["last_seq"] == {"movements": 30, "counts": 1}

    peek = outbox_cli(conf, "peek", "--limit", "5")
    rows = [json.loads(line) for line in peek.stdout.splitlines()]
    assert [r["message"]["seq"] for r in rows] == [1, 2, 3, 4, 5]

    export = outbox_cli(conf, "export", "--stream", "counts")
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["topic"] == "counts"
