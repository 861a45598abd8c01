"""A site broker bridged to a central one, every part real and configured by the shipped
example: a simulated LLRP reader -> `fc-edge run` -> the site mosquitto, running
config/mosquitto-bridge.conf.example (address and CA file replaced) -> TLS -> the central
mosquitto -> `fc-edge listen` there, on a persistent session.

The central broker stops while the gateway goes on publishing (the site broker queues for the
bridge) and comes back: the IMS on the central broker ends with every message once, seqs 1..N,
and the gateway's retained status crosses the bridge retained."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.devkit.process import free_port
from simulators.llrp import ReaderSpec, SimServer
from tests.support.broker import Broker
from tests.support.gateway import ROOT, ListenProcess, fc_edge, gateway_head
from tests.support.helpers import wait_for

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "config" / "mosquitto-bridge.conf.example"
CENTRAL_ADDRESS = "central.example.net:8883"
CENTRAL_CA = "/etc/mosquitto/certs/central-ca.pem"
BRIDGE_ID = "fc-edge-bridge-TYO-FC1"


def bridge_lines(central_port: int, ca_file: str) -> list[str]:
    """The example, with the central broker's address and CA made ours (each named once, so
    the example cannot drift away from what this test runs)."""
    text = EXAMPLE.read_text()
    assert text.count(CENTRAL_ADDRESS) == 1 and text.count(CENTRAL_CA) == 1
    text = text.replace(CENTRAL_ADDRESS, f"127.0.0.1:{central_port}")
    return text.replace(CENTRAL_CA, ca_file).splitlines()


def gateway_config(tmp_path: Path, site_url: str, reader_port: int) -> Path:
    text = (
        gateway_head(tmp_path / "state", site_url)
        + f"""
[profiles.keep]
confirm_s = 0.5
[locations.ZONE-1]
biz_step = "storing"
profile = "keep"
[[readers]]
name = "rd-1"
driver = "llrp"
host = "127.0.0.1"
port = {reader_port}
[readers.antennas]
1 = {{ location = "ZONE-1" }}
"""
    )
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def tags_arrive(sim: SimServer, first: int, count: int) -> list[str]:
    """`count` new tags read three times in ZONE-1 (the "keep" profile never departs them)."""
    epcs = [f"30342D5A0000{k:012X}" for k in range(first, first + count)]
    for n in range(3):
        sim.reader("rd-1").add_reads_in(0.2 + 0.4 * n, [(1, epc, -50) for epc in epcs])
    return epcs


def retained(port: int, ca_file: str, topic: str) -> dict[str, Any] | None:
    """The retained message on `topic` at the central broker, if any."""
    got: dict[str, Any] = {}
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=ca_file)
    client.on_connect = lambda c, *_: c.subscribe(topic, 1)
    client.on_subscribe = lambda *_: threading.Timer(2.0, done.set).start()

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.update(json.loads(msg.payload))
            done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(20)  # a retained message comes right after SUBACK; 2 s later there is none
    client.disconnect()
    client.loop_stop()
    return got or None


def test_a_site_broker_bridges_every_message_to_a_central_broker_that_restarts(
    tmp_path: Path, certs: dict[str, str]
) -> None:
    central = Broker(tmp_path / "central", free_port(), persistence=True, tls=dict(certs))
    site = Broker(tmp_path / "site", free_port(), persistence=True,
                  extra=bridge_lines(central.port or 0, certs["ca"]))  # fmt: skip
    sim = SimServer([ReaderSpec("rd-1")])
    listeners: list[ListenProcess] = []
    gw = None
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    try:
        central.start()
        site.start()
        wait_for(lambda: f"as {BRIDGE_ID}" in central.log.read_text(errors="replace"), 60, 0.2)
        # The IMS: a persistent session on the central broker, which keeps it across a restart.
        ims = ListenProcess(tmp_path, central.url, "S1", "--ca-file", certs["ca"],
                            "--client-id", "ims-central")  # fmt: skip
        probe = ListenProcess(tmp_path, site.url, "S1")  # what reached the site broker
        listeners += [ims, probe]
        with sim.running():
            conf = gateway_config(tmp_path, site.url, sim.reader("rd-1").port)
            gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
            wait_for(lambda: sim.reader("rd-1").active, 60, 0.1)
            live = tags_arrive(sim, 0, 20)
            wait_for(lambda: len(ims.lines()) >= 20, 60, 0.1)

            central.stop()
            queued = tags_arrive(sim, 100, 20)  # published while the central broker is away
            wait_for(lambda: len(probe.lines()) >= 40, 60, 0.1)
            central.start()
            # The queue drains first: a message published while the bridge is reconnecting may
            # overtake the queued ones (mosquitto does not order a bridge's queue with new
            # messages), which `fc-edge listen` reports as a seq gap filled later (one CI run
            # of 2026-12-07: all 50 once, one gap). This test checks the drain.
            wait_for(lambda: len(ims.lines()) >= 40, 120, 0.2)
            after = tags_arrive(sim, 200, 10)
            with contextlib.suppress(AssertionError):  # what is missing is reported below
                wait_for(lambda: len(ims.lines()) >= 50, 120, 0.2)
            gw.terminate()
            assert gw.wait(60) == 0
        # The goodbye the gateway leaves retained on the site broker is retained centrally too.
        status = "fc/S1/gw-1/status"
        wait_for(lambda: (retained(central.port or 0, certs["ca"], status) or {}).get("state")
                 == "offline", 60, 0.5)  # fmt: skip
    finally:
        if gw is not None and gw.poll() is None:
            gw.kill()
        log.close()
        summaries = [listener.stop() for listener in listeners]
        site.stop()
        central.stop()
    got = ims.lines()
    assert sorted(m["epc"] for m in got) == sorted(live + queued + after)
    assert sorted(m["seq"] for m in got) == list(range(1, 51))
    assert {m["id"] for m in got} == {m["id"] for m in probe.lines()}
    assert summaries[0]["gaps"] == 0 and summaries[0]["new"] == 50, summaries[0]
