"""What several chaos tests share (the simulated site itself is tools/simsite.py, which the
soak tool runs too)."""

from __future__ import annotations

from pathlib import Path

from tests.support.broker import Broker
from tests.support.helpers import free_port


def persistent_broker(tmp_path: Path) -> Broker:
    # Saved on SIGTERM (and every 60 s): Broker's default 1 s autosave rewrites the whole store
    # each second, which with a backlog of 100k+ queued messages stalls the broker (measured:
    # the gateway's drain fell to ~1.8k msg/s).
    b = Broker(tmp_path / "broker", free_port(), persistence=True, autosave_s=60)
    b.workdir.mkdir()
    b.start()
    return b
