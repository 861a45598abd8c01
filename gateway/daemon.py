"""The daemon: wires the owners together, runs them under one TaskGroup, and handles signals.

    drivers -> GatewaySink -> Ingest (engine) -> OutboxThread -> Delivery (publisher) -> MQTT

The owners (each in its own module):
- gateway.ingest: the sink drivers hand data to, the engine and the ingest loop;
- gateway.outbox_thread: the outbox and the one thread that touches SQLite;
- gateway.delivery: the publisher, the publish and ack loops, the in-flight window;
- gateway.health: the devices' state (one owner), /readyz, the status line, metrics.

Gateway.run opens them, then an asyncio.TaskGroup owns every long-running task: one per
driver (supervised: a crashing driver is restarted, never fatal), ingest, publish, ack, the
status loop, the tag-state pruning and the stop sequence. A loop that fails with an error ends
the group (the TaskGroup cancels the rest) and the daemon stops with that error; SIGTERM or
SIGINT runs the stop sequence instead: drivers first, then ingest with its last batch, then
the outbox drained within gateway.shutdown_timeout_s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from drivers.base import Driver, Sink, driver_class
from gateway import config as config_mod
from gateway import sdnotify
from gateway.config import Settings
from gateway.decoders import DecoderPool, pooled_readers, process_count
from gateway.delivery import Delivery
from gateway.engine import Engine, EngineConfig
from gateway.health import Devices, Health
from gateway.ingest import GatewaySink, Ingest, Outlets
from gateway.metrics import HealthServer, Metrics
from gateway.model import iso_ms
from gateway.outbox import OutboxError
from gateway.outbox_thread import OutboxThread
from gateway.webview import WebView

if TYPE_CHECKING:
    from gateway.sparkplug import SparkplugNode

log = logging.getLogger("fc_edge.daemon")

DRIVER_RESTART_DELAY_S = 5.0
# Sections a SIGHUP applies; a change anywhere else is reported as needing a restart.
RELOADED = ("locations", "portals", "profiles", "engine", "epcis")
NEEDS_RESTART = ("gateway", "mqtt", "metrics", "outbox", "readers", "equipment", "sparkplug")


class Supervised(Protocol):
    """What _supervise restarts: a driver, or the LLRP decoder processes' pool."""

    name: str

    async def run(self) -> None: ...

    def count_error(self, kind: str, n: int = 1) -> None: ...


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = OutboxThread()
        self.devices = Devices(settings.devices)
        self.start_warnings = config_mod.start_warnings(settings)
        self.health = Health(self.devices, self.store, [w.code for w in self.start_warnings])
        self.ingest: Ingest | None = None
        self.delivery: Delivery | None = None
        self.http: HealthServer | None = None
        self.decoders: DecoderPool | None = None  # LLRP readers decoded in child processes
        self.sparkplug: SparkplugNode | None = None  # [sparkplug] enabled: the edge node
        self.fatal: BaseException | None = None

    # --- start-up -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the outbox, restore the engine and start the publisher (READY after this)."""
        s = self.settings
        for warning in self.start_warnings:
            log.warning("%s", warning.message)
        path = s.state_path / "outbox.db"
        states, cursors = await self.store.open(path, s.outbox)
        engine = Engine.restore(states, EngineConfig.from_settings(s))
        log.info(
            "outbox %s open: %d waiting, %d tag states restored",
            path,
            self.store.outbox.stats().depth,
            len(states),
        )
        if engine.hot_loop != "c":
            log.warning(
                "the engine's compiled hot loop was not built (no C compiler when fc-edge was "
                "installed): reads are judged by its Python loop, the same decisions at about "
                "half the speed at 100k tracked tags and more (docs/install.md)"
            )
        delivery = self._open_delivery()
        self.devices.publish_retained = delivery.publisher.publish_retained
        self.health.publisher = delivery.publisher
        outlets = Outlets(
            delivery.committed, delivery.publisher.publish_volatile, self.devices.alert
        )
        sink = GatewaySink(cursors, self.devices.state_changed)
        self.ingest = Ingest(s, engine, sink, self.store, self.metrics, outlets)
        self.ingest.bind(asyncio.get_running_loop())
        self.metrics.add_collector(self.ingest.collect)
        self.metrics.add_collector(self.health.collect)
        if s.metrics.enabled:
            page = WebView(s, self.health, self.metrics, self.ingest.tap)
            self.http = HealthServer(
                s.metrics.listen, self.metrics, self.health.healthz, self.health.ready, page.route
            )
            self.http.start()
        delivery.start()

    def _open_delivery(self) -> Delivery:
        gw = self.settings.gateway
        topic_base = f"{self.settings.mqtt.topic_prefix}/{gw.site}/{gw.id}"
        self.delivery = Delivery(
            self.settings.mqtt,
            topic_base,
            self.store,
            self.metrics,
            birth=self._birth,
            on_connection=lambda up: self.notify_status(),
        )
        return self.delivery

    def _birth(self) -> dict[str, Any]:
        return {
            "site": self.settings.gateway.site,
            "gateway": self.settings.gateway.id,
            "devices": [d.name for d in self.settings.devices],
            "started": iso_ms(self.health.started_us),
        }

    def _sparkplug_sink(self, sink: GatewaySink) -> Sink:
        """With [sparkplug] enabled, the edge node watches what the drivers hand over."""
        if not self.settings.sparkplug.enabled:
            return sink
        from gateway.sparkplug import SparkplugNode  # protobuf only where Sparkplug is on

        self.sparkplug = SparkplugNode(self.settings, self.devices, self.metrics)
        self.metrics.add_collector(self.sparkplug.collect)
        return self.sparkplug.tap_sink(sink)

    def _make_drivers(self, sink: Sink) -> list[Driver]:
        """The drivers run here; the LLRP readers' go to decoder processes if so configured."""
        pooled = pooled_readers(self.settings)
        if pooled:
            processes = process_count(self.settings.gateway.decoder_processes)
            self.decoders = DecoderPool(pooled, processes, sink)
            self.metrics.add_collector(self.decoders.collect)
            for reader in self.decoders.readers.values():
                self.devices.add(reader)
        drivers = []
        for device in self.settings.devices:
            if device in pooled:
                continue
            driver = driver_class(device.driver)(device, sink)
            self.devices.add(driver)
            drivers.append(driver)
        return drivers

    # --- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.open()
        ingest, delivery = self.ingest, self.delivery
        assert ingest is not None and delivery is not None
        drivers = self._make_drivers(self._sparkplug_sink(ingest.sink))
        if self.sparkplug is not None:
            self.sparkplug.start()  # after the drivers: its births name every device
        sdnotify.notify("READY=1", f"STATUS={self.status_line()}")
        try:
            async with asyncio.TaskGroup() as group:
                self._start_tasks(group, drivers, ingest, delivery, stop)
        except ExceptionGroup as failed:  # a loop failed: the group cancelled every other task
            self.fatal = failed.exceptions[0]
        await self._close()
        if self.fatal is not None:
            raise self.fatal

    def _start_tasks(
        self,
        group: asyncio.TaskGroup,
        drivers: list[Driver],
        ingest: Ingest,
        delivery: Delivery,
        stop: asyncio.Event,
    ) -> None:
        for driver in drivers:
            task = group.create_task(self._supervise(driver), name=f"driver:{driver.name}")
            self.devices.supervised_by(driver.name, task)
        if self.decoders is not None:
            # One task serves every pooled reader: it is each one's supervisor.
            task = group.create_task(self._supervise(self.decoders), name="decoders")
            for name in self.decoders.readers:
                self.devices.supervised_by(name, task)
        loops = {
            "ingest": ingest.run(),
            "publish": delivery.publish_loop(),
            "ack": delivery.ack_loop(),
            "status": self._status_loop(ingest),
            "prune": ingest.prune_loop(),
        }
        if self.sparkplug is not None:
            loops["sparkplug"] = self.sparkplug.run()
        tasks = {
            name: group.create_task(self._fatal_on_error(c), name=name) for name, c in loops.items()
        }
        group.create_task(self._stop_when(stop, ingest, delivery, tasks), name="stop")

    async def _supervise(self, driver: Supervised) -> None:
        """A driver must never end on a device error; if its code crashes, restart it (an
        error escaping this task would end the TaskGroup, and the daemon with it)."""
        while True:
            try:
                await driver.run()
                return  # a finite source (replay) completed
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "driver %s crashed; restarting it in %.0f s",
                    driver.name,
                    DRIVER_RESTART_DELAY_S,
                )
                driver.count_error("driver_crash")
                await asyncio.sleep(DRIVER_RESTART_DELAY_S)

    async def _fatal_on_error(self, loop: Coroutine[Any, Any, None]) -> None:
        """A loop that fails ends the daemon: stop taking and publishing before the TaskGroup
        cancels the drivers (a driver thread held back by the sink would never see its close)."""
        try:
            await loop
        except Exception:
            self._begin_stop()
            raise

    def _begin_stop(self) -> None:
        if self.delivery is not None:
            self.delivery.hold()
        sdnotify.notify("STOPPING=1")
        if self.ingest is not None:
            self.ingest.sink.release()  # a driver thread held back would never see its close

    async def _stop_when(
        self,
        stop: asyncio.Event,
        ingest: Ingest,
        delivery: Delivery,
        loops: dict[str, asyncio.Task[None]],
    ) -> None:
        """The stop sequence, in order: drivers, then ingest and its last batch, then the
        outbox drained within the grace, then the other loops."""
        await stop.wait()
        self._begin_stop()
        await _cancel(list(dict.fromkeys(self.devices.tasks.values())))  # (one per pool)
        await _cancel([loops["ingest"]])
        await ingest.flush()  # an OutboxError here ends the group: no drain without durability
        await delivery.drain(self.settings.gateway.shutdown_timeout_s)
        await _cancel(list(loops.values()))

    async def _close(self) -> None:
        if self.sparkplug is not None:
            await self.sparkplug.stop()  # its NDEATH, before the status goes offline
        if self.delivery is not None:
            await self.delivery.stop()
        if self.http is not None:
            self.http.stop()
        left = await self.store.close()
        if left is not None:
            log.info("stopped; %d messages wait in the outbox for the next start", left)

    # --- systemd ------------------------------------------------------------------------------

    def status_line(self) -> str:
        return self.health.status_line()

    def notify_status(self) -> None:
        sdnotify.notify(f"STATUS={self.status_line()}")

    async def _status_loop(self, ingest: Ingest) -> None:
        """Refresh STATUS= every second; WATCHDOG=1 at half WatchdogSec, and only while the
        ingest loop makes progress (a wedged pipeline gets restarted by systemd)."""
        watchdog_s = sdnotify.watchdog_interval_s()
        last_watchdog = 0.0
        while True:
            await asyncio.sleep(1.0)
            self.notify_status()
            now = time.monotonic()
            progressing = now - ingest.last_progress < 5
            if watchdog_s is not None and progressing and now - last_watchdog >= watchdog_s:
                sdnotify.notify("WATCHDOG=1")
                last_watchdog = now

    # --- SIGHUP -------------------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: new locations (for the handheld workflows too), portals, profiles; tag state
        and the outbox are kept. A bad new config is refused and logged; the old one stays in
        force. Sections that need a restart (mqtt, devices, metrics, gateway) are reported, not
        applied."""
        sdnotify.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            self._reload(config_mod.load(self.settings.path))
        except config_mod.ConfigError as exc:
            log.error("reload refused, keeping the running config:\n%s", exc)
        except Exception:
            log.exception("reload failed, keeping the running config")
        finally:
            sdnotify.notify("READY=1", f"STATUS={self.status_line()}")

    def _reload(self, new: Settings) -> None:
        old = self.settings
        applied = dataclasses.replace(old, **{name: getattr(new, name) for name in RELOADED})
        if self.ingest is not None:
            for line in self.ingest.reload(new, applied):  # handhelds: labels, bizSteps, ...
                log.warning("%s", line)
        if self.decoders is not None:
            self.decoders.reload(new)
        self.settings = applied
        log.info("reloaded %s (%s)", new.path, ", ".join(RELOADED))
        needs_restart = [name for name in NEEDS_RESTART if getattr(old, name) != getattr(new, name)]
        if needs_restart:
            log.warning("changes to %s take effect only after a restart", ", ".join(needs_restart))


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- entry point -------------------------------------------------------------------------------


async def run_gateway(settings: Settings) -> int:
    gateway = Gateway(settings)
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
        timer = threading.Timer(grace_s, shutdown_hung, args=(grace_s, loop))
        timer.daemon = True
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload()))
    try:
        await gateway.run(stop)
    except OutboxError as exc:
        log.critical("%s — stopping: fc-edge will not run without a durable outbox", exc)
        return 74  # EX_IOERR
    except (OSError, ValueError) as exc:  # unreadable secret or certificate, port in use, ...
        log.critical("cannot start: %s", exc)
        return 78 if not gateway.store.is_open or gateway.delivery is None else 70
    return 0


def shutdown_hung(grace_s: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
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
