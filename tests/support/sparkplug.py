"""A Sparkplug host for the tests: a subscriber to spBv1.0/# that decodes every payload with
Eclipse Tahu's own generated schema (tahutils), not the gateway's, and sends node commands."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from google.protobuf.message import DecodeError
from paho.mqtt.enums import CallbackAPIVersion
from tahutils.tahu import sparkplug_b_pb2

from tests.support.broker import Broker

__all__ = ["PREFIX", "STATE", "Subscriber", "metrics_of", "value"]

PREFIX = "spBv1.0/S1"  # the group the test gateways (site S1) publish in
STATE = "spBv1.0/STATE/"


class Subscriber:
    """Everything published under spBv1.0/#, decoded, in arrival order."""

    def __init__(self, broker: Broker) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, Any]] = []
        self.undecodable: list[str] = []  # topics whose payload Tahu's schema could not read
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="scada-test")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("spBv1.0/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if "/NCMD/" in msg.topic or "/DCMD/" in msg.topic or msg.topic.startswith(STATE):
            return  # the host's: commands (some malformed on purpose) and STATE (JSON)
        payload = sparkplug_b_pb2.Payload()
        try:
            payload.ParseFromString(msg.payload)
        except DecodeError:
            with self.lock:
                self.undecodable.append(msg.topic)
            return
        with self.lock:
            self.messages.append((msg.topic, payload))

    def of(self, topic: str) -> list[Any]:
        with self.lock:
            return [p for t, p in self.messages if t == topic]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def since(self, index: int) -> list[tuple[str, Any]]:
        with self.lock:
            return self.messages[index:]

    def command(self, payload: bytes) -> None:
        self.client.publish(f"{PREFIX}/NCMD/gw-1", payload, qos=1).wait_for_publish(10)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def metrics_of(payload: Any) -> dict[str, Any]:
    return {m.name: m for m in payload.metrics}


def value(m: Any) -> Any:
    return getattr(m, m.WhichOneof("value")) if m.WhichOneof("value") else None
