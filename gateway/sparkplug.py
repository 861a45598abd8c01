"""Sparkplug B output: the gateway as an edge node, each reader and piece of equipment a device.

Optional (`[sparkplug] enabled`). Status and metrics only: movements stay on their own topics.

* One MQTT session of its own (MQTT 3.1.1, clean session, its own client id), its will the
  NDEATH. Before every connect the bdSeq is moved on by one and made durable in the state dir
  (sparkplug-bdseq.json), then set in the will: the NDEATH the broker sends for a session
  carries the bdSeq of that session's NBIRTH, also after a `kill -9` and a restart.
* NBIRTH (seq 0, bdSeq, `Node Control/Rebirth`), then a DBIRTH per configured device; every
  later message of the node takes the next seq, 255 wrapping to 0.
* Every `interval_s` (and at once when a device's state changes) each device's changed
  metrics go out as DDATA; a device that loses its connection gets a DDEATH, and a DBIRTH
  when it is back; a device whose metric set grew (a point seen for the first time) a new
  DBIRTH.
* NCMD `Node Control/Rebirth` = true republishes the births. Anything else on NCMD or DCMD is
  counted (`fc_edge_rejected_inputs_total{source="sparkplug"}`), logged and ignored.
* With `primary_host_id`, births wait for `spBv1.0/STATE/{id}` online; the host going offline
  ends the session (NDEATH, disconnect, a new session with the next bdSeq that waits again).
  While no birth is out (host offline, broker away) changed metrics are kept, up to
  MAX_HISTORY, and sent after the next births as DDATA with `is_historical` and the time they
  changed. The history is held in memory: what changed while the gateway itself was down is
  not known to it.
* A clean stop publishes the NDEATH itself and disconnects.

Threads: paho's network thread runs the session's callbacks (connect, commands, STATE); the
event loop runs `run()` (DDATA). One lock orders everything that takes a seq, so a DDATA never
goes out between an NBIRTH and its DBIRTHs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.core import Metric as PromMetric

from drivers.base import Sink
from gateway.config import MqttSettings, Settings, credential_path, read_secret
from gateway.health import Devices
from gateway.metrics import Metrics, counter, gauge
from gateway.sparkplug_devices import DEAD_STATES, DeviceMetrics, DeviceTap
from gateway.sparkplug_payload import (
    SEQ_MODULUS,
    BadPayload,
    DataType,
    Metric,
    Seq,
    Topics,
    decode,
    encode,
)

log = logging.getLogger("fc_edge.sparkplug")

REBIRTH = "Node Control/Rebirth"
MAX_HISTORY = 10_000  # changed metrics kept while no birth is out
BDSEQ_FILE = "sparkplug-bdseq.json"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BdSeqStore:
    """The last bdSeq used, durable in the state dir (written whole, synced, then renamed)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / BDSEQ_FILE

    def last(self) -> int | None:
        try:
            value = json.loads(self.path.read_text())["bd_seq"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # never written (or unreadable): the next is 0
        return value if isinstance(value, int) and 0 <= value < SEQ_MODULUS else None

    def advance(self) -> int:
        """The bdSeq of the next connect: last + 1 (0 after 255, or the first time)."""
        last = self.last()
        value = 0 if last is None else (last + 1) % SEQ_MODULUS
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"bd_seq": value}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return value


class SparkplugNode:
    def __init__(self, settings: Settings, devices: Devices, metrics: Metrics) -> None:
        sp = settings.sparkplug
        gw = settings.gateway
        self.settings = settings
        self.node_id = sp.edge_node_id or gw.id
        self.topics = Topics(sp.group_id or gw.site, self.node_id)
        self.primary_host = sp.primary_host_id
        self.interval_s = sp.interval_s
        self.broker = _broker_settings(settings)
        self.metrics = metrics
        self.devices = devices
        self.bd_seqs = BdSeqStore(settings.state_path)
        self.tap: DeviceTap | None = None
        self.view: DeviceMetrics | None = None
        self._lock = threading.RLock()
        self._seq = Seq()
        self.bd_seq: int | None = None
        self.connected = False
        self.host_online = self.primary_host is None
        self._host_seen_ms = 0  # the newest STATE timestamp taken
        self.born = False
        self._stopping = False
        self._cycling = False  # disconnecting on purpose, to connect again (host offline)
        self._failing = False  # connects fail (logged once)
        self._last: dict[str, dict[str, Metric]] = {}  # device -> metrics as last published
        self._dead: set[str] = set()  # devices whose DDEATH is the last word
        self._history: deque[tuple[str, Metric]] = deque(maxlen=MAX_HISTORY)
        self.history_dropped = 0
        self.sent: Counter[str] = Counter()  # by message type
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.client = self._make_client()

    # --- wiring -------------------------------------------------------------------------------

    def tap_sink(self, sink: Sink) -> Sink:
        """The sink the drivers get: the gateway's, with the node watching."""
        self.tap = DeviceTap(sink, self._device_state_changed)
        self.view = DeviceMetrics(self.settings, self.devices, self.tap)
        return self.tap

    def start(self) -> None:
        """Connect in the background (paho's thread reconnects with backoff)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._connect()

    def _connect(self) -> None:
        host, port = self.broker.host_port
        self.client.connect_async(host, port, keepalive=int(self.broker.keepalive_s))
        self.client.loop_start()

    async def run(self) -> None:
        """DDATA: every interval, or at once when a device's state changed."""
        assert self._wake is not None and self.view is not None
        while True:
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                self.view.measure_rates(time.monotonic())
            self._wake.clear()
            try:
                self.publish_changes()
            except Exception:  # a bug of ours must not stop the gateway: it runs on without
                log.exception("sparkplug: publishing device metrics failed")

    async def stop(self, timeout: float = 2.0) -> None:
        await asyncio.to_thread(self._stop, timeout)

    def _stop(self, timeout: float) -> None:
        """A clean stop: the NDEATH ourselves (a DISCONNECT sends no will), then go."""
        with self._lock:
            info = self._publish_ndeath() if self.connected else None
            self.born = False
            self._stopping = True
        deadline = time.monotonic() + timeout
        while info is not None and not info.is_published() and time.monotonic() < deadline:
            time.sleep(0.01)
        self.client.disconnect()
        self.client.loop_stop()

    # --- the MQTT session (paho's thread) -----------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.broker
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id or "",
            protocol=mqtt.MQTTv311,
            clean_session=True,  # Sparkplug: an edge node's session starts clean
        )
        if s.username is not None:
            password = read_secret(s.password_file) if s.password_file else None
            client.username_pw_set(s.username, password)
        if s.tls_enabled:
            client.tls_set_context(_tls_context(s))
        client.reconnect_delay_set(1, max(1, int(s.reconnect_max_s)))
        # An error in a callback is logged, and the session goes on: raised, it would end
        # paho's thread, and Sparkplug with it, silently.
        client.suppress_exceptions = True
        client.on_log = self._on_paho_log
        client.on_connect_fail = self._on_connect_fail
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_paho_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        """paho reports an error in one of our callbacks only here: relay that (not its
        per-packet chatter, nor a failed connect at every retry)."""
        if buf.startswith("Caught exception"):
            log.error("sparkplug: %s", buf)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._failing:  # once, until a connect succeeds
            log.warning("sparkplug: cannot connect to %s; retrying", self.broker.url)
        self._failing = True

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        """Before every connect: a new bdSeq, durable before the broker holds it in the will."""
        with self._lock:
            try:
                self.bd_seq = self.bd_seqs.advance()
            except OSError as exc:  # the state dir is the outbox's: the gateway has bigger
                # problems; births and will still agree within this process
                log.error("sparkplug: bdSeq not saved (%s); a restart may repeat it", exc)
                self.bd_seq = ((self.bd_seq if self.bd_seq is not None else -1) + 1) % SEQ_MODULUS
            will = encode(self._bd_seq_metric(), timestamp_ms=now_ms(), seq=None)
            client.will_set(self.topics.node("NDEATH"), will, qos=1, retain=False)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("sparkplug: broker refused the connection: %s", reason)
            return
        log.info("sparkplug: connected to %s (bdSeq %s)", self.broker.url, self.bd_seq)
        self._failing = False
        with self._lock:
            self.connected = True
            self.host_online = self.primary_host is None
        client.subscribe([(self.topics.node("NCMD"), 1), (self.topics.device("DCMD", "+"), 1)])
        if self.primary_host is not None:
            client.subscribe(Topics.state(self.primary_host), qos=1)
            log.info("sparkplug: births wait for primary host %s online", self.primary_host)
        else:
            self.publish_births()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        with self._lock:
            if self.connected and not (self._stopping or self._cycling):
                log.warning("sparkplug: disconnected (%s)", reason)
            self.connected = False
            self.born = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.topics.node("NCMD"):
                self._on_node_command(bytes(msg.payload))
            elif self.primary_host is not None and msg.topic == Topics.state(self.primary_host):
                self._on_host_state(bytes(msg.payload))
            else:  # DCMD: fc-edge's devices take no writes
                self._reject("device_command_unsupported", f"{msg.topic}: not accepted")
        except Exception:  # a bug of ours must not kill paho's thread (and the session)
            log.exception("sparkplug: handling %s failed", msg.topic)
            self._reject("internal_error", msg.topic)

    def _on_node_command(self, payload: bytes) -> None:
        try:
            metrics = decode(payload)
        except BadPayload as exc:
            self._reject("bad_payload", f"NCMD: {exc}")
            return
        for m in metrics:
            if m.name != REBIRTH:
                self._reject("unknown_command", f"NCMD: unknown metric {m.name!r}")
            elif m.datatype != DataType.BOOLEAN or not isinstance(m.value, bool):
                self._reject("bad_command_value", f"NCMD: {REBIRTH} must be a Boolean")
            elif m.value:
                log.info("sparkplug: rebirth requested")
                self.publish_births()
        if not metrics:
            self._reject("empty_command", "NCMD: no metric")

    def _on_host_state(self, payload: bytes) -> None:
        """STATE of the primary host: Sparkplug 3.0 JSON {"online", "timestamp"}, or 2.2's
        plain ONLINE / OFFLINE."""
        online, stamp = _parse_state(payload)
        if online is None:
            self._reject("bad_state", f"STATE {self.primary_host}: {payload[:60]!r}")
            return
        with self._lock:
            if stamp is not None and stamp < self._host_seen_ms:
                return  # an older STATE than one already taken (3.0: ignore it)
            self._host_seen_ms = stamp or self._host_seen_ms
            was = self.host_online
            self.host_online = online
            if online and not was:
                log.info("sparkplug: primary host %s online", self.primary_host)
                self.publish_births()
            elif not online and was:
                log.warning(
                    "sparkplug: primary host %s offline: NDEATH, reconnecting to wait for it",
                    self.primary_host,
                )
                if self.born:
                    self._publish_ndeath()  # before the DISCONNECT: paho sends in order
                self.born = False
                self._start_over()

    def _start_over(self) -> None:
        """Sparkplug 3.0 on a primary host gone offline: disconnect, then a new session (a new
        bdSeq) that waits for the host's STATE online. From a thread of its own: paho's thread,
        which runs this callback, cannot wait for itself to end."""

        def cycle() -> None:
            self.client.disconnect()
            self.client.loop_stop()
            with self._lock:
                if not self._stopping:  # a stop meanwhile: stay disconnected
                    self._cycling = False
                    self._connect()

        self._cycling = True
        threading.Thread(target=cycle, name="sparkplug-reconnect", daemon=True).start()

    def _reject(self, reason: str, detail: str) -> None:
        self.metrics.rejected.labels("sparkplug", reason).inc()
        log.warning("sparkplug: ignored: %s", detail)

    # --- publishing (any thread, under the lock) ----------------------------------------------

    def publish_births(self) -> None:
        """NBIRTH, every device's DBIRTH, the history kept while no birth was out, then a
        DDEATH for each device without a connection."""
        with self._lock:
            if not (self.connected and self.host_online) or self.view is None:
                return
            stamp = now_ms()
            node = [*self._bd_seq_metric(), *self._node_metrics()]
            self._send("NBIRTH", self.topics.node("NBIRTH"), node, self._seq.reset(), stamp)
            self._dead.clear()
            births = {device: self.view.snapshot(device) for device in self.view.names}
            for device, metrics in births.items():
                self._device_birth(device, metrics)
            self._send_history()
            for device, metrics in births.items():
                if metrics["State"].value in DEAD_STATES:
                    self._device_death(device)
            self.born = True

    def publish_changes(self) -> None:
        """Each device's metrics that changed since last published: DDATA, DDEATH or DBIRTH."""
        if self.view is None:
            return
        with self._lock:
            for device in self.view.names:
                self._publish_device(device, self.view.snapshot(device))

    def _publish_device(self, device: str, now: dict[str, Metric]) -> None:
        last = self._last.get(device, {})
        changed = [m for name, m in now.items() if name not in last or last[name] != m]
        if not self.born:
            if last:  # a change to what the host was last told (not a first sight)
                self._keep_history(device, changed)
            self._last[device] = now
            return
        dead = now["State"].value in DEAD_STATES
        grown = any(
            name not in last or last[name].datatype != m.datatype for name, m in now.items()
        )
        if device in self._dead and not dead:
            self._device_birth(device, now)
            self._dead.discard(device)
        elif grown and not dead:
            self._device_birth(device, now)
        elif changed:
            self._send_ddata(device, changed)
        if dead and device not in self._dead:
            self._device_death(device)
        self._last[device] = now

    def _device_birth(self, device: str, metrics: dict[str, Metric]) -> None:
        topic = self.topics.device("DBIRTH", device)
        self._send("DBIRTH", topic, list(metrics.values()), self._seq.take(), now_ms())
        self._last[device] = metrics

    def _device_death(self, device: str) -> None:
        topic = self.topics.device("DDEATH", device)
        self._send("DDEATH", topic, [], self._seq.take(), now_ms())
        self._dead.add(device)

    def _send_ddata(self, device: str, metrics: list[Metric]) -> None:
        topic = self.topics.device("DDATA", device)
        self._send("DDATA", topic, metrics, self._seq.take(), now_ms())

    def _keep_history(self, device: str, changed: list[Metric]) -> None:
        stamp = now_ms()
        for m in changed:
            if len(self._history) == self._history.maxlen:
                self.history_dropped += 1
            self._history.append(
                (device, Metric(m.name, m.datatype, m.value, stamp, historical=True))
            )

    def _send_history(self) -> None:
        by_device: dict[str, list[Metric]] = {}
        for device, metric in self._history:
            by_device.setdefault(device, []).append(metric)
        self._history.clear()
        for device, metrics in by_device.items():
            if device in self._last:  # born: its metric names are known to the host
                self._send_ddata(device, metrics)

    def _publish_ndeath(self) -> mqtt.MQTTMessageInfo:
        payload = encode(self._bd_seq_metric(), timestamp_ms=now_ms(), seq=None)
        self.sent["NDEATH"] += 1
        return self.client.publish(self.topics.node("NDEATH"), payload, qos=1)

    def _send(self, kind: str, topic: str, metrics: list[Metric], seq: int, stamp: int) -> None:
        # QoS 0, as Sparkplug has N/D BIRTH and DATA published (only NDEATH, the will, is 1).
        self.client.publish(topic, encode(metrics, timestamp_ms=stamp, seq=seq), qos=0)
        self.sent[kind] += 1

    def _bd_seq_metric(self) -> list[Metric]:
        return [Metric("bdSeq", DataType.INT64, self.bd_seq or 0)]

    def _node_metrics(self) -> list[Metric]:
        gw = self.settings.gateway
        return [
            Metric(REBIRTH, DataType.BOOLEAN, False),
            Metric("Properties/Site", DataType.STRING, gw.site),
            Metric("Properties/Gateway", DataType.STRING, gw.id),
            Metric("Properties/Devices", DataType.INT64, len(self.settings.devices)),
        ]

    # --- device state (any thread) ------------------------------------------------------------

    def _device_state_changed(self, device: str) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed during shutdown
                pass

    # --- metrics ------------------------------------------------------------------------------

    def collect(self) -> Iterable[PromMetric]:
        with self._lock:
            sent = dict(self.sent)
            born = self.born
        return [
            gauge("sparkplug_connected", "1 while the Sparkplug session is connected",
                  1 if self.connected else 0),
            gauge("sparkplug_born", "1 while the node's births stand (host online)",
                  1 if born else 0),
            gauge("sparkplug_bdseq", "bdSeq of the current Sparkplug session", self.bd_seq or 0),
            counter("sparkplug_messages_total", "Sparkplug messages published, by type",
                    {(kind,): n for kind, n in sent.items()}, ["type"]),
            counter("sparkplug_history_dropped_total",
                    "Changed metrics not kept while no birth was out (history full)",
                    {(): self.history_dropped}, []),
        ]  # fmt: skip


def _parse_state(payload: bytes) -> tuple[bool | None, int | None]:
    """(online, timestamp ms) of a STATE payload; (None, None) if it is neither form."""
    text = payload.decode("utf-8", "replace").strip()
    if text in ("ONLINE", "OFFLINE"):
        return text == "ONLINE", None
    try:
        body = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(body, dict) or not isinstance(body.get("online"), bool):
        return None, None
    stamp = body.get("timestamp")
    return body["online"], stamp if isinstance(stamp, int) else None


def _broker_settings(settings: Settings) -> MqttSettings:
    """[mqtt]'s broker, credentials and TLS, with [sparkplug]'s url and client id."""
    sp, gw = settings.sparkplug, settings.gateway
    node = sp.edge_node_id or gw.id
    client_id = sp.client_id or f"fc-edge-{gw.site}-{node}-spb"
    url = sp.url or settings.mqtt.url
    return MqttSettings(**{**_fields(settings.mqtt), "url": url, "client_id": client_id})


def _fields(s: MqttSettings) -> dict[str, Any]:
    return {name: getattr(s, name) for name in MqttSettings.__dataclass_fields__}


def _tls_context(s: MqttSettings) -> ssl.SSLContext:
    """[mqtt.tls] as the publisher reads it; verification off only if it says insecure."""
    tls = s.tls
    ca = tls.ca_file if tls is not None else None
    context = ssl.create_default_context(cafile=ca)
    if tls is None:
        return context
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(tls.cert_file, credential_path(tls.key_file))
    if tls.insecure:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context
