"""LLRP decoder processes (`[gateway] decoder_processes`), every part real: simulated LLRP
readers over TCP -> sllurp in `fc-edge run`'s decoder processes -> the gateway process's engine
-> mosquitto -> `fc-edge listen`.

- A decoder process killed (SIGKILL) in the middle of the traffic: it is counted with its
  cause and restarted, its readers reconnect and send what they buffered, and every EPC
  arrives exactly once; SIGTERM then stops everything with exit status 0, no child left.
- kill -9 of the gateway process: its decoder processes end with it (no orphans).
- A decoder process that sends a malformed message, or hangs (SIGSTOP), is counted with its
  cause and restarted; a SIGHUP reaches every decoder process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.llrp import ReaderSpec, SimServer
from tests.support.broker import Broker
from tests.support.chaos import alive, wait_ended
from tests.support.gateway import ListenProcess, fc_edge, gateway_head, llrp_zone_readers
from tests.support.helpers import free_port, wait_for
from tests.support.llrp_driving import EPCS_PER_READER, field_epc, field_reads
from tools.soak import decoder_pids

READERS = ("r1", "r2", "r3")

FAMILY = 1  # this test's EPCs (tests.support.llrp_driving.field_epc)


def config(
    tmp_path: Path, broker: Broker, ports: dict[str, int], metrics_port: int, processes: int
) -> Path:
    text = gateway_head(tmp_path / "state", broker.url).replace(
        "[metrics]\nenabled = false", f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"'
    )
    text = text.replace(
        "shutdown_timeout_s = 5", f"shutdown_timeout_s = 5\ndecoder_processes = {processes}"
    )
    text += llrp_zone_readers(ports)
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def metrics(port: int) -> dict[str, float]:
    """fc_edge_* samples by their full name with labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("fc_edge_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for key, value in metrics(port).items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            total += value
    return total


def worker_of(gateway_pid: int, reader: str, port: int) -> int:
    """The decoder process that holds `reader`'s connection (the one with a socket to its
    simulated reader's port)."""
    for pid in decoder_pids(gateway_pid):
        with contextlib.suppress(OSError):
            inodes = {
                os.readlink(f"/proc/{pid}/fd/{fd}").removeprefix("socket:[").rstrip("]")
                for fd in os.listdir(f"/proc/{pid}/fd")
            }
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[2].split(":")[1], 16) == port and parts[9] in inodes:
                    return pid
    raise AssertionError(f"no decoder process holds {reader}'s connection")


@contextlib.contextmanager
def running(
    tmp_path: Path, broker: Broker, specs: list[ReaderSpec], processes: int
) -> Iterator[tuple[SimServer, subprocess.Popen[bytes], int, ListenProcess]]:
    sim = SimServer(specs)
    with sim.running():
        ports = {spec.name: sim.reader(spec.name).port for spec in specs}
        listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements")
        metrics_port = free_port()
        log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115 (closed below)
        gw = fc_edge(
            "run",
            "-c",
            str(config(tmp_path, broker, ports, metrics_port, processes)),
            stdout=log,
            stderr=log,
        )
        try:
            yield sim, gw, metrics_port, listen
        finally:
            if gw.poll() is None:
                gw.kill()
                gw.wait(30)
            log.close()
            listen.stop()


def arrived(listen: ListenProcess) -> Counter[str]:
    return Counter(m["epc"] for m in listen.lines() if m.get("type") == "arrived")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_decoder_process_killed_mid_stream_loses_and_repeats_no_epc(
    tmp_path: Path, broker: Broker
) -> None:
    specs = [
        ReaderSpec(name, reads=field_reads(n, FAMILY), buffer_reads=66_000)
        for n, name in enumerate(READERS)
    ]
    want = {field_epc(n, k, FAMILY) for n in range(len(READERS)) for k in range(EPCS_PER_READER)}
    with running(tmp_path, broker, specs, processes=2) as (sim, gw, port, listen):
        wait_for(lambda: all(sim.reader(r).status()["connected"] for r in READERS), timeout=60)
        assert len(decoder_pids(gw.pid)) == 2
        t0 = sim.elapsed()
        wait_for(lambda: sim.elapsed() > t0 + 2.0, timeout=30)
        victim = worker_of(gw.pid, "r1", sim.reader("r1").port)
        os.kill(victim, signal.SIGKILL)  # in the middle of r1's (and its neighbour's) traffic
        wait_for(lambda: metric(port, "fc_edge_decoder_restarts_total", cause="died") >= 1, 30)
        wait_for(lambda: sim.elapsed() > t0 + 7.0, timeout=30)
        os.kill(worker_of(gw.pid, "r2", sim.reader("r2").port), signal.SIGKILL)  # once more
        with contextlib.suppress(AssertionError):  # what is missing is reported below
            wait_for(lambda: set(arrived(listen)) >= want, timeout=90)
        restarts = metric(port, "fc_edge_decoder_restarts_total", cause="died")
        lost = metric(port, "fc_edge_device_reconnects_total", device="r1", cause="decoder_died")
        reads_r1 = metric(port, "fc_edge_reads_total", reader="r1")
        stats = {r: sim.reader(r).status()["stats"] for r in READERS}
        children = decoder_pids(gw.pid)
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(60) == 0
    counts = arrived(listen)
    missing = sorted(want - set(counts))
    assert not missing, (len(missing), missing[:5], stats)
    assert set(counts.values()) == {1}, [e for e, n in counts.items() if n > 1][:10]
    assert restarts == 2, restarts
    assert lost >= 1 and reads_r1 > 0, (lost, reads_r1)
    assert stats["r1"]["connections"] >= 2, stats  # r1 reconnected to the new process
    assert not [pid for pid in children if alive(pid)], children  # SIGTERM ended them too
    log = (tmp_path / "gw.log").read_text()
    assert "decoder process" in log and "died" in log


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_of_the_gateway_leaves_no_decoder_process(tmp_path: Path, broker: Broker) -> None:
    specs = [ReaderSpec(name, reads=field_reads(n, FAMILY)) for n, name in enumerate(READERS)]
    with running(tmp_path, broker, specs, processes=2) as (sim, gw, _port, _listen):
        wait_for(lambda: all(sim.reader(r).status()["connected"] for r in READERS), timeout=60)
        children = decoder_pids(gw.pid)
        assert len(children) == 2
        gw.kill()
        gw.wait(10)
        wait_ended(children)


def data_fd(pid: int) -> int:
    """The decoder process's data pipe (its first argument)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"drivers.llrp_worker") + 1])


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_malformed_batch_or_a_hang_restarts_the_decoder_process_and_sighup_reaches_it(
    tmp_path: Path, broker: Broker
) -> None:
    specs = [ReaderSpec("r1", reads=field_reads(0, FAMILY))]
    with running(tmp_path, broker, specs, processes=1) as (sim, gw, port, _listen):
        wait_for(lambda: sim.reader("r1").status()["connected"], timeout=60)
        gw.send_signal(signal.SIGHUP)
        wait_for(lambda: metric(port, "fc_edge_decoder_reload_generation") == 1, timeout=30)
        # A message that is no batch, written into the decoder process's own data pipe.
        (pid,) = decoder_pids(gw.pid)
        with open(f"/proc/{pid}/fd/{data_fd(pid)}", "wb") as pipe:
            pipe.write(len(b"Rgarbage").to_bytes(4, "big") + b"Rgarbage")
        wait_for(
            lambda: metric(port, "fc_edge_decoder_restarts_total", cause="malformed_batch") == 1,
            timeout=30,
        )
        wait_for(
            lambda: sim.reader("r1").status()["connected"] and len(decoder_pids(gw.pid)) == 1, 60
        )
        (pid,) = decoder_pids(gw.pid)
        # The new process has the reload too (it came before it started).
        wait_for(lambda: metric(port, "fc_edge_decoder_reload_generation") == 1, timeout=30)
        os.kill(pid, signal.SIGSTOP)  # hung: no heartbeat from here on
        started = time.monotonic()
        wait_for(lambda: metric(port, "fc_edge_decoder_restarts_total", cause="hung") == 1, 60)
        assert time.monotonic() - started >= 9  # not before HANG_S of silence
        assert not alive(pid)
        wait_for(lambda: metric(port, "fc_edge_device_up", device="r1") == 1, timeout=60)
        assert metric(port, "fc_edge_device_reconnects_total", cause="decoder_hung") == 1
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(60) == 0
    log = (tmp_path / "gw.log").read_text()
    assert "malformed batch" in log and "hung" in log
