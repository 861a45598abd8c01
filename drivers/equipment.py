"""What every equipment driver (Modbus, OPC UA) reports the same way: the equipment events
(`status`, `state`, `alarm`, `counter`, `unreachable`, `stale`, `recovered`; shapes in
docs/equipment.md), and a device state that says whether the device answers rather than
where the reconnect loop is. A driver reads its protocol and calls these; it never builds an
event of its own, so one device is reported alike whatever it speaks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers.base import DeviceEvent, Driver, SessionEnded, Sink
from gateway.model import Movement, now_us

log = logging.getLogger(__name__)


class DeviceDown(SessionEnded):
    """The device stopped answering (timeout, refused, disconnected, ...): end the session.
    Its reconnect cause is "unreachable"; the reason is counted as an error kind."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__("unreachable", f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EquipmentDriver(Driver):
    """A Driver for one piece of equipment, with the change bookkeeping its events need.

    Subclasses set `options` (with `stale_after_s` and `status_interval_s`) and `where()`."""

    kind = "equipment"

    def __init__(self, device: Any, sink: Sink) -> None:
        super().__init__(device, sink)
        self._values: dict[str, Any] = {}  # shown value per point (enums as names)
        self._alarms: dict[str, frozenset[str]] = {}
        self._counters: dict[str, int] = {}
        self._down: str | None = None  # "unreachable" | "stale" while reported so
        self._down_since = 0.0
        self._heartbeat_changed = 0.0
        self._last_status: float | None = None  # monotonic time of the last full status

    def where(self) -> str:
        """The device's address, for log lines."""
        return self.name

    #: The robot move handshake (a driver makes it in __init__, with its cursor key).
    moves: MoveHandshake

    async def run(self) -> None:
        self.moves.start()
        try:
            await super().run()
        finally:
            await self.moves.stop()

    # --- the reconnect loop's hooks ---------------------------------------------------------

    def failure_cause(self, exc: Exception) -> str:
        if isinstance(exc, DeviceDown):
            self.count_error(exc.reason)
        return super().failure_cause(exc)

    # The state says whether the device answers, not where the reconnect loop is: "up" from
    # its first good read, "unreachable" once when it stops answering, "up" again once it
    # answers — never a connecting/backoff flicker per retry.
    def on_connecting(self) -> None:
        pass

    def on_up(self) -> None:
        pass  # the driver's first good read said so already

    def on_backoff(self, cause: str, exc: Exception) -> None:
        down = exc if isinstance(exc, DeviceDown) else DeviceDown(cause, str(exc))
        self.report_unreachable(down)

    # --- events -----------------------------------------------------------------------------

    def emit(self, data: dict[str, Any], time_us: int | None = None) -> None:
        self.sink.event(
            DeviceEvent(device=self.name, kind="equipment", data=data, time_us=time_us or now_us())
        )

    def state_changed(
        self, point: str, shown: Any, code: int | None, has_enum: bool, time_us: int
    ) -> None:
        """A state point read `shown`: an event if it differs from the last (not the first)."""
        previous = self._values.get(point, _UNSEEN)
        self._values[point] = shown
        if previous is _UNSEEN or previous == shown:
            return  # first sight: reported in the status, not as a change
        data: dict[str, Any] = {"event": "state", "point": point, "value": shown}
        data["previous"] = previous
        if has_enum:
            data["code"] = code
        self.emit(data, time_us)

    def alarms_changed(self, point: str, active: frozenset[str], time_us: int) -> None:
        """One `alarm` event per alarm raised or cleared since the last read (not the first)."""
        previous = self._alarms.get(point)
        self._alarms[point] = active
        if previous is None:
            return
        changes = [(a, True) for a in sorted(active - previous)]
        changes += [(a, False) for a in sorted(previous - active)]
        for alarm, on in changes:
            event = {"event": "alarm", "point": point, "alarm": alarm, "active": on}
            self.emit({**event, "previous": not on}, time_us)

    def counter_changed(
        self, point: str, total: int, modulus: int | None, unit: str | None, time_us: int
    ) -> None:
        """A `counter` event with the delta since the last read: a wrap is a normal delta, a
        drop is a reset (delta = the new total)."""
        previous = self._counters.get(point)
        self._counters[point] = total
        if previous is None or total == previous:
            return
        data: dict[str, Any] = {"event": "counter", "point": point, "total": total}
        wrap = modulus or 0
        if total > previous:
            data["delta"] = total - previous
        elif wrap and previous > wrap * 3 // 4 and total < wrap // 4:
            data["delta"] = total + wrap - previous  # wrapped around
        else:
            data["delta"] = total  # went back: the device reset the counter
            data["reset"] = True
        if unit:
            data["unit"] = unit
        self.emit(data, time_us)

    def status_due(self) -> bool:
        last = self._last_status
        return last is None or time.monotonic() - last >= self.options.status_interval_s

    def emit_status(self, time_us: int | None = None, **extra: Any) -> None:
        """The full status: every point, active alarms, counters, errors, and `extra`."""
        self._last_status = time.monotonic()
        health = self.health()
        data = {
            "event": "status",
            "state": health.state,
            "points": dict(self._values),
            "alarms": sorted(a for active in self._alarms.values() for a in active),
            "counters": dict(self._counters),
            "errors": dict(health.errors),
        }
        self.emit({**data, **extra}, time_us)

    # --- reachability and heartbeat ---------------------------------------------------------

    def report_unreachable(self, exc: DeviceDown) -> None:
        if self._down == "unreachable":
            return
        previous = self.health().state
        self._down = "unreachable"
        self._down_since = time.monotonic()
        log.warning("%s: unreachable at %s: %s", self.name, self.where(), exc)
        data = {"event": "unreachable", "reason": exc.reason, "detail": exc.detail}
        self.emit({**data, "previous": previous})
        self.set_state("unreachable", exc.reason)

    def report_recovered_from(self, kind: str) -> None:
        if self._down != kind:
            return
        down_s = round(time.monotonic() - self._down_since, 3)
        self._down = None
        # The heartbeat clock restarts: silence while unreachable is not staleness.
        self._heartbeat_changed = time.monotonic()
        log.info("%s: recovered from %s after %.1f s", self.name, kind, down_s)
        self.emit({"event": "recovered", "from": kind, "down_s": down_s})
        self.set_state("up")

    def heartbeat_changed(self, first: bool) -> None:
        self._heartbeat_changed = time.monotonic()
        if not first:
            self.report_recovered_from("stale")

    def check_stale(self, point: str) -> None:
        """`stale` once when the heartbeat has not changed for stale_after_s."""
        now = time.monotonic()
        if self._heartbeat_changed == 0.0:
            self._heartbeat_changed = now
        unchanged = now - self._heartbeat_changed
        if unchanged < self.options.stale_after_s or self._down is not None:
            return
        self._down = "stale"
        self._down_since = self._heartbeat_changed
        log.warning("%s: stale: heartbeat %r unchanged for %.1f s", self.name, point, unchanged)
        self.emit({"event": "stale", "point": point, "unchanged_s": round(unchanged, 3)})
        self.set_state("stale", f"heartbeat {point} unchanged")


_UNSEEN = object()


# --- the robot move handshake ------------------------------------------------------------------

_EPC_HEX = re.compile(r"[0-9A-Fa-f]{4,}")


@dataclass(frozen=True, slots=True)
class MoveRecord:
    """A robot's move record as read at one moment: its seq, whether its flag was up, and the
    movement it describes (or why it cannot be one)."""

    seq: int | None
    flag: bool
    movement: Movement | str


def robot_movement(
    device: str,
    stations: Mapping[str, str],
    epc: str | None,
    tote: str | None,
    from_code: Any,
    to_code: Any,
) -> Movement | str:
    """The movement a move record describes, or why it cannot be one."""
    if epc and (not _EPC_HEX.fullmatch(epc) or len(epc) % 4):
        return f"EPC {epc!r} is not hex of a whole number of words"
    if not epc and not tote:
        return "record has neither an EPC nor a tote id"
    from_ = stations.get(str(from_code))
    to = stations.get(str(to_code))
    if from_ is None or to is None:
        unknown = from_code if from_ is None else to_code
        return f"station {unknown} has no location in [stations]"
    return Movement(
        type="moved",
        epc=epc.upper() if epc else None,
        object_id=tote or None,
        from_=from_,
        to=to,
        time_us=now_us(),
        source=device,
        via=device,
    )


class MoveHandshake:
    """The robot move handshake, whatever the protocol (docs/equipment.md):

    1. the robot writes a record, then raises its flag;
    2. the driver re-reads the record and hands its movement to the sink with the cursor
       `cursor_key` = seq, in one outbox transaction;
    3. only once that is durable does it write seq into the robot's ack;
    4. a raised record whose seq is at or below the cursor was booked already (by a run that
       died before the ack): it is acknowledged, not booked again.

    A record that cannot become a movement is never acknowledged (`move_refused` says why)."""

    def __init__(self, driver: EquipmentDriver, cursor_key: str) -> None:
        self.driver = driver
        self.cursor_key = cursor_key
        self.durable_seq: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._refused_logged: int | None = None

    def start(self) -> None:
        self.durable_seq = self.driver.sink.cursor(self.cursor_key)

    async def stop(self) -> None:
        # The booking outlives a reconnect (its movement may still become durable, and the
        # next session then only acks it), so it ends with the driver, not with a session.
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                # The booking's own cancel ends here; a cancel of this task (the daemon's
                # stop) must go on, or the driver would outlive its shutdown.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            except Exception as exc:  # stopping anyway: the robot's flag stays up for next time
                log.debug("%s: move booking ended at stop: %r", self.driver.name, exc)

    async def seen(
        self,
        flag: bool,
        seq: int | None,
        ack: int | None,
        read_record: Callable[[], Awaitable[MoveRecord | None]],
        write_ack: Callable[[int], Awaitable[None]],
    ) -> None:
        """The flag, seq and ack as just read: book, or ack what was booked already."""
        if not flag or seq is None:
            return
        durable = self.durable_seq
        if durable is not None and seq <= durable:
            if ack != seq:
                if seq < durable:
                    self.driver.count_error("seq_regressed")
                await write_ack(seq)
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._book(seq, read_record, write_ack))

    async def _book(
        self,
        seq: int,
        read_record: Callable[[], Awaitable[MoveRecord | None]],
        write_ack: Callable[[int], Awaitable[None]],
    ) -> None:
        try:
            record = await read_record()
        except DeviceDown:
            return  # the session's loop notices and reconnects; the flag will still be up
        if record is None or record.seq != seq or not record.flag:
            return  # the robot changed the record meanwhile: the next read sees the new one
        if isinstance(record.movement, str):
            self._refused(seq, record.movement)
            return
        future = self.driver.sink.movement(record.movement, cursors={self.cursor_key: seq})
        try:
            await asyncio.wrap_future(future)
        except Exception as exc:  # the outbox could not make it durable: retried next read
            self.driver.count_error("move_not_durable")
            log.error("%s: move seq %d not stored: %s", self.driver.name, seq, exc)
            return
        self.durable_seq = max(self.durable_seq or 0, seq)
        await write_ack(seq)

    def _refused(self, seq: int, reason: str) -> None:
        """Never booked half-right, never silently acked away: the robot waits, and the
        operator sees why (once per record)."""
        self.driver.count_error("bad_move")
        if self._refused_logged != seq:
            self._refused_logged = seq
            log.error("%s: move seq %d refused: %s", self.driver.name, seq, reason)
            self.driver.emit({"event": "move_refused", "seq": seq, "reason": reason})
