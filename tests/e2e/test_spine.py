"""The spine end to end with real parts: `fc-edge run` (a real process) with the replay driver,
a real mosquitto, and `fc-edge listen` as the IMS."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_toml
from tests.support.helpers import validate_message, wait_for
from tests.support.spine import ZONE_READER, movements, outbox_depth, write_zone_capture


def arrived_epcs(lines: list[dict[str, Any]]) -> set[str]:
    return {m["epc"] for m in movements(lines) if m["type"] == "arrived"}


def assert_gapless_once(lines: list[dict[str, Any]]) -> None:
    ids = Counter(m["id"] for m in lines)
    assert max(ids.values()) == 1, "each id printed once"
    seqs = sorted(m["seq"] for m in lines)
    assert seqs == list(range(1, len(seqs) + 1)), "seq 1..N, no gap, no repeat"


def test_replay_capture_reaches_the_ims(tmp_path: Path, broker: Broker) -> None:
    capture = tmp_path / "zone.jsonl"
    epcs = write_zone_capture(capture, 200, per_second=100)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(tmp_path / "state", broker.url, ZONE_READER.format(capture=capture, speed=1.0))
    )
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements")
    gw = fc_edge("run", "-c", str(conf))
    try:
        wait_for(
            lambda: len({m["epc"] for m in listen.lines() if m["type"] == "arrived"}) == 200, 30
        )
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
        summary = listen.stop()
    got = movements(listen.lines())
    assert_gapless_once(got)
    assert arrived_epcs(got) == set(epcs)
    for m in got:
        validate_message(m)
    first = got[0]
    assert first["site"] == "S1" and first["gateway"] == "gw-1" and first["to"] == "STAGING"
    assert first["item"]["scheme"] == "sgtin" and first["item"]["gtin"] == "04912345678904"
    assert first["biz_step"] == "storing" and first["source"] == "zone-1"
    assert first["time"].endswith("Z") and first["observed"]["reads"] >= 1
    assert summary["stock"] == {"STAGING": 200}


def test_kill_9_at_random_moments_loses_nothing_and_repeats_nothing(
    tmp_path: Path, broker: Broker
) -> None:
    """The issue's crash test: 20,000 distinct EPCs through `fc-edge run`, kill -9 at 5 random
    moments, each while the outbox holds unpublished messages (the broker is paused with
    SIGSTOP just before, so PUBACKs cannot drain it), restart each time."""
    capture = tmp_path / "zone.jsonl"
    epcs = write_zone_capture(capture, 20_000, per_second=1000)
    state = tmp_path / "state"
    conf = tmp_path / "gw.toml"
    conf.write_text(gateway_toml(state, broker.url, ZONE_READER.format(capture=capture, speed=1.0)))
    listen = ListenProcess(
        tmp_path, broker.url, "S1", "--streams", "movements", "--client-id", "ims-1"
    )
    rnd = random.Random(20_000)
    kills = 0
    gw = None
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    try:
        for _ in range(5):
            gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
            time.sleep(rnd.uniform(1.5, 3.5))
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGSTOP)
            try:
                wait_for(lambda: outbox_depth(state) > 0, 10)
                gw.kill()
                gw.wait(10)
                kills += 1
            finally:
                broker.proc.send_signal(signal.SIGCONT)
        gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
        # generous: 160k reads through a restarted gateway on a possibly busy 2-core box
        wait_for(lambda: len(movements(listen.lines())) >= len(epcs), 300, interval=1.0)
        wait_for(lambda: outbox_depth(state) == 0, 60)
        gw.send_signal(signal.SIGTERM)
        # Beyond the hard-exit bound (shutdown_timeout_s 5 + 15 s): a hung shutdown exits 70
        # with every thread's stack in the log, which the failure shows.
        code = gw.wait(40)
        log.flush()
        assert code == 0, (tmp_path / "gw.log").read_text(errors="replace")[-6000:]
    finally:
        if gw is not None and gw.poll() is None:  # a failed wait must not leave one running
            gw.kill()
            gw.wait(10)
        log.close()
        listen.stop()
    assert kills == 5
    got = movements(listen.lines())
    arrived = Counter(m["epc"] for m in got if m["type"] == "arrived")
    assert set(arrived) == set(epcs), "every EPC announced"
    assert max(arrived.values()) == 1, "no EPC announced twice"
    assert_gapless_once(got)


def test_tls_with_ca_verification(
    tmp_path: Path, tls_broker: Broker, certs: dict[str, str]
) -> None:
    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, 40, per_second=40)
    tls = f'[mqtt.tls]\nca_file = "{certs["ca"]}"\n'
    text = gateway_toml(
        tmp_path / "state", tls_broker.url, ZONE_READER.format(capture=capture, speed=1.0)
    )
    conf = tmp_path / "gw.toml"
    conf.write_text(
        text.replace('client_id = "fc-edge-gw-1"', f'client_id = "fc-edge-gw-1"\n{tls}')
    )
    listen = ListenProcess(tmp_path, tls_broker.url, "S1", "--ca-file", certs["ca"])
    gw = fc_edge("run", "-c", str(conf))
    try:
        wait_for(lambda: len(listen.lines()) >= 40, 30)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
        listen.stop()


def test_wrong_ca_fails_closed(tmp_path: Path, tls_broker: Broker) -> None:
    from tests.support.broker import make_certs

    other = make_certs(tmp_path / "other-ca")
    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, 40, per_second=40)
    tls = f'[mqtt.tls]\nca_file = "{other["ca"]}"\n'
    text = gateway_toml(
        tmp_path / "state", tls_broker.url, ZONE_READER.format(capture=capture, speed=1.0)
    )
    conf = tmp_path / "gw.toml"
    conf.write_text(
        text.replace('client_id = "fc-edge-gw-1"', f'client_id = "fc-edge-gw-1"\n{tls}')
    )
    log = tmp_path / "gw.log"
    with log.open("wb") as out:
        gw = fc_edge("run", "-c", str(conf), "--log-format", "json", stdout=out, stderr=out)
        try:
            wait_for(lambda: "certificate verify failed" in log.read_text(), 20)
            wait_for(lambda: outbox_depth(tmp_path / "state") >= 40, 20)  # kept, not sent
        finally:
            gw.send_signal(signal.SIGTERM)
            assert gw.wait(20) == 0


def test_outbox_full_publishes_a_dropped_notice(tmp_path: Path, broker: Broker) -> None:
    """With the broker away and a tiny outbox, the oldest are dropped and the IMS is told."""
    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, 300, per_second=300)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(
            tmp_path / "state",
            broker.url,
            ZONE_READER.format(capture=capture, speed=1.0),
            outbox='max_bytes = "20KB"\nwhen_full = "drop_oldest"',
        )
    )
    # The IMS listens throughout; the broker is paused (SIGSTOP) so the gateway cannot connect
    # and its outbox overflows, then resumed: what was kept and what was announced lost arrive.
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements,dropped")
    listen.wait_subscribed()
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    gw = fc_edge("run", "-c", str(conf))
    try:
        wait_for(lambda: outbox_depth(tmp_path / "state") > 0, 30)
        time.sleep(4)  # all 300 arrivals made; most dropped
        broker.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: any(m.get("type") == "dropped" for m in listen.lines()), 30)
        time.sleep(2)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
    listen.stop()
    lines = listen.lines()
    notices = [m for m in lines if m.get("type") == "dropped"]
    for notice in notices:
        validate_message(notice)
    got = movements(lines)
    dropped = sum(n["count"] for n in notices)
    assert dropped > 0
    lost = {s for n in notices for s in range(n["from_seq"], n["to_seq"] + 1)}
    seen = {m["seq"] for m in got}
    assert lost.isdisjoint(seen)
    last = max(lost | seen)
    assert last >= 300, "every arrival got a seq"
    assert lost | seen == set(range(1, last + 1)), "each seq either arrived or was announced lost"


def test_unusable_state_dir_stops_with_a_clear_error(tmp_path: Path, broker: Broker) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file, not a directory")
    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, 10, per_second=10)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(blocker, broker.url, ZONE_READER.format(capture=capture, speed=1.0))
    )
    gw = fc_edge("run", "-c", str(conf), "--log-format", "json", stdout=-1, stderr=-1)
    out, err = gw.communicate(timeout=30)
    assert gw.returncode == 74
    assert b"cannot be created" in err and b"durable outbox" in err


@pytest.mark.slow
def test_broker_outage_of_30_s_loses_nothing_and_keeps_order(
    tmp_path: Path, tmp_path_factory: Any
) -> None:
    """Broker with persistence, `listen` with a persistent session; the broker is stopped
    (SIGTERM) for 30 s mid-stream and restarted: everything arrives, in seq order."""
    from tests.support.helpers import free_port

    b = Broker(tmp_path / "broker", free_port(), persistence=True)
    b.workdir.mkdir()
    b.start()
    capture = tmp_path / "zone.jsonl"
    epcs = write_zone_capture(capture, 6000, per_second=100)  # 60 s of arrivals
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(tmp_path / "state", b.url, ZONE_READER.format(capture=capture, speed=1.0))
    )
    listen = ListenProcess(tmp_path, b.url, "S1", "--client-id", "ims-outage")
    gw = fc_edge("run", "-c", str(conf))
    try:
        wait_for(lambda: len(listen.lines()) > 500, 30)
        b.stop(signal.SIGTERM)
        time.sleep(30)
        assert outbox_depth(tmp_path / "state") > 1000, "the outbox held the outage's movements"
        b.start()
        # every EPC arrived (departures by absence also count as movements, so not a count)
        wait_for(lambda: arrived_epcs(listen.lines()) >= set(epcs), 180, interval=1.0)
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(20)
        listen.stop()
        b.stop()
    got = movements(listen.lines())
    assert_gapless_once(got)
    seqs = [m["seq"] for m in got]
    assert seqs == sorted(seqs), "delivered in seq order"
    assert arrived_epcs(got) == set(epcs)


def test_epcis_documents_are_published_and_valid(tmp_path: Path, broker: Broker) -> None:
    """[epcis] enabled: each outbox batch also goes out as an EPCIS 2.0 document that the
    official GS1 schema accepts, one ObjectEvent per movement, eventID joined to the movement."""
    import jsonschema

    from tests.support.epcis import EPCIS_DIR, _checker, assert_valid

    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, 50, per_second=50)
    conf = tmp_path / "gw.toml"
    text = gateway_toml(
        tmp_path / "state", broker.url, ZONE_READER.format(capture=capture, speed=1.0)
    )
    conf.write_text(text.replace("[outbox]", "[epcis]\nenabled = true\n\n[outbox]"))
    listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements,epcis")
    gw = fc_edge("run", "-c", str(conf))
    try:
        wait_for(lambda: len(movements(listen.lines())) == 50, 30)
        time.sleep(1)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
        listen.stop()
    lines = listen.lines()
    docs = [m for m in lines if m.get("schema") == "fc-edge/epcis/1"]
    assert docs, "EPCIS documents published"
    schema = json.loads((EPCIS_DIR / "EPCIS-JSON-Schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=_checker())
    events = []
    for doc in docs:
        assert_valid(validator, doc["document"])
        events += doc["document"]["epcisBody"]["eventList"]
    assert sorted(e["eventID"] for e in events) == sorted(
        f"urn:uuid:{m['id']}" for m in movements(lines)
    )
    assert all(
        e["action"] == "OBSERVE" and e["epcList"][0].startswith("urn:epc:id:sgtin:") for e in events
    )
