"""Soak, short: ten minutes of a realistic site (16 LLRP readers x 100 reads/s, a staging zone
with 5 new EPCs a second, a conveyor PLC, a robot cell, a handheld counting) through the real
daemon, with one 30-second broker outage half-way, sampling the daemon every 10 s. Bounds (why:
tools/soak.py): after a 2-minute warm-up RSS grows by less than 20 MB, the fd count stays within
±5 and the thread count within ±2, the engine never tracks more tags than the site can hold,
the outbox drains after the outage, the daemon stops cleanly and the IMS holds every message
exactly once. Eight minutes cannot judge a 1 MB/hour slope: `make soak` (2 hours after a
20-minute warm-up, an outage an hour) is the run that does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.soak import Sample, Soak


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ten_minute_soak_memory_fds_threads_and_state_stay_bounded(tmp_path: Path) -> None:
    soak = Soak(minutes=10, workdir=tmp_path, outage_every_min=10, outage_s=30)
    result = soak.run()
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary))
    assert result["reads_per_s"] > 0.5 * result["reads_per_s_offered"], summary
    assert len(result["outages"]) == 1, summary
    assert result["rss_ok"], f"RSS grew {result['rss_growth_mb']} MB after warm-up: {summary}"
    assert result["fds_ok"], f"open fds spread {result['fds']} after warm-up: {summary}"
    assert result["threads_ok"], f"threads spread {result['threads']} after warm-up: {summary}"
    assert result["engine_ok"], summary
    assert result["outbox_drained_after_outages"], summary
    assert result["clean_exit"], summary
    assert result["ims_complete"], result["problems"]
    assert result["ok"]


def samples(decoders: list[int], rss_mb: list[float], restarts: float = 0.0) -> list[Sample]:
    return [
        Sample(
            t_s=10.0 * i,
            rss_mb=50.0,
            fds=20,
            threads=6,
            tracked=100,
            depth=0,
            reads=0.0,
            appended=0.0,
            acked=0.0,
            decoders=n,
            decoder_rss_mb=mb,
            decoder_restarts=restarts,
        )
        for i, (n, mb) in enumerate(zip(decoders, rss_mb, strict=True))
    ]


def test_the_soak_bounds_the_decoder_processes_like_the_daemon(tmp_path: Path) -> None:
    """`--decoder-processes N`: all N alive in every sample after warm-up, none restarted,
    their summed RSS grown by less than the daemon's bound (fast: the verdict alone)."""
    soak = Soak(minutes=1, workdir=tmp_path, decoder_processes=2)
    steady = samples([2] * 8, [60.0] * 4 + [70.0] * 4)
    soak.samples = steady
    verdict = soak.decoder_checks(steady)
    assert verdict["decoders_ok"] and verdict["decoder_rss_ok"] and verdict["decoder_restarts_ok"]
    assert verdict["decoder_rss_growth_mb"] == 10.0
    one_missing = samples([2, 2, 2, 1, 2, 2, 2, 2], [60.0] * 8)
    assert not soak.decoder_checks(one_missing)["decoders_ok"]
    grown = samples([2] * 8, [60.0] * 4 + [80.5] * 4)
    assert not soak.decoder_checks(grown)["decoder_rss_ok"]
    soak.samples = samples([2] * 8, [60.0] * 8, restarts=1)
    assert not soak.decoder_checks(soak.samples)["decoder_restarts_ok"]
    # Decoding in the daemon: nothing of the kind is judged (nor reported).
    assert Soak(minutes=1, workdir=tmp_path).decoder_checks(steady) == {}
