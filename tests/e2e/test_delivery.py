"""The delivery path of a running gateway, in process, against a real mosquitto and a real
outbox (SQLite):

- paho refusing to queue a publish (every MQTT packet id taken: the in-flight window at its
  maximum while a device status waits for its PUBACK) must not end the daemon: the refusal is
  counted, the refused rows are leased again, and every message still arrives, in order;
- only the outbox's own thread touches SQLite while /metrics and /readyz are scraped (HTTP
  thread) and the status line is refreshed (event loop), as the outbox's contract says.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.base import DeviceEvent, DriverHealth
from gateway import config
from gateway.daemon import Gateway
from gateway.ingest import GatewaySink
from gateway.model import Outgoing, now_us
from gateway.outbox import Outbox
from gateway.publisher import Publisher


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(
    tmp_path: Path, broker_url: str, *, inflight: int = 200, metrics_port: int | None = None
) -> Path:
    (tmp_path / "empty.jsonl").write_text("")
    metrics = f'listen = "127.0.0.1:{metrics_port}"' if metrics_port else "enabled = false"
    path = tmp_path / "gw.toml"
    path.write_text(
        f"""
[gateway]
site = "S1"
id = "gw-1"
state_dir = "{tmp_path / "state"}"
shutdown_timeout_s = 5

[mqtt]
url = "{broker_url}"
client_id = "fc-edge-delivery-test"
inflight = {inflight}
keepalive_s = 120

[metrics]
{metrics}

[locations.DOCK]

[[readers]]
name = "dock-01"
driver = "replay"
file = "empty.jsonl"

[readers.antennas]
1 = {{ location = "DOCK" }}
"""
    )
    return path


async def until(
    check: Callable[[], bool], timeout_s: float, what: str, state: Callable[[], Any] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {state()}")
        await asyncio.sleep(0.05)


def publisher_and_outbox(gateway: Gateway) -> tuple[Publisher, Outbox]:
    assert gateway.delivery is not None
    return gateway.delivery.publisher, gateway.store.outbox


def sink_of(gateway: Gateway) -> GatewaySink:
    assert gateway.ingest is not None
    return gateway.ingest.sink


def state_of(gateway: Gateway) -> dict[str, Any]:
    publisher = gateway.delivery.publisher if gateway.delivery else None
    stats = gateway.store.stats()
    return {
        "connected": publisher and publisher.connected,
        "in_flight": publisher and publisher.in_flight,
        "last_error": publisher and publisher.last_error,
        "outbox": stats and stats.to_json(),
        "refused": refused(gateway),
    }


def connected(gateway: Gateway) -> bool:
    return gateway.delivery is not None and gateway.delivery.publisher.connected


async def with_gateway(
    path: Path, body: Callable[[Gateway, asyncio.Task[None]], Awaitable[None]]
) -> None:
    """Run a real gateway on this loop while `body` works with it; then stop it cleanly."""
    gateway = Gateway(config.load(path))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        await until(lambda: connected(gateway), 20, "MQTT")
        await body(gateway, task)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(task), 60)  # re-raises what ended the gateway


class Subscriber:
    """A plain paho client that keeps every (topic, seq) it receives, in order."""

    def __init__(self, port: int, topic: str) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, 1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.seqs.append(json.loads(msg.payload)["seq"])

    def received(self) -> list[int]:
        with self.lock:
            return list(self.seqs)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- paho refuses a publish -----------------------------------------------------------------

# paho 2.1 refuses to queue a QoS 1 message (MQTT_ERR_QUEUE_SIZE) when the next packet id is
# still held by a message awaiting its PUBACK. Packet ids are used by every publish, QoS 0 ones
# too: a handheld in find mode streams QoS 0 `find` messages, so with the broker stalled and a
# device status awaiting its PUBACK, the find stream walks the ids round to the status's id,
# and the next outbox row paho is given is refused.
PACKET_IDS = 65535
EVENTS = 300  # more than the in-flight window (200): it must refill after the refusal


def test_a_publish_paho_refuses_is_leased_again_and_the_daemon_runs_on(
    tmp_path: Path, broker: Any
) -> None:
    subscriber = Subscriber(broker.port, "fc/S1/gw-1/equipment/#")
    path = write_config(tmp_path, broker.url)

    async def body(gateway: Gateway, task: asyncio.Task[None]) -> None:
        publisher, outbox = publisher_and_outbox(gateway)
        await asyncio.sleep(0.5)  # the birth and the first device statuses are acknowledged
        os.kill(broker.proc.pid, signal.SIGSTOP)  # the broker stalls: no PUBACK comes
        try:
            # A device status now takes a packet id and keeps it...
            sink_of(gateway).device_state("dock-01", DriverHealth(state="stale", since_us=now_us()))
            # ...the find stream takes all but about 100 of the others, round to just before it
            for n in range(PACKET_IDS - 100):
                publisher.publish_volatile("find/hh-1", {"schema": "fc-edge/find/1", "n": n})
            # ...and a PLC's events become outbox rows: one of them gets the status's id.
            t = now_us()
            for n in range(EVENTS):
                sink_of(gateway).event(DeviceEvent("plc-1", "equipment", {"event": "n", "n": n}, t))
            await until(
                lambda: refused(gateway) >= 1 or task.done(),
                30,
                "a refusal",
                lambda: state_of(gateway),
            )
            assert not task.done(), f"the gateway ended: {task.exception()!r}"
            await asyncio.sleep(0.5)
            # No row is taken for acknowledged while no PUBACK can come (a find's packet id,
            # reused by a row, once made that row count as acknowledged at once).
            assert outbox.stats().depth == EVENTS, state_of(gateway)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        await until(
            lambda: task.done() or outbox.stats().depth == 0,
            60,
            "the outbox to drain",
            lambda: state_of(gateway),
        )
        assert not task.done(), f"the gateway ended: {task.exception()!r}"
        await until(lambda: len(set(subscriber.received())) >= EVENTS, 30, "every message")

    try:
        asyncio.run(with_gateway(path, body))
    finally:
        subscriber.stop()
    got = subscriber.received()
    assert set(got) == set(range(1, EVENTS + 1))  # every equipment message, none lost
    first: dict[int, int] = {}
    for i, seq in enumerate(got):
        first.setdefault(seq, i)
    assert sorted(first, key=first.__getitem__) == sorted(first)  # first arrivals in seq order


def refused(gateway: Gateway) -> float:
    value = gateway.metrics.registry.get_sample_value("fc_edge_publisher_refused_total")
    return value or 0.0


# --- only the outbox thread touches SQLite --------------------------------------------------


def test_only_the_outbox_thread_touches_sqlite_while_metrics_are_scraped(
    tmp_path: Path, broker: Any
) -> None:
    backlog = 3000
    box = Outbox(tmp_path / "state" / "outbox.db")  # a backlog from before a restart
    box.commit(
        [Outgoing("movements", "movements", {"schema": "t/1", "n": n}) for n in range(backlog)]
    )
    box.close()
    port = free_port()
    path = write_config(tmp_path, broker.url, metrics_port=port)
    statements: list[tuple[str, str]] = []  # (thread name, SQL) of every statement run

    async def body(gateway: Gateway, task: asyncio.Task[None]) -> None:
        outbox = gateway.store.outbox

        def trace() -> None:  # installed on the outbox thread, like every other call
            outbox.conn.set_trace_callback(
                lambda sql: statements.append((threading.current_thread().name, sql))
            )

        await gateway.store.call(trace)
        scrapes = 0
        while outbox.stats().depth > 0 or scrapes < 10:
            for page in ("/metrics", "/readyz"):
                await asyncio.to_thread(get, f"http://127.0.0.1:{port}{page}")
            gateway.status_line()  # what the status loop and sd_notify run, on this loop
            scrapes += 1
            assert scrapes < 2000, "the backlog did not drain"
            assert not task.done()
        assert outbox.stats().acked >= backlog

    asyncio.run(with_gateway(path, body))
    assert statements, "the trace saw nothing: the test would prove nothing"
    elsewhere = {(name, sql) for name, sql in statements if not name.startswith("outbox")}
    assert elsewhere == set()


def get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310 (loopback)
            return bytes(reply.read())
    except urllib.error.HTTPError as exc:  # /readyz answers 503 once the replay has ended
        return bytes(exc.read())
