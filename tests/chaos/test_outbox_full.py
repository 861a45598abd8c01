"""Chaos: the outbox fills up under sustained load. 500 new EPCs a second for 20 s (and their
departures 30 s later) into a gateway whose outbox holds 1 MB (~1,400 movements), with the
broker away for the first ~15 s. The configured policy decides what goes (drop_oldest: the
start of the backlog; drop_newest: its end), every drop is announced by a `dropped` notice
with the exact seq range, notices themselves are never dropped, and once the broker is back
and space returns the load flows again with nothing more dropped: what the IMS received plus
what the notices announced is exactly seqs 1..last-appended, with no seq in both."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.chaos import persistent_broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_toml
from tests.support.helpers import free_port, validate_message, wait_for
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

EPCS = 10_000  # 20 s at 500/s; each departs 30 s after its last read: 20k movements in all


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_full_outbox_applies_its_policy_announces_drops_and_recovers(
    tmp_path: Path, policy: str
) -> None:
    broker = persistent_broker(tmp_path)
    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, EPCS, per_second=500, reads_each=4)
    state = tmp_path / "state"
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}"
    text = gateway_toml(
        state,
        broker.url,
        ZONE_READER.format(capture=capture, speed=1.0),
        outbox=f'max_bytes = "1MB"\nwhen_full = "{policy}"',
        metrics_port=metrics_port,
    )
    conf = tmp_path / "gw.toml"
    conf.write_text(
        text.replace(
            'client_id = "fc-edge-gw-1"', 'client_id = "fc-edge-gw-1"\nreconnect_max_s = 1'
        )
    )
    listen = ListenProcess(
        tmp_path, broker.url, "S1", "--streams", "movements,dropped", "--client-id", f"ims-{policy}"
    )
    wait_connected(broker.workdir, f"ims-{policy}")  # its session outlives the outage
    broker.stop(signal.SIGTERM)
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
    tail = Tail(listen.out_path)
    try:
        wait_for(
            lambda: metric(scrape(url), "fc_edge_outbox_dropped_messages_total") > 1000, 60, 0.5
        )
        time.sleep(10)  # load against a full outbox
        assert outbox_depth(state) < 2000, "the outbox stays within max_bytes"
        broker.start()
        wait_for(lambda: outbox_depth(state) < 50, 60, interval=0.2)
        dropped_when_drained = metric(scrape(url), "fc_edge_outbox_dropped_messages_total")
        # Sustained load goes on (arrivals until t=30 s, departures until ~t=62 s) with space.
        wait_for(lambda: metric(scrape(url), "fc_edge_engine_movements_total") >= 2 * EPCS, 180, 1)
        wait_for(lambda: outbox_depth(state) == 0, 120, interval=0.5)
        final = scrape(url)
        last = last_appended(state)
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(60) == 0
        wait_for(
            lambda: len(tail.poll()) >= last["movements"] + last["notices"] - _dropped(tail), 120, 1
        )
        time.sleep(1)
    finally:
        if gw.poll() is None:
            gw.kill()
        log.close()
        listen.stop()
        broker.stop()
    lines = tail.poll()
    streams = by_stream(lines)
    notices = streams.get("notices", [])
    for n in notices:
        validate_message(n)
        assert n["policy"] == policy and n["stream"] == "movements", n
    assert [n["seq"] for n in notices] == list(range(1, last["notices"] + 1)), "no notice lost"
    lost = {s for n in notices for s in range(n["from_seq"], n["to_seq"] + 1)}
    assert len(lost) == sum(n["count"] for n in notices) > 1000
    got = {m["seq"] for m in streams["movements"]}
    assert lost.isdisjoint(got), "a seq both dropped and delivered"
    assert lost | got == set(range(1, last["movements"] + 1)), "every seq delivered or announced"
    assert metric(final, "fc_edge_outbox_dropped_messages_total") == dropped_when_drained, (
        "space returned: nothing dropped after the drain"
    )
    if policy == "drop_oldest":
        assert 1 in lost and min(got) > 1, "the oldest went"
    else:
        assert 1 in got and min(lost) > 1, "the newest went, the oldest were kept"
    assert max(got) > max(lost), "after the outage the load flowed again"


def _dropped(tail: Tail) -> int:
    return sum(m.get("count", 0) for m in tail.items if m.get("type") == "dropped")
