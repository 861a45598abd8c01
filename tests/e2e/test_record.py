"""`fc-edge record`: live reads from the LLRP simulator through the real driver into a replay
capture that the replay driver can play back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.gateway import ROOT, fc_edge


def test_record_writes_a_replayable_capture(tmp_path: Path) -> None:
    conf = tmp_path / "gw.toml"
    sim = fc_edge(
        "simulate",
        "llrp",
        "--scenario",
        "dock-receive",
        "--gateway-config",
        str(conf),
        "--speed",
        "4",
        "--start-delay-s",
        "2",
        "--grace-s",
        "1",
        "--state-dir",
        str(tmp_path / "state"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert sim.stdout is not None
        readers = json.loads(sim.stdout.readline())["readers"]
        capture = tmp_path / "capture.jsonl"
        rec = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "record",
                "-c",
                str(conf),
                "--out",
                str(capture),
                "--duration-s",
                "12",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert rec.returncode == 0, rec.stderr
    finally:
        sim.terminate()
        sim.wait(10)
    lines = [json.loads(line) for line in capture.read_text().splitlines()]
    assert len(lines) > 100
    assert {line["reader"] for line in lines} <= set(readers)
    assert all(set(line) == {"t", "reader", "antenna", "epc", "rssi"} for line in lines)
    assert lines[0]["t"] == 0 and all(line["t"] >= 0 for line in lines)
    # the replay driver accepts it: a config that replays it validates and names the file
    replay = conf.read_text().replace('driver = "llrp"', f'driver = "replay"\nfile = "{capture}"')
    replay = "\n".join(
        line for line in replay.splitlines() if not line.startswith(("host =", "port ="))
    )
    (tmp_path / "replay.toml").write_text(replay)
    check = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", "-c", str(tmp_path / "replay.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
