"""Soak: ten minutes of a realistic site (16 LLRP readers x 100 reads/s, a staging zone with
5 new EPCs a second, a conveyor PLC, a robot cell, a handheld counting) through the real
daemon, sampling its RSS and open file descriptors every 10 s. Bounds (why: tools/soak.py):
after a 2-minute warm-up RSS grows by less than 20 MB and the fd count stays within ±5; the
outbox drains, the daemon stops cleanly and the IMS holds every message exactly once.
`make soak` (python -m tools.soak --minutes 30) is the same run, longer, by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.soak import Soak


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ten_minute_soak_memory_and_fds_stay_flat(tmp_path: Path) -> None:
    soak = Soak(minutes=10, workdir=tmp_path)
    result = soak.run()
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary))
    assert result["reads_per_s"] > 0.5 * result["reads_per_s_offered"], summary
    assert result["rss_ok"], f"RSS grew {result['rss_growth_mb']} MB after warm-up: {summary}"
    assert result["fds_ok"], f"open fds spread {result['fds']} after warm-up: {summary}"
    assert result["clean_exit"], summary
    assert result["ims_complete"], result["problems"]
    assert result["ok"]
