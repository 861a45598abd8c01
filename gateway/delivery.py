"""Delivery: committed outbox rows out to MQTT, and PUBACKs back to the outbox.

The publish loop leases committed rows to the publisher while the in-flight window has room;
PUBACKs come back through the ack loop, which deletes their rows in one transaction per
gathering. A publish paho refuses to queue rewinds the outbox to the refused row, so it and
every row after it are leased again, in order. Delivery owns the Publisher; both loops run on
the event loop and reach SQLite only through the outbox's thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config import MqttSettings
from gateway.metrics import Metrics
from gateway.model import now_us
from gateway.outbox import Stored
from gateway.outbox_thread import OutboxThread
from gateway.publisher import Publisher, PublishRefused

log = logging.getLogger("fc_edge.delivery")

Ack = tuple[int, float, str]  # (rowid, s since publish, message id), as the publisher reports
# Movements whose event time is kept to measure event-to-PUBACK delay: a long outage's
# backlog is not worth the memory.
MAX_TIMED_MOVEMENTS = 100_000


def void(_: object) -> None:
    """Drop a value (a callback handle) where a callback must return None."""


class Delivery:
    def __init__(
        self,
        settings: MqttSettings,
        topic_base: str,
        store: OutboxThread,
        metrics: Metrics,
        *,
        birth: Callable[[], dict[str, Any]],
        on_connection: Callable[[bool], None],
    ) -> None:
        """On the event loop: the publisher's callbacks come back to this loop."""
        loop = asyncio.get_running_loop()
        self.store = store
        self.metrics = metrics
        self.window = settings.inflight
        self._on_connection_changed = on_connection
        self._publish_wake = asyncio.Event()
        self._ack_wake = asyncio.Event()
        self._acks: list[Ack] = []
        self._event_times: dict[str, int] = {}  # movement id -> event time, until its PUBACK
        self._held = False  # shutdown: publish nothing new until the drain
        self._refusing = False  # paho refused a publish, and none was accepted since (log once)
        self.publisher = Publisher(
            settings,
            topic_base,
            on_acks=lambda acks: void(loop.call_soon_threadsafe(self._on_acks, acks)),
            on_connection=lambda up: void(loop.call_soon_threadsafe(self._on_connection, up)),
            birth=birth,
        )

    def start(self) -> None:
        self.publisher.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.publisher.stop)

    def wake(self) -> None:
        """Look for rows to publish (a commit, a PUBACK, a reconnect)."""
        self._publish_wake.set()

    def committed(self, event_times: Mapping[str, int]) -> None:
        """Ingest committed a batch: its movements' event times, and rows to publish."""
        room = MAX_TIMED_MOVEMENTS - len(self._event_times)
        for msg_id, time_us in list(event_times.items())[: max(0, room)]:
            self._event_times[msg_id] = time_us
        self.wake()

    # --- publish ------------------------------------------------------------------------------

    async def publish_loop(self) -> None:
        while True:
            await self._publish_wake.wait()
            self._publish_wake.clear()
            if not self.publisher.connected or self._held:
                continue
            room = self.window - self.publisher.in_flight
            if room <= 0:
                continue
            rows = await self.store.lease(room)
            if not rows or not await self._publish(rows):
                continue
            if len(rows) < room:
                self.wake()  # more may have been committed meanwhile; else acks will wake us

    async def _publish(self, rows: list[Stored]) -> bool:
        """Hand leased rows to paho; False if it refused one (they wait for the next wake)."""
        try:
            self.publisher.publish(rows)
        except PublishRefused as refused:
            await self._rewind(rows, refused)
            return False
        if self._refusing:
            log.info("mqtt: publishing again after refusals")
            self._refusing = False
        self.metrics.published.inc(len(rows))
        return True

    async def _rewind(self, rows: list[Stored], refused: PublishRefused) -> None:
        """paho would not queue a row (e.g. no packet id free): it and the rows after it are
        leased again, in order, at the next wake (a PUBACK, a reconnect, a commit). Nothing is
        lost and the daemon runs on."""
        sent = [row.rowid for row in rows].index(refused.rowid)
        self.metrics.published.inc(sent)
        self.metrics.publish_refused.inc()
        await self.store.rewind(refused.rowid)
        if not self._refusing:
            log.warning("mqtt: %s; the message is published again later", refused)
        self._refusing = True

    def _on_connection(self, up: bool) -> None:
        self.metrics.broker_connected.set(1 if up else 0)
        if up:
            self.metrics.broker_connects.inc()
        self.wake()
        self._on_connection_changed(up)

    # --- acknowledge --------------------------------------------------------------------------

    def _on_acks(self, acks: list[Ack]) -> None:
        self._acks.extend(acks)
        self._ack_wake.set()
        # The in-flight window has room from this moment on (the publisher forgot these mids);
        # refill it now rather than after the delete transaction.
        self.wake()

    async def ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            await asyncio.sleep(0.01)  # gather a few PUBACKs into one transaction
            self._ack_wake.clear()
            acks, self._acks = self._acks, []
            if acks:
                await self.store.ack([rowid for rowid, _, _ in acks])
                self._observe(acks)
                self.wake()

    def _observe(self, acks: list[Ack]) -> None:
        self.metrics.acked.inc(len(acks))
        now = now_us()
        for _, latency, msg_id in acks:
            self.metrics.publish_latency.observe(latency)
            event_us = self._event_times.pop(msg_id, None)
            if event_us is not None:
                self.metrics.end_to_end_latency.observe(max(0, now - event_us) / 1e6)

    # --- shutdown -----------------------------------------------------------------------------

    def hold(self) -> None:
        """Shutdown began: lease nothing new until drain() (the last batch is committed
        first, so the drain publishes it in order with the rest)."""
        self._held = True

    async def drain(self, timeout: float) -> None:
        """Publish what is waiting, for up to `timeout` s, while the broker is reachable."""
        self._held = False
        self.wake()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.publisher.connected and not self._drained():
            await asyncio.sleep(0.02)
        # acks that arrived in the last moments
        if self._acks:
            acks, self._acks = self._acks, []
            await self.store.ack([rowid for rowid, _, _ in acks])

    def _drained(self) -> bool:
        stats = self.store.stats()
        return (stats is None or stats.depth == 0) and self.publisher.in_flight == 0
