"""Ingest: what drivers hand over, judged by the engine and committed to the outbox.

Drivers hand data to the GatewaySink from any thread, as typed items. The ingest loop takes
them in batches on the event loop, runs the (pure) engine and the handheld workflows, and
commits the batch's messages, tag states and source cursors in one outbox transaction on the
outbox's own thread. Ingest owns the engine and the workflows; it hands committed movements'
event times to whoever delivers them (`on_commit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily, Metric

from drivers.base import DeviceEvent, DriverHealth
from gateway.commissioning import CommissioningTap
from gateway.config import Settings
from gateway.engine import Engine, EngineConfig, Step
from gateway.epcis import epcis_outgoing
from gateway.metrics import Metrics, counter, gauge
from gateway.model import Movement, Outgoing, TagRead, TagState, iso_ms, movement_body, now_us
from gateway.outbox import OutboxError
from gateway.outbox_thread import OutboxThread

if TYPE_CHECKING:
    from gateway.handheld import Workflow, WorkflowOutput

log = logging.getLogger("fc_edge.ingest")

# --- what the sink holds: one typed item per call a driver made --------------------------------


@dataclass(slots=True, frozen=True)
class ReadsItem:
    reads: Sequence[TagRead]
    cursors: Mapping[str, int] | None = None


@dataclass(slots=True, frozen=True)
class EventItem:
    event: DeviceEvent


@dataclass(slots=True, frozen=True)
class MovementItem:
    """A movement a device reported itself; `future` resolves once it is durable."""

    move: Movement
    cursors: Mapping[str, int] | None
    future: Future[None]


@dataclass(slots=True, frozen=True)
class ProgressItem:
    source: str
    time_us: int


@dataclass(slots=True, frozen=True)
class SourceDownItem:
    """A reader lost its connection: the engine holds its absence judgments."""

    source: str


@dataclass(slots=True, frozen=True)
class SourceRetiredItem:
    """A finite source (a replay) finished: it sends no more."""

    source: str


Item = ReadsItem | EventItem | MovementItem | ProgressItem | SourceDownItem | SourceRetiredItem

# Device states in which a reader's buffered reads may still come later (see device_state).
DOWN_STATES = frozenset({"backoff", "stale", "unreachable"})

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
    driver paces itself), nor is anyone once release() was called (shutdown).

    Implements drivers.base.Sink. Device states are not kept here: `on_state` hands them to
    their one owner (gateway.health.Devices)."""

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
        self._items: list[Item] = []
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

    def _put(self, item: Item, rows: int) -> None:
        with self._lock:
            was_empty = not self._items
            self._items.append(item)
            self._rows += rows
        if was_empty and self._loop is not None and self._wake is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # loop closed during shutdown: the item is simply not taken
                pass

    # --- drivers.base.Sink --------------------------------------------------------------------

    def reads(self, batch: Sequence[TagRead], cursors: Mapping[str, int] | None = None) -> None:
        if batch or cursors:
            if batch:
                self._wait_for_room()
            self._put(ReadsItem(batch, cursors), len(batch))

    def event(self, event: DeviceEvent) -> None:
        self._put(EventItem(event), 1)

    def movement(self, move: Movement, cursors: Mapping[str, int] | None = None) -> Future[None]:
        future: Future[None] = Future()
        self._put(MovementItem(move, cursors, future), 1)
        return future

    def progress(self, source: str, time_us: int) -> None:
        self._put(ProgressItem(source, time_us), 0)

    def device_state(self, device: str, health: DriverHealth) -> None:
        if health.state in DOWN_STATES:
            # A reader that lost its connection holds the engine's absence judgments (what it
            # buffered meanwhile may still come); the engine lives on the loop: hand it over.
            self._put(SourceDownItem(device), 0)
        elif health.state == "stopped":
            self._put(SourceRetiredItem(device), 0)
        self._on_state(device, health)

    def cursor(self, key: str) -> int | None:
        return self._cursors.get(key)

    # --- the ingest loop's side ---------------------------------------------------------------

    @property
    def rows(self) -> int:
        return self._rows

    def take(self) -> list[Item]:
        with self._room:
            items, self._items, self._rows = self._items, [], 0
            self._room.notify_all()
        return items


# --- the ingest loop ----------------------------------------------------------------------------


@dataclass
class Batch:
    """What one outbox transaction commits, and what waits on it."""

    messages: list[Outgoing] = field(default_factory=list)
    states: dict[str, TagState] = field(default_factory=dict)  # epc -> state (last wins)
    cursors: dict[str, int] = field(default_factory=dict)
    futures: list[Future[None]] = field(default_factory=list)
    event_times: dict[str, int] = field(default_factory=dict)  # movement id -> event time
    epcis: list[Movement] = field(default_factory=list)  # this batch's movements, for EPCIS

    def __bool__(self) -> bool:
        return bool(self.messages or self.states or self.cursors)


def _ignore_commit(event_times: Mapping[str, int]) -> None:
    """No one delivers (a reload test's ingest)."""


def _no_volatile(subtopic: str, body: dict[str, Any]) -> None:
    """No publisher to send QoS 0 messages to."""


def _no_alert(device: str, kind: str) -> None:
    """No device to beep at."""


@dataclass(frozen=True)
class Outlets:
    """Where ingest hands what it does not commit itself."""

    # After a commit: movement id -> event time of the batch's movements (delivery wakes).
    on_commit: Callable[[Mapping[str, int]], None] = _ignore_commit
    # A handheld's find reads: QoS 0, outside the outbox.
    publish_volatile: Callable[[str, dict[str, Any]], None] = _no_volatile
    # Operator feedback on a handheld ("ok" | "error").
    alert: Callable[[str, str], None] = _no_alert


class Ingest:
    """Owns the engine and the handheld workflows; the only writer of the outbox."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        sink: GatewaySink,
        store: OutboxThread,
        metrics: Metrics,
        outlets: Outlets | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sink = sink
        self.store = store
        self.metrics = metrics
        self.outlets = outlets or Outlets()
        self.workflows = make_workflows(settings, engine)
        # What the local page's commissioning view shows: off (nearly free) unless it is open.
        self.tap = CommissioningTap()
        self.wake = asyncio.Event()
        self.last_progress = time.monotonic()  # the watchdog's proof of life
        self._checkpoints: list[tuple[int, Mapping[str, int]]] = []  # (newest read µs, cursors)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the loop's thread: drivers' hand-overs wake the ingest loop from now on."""
        self.sink.bind(loop, self.wake)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_commit = last_tick = loop.time()
        while True:
            await self._wait_for_wake()
            await self._let_batch_build_up(last_commit)
            self.wake.clear()
            batch = self._process(self.sink.take())
            if loop.time() - last_tick >= self.settings.engine.tick_s:
                last_tick = loop.time()
                self._tick(batch, now_us())
            self._release_checkpoints(batch)
            self._add_epcis(batch)
            if batch:
                await self._commit(batch)
                last_commit = loop.time()
            self.last_progress = time.monotonic()

    async def _wait_for_wake(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11, wait_for returns normally when the event is
        # set just as the task is cancelled, so the loop ran on after shutdown cancelled it,
        # and the stop hung until the hard exit (seen under load).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.engine.tick_s):
                await self.wake.wait()

    async def _let_batch_build_up(self, last_commit: float) -> None:
        """Commit at most every commit_interval_s, or once commit_rows wait."""
        loop = asyncio.get_running_loop()
        o = self.settings.outbox
        deadline = last_commit + o.commit_interval_s
        while self.sink.rows < o.commit_rows and loop.time() < deadline:
            await asyncio.sleep(min(0.005, deadline - loop.time()))

    def _tick(self, batch: Batch, now: int) -> None:
        self._add_step(batch, self.engine.tick(now))
        for name, workflow in self.workflows.items():
            self._add_workflow(batch, name, workflow.tick(now))

    async def flush(self) -> None:
        """At shutdown, once the drivers are stopped and the loop cancelled: commit what they
        handed over last and what the engine still holds in its reorder window."""
        batch = self._process(self.sink.take())
        self._add_step(batch, self.engine.flush())
        self._release_checkpoints(batch)
        self._add_epcis(batch)
        if batch:
            await self._commit(batch)

    # --- one batch ----------------------------------------------------------------------------

    def _process(self, items: list[Item]) -> Batch:
        batch = Batch()
        for item in items:
            match item:
                case ReadsItem(reads, cursors):
                    self._take_reads(batch, reads, cursors)
                case MovementItem(move, cursors, future):
                    self._add_step(batch, self.engine.apply(move))
                    self._add_movement(batch, move)
                    batch.cursors.update(cursors or {})
                    batch.futures.append(future)
                case EventItem(event):
                    self._route_event(batch, event)
                case ProgressItem(source, time_us):
                    self.engine.progress(source, time_us)
                case SourceDownItem(source):
                    self.engine.source_down(source)
                case SourceRetiredItem(source):
                    self.engine.source_retired(source)
        return batch

    def _take_reads(
        self, batch: Batch, reads: Sequence[TagRead], cursors: Mapping[str, int] | None
    ) -> None:
        if not reads:
            batch.cursors.update(cursors or {})  # a source position with nothing before it
            return
        reader = reads[0].reader
        self.metrics.reads.labels(reader).inc(len(reads))
        workflow = self.workflows.get(reader)
        if workflow is not None:  # a handheld: its workflow decides, not the engine
            self._add_workflow(batch, reader, workflow.on_reads(reads, now_us()))
        else:
            self._add_step(batch, self.engine.feed(reads, reader, now_us()))
            self.tap.observe(reads, self.engine)
        if cursors:
            # A source position is durable only once every read before it has had its full
            # effect: see _release_checkpoints.
            self._checkpoints.append((max(read.time_us for read in reads), cursors))

    def _release_checkpoints(self, batch: Batch) -> None:
        """Commit a source cursor (e.g. a replay's line) only once the engine holds no
        undecided evidence from reads before it. Evidence lives in memory; if the cursor ran
        ahead of it, a crash would lose reads that were about to confirm a movement. Reads
        re-fed after a restart are idempotent: the restored tag states already hold every
        decision made from them."""
        if not self._checkpoints:
            return
        floor = self.engine.resume_floor_us()
        released = 0
        for newest, cursors in self._checkpoints:
            if floor is not None and newest >= floor:
                break
            batch.cursors.update(cursors)
            released += 1
        del self._checkpoints[:released]

    def _add_step(self, batch: Batch, step: Step) -> None:
        for move in step.movements:
            self._add_movement(batch, move)
        for state in step.states:
            batch.states[state.epc] = state

    def _add_movement(self, batch: Batch, move: Movement) -> None:
        gw = self.settings.gateway
        body = movement_body(move, gw.site, gw.id)
        batch.messages.append(Outgoing("movements", "movements", body, id=move.id))
        batch.event_times[move.id] = move.time_us
        if self.settings.epcis.enabled:
            batch.epcis.append(move)

    def _add_epcis(self, batch: Batch) -> None:
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

    def _add_workflow(self, batch: Batch, device: str, out: WorkflowOutput) -> None:
        """A handheld workflow's output: movements (which also update the engine's tag
        state), count messages, find reads (QoS 0, outside the outbox), operator feedback."""
        if not out:
            return
        for move in out.movements:
            self._add_step(batch, self.engine.apply(move))
            self._add_movement(batch, move)
        gw = self.settings.gateway
        for body in out.counts:
            body = {"schema": "fc-edge/count/1", "site": gw.site, "gateway": gw.id, **body}
            batch.messages.append(Outgoing("counts", "counts", body))
        for body in out.find:
            self.outlets.publish_volatile(f"find/{device}", body)
        for kind in out.feedback:
            self.outlets.alert(device, kind)
        for line in out.log:
            log.info("%s", line)

    def _route_event(self, batch: Batch, event: DeviceEvent) -> None:
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
            states = self.metrics.equipment_state
            if data.get("previous") is not None:
                states.labels(event.device, point, str(data["previous"])).set(0)
            states.labels(event.device, point, str(data.get("value"))).set(1)

    async def _commit(self, batch: Batch) -> None:
        try:
            await self.store.commit(batch.messages, list(batch.states.values()), batch.cursors)
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
        self.tap.committed(batch.messages)
        self.outlets.on_commit(batch.event_times)

    # --- upkeep -------------------------------------------------------------------------------

    async def prune_loop(self, every_s: float = 600.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.prune_forgotten_tags()

    async def prune_forgotten_tags(self) -> None:
        """Absent tags older than the longest forget_after_s are gone from the engine: drop
        their persisted states too, so the table does not grow without bound."""
        forget_s = max(
            (
                loc.profile.forget_after_s
                for loc in EngineConfig.from_settings(self.settings).locations.values()
            ),
            default=3600.0,
        )
        removed = await self.store.prune_tag_states(now_us() - int(forget_s * 1e6))
        if removed:
            log.info("forgot %d absent tags", removed)

    def reload(self, new: Settings, applied: Settings) -> list[str]:
        """SIGHUP: the engine takes `new`'s judging config, the workflows its locations; ingest
        runs on with `applied` (the reloadable sections of `new`). Returns the workflows'
        warnings."""
        self.engine.reload(EngineConfig.from_settings(new))
        self.settings = applied
        return [
            line for workflow in self.workflows.values() for line in workflow.reload(new.locations)
        ]

    # --- metrics ------------------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        """The sink's queue and the engine's own counters, read at scrape time."""
        engine = self.engine
        return [
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
            gauge("engine_tracked_tags", "Tags the engine tracks", engine.tracked),
            counter(
                "engine_movements_total",
                "Movements produced by the engine",
                _by_label(engine.movement_counts),
                ["type"],
            ),
            counter(
                "engine_evicted_tags_total",
                "Tags evicted because max_tags was reached, by state",
                _by_label(engine.evicted),
                ["state"],
            ),
            counter(
                "engine_suppressed_reads_total",
                "Reads the engine ignored, by reason",
                _by_label(engine.suppressed),
                ["reason"],
            ),
            *self._event_time_metrics(),
        ]

    def _event_time_metrics(self) -> list[Metric]:
        """Event time per reader (gateway/engine/sources.py)."""
        sources = list(self.engine.sources)
        lag = GaugeMetricFamily(
            "fc_edge_reader_event_lag_seconds",
            "How far the reader's event time is behind the gateway clock",
            labels=["reader"],
        )
        for name, us in self.engine.sources.lag_us(now_us()).items():
            lag.add_metric([name], us / 1e6)
        return [
            counter(
                "reader_reads_behind_total",
                "Reads that came behind what the engine had judged (a backlog), judged tag by tag",
                {(s.name,): s.behind for s in sources},
                ["reader"],
            ),
            counter(
                "reader_hold_released_total",
                "Times a silent reader held departures for silent_reader_hold_s and was let go",
                {(s.name,): s.released for s in sources},
                ["reader"],
            ),
            lag,
        ]


def _by_label(values: Mapping[str, float]) -> dict[tuple[str, ...], float]:
    return {(key,): value for key, value in values.items()}


def make_workflows(settings: Settings, engine: Engine) -> dict[str, Workflow]:
    """One workflow per handheld (driver "tsl"); imported only when a site has handhelds."""
    handhelds = [d for d in settings.readers if d.driver == "tsl"]
    if not handhelds:
        return {}
    from gateway.handheld import Workflow

    return {d.name: Workflow(d, settings.locations, engine.state_of) for d in handhelds}
