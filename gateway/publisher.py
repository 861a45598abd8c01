"""MQTT publisher: outbox rows out at QoS 1, acknowledged back to the outbox on PUBACK.

paho's network I/O runs on a thread of ours (not paho's loop_start) so that reconnects follow
our capped, jittered backoff. Ordering per stream holds because rows are published in outbox
order on one connection, and paho re-sends unacknowledged messages in that same order after a
reconnect (with DUP set). A message is reported acknowledged only from on_publish(mid), i.e.
the broker's PUBACK (paho calls it only then for QoS 1).

The publisher never stores anything: the outbox owns the buffer (Telegraf's rule).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.runtime import Backoff
from gateway.config import MqttSettings, credential_path, read_secret
from gateway.model import iso_ms, now_us
from gateway.outbox import Stored

log = logging.getLogger("fc_edge.publisher")

AckCallback = Callable[[list[tuple[int, float, str]]], None]  # [(rowid, s since publish, id)]


class Publisher:
    def __init__(
        self,
        settings: MqttSettings,
        topic_base: str,
        *,
        on_acks: AckCallback,
        on_connection: Callable[[bool], None] = lambda up: None,
        birth: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.settings = settings
        self.topic_base = topic_base  # {prefix}/{site}/{gateway}
        self.on_acks = on_acks
        self.on_connection = on_connection
        self.birth = birth
        self._lock = threading.Lock()
        self._mid_rows: dict[int, tuple[int, float, str]] = {}  # mid -> (rowid, publish time, id)
        # PUBACKs that beat the registration of their row's mid, kept only while publish() runs:
        # every other publish (birth, statuses, QoS 0 finds) also calls on_publish with a mid
        # of its own, which a later row may get again.
        self._early: set[int] = set()
        self._publishing = False
        self._acked: list[tuple[int, float, str]] = []  # gathered per network loop pass
        self._retained: dict[str, bytes] = {}  # subtopic -> last retained payload (device status)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.disconnected_since_us: int | None = now_us()
        self.last_error: str | None = None
        self.connects = 0
        self.client = self._make_client()

    # --- set-up -------------------------------------------------------------------------------

    @property
    def status_topic(self) -> str:
        return f"{self.topic_base}/status"

    @property
    def v5(self) -> bool:
        return str(self.settings.protocol) == "5"

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id or "",
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
        )
        client.max_inflight_messages_set(s.inflight)
        client.max_queued_messages_set(0)
        if s.username is not None:
            password = read_secret(s.password_file) if s.password_file else None
            client.username_pw_set(s.username, password)
        if s.tls_enabled:
            self._configure_tls(client)
        will = json.dumps({"state": "offline", "reason": "connection lost"}).encode()
        client.will_set(self.status_topic, will, qos=1, retain=True)
        # publish() is called from the pipeline's thread while our network thread runs loop().
        # Without a registered write callback paho would write to the socket from the calling
        # thread as well, unlocked, and could reorder or interleave packets. With one, publish()
        # only queues the packet and wakes loop() through paho's socket pair: one writer.
        client.on_socket_register_write = _ignore_socket_event
        client.on_socket_unregister_write = _ignore_socket_event
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def _configure_tls(self, client: mqtt.Client) -> None:
        tls = self.settings.tls
        context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
        if tls and tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, credential_path(tls.key_file))
        if tls and tls.insecure:
            log.warning(
                "mqtt.tls.insecure = true: the broker's certificate is NOT verified; "
                "anyone on the network path can read and forge messages"
            )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        client.tls_set_context(context)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._network_main, name="mqtt", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye (retained offline status) and disconnect."""
        if self.connected:
            goodbye = json.dumps(
                {"state": "offline", "reason": "shutdown", "since": iso_ms(now_us())}
            )
            info = self.client.publish(self.status_topic, goodbye.encode(), qos=1, retain=True)
            deadline = time.monotonic() + min(timeout, 2.0)
            while not info.is_published() and time.monotonic() < deadline and self.connected:
                time.sleep(0.01)
        self._stop.set()
        self.client.disconnect()
        if self._thread:
            self._thread.join(timeout)

    def _network_main(self) -> None:
        host, port = self.settings.host_port
        backoff = Backoff(initial_s=0.5, cap_s=self.settings.reconnect_max_s)
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self.client.connect(
                        host,
                        port,
                        keepalive=int(self.settings.keepalive_s),
                        clean_start=False if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                        properties=self._connect_properties(),
                    )
                    first = False
                else:
                    self.client.reconnect()
            except (OSError, ssl.SSLError) as exc:
                self._note_failure(f"cannot connect to {host}:{port}: {exc}")
                self._stop.wait(backoff.next_delay())
                continue
            started = time.monotonic()
            connects_before = self.connects
            while not self._stop.is_set():
                rc = self.client.loop(timeout=0.05)
                self._deliver_acks()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    if self.connects == connects_before:  # e.g. TLS 1.3 client cert refused
                        self._note_failure(
                            f"connection to {host}:{port} closed before CONNACK: "
                            f"{mqtt.error_string(rc)}"
                        )
                    break
            if self._stop.is_set():
                # let the DISCONNECT go out
                for _ in range(20):
                    rc = self.client.loop(timeout=0.05)
                    self._deliver_acks()
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                break
            if self.connected:
                self._set_connected(False, "connection lost")
            if time.monotonic() - started > 10:  # it was a good session: start over gently
                backoff.reset()
            self._stop.wait(backoff.next_delay())

    def _connect_properties(self) -> Properties | None:
        if not self.v5:
            return None
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.settings.session_expiry_s)
        return props

    def _note_failure(self, message: str) -> None:
        if message != self.last_error:  # log a failure once, not at every retry
            log.warning("mqtt: %s", message)
        self.last_error = message

    # --- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self._note_failure(f"broker refused the connection: {reason}")
            return
        self.connects += 1
        hello = {"state": "online", "since": iso_ms(now_us()), **self.birth()}
        client.publish(self.status_topic, json.dumps(hello).encode(), qos=1, retain=True)
        with self._lock:
            retained = list(self._retained.items())
        for subtopic, payload in retained:
            client.publish(f"{self.topic_base}/{subtopic}", payload, qos=1, retain=True)
        self._set_connected(True, None)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self.connected:
            self._set_connected(False, str(reason))

    def _set_connected(self, up: bool, reason: str | None) -> None:
        if up == self.connected:
            return
        self.connected = up
        if up:
            log.info("mqtt: connected to %s", self.settings.url)
            self.disconnected_since_us = None
            self.last_error = None
        elif self._stop.is_set():
            log.info("mqtt: disconnected (shutdown)")
        else:
            log.warning("mqtt: disconnected (%s); messages wait in the outbox", reason)
            self.disconnected_since_us = now_us()
        self.on_connection(up)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        with self._lock:
            entry = self._mid_rows.pop(mid, None)
            if entry is None:
                if self._publishing:  # perhaps a row of the publish() under way
                    self._early.add(mid)
                return
            self._acked.append((entry[0], time.monotonic() - entry[1], entry[2]))

    def _deliver_acks(self) -> None:
        """Hand the PUBACKs of one network loop pass over at once (one wake-up, not one per ack)."""
        with self._lock:
            acked, self._acked = self._acked, []
        if acked:
            self.on_acks(acked)

    # --- publishing (any thread) --------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._mid_rows)

    def publish(self, rows: Sequence[Stored]) -> None:
        """Hand leased outbox rows to MQTT, in order. Acks arrive through on_acks.

        Raises PublishRefused when paho will not queue a row (e.g. every packet id is taken by
        a message awaiting its PUBACK): the rows before it are queued, it and the rest are not
        (the caller leases them again: Outbox.rewind(refused.rowid))."""
        acked_early = []
        with self._lock:
            self._publishing = True
        try:
            for row in rows:
                topic = f"{self.topic_base}/{row.subtopic}"
                info = self.client.publish(topic, row.payload, qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    raise PublishRefused(
                        f"paho refused to queue a message: {mqtt.error_string(info.rc)}",
                        row.rowid,
                    )
                with self._lock:
                    if info.mid in self._early:
                        self._early.discard(info.mid)
                        acked_early.append((row.rowid, 0.0, row.id))
                    else:
                        self._mid_rows[info.mid] = (row.rowid, time.monotonic(), row.id)
        finally:
            with self._lock:
                self._publishing = False
                self._early.clear()  # other messages' acks: no row of this call has their mid
            if acked_early:
                self.on_acks(acked_early)

    def publish_retained(self, subtopic: str, body: dict[str, Any]) -> None:
        """State, not events: kept here and re-published on every connect (devices/{name})."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        with self._lock:
            self._retained[subtopic] = payload
        if self.connected:
            self.client.publish(f"{self.topic_base}/{subtopic}", payload, qos=1, retain=True)

    def publish_volatile(self, subtopic: str, body: dict[str, Any]) -> None:
        """QoS 0, outside the outbox (the handheld find stream): dropped when offline."""
        if self.connected:
            payload = json.dumps(body, separators=(",", ":")).encode()
            self.client.publish(f"{self.topic_base}/{subtopic}", payload, qos=0)


class PublishRefused(Exception):
    """paho would not queue the row `rowid`; it and the rows after it were not published."""

    def __init__(self, message: str, rowid: int) -> None:
        super().__init__(message)
        self.rowid = rowid


def _ignore_socket_event(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Our own loop selects on the socket; paho only needs to know someone does."""
