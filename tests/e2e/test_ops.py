"""Operating the real `fc-edge run` process the way systemd and Prometheus do.

A real AF_UNIX datagram socket bound here is the daemon's $NOTIFY_SOCKET (READY, STATUS,
WATCHDOG, RELOADING, STOPPING, checked with the sender's credentials as NotifyAccess=main
does); SIGHUP reloads a good and a bad config; /metrics, /healthz and /readyz are scraped over
HTTP after a replay scenario and during a broker outage. Real mosquitto, real replay driver.
"""

from __future__ import annotations

import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.broker import Broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_toml
from tests.support.helpers import free_port, json_lines, sgtin96, wait_for
from tests.support.ops import (
    ZONE_READER,
    NotifySocket,
    http_get,
    http_json,
    scrape,
    write_capture,
    write_rows,
)

STATUS_LINE = re.compile(r"^\d+/\d+ devices up, outbox \d+, broker (connected|disconnected)$")
# --- the daemon -------------------------------------------------------------------------------


class Daemon:
    """`fc-edge run` under a pretend systemd: NOTIFY_SOCKET, WATCHDOG_USEC, JSON logs to a file."""

    def __init__(
        self,
        workdir: Path,
        config: Path,
        notify: NotifySocket,
        watchdog_usec: int | None = 2_000_000,
    ) -> None:
        env = {"NOTIFY_SOCKET": notify.path}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.notify = notify
        self.log_path = workdir / f"gw-{time.monotonic_ns()}.log"
        self.log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 (open while it runs)
        self.proc = fc_edge(
            "run",
            "-c",
            str(config),
            "--log-format",
            "json",
            stdout=self.log,
            stderr=self.log,
            env=env,
        )

    def log_entries(self) -> list[dict[str, Any]]:
        return json_lines(self.log_path)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.log.close()


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exposed; have {sorted({n for n, _ in samples})}"
    return samples[key]


def outbox_is_open(state: Path) -> bool:
    """The outbox file exists and holds the schema (read-only look, as a second process)."""
    path = state / "outbox.db"
    if not path.exists():
        return False
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        db.execute("SELECT COUNT(*) FROM messages").fetchone()
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def movements(listen: ListenProcess) -> list[dict[str, Any]]:
    got = [m for m in listen.lines() if m.get("schema", "").startswith("fc-edge/movement")]
    return sorted(got, key=lambda m: m["seq"])


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


# --- READY / STATUS / WATCHDOG / STOPPING -----------------------------------------------------


def test_ready_status_watchdog_and_stopping(tmp_path: Path, broker: Broker) -> None:
    capture = tmp_path / "zone.jsonl"
    write_capture(capture, [sgtin96(4912345, 67890, i) for i in range(40)], per_second=4)
    state = tmp_path / "state"
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(state, broker.url, ZONE_READER.format(capture=capture), metrics_port=port)
    )

    def world_at_ready() -> dict[str, Any]:
        return {"outbox_open": outbox_is_open(state), "healthz": http_json(port, "/healthz")[0]}

    notify = NotifySocket(on_ready=world_at_ready)
    gw = Daemon(tmp_path, conf, notify, watchdog_usec=2_000_000)
    try:
        wait_for(lambda: notify.index("READY=1") is not None, 30)
        wait_for(lambda: any(s.endswith("broker connected") for s in notify.statuses()), 20)
        wait_for(lambda: notify.lines().count("WATCHDOG=1") >= 3, 20)
        assert gw.proc.poll() is None
    finally:
        code = gw.stop()
        notify.close()
    assert code == 0
    grams = notify.grams()
    assert {g.pid for g in grams} == {gw.proc.pid}, "every message from the main PID"

    ready = notify.index("READY=1")
    assert ready == 0, "READY=1 is the first thing said: no WATCHDOG or STATUS before it"
    snapshot = grams[0].snapshot
    assert snapshot == {"outbox_open": True, "healthz": 200}, "ready only once the outbox is open"
    ready_status = [line for line in grams[0].lines if line.startswith("STATUS=")]
    assert ready_status and STATUS_LINE.match(ready_status[0][len("STATUS=") :])

    statuses = notify.statuses()
    assert len(statuses) >= 3, "STATUS= refreshed every second"
    for status in statuses:
        assert STATUS_LINE.match(status), status
    assert any(s.startswith("1/1 devices up") for s in statuses)

    stopping = notify.index("STOPPING=1")
    assert stopping is not None, "STOPPING=1 on SIGTERM"
    assert notify.index("READY=1", after=stopping) is None
    assert any(e["message"].startswith("stopped;") for e in gw.log_entries())


# --- SIGHUP -----------------------------------------------------------------------------------


def test_sighup_applies_a_good_config_and_refuses_a_bad_one(
    tmp_path: Path, broker: Broker, notify_socket: NotifySocket
) -> None:
    """A reload changes STAGING's biz_step on later movements and keeps the tag state (nothing
    announced twice); a broken file is refused and logged, the daemon keeps the last good one."""
    epcs = [sgtin96(4912345, 67890, i) for i in range(200)]
    capture = tmp_path / "zone.jsonl"
    write_capture(capture, epcs, per_second=5)  # 40 s of arrivals: more than the test needs
    conf = tmp_path / "gw.toml"
    original = gateway_toml(tmp_path / "state", broker.url, ZONE_READER.format(capture=capture))
    assert 'biz_step = "storing"' in original
    conf.write_text(original)
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements")
    notify = notify_socket
    gw = Daemon(tmp_path, conf, notify)
    try:
        wait_for(lambda: notify.index("READY=1") is not None, 30)
        wait_for(lambda: len(movements(listen)) >= 3, 30)

        good = original.replace('biz_step = "storing"', 'biz_step = "picking"')
        conf.write_text(good)
        gw.proc.send_signal(signal.SIGHUP)
        reloading = wait_for(lambda: notify.index("RELOADING=1"), 15)
        wait_for(lambda: notify.index("READY=1", after=reloading), 15)
        wait_for(lambda: any(m["biz_step"] == "picking" for m in movements(listen)), 20)

        # A typo in an antenna's location (and a change that must NOT be applied).
        bad = good.replace('location = "STAGING"', 'location = "STAGNG"').replace(
            'biz_step = "picking"', 'biz_step = "shipping"'
        )
        conf.write_text(bad)
        seen_before_bad = len(movements(listen))
        gw.proc.send_signal(signal.SIGHUP)
        reloading_bad = wait_for(lambda: notify.index("RELOADING=1", after=reloading), 15)
        wait_for(lambda: notify.index("READY=1", after=reloading_bad), 15)
        wait_for(lambda: any("reload refused" in e["message"] for e in gw.log_entries()), 10)
        wait_for(lambda: len(movements(listen)) >= seen_before_bad + 5, 20)
        assert gw.proc.poll() is None, "a bad config never stops the daemon"
    finally:
        code = gw.stop()
        listen.stop()
    assert code == 0

    grams = notify.grams()
    reload_gram = grams[reloading]
    assert any(line.startswith("MONOTONIC_USEC=") for line in reload_gram.lines), (
        "RELOADING=1 carries MONOTONIC_USEC (systemd's Type=notify-reload needs it)"
    )
    refused = [e for e in gw.log_entries() if "reload refused" in e["message"]]
    assert len(refused) == 1 and refused[0]["level"] == "error"
    assert "STAGNG" in refused[0]["message"], "the error names what is wrong"

    got = movements(listen)
    steps = [m["biz_step"] for m in got]
    first_new = steps.index("picking")
    assert set(steps[:first_new]) == {"storing"}
    assert set(steps[first_new:]) == {"picking"}, "new config from the reload on; bad one ignored"
    arrived = Counter(m["epc"] for m in got if m["type"] == "arrived")
    assert max(arrived.values()) == 1, "tag state survived both reloads: nothing announced twice"
    assert [m["seq"] for m in got] == list(range(1, len(got) + 1))


# --- metrics, health, readiness ---------------------------------------------------------------


def test_metrics_after_a_replay_scenario(
    tmp_path: Path, broker: Broker, notify_socket: NotifySocket
) -> None:
    """30 tags arrive in STAGING (4 reads each) and 5 reads come from an antenna the config does
    not know; after the capture: every counter by name and value."""
    epcs = [sgtin96(4912345, 67890, i) for i in range(30)]
    rows = [(round(i / 30 + k * 0.5, 3), epc, 1) for i, epc in enumerate(epcs) for k in range(4)]
    rows += [(0.2 + k * 0.1, sgtin96(4912345, 11111, k), 7) for k in range(5)]
    capture = tmp_path / "zone.jsonl"
    n_reads = write_rows(capture, rows)
    assert n_reads == 125
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(
            tmp_path / "state", broker.url, ZONE_READER.format(capture=capture), metrics_port=port
        )
    )
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements")
    gw = Daemon(tmp_path, conf, notify_socket)
    try:
        wait_for(lambda: len(movements(listen)) >= 30, 30)

        def settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            s = scrape(port)
            done = (
                s.get(("fc_edge_reads_total", frozenset({("reader", "zone-1")}))) == n_reads
                and s.get(("fc_edge_publisher_acked_messages_total", frozenset())) == 30
                and s.get(("fc_edge_outbox_messages", frozenset())) == 0
            )
            return s if done else None

        samples = wait_for(settled, 20, interval=0.2)
        exposition = http_get(port, "/metrics")[2].decode()
    finally:
        assert gw.stop() == 0
        listen.stop()

    assert metric(samples, "fc_edge_reads_total", reader="zone-1") == 125
    assert metric(samples, "fc_edge_engine_movements_total", type="arrived") == 30
    assert metric(samples, "fc_edge_engine_movements_total", type="moved") == 0
    assert metric(samples, "fc_edge_engine_movements_total", type="departed") == 0
    assert metric(samples, "fc_edge_engine_tracked_tags") == 30
    assert metric(samples, "fc_edge_engine_suppressed_reads_total", reason="unknown_antenna") == 5
    assert metric(samples, "fc_edge_outbox_messages") == 0
    assert metric(samples, "fc_edge_outbox_bytes") == 0
    assert metric(samples, "fc_edge_outbox_oldest_age_seconds") == 0
    assert metric(samples, "fc_edge_outbox_appended_messages_total") == 30
    assert metric(samples, "fc_edge_outbox_commits_total") >= 1
    assert metric(samples, "fc_edge_publisher_published_messages_total") == 30
    assert metric(samples, "fc_edge_publisher_acked_messages_total") == 30
    assert metric(samples, "fc_edge_publisher_in_flight_messages") == 0
    assert metric(samples, "fc_edge_publisher_ack_latency_seconds_count") == 30
    assert metric(samples, "fc_edge_publisher_ack_latency_seconds_bucket", le="+Inf") == 30
    assert metric(samples, "fc_edge_broker_connected") == 1
    assert metric(samples, "fc_edge_broker_connects_total") == 1
    assert metric(samples, "fc_edge_device_last_data_age_seconds", device="zone-1") >= 0
    assert ("fc_edge_device_up", frozenset({("device", "zone-1")})) in samples

    declared = set(re.findall(r"^# TYPE (\S+) ", exposition, re.M))
    for name in dashboard_metric_names():
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in declared or base in declared, f"the dashboard queries {name}: not exposed"

    names = {name for name, _ in samples}
    ours = {n for n in names if n.startswith("fc_edge_")}
    assert ours == names - {n for n in names if n.startswith(("process_", "python_"))}, (
        "every metric is namespaced fc_edge_ (or a standard process_/python_ one)"
    )


def test_readyz_reports_a_broker_outage_while_staying_ready(
    tmp_path: Path, broker: Broker, notify_socket: NotifySocket
) -> None:
    """Store-and-forward: with the broker gone the gateway is still ready (it keeps reading and
    keeping), and says so in /readyz, in fc_edge_broker_connected and in STATUS=."""
    capture = tmp_path / "zone.jsonl"
    write_capture(capture, [sgtin96(4912345, 67890, i) for i in range(300)], per_second=5)
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(
            tmp_path / "state", broker.url, ZONE_READER.format(capture=capture), metrics_port=port
        )
    )
    notify = notify_socket
    gw = Daemon(tmp_path, conf, notify)
    try:
        wait_for(lambda: notify.index("READY=1") is not None, 30)  # HTTP is up before READY
        wait_for(lambda: http_json(port, "/readyz")[1].get("broker") == "connected", 30)
        code, body = http_json(port, "/readyz")
        assert code == 200 and body["ready"] is True and "since" not in body
        assert body["devices"]["zone-1"]["state"] == "up"
        assert body["warnings"] == [], "plain MQTT to loopback (127.0.0.1) is no warning"

        code, alive = http_json(port, "/healthz")
        assert code == 200 and alive["status"] == "alive"
        code, missing = http_json(port, "/nowhere")
        assert code == 404 and "/readyz" in missing["paths"]

        broker.stop()
        outage = wait_for(lambda: _disconnected_with_depth(port), 30, interval=0.2)
        code, body = outage
        assert code == 200 and body["ready"] is True, "a broker outage is not unready"
        assert body["broker"] == "disconnected"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", body["since"])
        assert body["outbox"]["depth"] > 0, "movements kept in the outbox meanwhile"
        assert metric(scrape(port), "fc_edge_broker_connected") == 0
        wait_for(lambda: any(s.endswith("broker disconnected") for s in notify.statuses()), 10)
        wait_for(
            lambda: any(
                re.search(r"outbox [1-9]\d*, broker disconnected$", s) for s in notify.statuses()
            ),
            10,
        )

        broker.start()
        wait_for(lambda: http_json(port, "/readyz")[1].get("broker") == "connected", 60)
        code, body = http_json(port, "/readyz")
        assert code == 200 and "since" not in body
        assert metric(scrape(port), "fc_edge_broker_connects_total") == 2
        assert metric(scrape(port), "fc_edge_broker_connected") == 1
    finally:
        assert gw.stop() == 0
    for entry in gw.log_entries():  # JSON lines when not on a TTY: each parsed above
        assert {"time", "level", "logger", "message"} <= set(entry)


def _disconnected_with_depth(port: int) -> tuple[int, dict[str, Any]] | None:
    code, body = http_json(port, "/readyz")
    if body.get("broker") == "disconnected" and (body.get("outbox") or {}).get("depth", 0) > 0:
        return code, body
    return None


# --- the Grafana dashboard --------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parents[2] / "config" / "grafana" / "fc-edge.json"


def dashboard_metric_names() -> set[str]:
    """fc_edge_* names in the dashboard's queries (process_* come from prometheus-client)."""
    text = DASHBOARD.read_text()
    return set(re.findall(r"\b(fc_edge_[a-z0-9_]+)", text))


def test_grafana_dashboard_is_importable() -> None:
    """Valid JSON, one ${DS_PROMETHEUS} input used by every panel and query, unique panel ids,
    panels inside Grafana's 24-column grid. (Names are checked against a real scrape above.)"""
    board = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert 'instance=~"$instance"' in t["expr"], t["expr"]
    names = dashboard_metric_names()
    for wanted in (
        "fc_edge_reads_total",
        "fc_edge_engine_movements_total",
        "fc_edge_engine_suppressed_reads_total",
        "fc_edge_outbox_messages",
        "fc_edge_outbox_bytes",
        "fc_edge_outbox_oldest_age_seconds",
        "fc_edge_outbox_dropped_messages_total",
        "fc_edge_publisher_in_flight_messages",
        "fc_edge_publisher_ack_latency_seconds_bucket",
        "fc_edge_broker_connected",
        "fc_edge_device_up",
        "fc_edge_device_reconnects_total",
        "fc_edge_device_last_data_age_seconds",
    ):
        assert wanted in names, wanted


@pytest.mark.slow
def test_a_stop_right_after_start_under_load_ends_cleanly(tmp_path: Path, broker: Broker) -> None:
    """SIGTERM as soon as the gateway is connected, with both cores busy, many times over. On
    Python 3.11, asyncio.wait_for returns normally when its event fires just as the task is
    cancelled; the ingest loop waited that way, so it ran on after shutdown cancelled it and
    the stop hung until the hard exit (exit 70 after shutdown_timeout_s + 15 s). Before the
    fix, one of two runs of this test failed; after it, four runs (48 stops) passed."""
    from tests.support.spine import ZONE_READER, write_zone_capture

    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, 30, per_second=30)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(tmp_path / "state", broker.url, ZONE_READER.format(capture=capture, speed=1.0))
    )
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        pause = random.Random(3)
        for start in range(12):
            log_path = tmp_path / f"gw-{start}.log"
            with log_path.open("wb") as log:
                gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
                try:
                    wait_for(lambda p=log_path: "connected" in p.read_text(errors="replace"), 30)
                    time.sleep(pause.uniform(0.0, 1.0))  # the replay reader is delivering
                    gw.send_signal(signal.SIGTERM)
                    code = gw.wait(40)  # beyond the hard-exit bound: a hang shows as 70
                finally:
                    if gw.poll() is None:
                        gw.kill()
                        gw.wait(10)
            assert code == 0, log_path.read_text(errors="replace")[-6000:]
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(10)
