"""Chaos: the broker goes away, again and again, under load.

* SIGTERM (mosquitto saves its persistence file): three minutes at 2k movements/s (1k arrivals
  and, 30 s later, 1k departures a second, from a replay capture of distinct EPCs) during which
  the broker is stopped and restarted three times, one outage a full minute long (sized down
  from five minutes to keep `make test-slow` within its 40-minute budget on 2 cores). The outbox is
  sized for the backlog; the IMS (`fc-edge listen`, persistent session) ends with every seq of
  1..last-appended, none twice, in seq order; nothing was dropped.
* SIGKILL (the broker loses what it had not saved, so the IMS may miss messages the broker had
  acknowledged: MQTT's limit, not the gateway's): the gateway's side is what is asserted — every
  appended message acknowledged exactly once (outbox empty; the acked counter equals the
  appended one) and never two ids under one seq at the IMS. It runs twice: as written (the
  capture replayed in the gateway process) and on the multi-process read path (the same reads
  played by a simulated LLRP reader over TCP, decoded in one decoder process).
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from simulators.llrp import ReaderSpec, SimServer
from tests.support.broker import Broker
from tests.support.chaos import DECODING, persistent_broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_toml
from tests.support.helpers import free_port, wait_for
from tests.support.spine import ZONE_READER, write_zone_capture
from tools.simsite import (
    Tail,
    by_stream,
    last_appended,
    metric,
    outbox_depth,
    scrape,
    wait_connected,
)

ZONE_LLRP_READER = """
[[readers]]
name = "zone-1"
driver = "llrp"
host = "127.0.0.1"
port = {port}
[readers.antennas]
1 = {{ location = "STAGING", read_point = "stg-1" }}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextmanager
def zone_reader(capture: Path, decoders: int) -> Iterator[str]:
    """The zone reader's [[readers]] table. In-process: the capture replayed by the gateway,
    as these tests were written. With decoder processes: the capture's reads played, at their
    times, by a simulated LLRP reader over TCP (buffered until the gateway's ROSpec starts,
    as an Impinj reader does), so that they are decoded in a decoder process."""
    if not decoders:
        yield ZONE_READER.format(capture=capture, speed=1.0)
        return
    with capture.open() as f:
        reads = [(r["t"], r["antenna"], r["epc"], r["rssi"]) for r in map(json.loads, f)]
    spec = ReaderSpec("zone-1", reads=reads, buffer_reads=66_000)
    with SimServer([spec]).running() as sim:
        yield ZONE_LLRP_READER.format(port=sim.reader("zone-1").port)
        stats = sim.reader("zone-1").status()["stats"]
        dropped = {k: n for k, n in stats.items() if k.startswith("reads_dropped") and n}
        assert not dropped, f"the simulated reader dropped reads: {stats}"


def zone_gateway(
    tmp_path: Path,
    broker: Broker,
    reader: str,
    *,
    max_bytes: str,
    metrics_port: int,
    decoders: int = 0,
) -> Path:
    text = gateway_toml(
        tmp_path / "state",
        broker.url,
        reader,
        outbox=f'max_bytes = "{max_bytes}"\nwhen_full = "drop_oldest"',
        metrics_port=metrics_port,
    )
    text = text.replace(
        "shutdown_timeout_s = 5", f"shutdown_timeout_s = 5\ndecoder_processes = {decoders}"
    )
    # A test's outages last seconds to a minute: come back within 2 s of the broker, not 30.
    text = text.replace(
        'client_id = "fc-edge-gw-1"', 'client_id = "fc-edge-gw-1"\nreconnect_max_s = 2'
    )
    conf = tmp_path / "gw.toml"
    conf.write_text(text)
    return conf


def in_seq_order(lines: list[dict[str, Any]]) -> bool:
    return all(
        [m["seq"] for m in ms] == sorted(m["seq"] for m in ms) for ms in by_stream(lines).values()
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_broker_restarted_three_times_in_three_minutes_at_2k_movements_per_s(
    tmp_path: Path,
) -> None:
    broker = persistent_broker(tmp_path)
    capture = tmp_path / "zone.jsonl"
    # 1k new EPCs a second for 2.5 min, each read 4 times over 1.5 s; each departs 30 s after
    # its last read: from t=32 s on, 2k movements a second.
    epcs = write_zone_capture(capture, 150_000, per_second=1000, reads_each=4)
    metrics_port = free_port()
    conf = zone_gateway(
        tmp_path,
        broker,
        ZONE_READER.format(capture=capture, speed=1.0),
        max_bytes="1GB",
        metrics_port=metrics_port,
    )
    listen = ListenProcess(
        tmp_path, broker.url, "S1", "--streams", "movements,dropped", "--client-id", "ims-broker"
    )
    wait_connected(broker.workdir, "ims-broker")
    tail = Tail(listen.out_path)
    rnd = random.Random(5)
    # (seconds up before the outage, seconds down): three outages, one of a full minute.
    outages = [(15, 10), (20, 60), (20, 5)]
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
    depths = []
    started = time.monotonic()
    try:
        for up_s, down_s in outages:
            time.sleep(up_s + rnd.uniform(0, 3))
            tail.poll()
            broker.stop(signal.SIGTERM)
            time.sleep(down_s)
            depths.append(outbox_depth(tmp_path / "state"))
            broker.start()
        # the rest of the three minutes, then until everything is out
        time.sleep(max(0.0, 180 - (time.monotonic() - started)))
        final = wait_for(lambda: scrape(f"http://127.0.0.1:{metrics_port}"), 30, interval=1)
        appended_rate = metric(final, "fc_edge_outbox_appended_messages_total") / (
            time.monotonic() - started
        )
        wait_for(
            lambda: outbox_depth(tmp_path / "state") == 0 and tail.poll() is not None,
            600,
            interval=2,
        )
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(60) == 0
        last = last_appended(tmp_path / "state")
        wait_for(lambda: len(tail.poll()) >= sum(last.values()), 300, interval=2)
        time.sleep(2)
    finally:
        if gw.poll() is None:
            gw.kill()
        log.close()
        summary = listen.stop()
        broker.stop()
    lines = tail.poll()
    print(f"offered 2000 movements/s; appended {appended_rate:.0f}/s; depth after outages {depths}")
    assert min(depths) > 0, f"every outage left a backlog: {depths}"
    assert max(depths) > 20_000, f"the long outage built a real backlog: {depths}"
    assert "notices" not in last, "the outbox was sized for the backlog: nothing dropped"
    movements = by_stream(lines)["movements"]
    seqs = [m["seq"] for m in movements]
    assert seqs == list(range(1, last["movements"] + 1)), "every seq once, in order, no gap"
    assert summary.get("gaps") == 0, summary
    arrived = Counter(m["epc"] for m in movements if m["type"] == "arrived")
    assert max(arrived.values()) == 1 and set(arrived) <= {e.upper() for e in epcs} | set(epcs)
    assert len(arrived) > 140_000, f"the capture played: {len(arrived)} arrivals"


@pytest.mark.slow
@pytest.mark.timeout(600)
@DECODING
def test_broker_sigkilled_every_message_acknowledged_exactly_once(
    tmp_path: Path, decoders: int
) -> None:
    broker = persistent_broker(tmp_path)
    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, 30_000, per_second=500, reads_each=4)  # 60 s of arrivals
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}"
    try:
        with zone_reader(capture, decoders) as reader:
            conf = zone_gateway(
                tmp_path, broker, reader, max_bytes="1GB", metrics_port=metrics_port,
                decoders=decoders,
            )  # fmt: skip
            run = sigkill_the_broker_four_times(tmp_path, broker, conf, url)
    finally:
        broker.stop()
    kills, samples, last, listen = run
    running = metric(samples, "fc_edge_decoder_processes")
    assert running == decoders, f"{running:g} decoder processes ran, not {decoders}"
    assert metric(samples, "fc_edge_decoder_restarts_total") == 0
    appended = metric(samples, "fc_edge_outbox_appended_messages_total")
    acked = metric(samples, "fc_edge_publisher_acked_messages_total")
    assert kills == 4
    assert appended == sum(last.values()) == 60_000, (appended, last)
    assert acked == appended, (
        f"each appended message acknowledged once: {acked} acks, {appended} appended"
    )
    assert outbox_depth(tmp_path / "state") == 0
    ids_of_seq: dict[int, set[str]] = {}
    for m in by_stream(listen.lines()).get("movements", []):
        ids_of_seq.setdefault(m["seq"], set()).add(m["id"])
    assert ids_of_seq and max(len(ids) for ids in ids_of_seq.values()) == 1, "a seq under two ids"


def sigkill_the_broker_four_times(
    tmp_path: Path, broker: Broker, conf: Path, url: str
) -> tuple[int, Samples, dict[str, int], ListenProcess]:
    """The gateway on `conf`, the broker SIGKILLed four times under its load, until all of it
    is out; then SIGTERM. Returns the kills, the last /metrics, the outbox's last-appended seqs
    and the IMS (stopped)."""
    listen = ListenProcess(
        tmp_path, broker.url, "S1", "--streams", "movements,dropped", "--client-id", "ims-kill"
    )
    wait_connected(broker.workdir, "ims-kill")
    rnd = random.Random(9)
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
    kills = 0
    try:
        wait_for(lambda: metric(scrape(url), "fc_edge_publisher_acked_messages_total") > 100, 60)
        for _ in range(4):
            time.sleep(rnd.uniform(5, 12))
            assert broker.proc is not None
            # in flight at that moment: published, its PUBACK not yet back
            broker.stop(signal.SIGKILL)
            kills += 1
            time.sleep(rnd.uniform(2, 6))
            broker.start()
        # every EPC arrived and departed (30 s after its last read), and all of it is out
        wait_for(
            lambda: metric(scrape(url), "fc_edge_outbox_appended_messages_total") >= 60_000, 300, 1
        )
        wait_for(lambda: outbox_depth(tmp_path / "state") == 0, 300, interval=1)
        time.sleep(2)
        samples = wait_for(lambda: scrape(url), 30)
        last = last_appended(tmp_path / "state")
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(60) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
        log.close()
        listen.stop()
    return kills, samples, last, listen
