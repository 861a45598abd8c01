"""A reader's buffered backlog after a reconnect, every part real: two simulated LLRP readers
that buffer their reads while no client inventories them (Impinj report buffering, Zebra FX
"data protection") -> sllurp inside `fc-edge run` -> mosquitto -> `fc-edge listen`.

The gateway connects after the traffic has begun (a backlog at the first connect); then each
reader drops its connection in the middle of the traffic, once in the middle of a report
frame, and is out of reach for seconds; each sends its backlog right after the next ROSpec
starts. Every EPC that was in a field for 2 s (6 reads) while its reader was connected or
buffering arrives exactly once, at its reader's zone. (Before event time per reader, a backlog
was judged "late" against the other reader's progress and thrown away: 117 of 2,400 EPCs never
arrived in the outside evaluation; this test fails on that engine.) A reader still held by a
half-open session refuses a new client ("a Client initiated connection already exists"):
taking such a session over is issue 16's, not tested here."""

from __future__ import annotations

import contextlib
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

from simulators.llrp import ReaderSpec, SimServer
from tests.support.broker import Broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_head, llrp_zone_readers
from tests.support.helpers import free_port, wait_for
from tests.support.llrp_driving import EPCS_PER_READER, field_epc, field_reads


def counters_of(port: int) -> list[str]:
    """The gateway's read and suppression counters, per reader and reason (best effort)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError as exc:
        return [f"metrics unavailable: {exc}"]
    return [
        line
        for line in text.splitlines()
        if line.startswith("fc_edge_") and ("read" in line or "suppressed" in line)
    ]


def config(tmp_path: Path, broker: Broker, ports: dict[str, int], metrics_port: int) -> Path:
    text = gateway_head(tmp_path / "state", broker.url).replace(
        "[metrics]\nenabled = false", f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"'
    )
    text += llrp_zone_readers(ports)
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_epc_of_a_backlog_arrives_exactly_once(tmp_path: Path, broker: Broker) -> None:
    specs = [
        ReaderSpec(name, reads=field_reads(n), buffer_reads=66_000)
        for n, name in enumerate(("r1", "r2"))
    ]
    sim = SimServer(specs)
    with sim.running():
        ports = {name: sim.reader(name).port for name in ("r1", "r2")}
        listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements")
        log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
        metrics_port = free_port()
        gw_config = config(tmp_path, broker, ports, metrics_port)
        gw = fc_edge("run", "-c", str(gw_config), stdout=log, stderr=log)
        try:
            r1, r2 = sim.reader("r1"), sim.reader("r2")
            # (Reads before the gateway is up are buffered too: a backlog at the first connect.)
            wait_for(lambda: r1.status()["connected"] and r2.status()["connected"], timeout=60)
            t0 = sim.elapsed()
            wait_for(lambda: sim.elapsed() > t0 + 1.0, timeout=30)
            # The connection is lost and the reader is out of reach for 3 s (longer than the
            # old reorder window), buffering meanwhile.
            r1.set_fault("refuse", 3.0)
            r1.set_fault("drop")
            wait_for(lambda: sim.elapsed() > t0 + 3.0, timeout=30)
            r2.set_fault("refuse", 2.5)
            r2.set_fault("drop_mid_frame")  # lost in the middle of a report
            wait_for(lambda: sim.elapsed() > t0 + 7.0, timeout=30)
            r1.set_fault("refuse", 2.0)
            r1.set_fault("drop")  # and once more
            want = {field_epc(n, k) for n in (0, 1) for k in range(EPCS_PER_READER)}

            def arrived() -> Counter[str]:
                return Counter(m["epc"] for m in listen.lines() if m.get("type") == "arrived")

            with contextlib.suppress(AssertionError):  # what is missing is reported below
                wait_for(lambda: set(arrived()) >= want, timeout=90)
            stats = {name: sim.reader(name).status()["stats"] for name in ("r1", "r2")}
            engine_counts = counters_of(metrics_port)  # for a failure to say where reads went
            warnings = [
                line for line in (tmp_path / "gw.log").read_text().splitlines() if "warn" in line
            ]
        finally:
            gw.terminate()
            try:
                gw.wait(30)
            except subprocess.TimeoutExpired:  # pragma: no cover - shows in the log
                gw.kill()
            log.close()
            listen.stop()
    counts = arrived()
    missing = sorted(want - set(counts))
    assert not missing, (len(missing), missing[:5], engine_counts, stats, warnings[-10:])
    assert any(line.startswith("fc_edge_") for line in engine_counts), engine_counts
    for name in ("r1", "r2"):
        assert stats[name].get("reads_buffered", 0) > 0, stats
        assert stats[name].get("reads_dropped_buffer_full", 0) == 0, stats
    assert stats["r1"]["connections"] >= 3, stats
    assert set(counts.values()) == {1}, [e for e, n in counts.items() if n > 1][:10]
    to = {m["epc"]: m["to"] for m in listen.lines() if m.get("type") == "arrived"}
    for k in range(EPCS_PER_READER):
        assert (to[field_epc(0, k)], to[field_epc(1, k)]) == ("ZONE-R1", "ZONE-R2"), k
    assert not [m for m in listen.lines() if m.get("type") == "moved"]
