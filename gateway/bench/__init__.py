"""Benchmarks of the spine, each printing ONE JSON document: the figure, the floor it competes
with measured in the same run, their ratio, the machine and the parameters.

    fc-edge bench outbox --json [--quick]   durable appends through Outbox.commit vs raw sqlite3
    fc-edge bench drain --json [--quick]    a backlog drained by the real pipeline vs raw paho
    fc-edge bench all --json [--quick]      every bench, each in its own subprocess

The machine is shared and noisy: read the ratios and the medians, not single runs. Each
figure records the load average before and after it so a reader can tell a quiet run from a
busy one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.bench.common import (
    ROOT,
    _loadavg,
    _ready,
    emit,
    machine,
    tree_cpu_s,
    workdir,
)
from gateway.decoders import process_count
from gateway.devkit.process import stop
from gateway.model import Movement, Observed, Outgoing, TagState, movement_body

SITE = "BENCH"
GATEWAY = "gw-bench"
BATCH = 500  # the pipeline's default commit_rows
EPOCH_US = 1_764_000_000_000_000


# --- common -----------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def sgtin96(company: int, item: int, serial: int) -> str:
    """SGTIN-96 hex (filter 1, partition 5: 7-digit company prefix), packed by hand so a bench
    can make 200k distinct EPCs in a blink; decode_epc() (epcpy) reads them back."""
    value = 0x30 << 3 | 1
    value = value << 3 | 5
    value = value << 24 | company
    value = value << 20 | item
    value = value << 38 | serial
    return f"{value:024X}"


def movements(start: int, count: int) -> list[Movement]:
    """Realistic `arrived` movements through a dock portal, one distinct EPC each."""
    out = []
    for k in range(start, start + count):
        t = EPOCH_US + k * 1_000
        out.append(
            Movement(
                type="arrived",
                epc=sgtin96(4912345, 67890, k + 1),
                from_="YARD",
                to="DOCK-03",
                time_us=t,
                source="dock-03",
                via="dock-03",
                biz_step="receiving",
                disposition="in_progress",
                observed=Observed(
                    reads=12, rssi_peak=-51.5, first_seen_us=t - 900_000, last_seen_us=t
                ),
            )
        )
    return out


def batch_of(start: int, count: int) -> tuple[list[Outgoing], list[TagState], dict[str, int]]:
    """What the pipeline commits for `count` movements: the messages, the tag states they
    changed and the source's cursor, as one outbox transaction."""
    moves = movements(start, count)
    messages = [
        Outgoing("movements", "movements", movement_body(m, SITE, GATEWAY), id=m.id) for m in moves
    ]
    states = [TagState(m.epc or "", True, m.to, m.time_us) for m in moves]
    return messages, states, {"replay:dock-03": start + count}


# --- outbox -----------------------------------------------------------------------------------


def _remove_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def time_outbox(
    path: Path,
    batches: Sequence[tuple[list[Outgoing], list[TagState], dict[str, int]]],
    synchronous: str,
) -> float:
    """Seconds to commit every batch through Outbox.commit on a fresh file."""
    from gateway.outbox import Outbox

    _remove_db(path)
    outbox = Outbox(path, synchronous=synchronous)
    try:
        started = time.perf_counter()
        for messages, states, cursors in batches:
            outbox.commit(messages, states, cursors)
        return time.perf_counter() - started
    finally:
        outbox.close()
        _remove_db(path)


def time_raw_sqlite(
    path: Path, payloads: Sequence[Sequence[tuple[str, bytes]]], synchronous: str
) -> float:
    """The floor: the same payloads, executemany + one transaction per batch, same pragmas
    (WAL, synchronous), into a bare table; no seq, tag states nor cursors."""
    _remove_db(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute(
            "CREATE TABLE messages (rowid INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
            " payload BLOB NOT NULL)"
        )
        started = time.perf_counter()
        for rows in payloads:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO messages (id, payload) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()
        _remove_db(path)


def bench_outbox(
    total: int, runs: int, modes: Sequence[str], base: str | None = None
) -> dict[str, Any]:
    from gateway.outbox import encode

    batches = [batch_of(start, min(BATCH, total - start)) for start in range(0, total, BATCH)]
    payloads = [
        [(m.id, encode(m, start + k + 1)) for k, m in enumerate(messages)]
        for start, (messages, _, _) in zip(range(0, total, BATCH), batches, strict=True)
    ]
    mean_bytes = sum(len(p) for rows in payloads for _, p in rows) / max(1, total)
    doc: dict[str, Any] = {
        "bench": "outbox",
        "machine": machine(),
        "params": {
            "movements": total,
            "batch": BATCH,
            "runs": runs,
            "payload_bytes_mean": round(mean_bytes),
            "per_batch": "messages + one tag state per movement + one cursor, one transaction",
            "floor": "raw sqlite3 executemany of the same payloads, one transaction per batch, "
            "same pragmas, bare table",
        },
        "goal": {"movements_per_s": 20_000},
    }
    with workdir(base, "fc-edge-bench-outbox-") as tmp:
        for mode in modes:
            outbox_s: list[float] = []
            floor_s: list[float] = []
            for run in range(runs):
                # Alternate the order so a burst of load elsewhere does not favour one side.
                if run % 2 == 0:
                    floor_s.append(time_raw_sqlite(tmp / "floor.db", payloads, mode))
                    outbox_s.append(time_outbox(tmp / "outbox.db", batches, mode))
                else:
                    outbox_s.append(time_outbox(tmp / "outbox.db", batches, mode))
                    floor_s.append(time_raw_sqlite(tmp / "floor.db", payloads, mode))
            rate = total / _median(outbox_s)
            floor = total / _median(floor_s)
            doc[mode] = {
                "movements_per_s": round(rate),
                "floor_rows_per_s": round(floor),
                "ratio": _ratio(rate, floor),
                "goal_met": rate >= 20_000,
                "outbox_s": [round(s, 4) for s in outbox_s],
                "floor_s": [round(s, 4) for s in floor_s],
            }
    doc["loadavg_after"] = _loadavg()
    return doc


def _outbox_summary(doc: dict[str, Any]) -> str:
    lines = [f"outbox: {doc['params']['movements']} movements, median of {doc['params']['runs']}"]
    for mode in ("full", "normal"):
        if mode in doc:
            r = doc[mode]
            lines.append(
                f"  synchronous={mode:6} {r['movements_per_s']:>8,} movements/s"
                f"  floor {r['floor_rows_per_s']:>8,} rows/s  ratio {r['ratio']}"
            )
    return "\n".join(lines)


def outbox_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge bench outbox", description="durable append rate")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--movements", type=int, help="movements per run (default 50000, quick 10000)")
    p.add_argument("--runs", type=int, help="repetitions, median reported (default 5, quick 3)")
    p.add_argument("--synchronous", choices=("full", "normal", "both"), default="both")
    p.add_argument("--dir", help="where the database files go (default: a temp dir)")
    args = p.parse_args(argv)
    total = args.movements or (10_000 if args.quick else 50_000)
    runs = args.runs or (3 if args.quick else 5)
    if total <= 0 or runs <= 0:
        p.error("--movements and --runs must be positive")
    modes = ("full", "normal") if args.synchronous == "both" else (args.synchronous,)
    emit(bench_outbox(total, runs, modes, args.dir), args.json, _outbox_summary)
    return 0


# --- drain ------------------------------------------------------------------------------------


def fill_outbox(path: Path, total: int) -> None:
    """N movements committed the pipeline's way (batches of 500 with states and cursor)."""
    from gateway.outbox import Outbox

    outbox = Outbox(path, synchronous="normal")  # the fill is not measured
    try:
        for start in range(0, total, BATCH):
            outbox.commit(*batch_of(start, min(BATCH, total - start)))
    finally:
        outbox.close()  # checkpoints the WAL: one self-contained file to copy per run


def _bench_settings(state_dir: Path, broker_url: str, window: int, client_id: str) -> Any:
    """A gateway config with one (never started) replay reader: the config needs a device."""
    from gateway.config import from_dict

    capture = state_dir / "empty.jsonl"
    capture.write_text("")
    raw = {
        "gateway": {"site": SITE, "id": GATEWAY, "state_dir": str(state_dir)},
        "mqtt": {"url": broker_url, "client_id": client_id, "inflight": window},
        "metrics": {"enabled": False},
        "locations": {
            "YARD": {"offsite": True},
            "DOCK-03": {"biz_step": "receiving", "disposition": "in_progress"},
        },
        "readers": [
            {
                "name": "dock-03",
                "driver": "replay",
                "file": str(capture),
                "antennas": {
                    "1": {"location": "YARD"},
                    "2": {"location": "DOCK-03"},
                },
            }
        ],
    }
    return from_dict(raw, "bench")


async def _drain_with_pipeline(settings: Any, total: int, timeout_s: float) -> dict[str, float]:
    """Open a real Gateway on the filled outbox and run its own publish and ack loops (no
    drivers, no ingest) until every row is acknowledged by the broker and deleted."""
    from gateway.daemon import Gateway

    gateway = Gateway(settings)
    await gateway.open()
    delivery, store = gateway.delivery, gateway.store
    assert delivery is not None
    publisher, outbox = delivery.publisher, store.outbox
    tasks: list[asyncio.Task[None]] = []
    try:
        deadline = time.monotonic() + 30
        while not publisher.connected:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the pipeline's publisher did not connect: {publisher.last_error}"
                )
            await asyncio.sleep(0.005)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        tasks = [
            asyncio.create_task(delivery.publish_loop(), name="publish"),
            asyncio.create_task(delivery.ack_loop(), name="ack"),
        ]
        delivery.wake()
        deadline = time.monotonic() + timeout_s
        while outbox.acked < total:
            for task in tasks:
                if task.done():
                    task.result()  # raises what killed it
                    raise RuntimeError(f"pipeline task {task.get_name()} ended")
            if time.monotonic() > deadline:
                raise RuntimeError(f"drain incomplete after {timeout_s} s: {outbox.acked}/{total}")
            await asyncio.sleep(0.005)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        depth = await store.call(lambda: outbox.stats().depth)
        return {
            "messages": outbox.acked,
            "wall_s": round(wall, 3),
            "msgs_per_s": round(outbox.acked / wall),
            "cpu_s": round(cpu, 3),
            "depth_after": depth,
        }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await delivery.stop()
        await store.close()


def drain_floor(
    host: str,
    port: int,
    messages: Sequence[tuple[str, bytes]],
    window: int,
    client_id: str,
    timeout_s: float,
) -> dict[str, float]:
    """The floor: raw paho, MQTT 5, QoS 1, max_inflight = the same window, a semaphore of the
    window's size gating publish() (released in on_publish); wait for every on_publish.

    Not "publish everything at once": paho's _update_inflight scans every queued message on
    each PUBACK, so a 200k queue makes paho itself quadratic (measured: 69k of 200k acked in
    400 s)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    total = len(messages)
    acked = [0]
    done = threading.Event()
    connected = threading.Event()

    room = threading.Semaphore(window)

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        room.release()
        acked[0] += 1
        if acked[0] >= total:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *args: connected.set()
    client.connect(host, port)
    client.loop_start()
    try:
        if not connected.wait(30):
            raise RuntimeError("the floor client did not connect")
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for topic, payload in messages:
            if not room.acquire(timeout=timeout_s):
                raise RuntimeError(f"floor stalled: {acked[0]}/{total} acknowledged")
            client.publish(topic, payload, qos=1)
        if not done.wait(timeout_s):
            raise RuntimeError(f"floor incomplete after {timeout_s} s: {acked[0]}/{total}")
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        client.disconnect()
        client.loop_stop()
    return {
        "messages": acked[0],
        "wall_s": round(wall, 3),
        "msgs_per_s": round(acked[0] / wall),
        "cpu_s": round(cpu, 3),
    }


def _payloads_of(db: Path, topic_base: str) -> list[tuple[str, bytes]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT subtopic, payload FROM messages ORDER BY rowid").fetchall()
    finally:
        conn.close()
    return [(f"{topic_base}/{subtopic}", payload) for subtopic, payload in rows]


def bench_drain(total: int, runs: int, window: int, base: str | None = None) -> dict[str, Any]:
    from gateway.devkit.broker import Mosquitto

    doc: dict[str, Any] = {
        "bench": "drain",
        "machine": machine(),
        "params": {
            "messages": total,
            "runs": runs,
            "window": window,
            "protocol": "MQTT 5, QoS 1, loopback mosquitto (persistence off, no subscriber)",
            "pipeline": "real Gateway delivery: Outbox.lease/ack on the outbox thread, Publisher, "
            "publish_loop + ack_loop (no drivers)",
            "floor": "raw paho, same payloads and topics, max_inflight = window, publish() "
            "gated by a window-sized semaphore released in on_publish",
        },
        "goal": {"ratio": 0.7},
    }
    with workdir(base, "fc-edge-bench-drain-") as tmp:
        filled = tmp / "filled.db"
        t0 = time.perf_counter()
        fill_outbox(filled, total)
        doc["params"]["fill_s"] = round(time.perf_counter() - t0, 2)
        broker = Mosquitto(tmp / "broker")
        port = broker.start()
        try:
            host, url = "127.0.0.1", broker.url
            timeout_s = max(120.0, total / 500)
            pipe_runs: list[dict[str, float]] = []
            floor_runs: list[dict[str, float]] = []
            payloads = _payloads_of(filled, f"fc/{SITE}/{GATEWAY}")
            for run in range(runs):
                state = tmp / f"state-{run}"
                state.mkdir()
                shutil.copy(filled, state / "outbox.db")
                settings = _bench_settings(state, url, window, f"bench-gw-{run}")

                def pipe(state: Path = state, settings: Any = settings) -> None:
                    pipe_runs.append(asyncio.run(_drain_with_pipeline(settings, total, timeout_s)))
                    shutil.rmtree(state, ignore_errors=True)

                def floor(run: int = run) -> None:
                    floor_runs.append(
                        drain_floor(host, port, payloads, window, f"bench-raw-{run}", timeout_s)
                    )

                for step in (floor, pipe) if run % 2 == 0 else (pipe, floor):
                    step()
        finally:
            broker.stop()
    rate = _median([r["msgs_per_s"] for r in pipe_runs])
    floor_rate = _median([r["msgs_per_s"] for r in floor_runs])
    doc.update(
        {
            "msgs_per_s": round(rate),
            "floor_msgs_per_s": round(floor_rate),
            "ratio": _ratio(rate, floor_rate),
            "goal_met": rate >= 0.7 * floor_rate,
            "cpu_s_per_10k": {
                "pipeline": round(
                    _median([r["cpu_s"] * 10_000 / r["messages"] for r in pipe_runs]), 3
                ),
                "floor": round(
                    _median([r["cpu_s"] * 10_000 / r["messages"] for r in floor_runs]), 3
                ),
            },
            "pipeline_runs": pipe_runs,
            "floor_runs": floor_runs,
            "loadavg_after": _loadavg(),
        }
    )
    return doc


def _drain_summary(doc: dict[str, Any]) -> str:
    return (
        f"drain: {doc['params']['messages']} messages, window {doc['params']['window']}, "
        f"median of {doc['params']['runs']}\n"
        f"  pipeline {doc['msgs_per_s']:>8,} msg/s   raw paho {doc['floor_msgs_per_s']:>8,} msg/s"
        f"   ratio {doc['ratio']} (goal 0.7)"
    )


def drain_main(argv: list[str] | None = None) -> int:
    from gateway.config import MqttSettings

    default_window = MqttSettings.__dataclass_fields__["inflight"].default
    p = argparse.ArgumentParser(prog="fc-edge bench drain", description="backlog drain rate")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    p.add_argument("--messages", type=int, help="backlog size (default 200000, quick 20000)")
    p.add_argument("--runs", type=int, help="repetitions, median reported (default 3)")
    p.add_argument(
        "--window", type=int, default=default_window, help="in-flight window ([mqtt] inflight)"
    )
    p.add_argument("--dir", help="where the database files go (default: a temp dir)")
    args = p.parse_args(argv)
    total = args.messages or (20_000 if args.quick else 200_000)
    runs = args.runs or 3
    if total <= 0 or runs <= 0 or args.window <= 0:
        p.error("--messages, --runs and --window must be positive")
    emit(bench_drain(total, runs, args.window, args.dir), args.json, _drain_summary)
    return 0


# --- reduction --------------------------------------------------------------------------------


def bench_reduction(scenario_name: str = "dock-receive") -> dict[str, Any]:
    """Reads in per movement out: the scenario's reads (its full duration) through the engine
    built from the gateway config the scenario writes, in 50 ms batches with 250 ms ticks (the
    accuracy bench's replay). The floor is what a naive gateway sends: one message per read;
    the last-antenna-wins baseline shows what smoothing buys on the same reads."""
    from gateway.bench.engine import EPOCH_US as T0
    from gateway.bench.engine import replay, scenario_config, scenario_reads
    from gateway.engine import Engine
    from gateway.engine.baselines import LastAntennaWins
    from gateway.score import score
    from simulators.scenario import find_scenario, load_scenario, render, truth_lines

    path = find_scenario(scenario_name)
    scenario = load_scenario(path)
    config = scenario_config(scenario)
    rendering = render(scenario)
    reads = scenario_reads(rendering)
    end_us = T0 + round(scenario.duration * 1e6)
    truth = [t for t in truth_lines(rendering, T0) if t["time"] <= _iso(end_us)]
    doc: dict[str, Any] = {
        "bench": "reduction",
        "machine": machine(),
        "params": {
            "scenario": path.name,
            "duration_s": scenario.duration,
            "tags": _tag_count(scenario),
        },
        "reads": len(reads),
        "truth_movements": len(truth),
        "goal": {"reads_per_message": 20, "at_recall": 1.0},
    }
    for name, runner in (
        ("engine", Engine(config)),
        ("last_antenna_wins", LastAntennaWins(config)),
    ):
        got = replay(runner, reads, end_us)
        result = score(truth, got, 2.0)
        doc[name] = {
            "messages": len(got),
            "reads_per_message": round(len(reads) / len(got), 1) if got else None,
            # every true movement reported (same epc, type, from, to), whatever its time
            "recall": identity_recall(truth, got),
            # and within 2 s of the truth time (gateway.score)
            "recall_within_2s": result["recall"],
            "precision_within_2s": result["precision"],
        }
    engine = doc["engine"]
    doc["reads_per_message"] = engine["reads_per_message"]
    doc["recall"] = engine["recall"]
    doc["goal_met"] = bool(
        engine["reads_per_message"]
        and engine["reads_per_message"] >= 20
        and engine["recall"] >= 1.0
    )
    doc["floor"] = {"what": "one message per read", "reads_per_message": 1.0}
    return doc


def identity_recall(truth: Sequence[dict[str, Any]], got: Sequence[dict[str, Any]]) -> float:
    """Share of true movements matched one to one by a reported movement with the same epc,
    type, from and to, ignoring time."""
    from collections import Counter

    def key(m: dict[str, Any]) -> tuple[Any, ...]:
        return (str(m.get("epc") or "").upper(), m.get("type"), m.get("from"), m.get("to"))

    have = Counter(key(m) for m in got)
    matched = 0
    for line in truth:
        k = key(line)
        if have[k] > 0:
            have[k] -= 1
            matched += 1
    return round(matched / len(truth), 6) if truth else 1.0


def _iso(time_us: int) -> str:
    from gateway.model import iso_ms

    return iso_ms(time_us)


def _tag_count(scenario: Any) -> int:
    return sum(len(epcs) for epcs in scenario.groups.values())


def reduction_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge bench reduction", description="reads per message")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quick", action="store_true", help="accepted for symmetry (it is quick)")
    p.add_argument("--scenario", default="dock-receive", help="scenario name or file")
    args = p.parse_args(argv)
    emit(
        bench_reduction(args.scenario),
        args.json,
        lambda d: (
            f"reduction ({d['params']['scenario']}): {d['reads']} reads -> "
            f"{d['engine']['messages']} movements = {d['reads_per_message']} reads/message, "
            f"recall {d['engine']['recall']}"
        ),
    )
    return 0


# --- memory -----------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sample_rss(pid: int, samples: int, interval_s: float) -> list[int]:
    out = []
    for _ in range(samples):
        time.sleep(interval_s)
        out.append(rss_kib(pid))
    return out


def bench_memory(idle_s: float = 3.0, base: str | None = None) -> dict[str, Any]:
    """RSS of an idle `fc-edge run` (connected to a broker, one replay reader with nothing to
    play, metrics server on) vs the floor: a bare interpreter that imported nothing."""
    from gateway.devkit.broker import Mosquitto
    from gateway.devkit.process import free_port

    doc: dict[str, Any] = {
        "bench": "memory",
        "machine": machine(),
        "params": {"idle_s": idle_s, "what": "VmRSS of `fc-edge run` idle, broker connected"},
    }
    with workdir(base, "fc-edge-bench-memory-") as tmp:
        broker = Mosquitto(tmp / "broker")
        broker.start()
        url = broker.url
        gateway: subprocess.Popen[bytes] | None = None
        floor: subprocess.Popen[bytes] | None = None
        try:
            port = free_port()
            (tmp / "empty.jsonl").write_text("")
            (tmp / "gw.toml").write_text(_memory_config(tmp, url, port))
            log = open(tmp / "gateway.log", "wb")  # noqa: SIM115 (closed with the process)
            gateway = subprocess.Popen(  # noqa: S603 (our own interpreter and CLI)
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(tmp / "gw.toml")],
                cwd=ROOT,
                stdout=log,
                stderr=log,
            )
            floor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # noqa: S603
            deadline = time.monotonic() + 60
            while not _ready(port):
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the gateway did not become ready: "
                        + (tmp / "gateway.log").read_text()[-2000:]
                    )
                time.sleep(0.1)
            gw_samples = _sample_rss(gateway.pid, 5, idle_s / 5)
            floor_samples = _sample_rss(floor.pid, 2, 0.05)
        finally:
            for proc in (gateway, floor):
                stop(proc, 15)
            broker.stop()
    rss = _median(gw_samples)
    bare = _median(floor_samples)
    doc.update(
        {
            "rss_idle_mib": round(rss / 1024, 1),
            "rss_idle_max_mib": round(max(gw_samples) / 1024, 1),
            "floor_bare_python_mib": round(bare / 1024, 1),
            "ratio": _ratio(rss, bare),
            "samples_kib": gw_samples,
            "note": "bytes per tracked tag at 1M tags: see the engine bench (memory.bytes_per_tag)",
        }
    )
    return doc


def _memory_config(tmp: Path, url: str, metrics_port: int) -> str:
    return f"""
[gateway]
site = "{SITE}"
id = "{GATEWAY}"
state_dir = "{tmp / "state"}"

[mqtt]
url = "{url}"
client_id = "bench-memory"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[locations.YARD]
offsite = true

[locations.DOCK-03]
biz_step = "receiving"
disposition = "in_progress"

[portals.dock-03]
outside = ["dock-03:1"]
inside = ["dock-03:2"]

[[readers]]
name = "dock-03"
driver = "replay"
file = "{tmp / "empty.jsonl"}"
[readers.antennas]
1 = {{ location = "YARD" }}
2 = {{ location = "DOCK-03" }}
"""


def memory_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge bench memory", description="RSS of an idle gateway")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quick", action="store_true", help="sample for 1 s instead of 3")
    args = p.parse_args(argv)
    emit(
        bench_memory(1.0 if args.quick else 3.0),
        args.json,
        lambda d: (
            f"memory: idle gateway RSS {d['rss_idle_mib']} MiB "
            f"(bare python {d['floor_bare_python_mib']} MiB, ratio {d['ratio']})"
        ),
    )
    return 0


# --- pipeline ---------------------------------------------------------------------------------


GENERATOR_TAGS = 1000  # distinct EPCs per generator reader


def serve_generators(readers: int, rate_per_reader: float) -> int:
    """Child process: `readers` simulated LLRP readers in generator mode (1000 distinct EPCs
    each, 100 tags per report, antennas 1-2), paced to `rate_per_reader` tags/s. Prints
    {"ports": {name: port}} and serves until stdin closes."""
    from simulators.llrp import Generator, ReaderSpec, SimServer

    specs = [
        ReaderSpec(
            f"r{k}",
            generator=Generator(
                tags=GENERATOR_TAGS,
                rate=rate_per_reader,
                tags_per_report=100,
                antennas=(1, 2),
                epc_prefix=f"303400000{k:05X}",
            ),
        )
        for k in range(readers)
    ]
    with SimServer(specs).running() as sim:
        ports = {spec.name: sim.reader(spec.name).port for spec in specs}
        print(json.dumps({"ports": ports}), flush=True)
        sys.stdin.read()
    return 0


def _pipeline_config(
    tmp: Path, url: str, metrics_port: int, ports: dict[str, int], decoders: int | str = 0
) -> str:
    decoder_processes = f'"{decoders}"' if decoders == "auto" else decoders
    lines = [
        f'[gateway]\nsite = "{SITE}"\nid = "{GATEWAY}"\nstate_dir = "{tmp / "state"}"\n'
        f"decoder_processes = {decoder_processes}\n",
        f'[mqtt]\nurl = "{url}"\nclient_id = "bench-pipeline"\n',
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
    ]
    for name, port in ports.items():
        # One zone per reader, both antennas in it: the steady state of a busy site, where
        # every read costs the full path and few turn into movements.
        lines.append(f"[locations.Z-{name}]\n")
        lines.append(
            f'[[readers]]\nname = "{name}"\ndriver = "llrp"\nhost = "127.0.0.1"\nport = {port}\n'
            "max_clock_skew_s = 86400\n[readers.antennas]\n"
            f'1 = {{ location = "Z-{name}" }}\n2 = {{ location = "Z-{name}" }}\n'
        )
    return "\n".join(lines)


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:  # noqa: S310 (loopback)
        text = reply.read().decode()
    out = {"reads": 0.0, "outbox": 0.0, "tracked": 0.0}
    for line in text.splitlines():
        if line.startswith("fc_edge_reads_total"):
            out["reads"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("fc_edge_outbox_messages "):
            out["outbox"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("fc_edge_engine_tracked_tags "):
            out["tracked"] = float(line.rsplit(" ", 1)[1])
    return out


def pipeline_step(
    tmp: Path,
    url: str,
    readers: int,
    offered: float,
    warmup_s: float,
    measure_s: float,
    decoders: int | str = 0,
) -> dict[str, Any]:
    """One offered rate: simulators and `fc-edge run` (each its own process, with its decoder
    processes if any) for warmup + measure seconds; achieved reads/s from the gateway's own
    reads counter, CPU per process of the gateway's process tree."""
    from gateway.devkit.process import free_port

    sim = gateway = None
    step_dir = tmp / f"step-{int(offered)}"
    step_dir.mkdir()
    try:
        sim = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [
                sys.executable,
                "-m",
                "gateway.bench",
                "serve-generators",
                str(readers),
                str(offered / readers),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert sim.stdout is not None
        ports = json.loads(sim.stdout.readline())["ports"]
        metrics_port = free_port()
        (step_dir / "gw.toml").write_text(
            _pipeline_config(step_dir, url, metrics_port, ports, decoders)
        )
        log = open(step_dir / "gateway.log", "wb")  # noqa: SIM115 (closed with the process)
        gateway = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(step_dir / "gw.toml")],
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if _scrape(metrics_port)["reads"] > 0:
                    break
            except OSError:
                pass
            if gateway.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "no reads reached the gateway: "
                    + (step_dir / "gateway.log").read_text()[-1500:]
                )
            time.sleep(0.2)
        time.sleep(warmup_s)
        # Every tag's first sighting is an arrival: let the engine see every tag and that burst
        # publish before measuring (the outbox alone can look empty before it began).
        settle = time.monotonic() + 60
        while time.monotonic() < settle:
            m = _scrape(metrics_port)
            if m["tracked"] >= readers * GENERATOR_TAGS and m["outbox"] <= 100:
                break
            time.sleep(0.2)
        s0 = tree_cpu_s(sim.pid)["main"]
        m0, c0, t0 = _scrape(metrics_port), tree_cpu_s(gateway.pid), time.perf_counter()
        time.sleep(measure_s)
        m1, c1, t1 = _scrape(metrics_port), tree_cpu_s(gateway.pid), time.perf_counter()
        s1 = tree_cpu_s(sim.pid)["main"]
        achieved = (m1["reads"] - m0["reads"]) / (t1 - t0)
        by_process = {k: (c1[k] - c0[k]) / (t1 - t0) for k in c1 if k in c0}
        cpu = sum(by_process.values())
        return {
            "offered_reads_per_s": round(offered),
            "reads_per_s": round(achieved),
            "gateway_cpu": round(cpu, 3),
            "cpu_per_1k_reads_per_s": round(cpu * 1000 / achieved, 4) if achieved else None,
            "cpu_by_process": {k: round(v, 3) for k, v in by_process.items()},
            "cpu_per_1k_reads_per_s_by_process": {
                k: round(v * 1000 / achieved, 4) if achieved else None
                for k, v in by_process.items()
            },
            # The simulated readers share the box: on 2 cores their CPU bounds what is offered.
            "simulator_cpu": round((s1 - s0) / (t1 - t0), 3),
            "outbox_depth": [m0["outbox"], m1["outbox"]],
            "sustained": achieved >= 0.95 * offered and m1["outbox"] <= m0["outbox"] + 500,
        }
    finally:
        stop(gateway, 15)
        stop(sim, 15)


def bench_pipeline(
    readers: int,
    rates: Sequence[float],
    warmup_s: float,
    measure_s: float,
    base: str | None = None,
    decoders: int | str = 0,
) -> dict[str, Any]:
    """Offered rate ramped until the gateway no longer keeps up (reads/s below 95 % of offered,
    or the outbox growing); the floor is sllurp's decode-only rate on 100-tag reports."""
    from gateway.bench.llrp import bench_sllurp_decode, encode_reports
    from gateway.devkit.broker import Mosquitto

    doc: dict[str, Any] = {
        "bench": "pipeline",
        "machine": machine(),
        "params": {
            "readers": readers,
            "rates": list(rates),
            "warmup_s": warmup_s,
            "measure_s": measure_s,
            "decoder_processes": decoders,
            "decoder_processes_started": process_count(decoders),
            "path": "simulated LLRP readers (child process) -> sllurp -> engine -> outbox -> "
            "mosquitto, `fc-edge run` in its own process (sllurp in its decoder processes "
            "when decoder_processes > 0)",
            "floor": "sllurp LLRPMessage decode only, 100-tag RO_ACCESS_REPORTs, one process",
        },
        "goal": {"ratio": 0.7},
    }
    floor = bench_sllurp_decode(encode_reports(100_000, 100))["tags_per_s"]
    steps: list[dict[str, Any]] = []
    with workdir(base, "fc-edge-bench-pipeline-") as tmp:
        broker = Mosquitto(tmp / "broker")
        broker.start()
        try:
            for rate in rates:
                step = pipeline_step(tmp, broker.url, readers, rate, warmup_s, measure_s, decoders)
                steps.append(step)
                if not step["sustained"]:
                    break
        finally:
            broker.stop()
    sustained = [s for s in steps if s["sustained"]]
    best = max(sustained, key=lambda s: s["reads_per_s"]) if sustained else None
    peak = max((s["reads_per_s"] for s in steps), default=0)
    doc.update(
        {
            "sustained_reads_per_s": best["reads_per_s"] if best else 0,
            "peak_reads_per_s": peak,
            "cpu_per_1k_reads_per_s": best["cpu_per_1k_reads_per_s"] if best else None,
            "floor_sllurp_decode_tags_per_s": floor,
            "ratio": _ratio(best["reads_per_s"] if best else 0, floor),
            "ratio_peak": _ratio(peak, floor),
            "saturated": bool(steps) and not steps[-1]["sustained"],
            "steps": steps,
            "loadavg_after": _loadavg(),
        }
    )
    return doc


def pipeline_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge bench pipeline", description="end-to-end reads/s")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quick", action="store_true", help="4 readers, 3 short steps")
    p.add_argument("--readers", type=int, help="simulated readers (default 16, quick 4)")
    p.add_argument("--rates", help="offered total reads/s, comma-separated ramp")
    p.add_argument("--measure-s", type=float, help="seconds measured per step (default 8, quick 4)")
    p.add_argument(
        "--decoder-processes",
        default="auto",
        help='[gateway] decoder_processes of the gateway measured: N or "auto" (default "auto":'
        " the read path past one core, which a site needing this rate configures; 0 measures"
        " the gateway's default, decoding in its own process)",
    )
    args = p.parse_args(argv)
    choice = args.decoder_processes
    decoders: int | str = "auto" if choice == "auto" else int(choice)
    readers = args.readers or (4 if args.quick else 16)
    default_rates = (
        "5000,20000,40000"
        if args.quick
        # 10k steps from 60k: the sustained figure is the last step held, so a 20k step would
        # quantise the ratio by an eighth of the floor.
        else "5000,10000,20000,30000,40000,60000,70000,80000,90000,100000,110000,120000,"
        "130000,140000,160000"
    )
    rates = [float(x) for x in (args.rates or default_rates).split(",") if x]
    measure_s = args.measure_s or (4.0 if args.quick else 8.0)
    if readers <= 0 or not rates or min(rates) <= 0 or measure_s <= 0:
        p.error("--readers, --rates and --measure-s must be positive")
    doc = bench_pipeline(readers, rates, 2.0 if args.quick else 3.0, measure_s, None, decoders)
    emit(
        doc,
        args.json,
        lambda d: (
            f"pipeline: {d['params']['readers']} readers, sustained "
            f"{d['sustained_reads_per_s']:,} reads/s (sllurp decode floor "
            f"{d['floor_sllurp_decode_tags_per_s']:,}, ratio {d['ratio']})"
        ),
    )
    return 0


# --- all --------------------------------------------------------------------------------------

# name -> (module:function, full argv, quick argv). Each runs in its own interpreter so a bench
# that crashes or hangs costs only its own figure.
ALL: dict[str, tuple[str, list[str], list[str] | None]] = {
    "outbox": ("gateway.bench:outbox_main", ["--json"], ["--json", "--quick"]),
    "drain": ("gateway.bench:drain_main", ["--json"], ["--json", "--quick", "--messages", "10000"]),
    "engine": (
        "gateway.bench.engine:main",
        ["engine", "--json"],
        [
            "engine",
            "--json",
            "--tags",
            "10000,100000",
            "--reads",
            "50000",
            "--runs",
            "3",
            "--memory-tags",
            "100000",
        ],
    ),
    "llrp": (
        "gateway.bench.llrp:main",
        ["--json"],
        ["--json", "--tags", "50000", "--tags-per-report", "100", "--tcp-seconds", "2"],
    ),
    "memory": ("gateway.bench:memory_main", ["--json"], ["--json", "--quick"]),
    "reduction": ("gateway.bench:reduction_main", ["--json"], ["--json"]),
    # Minutes, not seconds: full runs only (or `python -m gateway.bench pipeline --quick`).
    "pipeline": ("gateway.bench:pipeline_main", ["--json"], None),
    # Two real-time plays of a scenario (with and without load): minutes, full runs only (or
    # `python -m gateway.bench latency --quick`, about two minutes).
    "latency": ("gateway.bench.latency:main", ["--json"], None),
}


def run_child(target: str, argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run `module:function(argv)` in a fresh interpreter; its stdout must be one JSON doc."""
    module, func = target.split(":")
    code = f"import sys; from {module} import {func} as f; sys.exit(f(sys.argv[1:]))"
    started = time.perf_counter()
    try:
        done = subprocess.run(  # noqa: S603 (our own interpreter and modules)
            [sys.executable, "-c", code, *argv],
            cwd=ROOT,
            capture_output=True,
            timeout=timeout_s,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]])},
        )
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout_s} s", "stderr_tail": _tail(exc.stderr)}
    elapsed = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        return {
            "error": f"exit status {done.returncode}",
            "stderr_tail": _tail(done.stderr),
            "elapsed_s": elapsed,
        }
    try:
        doc = json.loads(done.stdout)
    except ValueError:
        return {
            "error": "output is not one JSON document",
            "stdout_tail": _tail(done.stdout),
            "elapsed_s": elapsed,
        }
    if isinstance(doc, dict):
        doc["elapsed_s"] = elapsed
    return doc if isinstance(doc, dict) else {"result": doc, "elapsed_s": elapsed}


def _tail(data: bytes | str | None, size: int = 1500) -> str:
    if data is None:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    return text[-size:]


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The few numbers a reader looks for, each with its floor or goal."""
    out: dict[str, Any] = {}

    def pick(name: str, fn: Callable[[dict[str, Any]], Any]) -> None:
        doc = results.get(name, {})
        if not doc or "skipped" in doc:
            return
        if "error" in doc:
            out[name] = {"error": doc["error"]}
            return
        try:
            out[name] = fn(doc)
        except (KeyError, IndexError, TypeError, ZeroDivisionError):
            out[name] = {"error": "unexpected document shape"}

    pick(
        "outbox",
        lambda d: (
            {
                m: {k: d[m][k] for k in ("movements_per_s", "floor_rows_per_s", "ratio")}
                for m in ("full", "normal")
                if m in d
            }
            | {"goal_movements_per_s": 20_000}
        ),
    )
    pick(
        "drain",
        lambda d: (
            {k: d[k] for k in ("msgs_per_s", "floor_msgs_per_s", "ratio")} | {"goal_ratio": 0.7}
        ),
    )
    pick(
        "engine",
        lambda d: {
            "speed": [
                {
                    k: s[k]
                    for k in ("tracked_tags", "reads_per_s", "floor_reads_per_s", "ratio_to_floor")
                }
                for s in d["speed"]
            ],
            "bytes_per_tag": d.get("memory", {}).get("bytes_per_tag"),
            "bytes_per_tag_at_tags": d.get("memory", {}).get("tracked_tags"),
            "goal_bytes_per_tag": 250,
        },
    )
    pick(
        "llrp",
        lambda d: [
            {
                "tags_per_report": r["tags_per_report"],
                "sllurp_decode_tags_per_s": r["sllurp_decode"]["tags_per_s"],
                "driver_tags_per_s": r["driver"]["tags_per_s"],
                "driver_vs_floor": r["driver_vs_floor"],
                **(
                    {
                        "driver_tcp_tags_per_s": r["driver_tcp"]["tags_per_s"],
                        "driver_tcp_vs_floor": r["driver_tcp_vs_floor"],
                    }
                    if "driver_tcp" in r
                    else {}
                ),
            }
            for r in d["runs"]
        ],
    )
    pick("memory", lambda d: {k: d[k] for k in ("rss_idle_mib", "floor_bare_python_mib", "ratio")})
    pick(
        "pipeline",
        lambda d: {
            k: d[k]
            for k in (
                "sustained_reads_per_s",
                "cpu_per_1k_reads_per_s",
                "floor_sllurp_decode_tags_per_s",
                "ratio",
            )
        },
    )
    pick("reduction", lambda d: {k: d[k] for k in ("reads_per_message", "recall")} | {"goal": 20})
    pick(
        "latency",
        lambda d: {
            "p50_total_s": d["loaded"]["latency_s"]["all"]["total"]["p50"],
            "p99_total_s": d["loaded"]["latency_s"]["all"]["total"]["p99"],
            "floor_p99_total_s": d["floor"]["latency_s"]["all"]["total"]["p99"],
            "background_reads_per_s": d["loaded"]["background"]["reads_per_s"],
            "recall": d["loaded"]["recall"],
            "goal": {k: d["goal"][k] for k in ("profile", "goal_s", "p99_total_s", "met")},
        },
    )
    return out


def bench_all(quick: bool, only: Sequence[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"bench": "all", "quick": quick, "machine": machine()}
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name, (target, full_argv, quick_argv) in ALL.items():
        if only and name not in only:
            continue
        argv = quick_argv if quick else full_argv
        if argv is None:
            results[name] = {"skipped": "not in --quick; run it without --quick"}
            continue
        results[name] = run_child(target, argv, 300.0 if quick else 3600.0)
        results[name]["argv"] = argv
    doc["summary"] = headline(results)
    doc["benches"] = results
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    doc["loadavg_after"] = _loadavg()
    return doc


def all_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge bench all", description="every benchmark")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quick", action="store_true", help="small sizes: under 3 minutes on 2 cores")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(ALL)}")
    args = p.parse_args(argv)
    only = [x for x in (args.only or "").split(",") if x]
    unknown = [x for x in only if x not in ALL]
    if unknown:
        p.error(f"unknown bench(es): {', '.join(unknown)}")
    doc = bench_all(args.quick, only or None)
    emit(doc, args.json, lambda d: json.dumps(d["summary"], indent=2))
    failed = [name for name, r in doc["benches"].items() if "error" in r]
    return 1 if failed else 0


def latency_main(argv: list[str] | None = None) -> int:
    from gateway.bench.latency import main as latency

    return latency(argv)


MAINS = {
    "outbox": outbox_main,
    "drain": drain_main,
    "memory": memory_main,
    "reduction": reduction_main,
    "pipeline": pipeline_main,
    "latency": latency_main,
    "all": all_main,
}


def main(argv: list[str] | None = None) -> int:
    """`python -m gateway.bench NAME [args]` (the figures `fc-edge bench` does not list yet)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 3 and argv[0] == "serve-generators":
        return serve_generators(int(argv[1]), float(argv[2]))
    if not argv or argv[0] not in MAINS:
        print(
            f"usage: python -m gateway.bench {{{','.join(MAINS)}}} [--json] [--quick]",
            file=sys.stderr,
        )
        return 64
    return MAINS[argv[0]](argv[1:])
