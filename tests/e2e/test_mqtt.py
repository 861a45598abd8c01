"""MQTT behaviour the IMS relies on, against a real mosquitto: the retained birth / Last Will,
retained device status, MQTT 3.1.1, and shared subscriptions across IMS instances."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_toml
from tests.support.helpers import validate_message, wait_for
from tests.support.spine import ZONE_READER, movements, write_zone_capture


class Watcher:
    """A plain paho subscriber that keeps the last payload per topic (retained included)."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.last: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic, 1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.last[msg.topic] = json.loads(msg.payload) if msg.payload else None

    def get(self, topic: str) -> Any:
        with self.lock:
            return self.last.get(topic)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def zone_config(tmp_path: Path, broker: Broker, n: int = 100, extra_mqtt: str = "") -> Path:
    capture = tmp_path / "zone.jsonl"
    write_zone_capture(capture, n, per_second=50)
    conf = tmp_path / "gw.toml"
    text = gateway_toml(
        tmp_path / "state", broker.url, ZONE_READER.format(capture=capture, speed=1.0)
    )
    conf.write_text(
        text.replace('client_id = "fc-edge-gw-1"', f'client_id = "fc-edge-gw-1"\n{extra_mqtt}')
    )
    return conf


def test_birth_last_will_and_retained_device_status(tmp_path: Path, broker: Broker) -> None:
    watcher = Watcher(broker, "fc/S1/gw-1/#")
    conf = zone_config(tmp_path, broker)
    gw = fc_edge("run", "-c", str(conf))
    try:
        wait_for(lambda: (watcher.get("fc/S1/gw-1/status") or {}).get("state") == "online", 30)
        birth = watcher.get("fc/S1/gw-1/status")
        assert birth["devices"] == ["zone-1"] and birth["site"] == "S1"
        device = wait_for(lambda: watcher.get("fc/S1/gw-1/devices/zone-1"), 30)
        validate_message(device)
        assert device["driver"] == "replay"
        gw.kill()  # no goodbye: the broker publishes the Last Will
        gw.wait(10)
        wait_for(lambda: watcher.get("fc/S1/gw-1/status")["state"] == "offline", 30)
        assert watcher.get("fc/S1/gw-1/status")["reason"] == "connection lost"
    finally:
        if gw.poll() is None:
            gw.kill()
        watcher.stop()
    # retained: a late subscriber still learns the gateway's and the device's last state
    late = Watcher(broker, "fc/S1/gw-1/#")
    try:
        wait_for(
            lambda: late.get("fc/S1/gw-1/status") and late.get("fc/S1/gw-1/devices/zone-1"), 10
        )
    finally:
        late.stop()


def test_clean_stop_says_goodbye(tmp_path: Path, broker: Broker) -> None:
    watcher = Watcher(broker, "fc/S1/gw-1/status")
    gw = fc_edge("run", "-c", str(zone_config(tmp_path, broker, n=10)))
    try:
        wait_for(lambda: (watcher.get("fc/S1/gw-1/status") or {}).get("state") == "online", 30)
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
        wait_for(lambda: watcher.get("fc/S1/gw-1/status")["state"] == "offline", 10)
        assert watcher.get("fc/S1/gw-1/status")["reason"] == "shutdown"
    finally:
        watcher.stop()


def test_mqtt_3_1_1(tmp_path: Path, broker: Broker) -> None:
    conf = zone_config(tmp_path, broker, n=50, extra_mqtt='protocol = "3.1.1"')
    listen = ListenProcess(tmp_path, broker.url, "S1")
    gw = fc_edge("run", "-c", str(conf))
    try:
        wait_for(lambda: len(movements(listen.lines())) >= 50, 30)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
        listen.stop()


def test_shared_subscription_splits_the_stream_between_ims_instances(
    tmp_path: Path, broker: Broker
) -> None:
    """Two `listen --share ims` instances: every movement reaches exactly one of them."""
    a = ListenProcess(tmp_path, broker.url, "S1", "--share", "ims")
    b = ListenProcess(tmp_path, broker.url, "S1", "--share", "ims")
    gw = fc_edge("run", "-c", str(zone_config(tmp_path, broker, n=200)))
    try:
        wait_for(lambda: len(movements(a.lines())) + len(movements(b.lines())) >= 200, 40)
        time.sleep(1)
    finally:
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(20) == 0
        a.stop()
        b.stop()
    ids_a = {m["id"] for m in movements(a.lines())}
    ids_b = {m["id"] for m in movements(b.lines())}
    assert ids_a and ids_b, "both instances got work"
    assert not ids_a & ids_b, "each message went to one instance"
    assert len(ids_a | ids_b) == 200
