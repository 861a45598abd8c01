"""The one data path: drivers -> sink -> engine -> outbox -> publisher -> MQTT.

One asyncio loop owns the pipeline. Drivers hand data to the GatewaySink from any thread;
the ingest loop takes it in batches, runs the (pure) engine, and commits the batch's messages,
tag states and source cursors in one outbox transaction on the outbox's own thread. The
publish loop leases committed rows to the publisher; PUBACKs come back through the ack loop,
which deletes them. Nothing waits anywhere but in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client.core import GaugeMetricFamily

from drivers.base import DeviceEvent, Driver, DriverHealth, driver_class
from gateway import config as config_mod
from gateway import sdnotify
from gateway.config import Settings
from gateway.engine import Engine, EngineConfig, Step
from gateway.epcis import epcis_outgoing
from gateway.metrics import HealthServer, Metrics, counter, gauge
from gateway.model import Movement, Outgoing, TagRead, iso_ms, movement_body, now_us
from gateway.outbox import Outbox, OutboxError
from gateway.publisher import Publisher, PublishRefused

log = logging.getLogger("fc_edge.pipeline")
DEVICE_STATES = ("connecting", "up", "backoff", "stale", "unreachable", "stopped")
T = TypeVar("T")


# --- the sink drivers write to ---------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    kind: str  # "reads" | "event" | "movement" | "progress" | "down" | "retired"
    payload: Any
    cursors: Mapping[str, int] | None = None
    future: Future[None] | None = None


# Reads a driver thread may queue ahead of the ingest loop before it is held back: ~6 s of what
# one gateway process sustains (docs/performance.md, pipeline). Without a bound, readers offering
# more than the pipeline takes grew the queue without limit, and 16 decoding threads starved
# the loop of the GIL: 40k reads/s offered, 916 processed.
MAX_QUEUED_READS = 200_000


class GatewaySink:
    """Thread-safe: drivers append, the ingest loop takes everything at once. A driver *thread*
    offering reads while MAX_QUEUED_READS wait is held back until the loop takes them
    (backpressure: the reader's socket then fills and the reader buffers, as it would for a
    slow network; nothing is dropped). The event loop's own thread is never held (an async
    driver paces itself), nor is anyone once release() was called (shutdown)."""

    def __init__(
        self,
        cursors: Mapping[str, int],
        on_state: Callable[[str, DriverHealth], None],
        max_queued_reads: int = MAX_QUEUED_READS,
    ):
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._max_rows = max_queued_reads
        self._released = False
        self._loop_thread: int | None = None
        self.held_back_s = 0.0  # total time driver threads waited for room
        self._items: list[_Item] = []
        self._rows = 0
        self._cursors = dict(cursors)
        self._on_state = on_state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event) -> None:
        """Called from the loop's thread."""
        self._loop, self._wake = loop, wake
        self._loop_thread = threading.get_ident()

    def release(self) -> None:
        """Never hold a driver back again (shutdown: the loop stops taking)."""
        with self._room:
            self._released = True
            self._room.notify_all()

    def _wait_for_room(self) -> None:
        if threading.get_ident() == self._loop_thread:
            return
        with self._room:
            if self._rows < self._max_rows or self._released:
                return
            started = time.monotonic()
            while self._rows >= self._max_rows and not self._released:
                self._room.wait(timeout=1.0)
            self.held_back_s += time.monotonic() - started

    def _put(self, item: _Item, rows: int) -> None:
        with self._lock:
            was_empty = not self._items
            self._items.append(item)
            self._rows += rows
        if was_empty and self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closed during shutdown: the item is simply not taken
                pass

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        if batch or cursors:
            if batch:
                self._wait_for_room()
            self._put(_Item("reads", batch, cursors), len(batch))

    def event(self, event: DeviceEvent) -> None:
        self._put(_Item("event", event), 1)

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        future: Future[None] = Future()
        self._put(_Item("movement", move, cursors, future), 1)
        return future

    def progress(self, source: str, time_us: int) -> None:
        self._put(_Item("progress", (source, time_us)), 0)

    def device_state(self, device: str, health: DriverHealth) -> None:
        if health.state in ("backoff", "stale", "unreachable"):
            # A reader that lost its connection holds the engine's absence judgments (what it
            # buffered meanwhile may still come); the engine lives on the loop: hand it over.
            self._put(_Item("down", device), 0)
        elif health.state == "stopped":
            self._put(_Item("retired", device), 0)  # finished (a replay): it sends no more
        self._on_state(device, health)

    def cursor(self, key: str) -> int | None:
        return self._cursors.get(key)

    @property
    def rows(self) -> int:
        return self._rows

    def take(self) -> list[_Item]:
        with self._room:
            items, self._items, self._rows = self._items, [], 0
            self._room.notify_all()
        return items


# --- the pipeline ----------------------------------------------------------------------------


@dataclass
class _Batch:
    messages: list[Outgoing] = field(default_factory=list)
    states: dict[str, Any] = field(default_factory=dict)  # epc -> TagState (last wins)
    cursors: dict[str, int] = field(default_factory=dict)
    futures: list[Future[None]] = field(default_factory=list)
    movements: int = 0
    epcis: list[Movement] = field(default_factory=list)  # this batch's movements, for EPCIS


class Pipeline:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        gw = settings.gateway
        self.topic_base = f"{settings.mqtt.topic_prefix}/{gw.site}/{gw.id}"
        self.metrics = Metrics()
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        self.outbox: Outbox | None = None
        self.engine: Engine | None = None
        self.publisher: Publisher | None = None
        self.drivers: dict[str, Driver] = {}
        self.driver_tasks: dict[str, asyncio.Task[None]] = {}
        self.http: HealthServer | None = None
        self.started_us = now_us()
        self.last_progress = time.monotonic()
        self.stopping = False
        self.fatal: BaseException | None = None
        self._acks: list[tuple[int, float, str]] = []
        # movement id -> event time, to measure event-to-PUBACK delay (bounded: a long outage
        # backlog is not worth the memory)
        self._event_times: dict[str, int] = {}
        self._checkpoints: list[tuple[int, Mapping[str, int]]] = []  # (newest read µs, cursors)
        self._device_bodies: dict[str, dict[str, Any]] = {}
        self.workflows: dict[str, Any] = {}  # handheld name -> gateway.handheld.Workflow

    # --- helpers ------------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, fn, *args)

    # --- start-up -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the outbox, restore the engine and start the publisher (READY after this)."""
        s = self.settings
        path = s.state_path / "outbox.db"
        o = s.outbox
        self.outbox = await self._db(
            lambda: Outbox(
                path, max_bytes=o.max_bytes, when_full=o.when_full, synchronous=o.synchronous
            )
        )
        states = await self._db(lambda: list(self.outbox.tag_states()))  # type: ignore[union-attr]
        cursors = await self._db(self.outbox.cursors)
        self.engine = Engine.restore(states, EngineConfig.from_settings(s))
        log.info(
            "outbox %s open: %d waiting, %d tag states restored",
            path,
            self.outbox.stats().depth,
            len(states),
        )
        if self.engine.hot_loop != "c":
            log.warning(
                "the engine's compiled hot loop was not built (no C compiler when fc-edge was "
                "installed): reads are judged by its Python loop, the same decisions at about "
                "half the speed at 100k tracked tags and more (docs/install.md)"
            )
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._publish_wake = asyncio.Event()
        self._ack_wake = asyncio.Event()
        self.sink = GatewaySink(cursors, self._device_state)
        self.sink.bind(loop, self._wake)
        self.publisher = Publisher(
            s.mqtt,
            self.topic_base,
            on_acks=lambda acks: void(loop.call_soon_threadsafe(self._on_acks, acks)),
            on_connection=lambda up: void(loop.call_soon_threadsafe(self._on_connection, up)),
            birth=self._birth,
        )
        self.metrics.add_collector(self._collect)
        if s.metrics.enabled:
            self.http = HealthServer(s.metrics.listen, self.metrics, self.health, self.ready)
            self.http.start()
        self.publisher.start()

    def _birth(self) -> dict[str, Any]:
        return {
            "site": self.settings.gateway.site,
            "gateway": self.settings.gateway.id,
            "devices": [d.name for d in self.settings.devices],
            "started": iso_ms(self.started_us),
        }

    def start_drivers(self) -> None:
        self.workflows = make_workflows(self.settings, self.engine)
        for device in self.settings.devices:
            cls = driver_class(device.driver)
            driver = cls(device, self.sink)
            self.drivers[device.name] = driver
            self._device_state(device.name, driver.health())
            self.driver_tasks[device.name] = asyncio.create_task(
                self._supervise(driver), name=f"driver:{device.name}"
            )

    async def _supervise(self, driver: Driver) -> None:
        """A driver must never end on a device error; if its code crashes, restart it."""
        while True:
            try:
                await driver.run()
                return  # a finite source (replay) completed
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("driver %s crashed; restarting it in 5 s", driver.name)
                driver.count_error("driver_crash")
                await asyncio.sleep(5)

    # --- main loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.open()
        self.start_drivers()
        sdnotify.notify("READY=1", f"STATUS={self.status_line()}")
        tasks = [
            asyncio.create_task(self._ingest_loop(), name="ingest"),
            asyncio.create_task(self._publish_loop(), name="publish"),
            asyncio.create_task(self._ack_loop(), name="ack"),
            asyncio.create_task(self._status_loop(), name="status"),
        ]
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                self.fatal = task.exception()
        await self.shutdown(tasks)
        if self.fatal is not None:
            raise self.fatal

    async def _ingest_loop(self) -> None:
        loop = asyncio.get_running_loop()
        o = self.settings.outbox
        tick_s = self.settings.engine.tick_s
        last_commit = last_tick = loop.time()
        while True:
            # asyncio.timeout, not wait_for: on 3.11, wait_for returns normally when the
            # event is set just as the task is cancelled, so the loop ran on after shutdown
            # cancelled it, and the stop hung until the hard exit (seen under load).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick_s):
                    await self._wake.wait()
            # Let a batch build up: commit at most every commit_interval_s or commit_rows.
            deadline = last_commit + o.commit_interval_s
            while self.sink.rows < o.commit_rows and loop.time() < deadline:
                await asyncio.sleep(min(0.005, deadline - loop.time()))
            self._wake.clear()
            batch = self._process(self.sink.take())
            if loop.time() - last_tick >= tick_s:
                last_tick = loop.time()
                now = now_us()
                self._add_step(batch, self.engine.tick(now))  # type: ignore[union-attr]
                for name, workflow in self.workflows.items():
                    self._add_workflow(batch, name, workflow.tick(now))
            self._release_checkpoints(batch)
            self._add_epcis(batch)
            if batch.messages or batch.states or batch.cursors:
                await self._commit(batch)
                last_commit = loop.time()
            self.last_progress = time.monotonic()

    def _process(self, items: list[_Item]) -> _Batch:
        batch = _Batch()
        engine = self.engine
        assert engine is not None
        for item in items:
            if item.kind == "reads":
                reads: Sequence[TagRead] = item.payload
                if reads:
                    reader = reads[0].reader
                    self.metrics.reads.labels(reader).inc(len(reads))
                    workflow = self.workflows.get(reader)
                    if workflow is not None:  # a handheld: its workflow decides, not the engine
                        self._add_workflow(batch, reader, workflow.on_reads(reads, now_us()))
                    else:
                        self._add_step(batch, engine.feed(reads, reader, now_us()))
            elif item.kind == "movement":
                move: Movement = item.payload
                self._add_step(batch, engine.apply(move))
                self._add_movement(batch, move)
            elif item.kind == "event":
                self._route_event(batch, item.payload)
            elif item.kind == "progress":
                engine.progress(*item.payload)
            elif item.kind == "down":
                engine.source_down(item.payload)
            elif item.kind == "retired":
                engine.source_retired(item.payload)
            if item.cursors and item.kind == "reads" and item.payload:
                # A source position is durable only once every read before it has had its
                # full effect: see _release_checkpoints.
                newest = max(read.time_us for read in item.payload)
                self._checkpoints.append((newest, item.cursors))
            elif item.cursors:
                batch.cursors.update(item.cursors)
            if item.future is not None:
                batch.futures.append(item.future)
        return batch

    def _release_checkpoints(self, batch: _Batch) -> None:
        """Commit a source cursor (e.g. a replay's line) only once the engine holds no
        undecided evidence from reads before it. Evidence lives in memory; if the cursor ran
        ahead of it, a crash would lose reads that were about to confirm a movement. Reads
        re-fed after a restart are idempotent: the restored tag states already hold every
        decision made from them."""
        if not self._checkpoints:
            return
        floor_fn = getattr(self.engine, "resume_floor_us", None)
        floor = floor_fn() if floor_fn is not None else None
        released = 0
        for newest, cursors in self._checkpoints:
            if floor is not None and newest >= floor:
                break
            batch.cursors.update(cursors)
            released += 1
        del self._checkpoints[:released]

    def _add_step(self, batch: _Batch, step: Step) -> None:
        for move in step.movements:
            self._add_movement(batch, move)
        for state in step.states:
            batch.states[state.epc] = state

    def _add_movement(self, batch: _Batch, move: Movement) -> None:
        gw = self.settings.gateway
        body = movement_body(move, gw.site, gw.id)
        batch.messages.append(Outgoing("movements", "movements", body, id=move.id))
        batch.movements += 1
        if len(self._event_times) < 100_000:
            self._event_times[move.id] = move.time_us
        if self.settings.epcis.enabled:
            batch.epcis.append(move)

    def _add_epcis(self, batch: _Batch) -> None:
        """One EPCIS 2.0 document per outbox batch, committed with the movements it holds."""
        if not batch.epcis:
            return
        s = self.settings
        message = epcis_outgoing(
            batch.epcis,
            locations=s.locations,
            uri_prefix=s.epcis.uri_prefix,
            timezone=s.gateway.timezone,
            site=s.gateway.site,
            gateway=s.gateway.id,
            created_us=now_us(),
            on_skip=lambda move, why: self.metrics.rejected.labels("epcis", why).inc(),
        )
        if message is not None:
            batch.messages.append(message)

    def _add_workflow(self, batch: _Batch, device: str, out: Any) -> None:
        """A handheld workflow's output: movements (which also update the engine's tag
        state), count messages, find reads (QoS 0, outside the outbox), operator feedback."""
        if not out:
            return
        engine = self.engine
        assert engine is not None
        for move in out.movements:
            self._add_step(batch, engine.apply(move))
            self._add_movement(batch, move)
        gw = self.settings.gateway
        for body in out.counts:
            body = {"schema": "fc-edge/count/1", "site": gw.site, "gateway": gw.id, **body}
            batch.messages.append(Outgoing("counts", "counts", body))
        if self.publisher is not None:
            for body in out.find:
                self.publisher.publish_volatile(f"find/{device}", body)
        driver = self.drivers.get(device)
        alert = getattr(driver, "alert", None)
        for kind in out.feedback:
            if alert is not None:
                alert(kind)
        for line in out.log:
            log.info("%s", line)

    def _route_event(self, batch: _Batch, event: DeviceEvent) -> None:
        self.metrics.events.labels(event.device, event.kind).inc()
        workflow = self.workflows.get(event.device)
        if workflow is not None and event.kind in ("barcode", "trigger"):
            self._add_workflow(batch, event.device, workflow.on_event(event, now_us()))
            return
        if event.kind == "equipment":
            self._equipment_metrics(event)
            gw = self.settings.gateway
            body = {
                "schema": "fc-edge/equipment/1",
                "site": gw.site,
                "gateway": gw.id,
                "device": event.device,
                "time": iso_ms(event.time_us),
                **event.data,
            }
            batch.messages.append(Outgoing("equipment", f"equipment/{event.device}", body))
        else:
            log.debug("event %s from %s has no consumer", event.kind, event.device)

    def _equipment_metrics(self, event: DeviceEvent) -> None:
        """fc_edge_equipment_state{device, point, state} = 1 for the current state only."""
        data = event.data
        if data.get("event") == "state" and isinstance(data.get("point"), str):
            point = data["point"]
            if data.get("previous") is not None:
                self.metrics.equipment_state.labels(event.device, point, str(data["previous"])).set(
                    0
                )
            self.metrics.equipment_state.labels(event.device, point, str(data.get("value"))).set(1)

    async def _commit(self, batch: _Batch) -> None:
        assert self.outbox is not None
        try:
            await self._db(
                self.outbox.commit, batch.messages, list(batch.states.values()), batch.cursors
            )
        except OutboxError as exc:
            for future in batch.futures:
                if not future.done():
                    future.set_exception(exc)
            raise
        for future in batch.futures:
            # A driver cancelled at shutdown may have given up waiting: the movement is durable
            # all the same, and its cursor makes the next run acknowledge it without rebooking.
            if not future.done():
                future.set_result(None)
        self.metrics.outbox_commits.inc()
        self.metrics.outbox_appends.inc(len(batch.messages))
        self._publish_wake.set()

    async def _publish_loop(self) -> None:
        publisher, outbox = self.publisher, self.outbox
        assert publisher is not None and outbox is not None
        window = self.settings.mqtt.inflight
        while True:
            await self._publish_wake.wait()
            self._publish_wake.clear()
            if not publisher.connected or self.stopping and not self._draining:
                continue
            room = window - publisher.in_flight
            if room <= 0:
                continue
            rows = await self._db(outbox.lease, room)
            if rows:
                try:
                    publisher.publish(rows)
                except PublishRefused as refused:
                    # paho would not queue a row (e.g. no packet id free): it and the rows after
                    # it are leased again, in order, at the next wake (a PUBACK, a reconnect,
                    # a commit). Nothing is lost and the daemon runs on.
                    sent = [row.rowid for row in rows].index(refused.rowid)
                    self.metrics.published.inc(sent)
                    self.metrics.publish_refused.inc()
                    await self._db(outbox.rewind, refused.rowid)
                    if not self._refusing:
                        log.warning("mqtt: %s; the message is published again later", refused)
                    self._refusing = True
                    continue
                if self._refusing:
                    log.info("mqtt: publishing again after refusals")
                    self._refusing = False
                self.metrics.published.inc(len(rows))
                if len(rows) == room:
                    continue  # acks will wake us
                self._publish_wake.set()  # more may have been committed meanwhile

    def _on_acks(self, acks: list[tuple[int, float, str]]) -> None:
        self._acks.extend(acks)
        self._ack_wake.set()
        # The in-flight window has room from this moment on (the publisher forgot these mids);
        # refill it now rather than after the delete transaction.
        self._publish_wake.set()

    async def _ack_loop(self) -> None:
        assert self.outbox is not None
        while True:
            await self._ack_wake.wait()
            await asyncio.sleep(0.01)  # gather a few PUBACKs into one transaction
            self._ack_wake.clear()
            acks, self._acks = self._acks, []
            if not acks:
                continue
            await self._db(self.outbox.ack, [rowid for rowid, _, _ in acks])
            self.metrics.acked.inc(len(acks))
            now = now_us()
            for _, latency, msg_id in acks:
                self.metrics.publish_latency.observe(latency)
                event_us = self._event_times.pop(msg_id, None)
                if event_us is not None:
                    self.metrics.end_to_end_latency.observe(max(0, now - event_us) / 1e6)
            self._publish_wake.set()

    def _on_connection(self, up: bool) -> None:
        self.metrics.broker_connected.set(1 if up else 0)
        if up:
            self.metrics.broker_connects.inc()
        self._publish_wake.set()
        self._notify_status()

    def _device_state(self, device: str, health: DriverHealth) -> None:
        """From any thread: publish the device's retained status (state, since, last data)."""
        cfg = next((d for d in self.settings.devices if d.name == device), None)
        body = {
            "schema": "fc-edge/device/1",
            "device": device,
            "driver": cfg.driver if cfg else None,
            **health.to_json(),
        }
        self._device_bodies[device] = body
        if self.publisher is not None:
            self.publisher.publish_retained(f"devices/{device}", body)

    async def _status_loop(self) -> None:
        """Refresh STATUS= every second; WATCHDOG=1 at half WatchdogSec, and only while the
        ingest loop makes progress (a wedged pipeline gets restarted by systemd)."""
        watchdog_s = sdnotify.watchdog_interval_s()
        last_watchdog = 0.0
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            self._notify_status()
            if time.monotonic() - last_prune > 600:
                last_prune = time.monotonic()
                await self._prune_forgotten_tags()
            now = time.monotonic()
            progressing = now - self.last_progress < 5
            if watchdog_s is not None and progressing and now - last_watchdog >= watchdog_s:
                sdnotify.notify("WATCHDOG=1")
                last_watchdog = now

    async def _prune_forgotten_tags(self) -> None:
        """Absent tags older than the longest forget_after_s are gone from the engine: drop
        their persisted states too, so the table does not grow without bound."""
        if self.outbox is None:
            return
        forget_s = max(
            (
                loc.profile.forget_after_s
                for loc in EngineConfig.from_settings(self.settings).locations.values()
            ),
            default=3600.0,
        )
        removed = await self._db(self.outbox.prune_tag_states, now_us() - int(forget_s * 1e6))
        if removed:
            log.info("forgot %d absent tags", removed)

    def _notify_status(self) -> None:
        sdnotify.notify(f"STATUS={self.status_line()}")

    # --- shutdown -----------------------------------------------------------------------------

    _draining = False
    _refusing = False  # paho refused a publish, and none was accepted since (log once)

    async def shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self.stopping = True
        sdnotify.notify("STOPPING=1")
        self.sink.release()  # a driver thread held back would never see its close
        for task in self.driver_tasks.values():
            task.cancel()
        await asyncio.gather(*self.driver_tasks.values(), return_exceptions=True)
        ingest = tasks[0]
        ingest.cancel()
        await asyncio.gather(ingest, return_exceptions=True)
        if self.fatal is None and self.engine is not None:
            batch = self._process(self.sink.take())
            flush = getattr(self.engine, "flush", None)
            if flush is not None:  # judge the reads still waiting in the reorder window
                self._add_step(batch, flush())
            self._release_checkpoints(batch)
            self._add_epcis(batch)
            if batch.messages or batch.states or batch.cursors:
                try:
                    await self._commit(batch)
                except OutboxError as exc:
                    self.fatal = exc
        if self.fatal is None:
            await self._drain(self.settings.gateway.shutdown_timeout_s)
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.stop)
        if self.http is not None:
            self.http.stop()
        if self.outbox is not None:
            outbox = self.outbox
            left = outbox.stats().depth
            await self._db(outbox.close)
            log.info("stopped; %d messages wait in the outbox for the next start", left)
        self._db_thread.shutdown(wait=True)

    async def _drain(self, timeout: float) -> None:
        """Publish what is waiting, for up to `timeout` s, while the broker is reachable."""
        assert self.outbox is not None and self.publisher is not None
        self._draining = True
        self._publish_wake.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.publisher.connected:
                break
            if self.outbox.stats().depth == 0 and self.publisher.in_flight == 0:
                break
            await asyncio.sleep(0.02)
        # acks that arrived in the last moments
        if self._acks:
            acks, self._acks = self._acks, []
            await self._db(self.outbox.ack, [rowid for rowid, _, _ in acks])

    # --- health -------------------------------------------------------------------------------

    def status_line(self) -> str:
        readers = [d for d in self.drivers.values()]
        up = sum(1 for d in readers if d.health().state == "up")
        depth = self.outbox.stats().depth if self.outbox else 0
        broker = "connected" if self.publisher and self.publisher.connected else "disconnected"
        return f"{up}/{len(readers)} devices up, outbox {depth}, broker {broker}"

    def health(self) -> dict[str, Any]:
        return {"status": "alive", "started": iso_ms(self.started_us)}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        publisher = self.publisher
        devices = {name: d.health().to_json() for name, d in self.drivers.items()}
        running = all(
            not task.done() or self.drivers[name].health().state == "stopped"
            for name, task in self.driver_tasks.items()
        )
        configured = len(self.drivers) == len(self.settings.devices)
        ok = self.outbox is not None and publisher is not None and configured and running
        broker: dict[str, Any] = {
            "broker": "connected" if publisher and publisher.connected else "disconnected"
        }
        if publisher and publisher.disconnected_since_us:
            broker["since"] = iso_ms(publisher.disconnected_since_us)
            broker["last_error"] = publisher.last_error
        stats = self.outbox.stats().to_json() if self.outbox else None
        return ok, {"ready": ok, **broker, "outbox": stats, "devices": devices}

    def _event_time_metrics(self, engine: Engine) -> list[Any]:
        """Event time per reader (gateway/engine/sources.py) and each reader's clock offset."""
        sources = list(engine.sources)
        lag = engine.sources.lag_us(now_us())
        out = [
            counter(
                "reader_reads_behind_total",
                "Reads that came behind what the engine had judged (a backlog), judged tag by tag",
                _per_reader({s.name: s.behind for s in sources}),
                ["reader"],
            ),
            counter(
                "reader_hold_released_total",
                "Times a silent reader held departures for silent_reader_hold_s and was let go",
                _per_reader({s.name: s.released for s in sources}),
                ["reader"],
            ),
        ]
        lag_family = GaugeMetricFamily(
            "fc_edge_reader_event_lag_seconds",
            "How far the reader's event time is behind the gateway clock",
            labels=["reader"],
        )
        for name, us in lag.items():
            lag_family.add_metric([name], us / 1e6)
        out.append(lag_family)
        offset = GaugeMetricFamily(
            "fc_edge_reader_clock_offset_seconds",
            "Gateway clock minus the reader's clock (at the link's least delay), as estimated",
            labels=["reader"],
        )
        for name, driver in self.drivers.items():
            clock = getattr(driver, "clock", None)
            if clock is not None and clock.offset_us is not None:
                offset.add_metric([name], clock.offset_us / 1e6)
        out.append(offset)
        return out

    def _collect(self) -> list[Any]:
        out: list[Any] = [
            gauge(
                "ingest_queued_reads",
                "Reads the drivers handed over, not yet taken",
                self.sink.rows,
            ),
            counter(
                "ingest_held_back_seconds_total",
                "Time driver threads waited because the pipeline was behind (backpressure)",
                {(): self.sink.held_back_s},
                [],
            ),
        ]
        if self.outbox is not None:
            st = self.outbox.stats()
            out.append(gauge("outbox_messages", "Messages waiting in the outbox", st.depth))
            out.append(gauge("outbox_bytes", "Bytes waiting in the outbox", st.bytes))
            age = (now_us() - st.oldest_created_us) / 1e6 if st.oldest_created_us else 0.0
            out.append(gauge("outbox_oldest_age_seconds", "Age of the oldest waiting message", age))
            out.append(
                counter(
                    "outbox_dropped_messages_total",
                    "Messages dropped because the outbox was full",
                    {(k,): v for k, v in st.dropped.items()},
                    ["stream"],
                )
            )
        if self.publisher is not None:
            out.append(
                gauge(
                    "publisher_in_flight_messages",
                    "Published, awaiting PUBACK",
                    self.publisher.in_flight,
                )
            )
        if self.engine is not None:
            out.append(gauge("engine_tracked_tags", "Tags the engine tracks", self.engine.tracked))
            out.append(
                counter(
                    "engine_movements_total",
                    "Movements produced by the engine",
                    {(k,): v for k, v in self.engine.movement_counts.items()},
                    ["type"],
                )
            )
            evicted = getattr(self.engine, "evicted", {})
            out.append(
                counter(
                    "engine_evicted_tags_total",
                    "Tags evicted because max_tags was reached, by state",
                    {(k,): v for k, v in evicted.items()},
                    ["state"],
                )
            )
            out.append(
                counter(
                    "engine_suppressed_reads_total",
                    "Reads the engine ignored, by reason",
                    {(k,): v for k, v in self.engine.suppressed.items()},
                    ["reason"],
                )
            )
            out += self._event_time_metrics(self.engine)
        for name, driver in self.drivers.items():
            h = driver.health()
            out.append(
                gauge(
                    "device_up",
                    "1 while the device is connected and delivering",
                    1 if h.state == "up" else 0,
                    {"device": name},
                )
            )
            state = GaugeMetricFamily(
                "fc_edge_device_state",
                "1 for the device's current state",
                labels=["device", "state"],
            )
            for candidate in DEVICE_STATES:
                state.add_metric([name, candidate], 1 if h.state == candidate else 0)
            out.append(state)
            out.append(
                counter(
                    "device_reconnects_total",
                    "Reconnects by cause",
                    {(name, cause): n for cause, n in h.reconnects.items()},
                    ["device", "cause"],
                )
            )
            out.append(
                counter(
                    "device_errors_total",
                    "Device errors by kind (bad frames, timeouts, garbled lines)",
                    {(name, kind): n for kind, n in h.errors.items()},
                    ["device", "kind"],
                )
            )
            if h.last_data_us:
                out.append(
                    gauge(
                        "device_last_data_age_seconds",
                        "Seconds since the device last delivered data",
                        (now_us() - h.last_data_us) / 1e6,
                        {"device": name},
                    )
                )
        return out


def _per_reader(values: Mapping[str, float]) -> dict[tuple[str, ...], float]:
    return {(name,): v for name, v in values.items()}


def void(_: object) -> None:
    """Drop a value (a callback handle) where a callback must return None."""


def make_workflows(settings: Settings, engine: Engine | None) -> dict[str, Any]:
    """One workflow per handheld (driver "tsl"); imported only when a site has handhelds."""
    handhelds = [d for d in settings.readers if d.driver == "tsl"]
    if not handhelds or engine is None:
        return {}
    from gateway.handheld import Workflow

    return {d.name: Workflow(d, settings.locations, engine.state_of) for d in handhelds}


# --- entry point -----------------------------------------------------------------------------


async def run_gateway(
    settings: Settings, on_started: Callable[[Pipeline], Awaitable[None]] | None = None
) -> int:
    pipeline = Pipeline(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    grace_s = settings.gateway.shutdown_timeout_s + 15

    def on_stop_signal() -> None:
        if stop.is_set():  # asked twice: the operator means it
            log.warning("second stop signal: exiting now (the outbox is consistent)")
            os._exit(1)
        stop.set()
        # A shutdown that hangs (a device library that ignores cancellation) must not keep
        # the process alive: exiting is as safe as a kill -9, which the outbox is built for.
        timer = threading.Timer(grace_s, _shutdown_hung, args=(grace_s, loop))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(pipeline)))
    try:
        await pipeline.run(stop)
    except OutboxError as exc:
        log.critical("%s — stopping: fc-edge will not run without a durable outbox", exc)
        return 74  # EX_IOERR
    except (OSError, ValueError) as exc:  # unreadable secret or certificate, port in use, ...
        log.critical("cannot start: %s", exc)
        return 78 if pipeline.outbox is None or pipeline.publisher is None else 70
    return 0


def _shutdown_hung(grace_s: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
    log.critical("shutdown did not finish in %.0f s; exiting (the outbox is consistent)", grace_s)
    # Where it hung, for the bug report, to stderr (the journal): every thread's stack, and
    # what each asyncio task awaits (the loop itself sits idle in select when a task waits
    # for something that never comes). Read from this thread without the loop's lock: the
    # process is about to end, and a torn read costs only a line of the report.
    faulthandler.dump_traceback(all_threads=True)
    if loop is not None:
        try:
            for task in list(asyncio.all_tasks(loop)):
                print(f"task {task.get_name()}:", file=sys.stderr)
                task.print_stack(limit=8, file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not stop the exit
            print(f"(tasks not listed: {exc!r})", file=sys.stderr)
    sys.stderr.flush()
    os._exit(70)


async def _reload(pipeline: Pipeline) -> None:
    """SIGHUP: new locations (for the handheld workflows too), portals, profiles; tag state and
    the outbox are kept. A bad new config is refused and logged; the old one stays in force.
    Sections that need a restart (mqtt, devices, metrics, gateway) are reported, not applied."""
    sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        new = config_mod.load(pipeline.settings.path)
        old = pipeline.settings
        if pipeline.engine is not None:
            pipeline.engine.reload(EngineConfig.from_settings(new))
        needs_restart = [
            name
            for name in ("gateway", "mqtt", "metrics", "outbox", "readers", "equipment")
            if getattr(old, name) != getattr(new, name)
        ]
        pipeline.settings = dataclasses.replace(
            old,
            locations=new.locations,
            portals=new.portals,
            profiles=new.profiles,
            engine=new.engine,
            epcis=new.epcis,
        )
        for workflow in pipeline.workflows.values():  # handhelds: labels, bizSteps, ...
            for line in workflow.reload(new.locations):
                log.warning("%s", line)
        log.info("reloaded %s (locations, portals, profiles, engine, epcis)", new.path)
        if needs_restart:
            log.warning("changes to %s take effect only after a restart", ", ".join(needs_restart))
    except config_mod.ConfigError as exc:
        log.error("reload refused, keeping the running config:\n%s", exc)
    except Exception:
        log.exception("reload failed, keeping the running config")
    finally:
        sdnotify.notify("READY=1", f"STATUS={pipeline.status_line()}")
