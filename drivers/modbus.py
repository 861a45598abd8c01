"""Modbus TCP/RTU equipment driver: PLC and robot-cell status, alarms, counters, robot moves.

One driver instance polls one device (its own asyncio task, so a slow or dead device never
delays another) through pymodbus 3.16's async client, following a register map
(drivers/modbus_map.py, drivers/maps/*.toml). It reports to the sink:

- equipment events (`DeviceEvent(kind="equipment")`), on change only, plus a full status every
  `status_interval_s`; the `data` shapes are documented in docs/equipment.md;
- robot moves (`sink.movement`) from the map's move handshake, acknowledged to the robot only
  once the sink says the movement and its cursor are durable;
- device state (`set_state`): connecting -> up, up <-> unreachable, up <-> stale, each
  transition once, with one log line (no flood while a device stays down).

Reconnects are `Driver.run`'s loop: connect() opens the client and polls once (a device that
answers is "connected"), serve() polls on at `interval_s`, close() closes the client.

Exception responses, timeouts and garbage are counted per device (`count_error`) and never
end the task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from drivers.base import Sink
from drivers.equipment import (
    DeviceDown,
    EquipmentDriver,
    MoveHandshake,
    MoveRecord,
    robot_movement,
)
from drivers.modbus_map import (
    BIT_KINDS,
    DecodeError,
    Point,
    ReadBlock,
    RegisterMap,
    decode,
    encode_register_value,
    load_map,
    plan_reads,
    raw_value,
)
from drivers.options import ModbusOptions
from drivers.runtime import Backoff, raise_if_cancel_swallowed
from gateway.model import Movement, now_us

log = logging.getLogger(__name__)

# pymodbus logs every timeout and lost connection at ERROR; with a dead PLC polled every second
# that is a log flood. This driver logs each transition once itself, so pymodbus is quietened
# unless the operator configured its logger explicitly.
_pymodbus_log = logging.getLogger("pymodbus")
if _pymodbus_log.level == logging.NOTSET:
    _pymodbus_log.setLevel(logging.CRITICAL)


__all__ = ["DeviceDown", "ModbusDriver"]


class ModbusDriver(EquipmentDriver):
    Options = ModbusOptions

    def __init__(self, device: Any, sink: Sink) -> None:
        super().__init__(device, sink)
        self.options: ModbusOptions = device.options
        # A bad map is a configuration error: raised here (MapError) so start-up fails loudly.
        self.map: RegisterMap = load_map(device.resolve(self.options.map))
        self.blocks = plan_reads(list(self.map.points.values()), self.options.max_gap)
        hs_points = [self.map.points[n] for n in sorted(self.map.handshake_points)]
        self.record_blocks = plan_reads(hs_points, self.options.max_gap)
        self.cursor_key = f"modbus:{self.name}:ack_seq"
        self.moves = MoveHandshake(self, self.cursor_key)
        self.polls = 0  # completed polls (good or partly good), for health and tests
        self.requests = 0  # read requests sent
        self._raw: dict[str, Sequence[Any]] = {}  # last raw words per point
        self._heartbeat: Any = None
        self._first_poll = True
        self._exception_streak = False
        self._client: Any = None  # the open pymodbus client, from connect() to close()
        self._first_poll_at = 0.0  # loop time of this connection's first poll

    # --- the reconnect loop's steps (the loop itself is Driver.run) --------------------------

    def make_backoff(self) -> Backoff:
        o = self.options
        return Backoff(initial_s=min(1.0, o.interval_s), cap_s=o.reconnect_max_s)

    async def connect(self) -> None:
        """Open the client and poll once: a device that answers is connected."""
        client = self._client = self._make_client()
        await self._connect(client)
        self._first_poll_at = asyncio.get_running_loop().time()
        await self._poll_once(client)

    async def serve(self) -> None:
        """Poll every interval_s (the first poll was connect()'s) until a poll fails."""
        client = self._client
        assert client is not None  # connect() made it
        loop = asyncio.get_running_loop()
        next_poll = self._first_poll_at
        while True:
            next_poll += self.options.interval_s
            now = loop.time()
            if next_poll < now:  # a slow round: skip the missed ticks rather than burst
                next_poll = now
            await asyncio.sleep(next_poll - now)
            await self._poll_once(client)
            raise_if_cancel_swallowed()  # (pymodbus' wait_for may have eaten the daemon's stop)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _make_client(self) -> Any:
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        o = self.options
        # retries=0 and reconnect_delay=0: this driver owns retries and reconnects (Backoff),
        # so a dead device costs one timeout per attempt, never retries+1.
        if o.serial is not None:
            return AsyncModbusSerialClient(
                o.serial,
                baudrate=o.baudrate,
                parity=o.parity,
                timeout=o.timeout_s,
                retries=0,
                reconnect_delay=0,
                name=self.name,
            )
        assert o.host is not None
        return AsyncModbusTcpClient(
            o.host, port=o.port, timeout=o.timeout_s, retries=0, reconnect_delay=0, name=self.name
        )

    async def _connect(self, client: Any) -> None:
        try:
            # (asyncio.timeout: 3.11's wait_for can swallow a cancellation that arrives as the
            # connection completes, and the driver would poll on after being stopped.)
            async with asyncio.timeout(self.options.timeout_s * 2 + 1):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            raise DeviceDown("refused", f"cannot connect: {exc}") from None
        if not ok:
            where = self.options.serial or f"{self.options.host}:{self.options.port}"
            raise DeviceDown("refused", f"cannot connect to {where}")

    # --- one poll ---------------------------------------------------------------------------

    async def _poll_once(self, client: Any) -> None:
        snapshot = await self._read_blocks(client, self.blocks)
        time_us = now_us()
        self.polls += 1
        if snapshot:
            self.mark_data(time_us)
        self._raw.update(snapshot)
        self.report_recovered_from("unreachable")
        if self._first_poll:
            self._first_poll = False
            self.set_state("up")
            log.info(
                "%s: polling %s (%d requests per poll)", self.name, self.where(), len(self.blocks)
            )
        self.process(snapshot, time_us)
        if self.map.handshake is not None:
            await self._handshake(client, snapshot)
        if self.status_due():
            self.emit_status(time_us, polls=self.polls)

    async def _read_blocks(
        self, client: Any, blocks: Sequence[ReadBlock]
    ) -> dict[str, Sequence[Any]]:
        """Read each block; returns raw words per point of the blocks that answered."""
        out: dict[str, Sequence[Any]] = {}
        exception_codes: list[int] = []
        for block in blocks:
            values = await self._read_block(client, block, exception_codes)
            if values is None:
                continue
            for p in block.points:
                out[p.name] = block.slice_for(p, values)
        self._note_exceptions(exception_codes)
        return out

    async def _read_block(
        self, client: Any, block: ReadBlock, exception_codes: list[int]
    ) -> Sequence[Any] | None:
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        read = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[block.kind]
        self.requests += 1
        try:
            response = await read(
                block.address, count=block.count, device_id=self.options.device_id
            )
        except ConnectionException as exc:
            raise DeviceDown("disconnected", str(exc)) from None
        except ModbusIOException as exc:
            raise DeviceDown(
                "timeout", f"no answer to a read of {block.kind} {block.address}"
            ) from exc
        except (ModbusException, OSError, TimeoutError) as exc:
            raise DeviceDown("disconnected", f"{type(exc).__name__}: {exc}") from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0) or 0)
            self.count_error(f"exception_{code}")
            exception_codes.append(code)
            return None
        values: Sequence[Any] = response.bits if block.kind in BIT_KINDS else response.registers
        if len(values) < block.count:
            self.count_error("garbage")
            return None
        return values[: block.count]

    def _note_exceptions(self, codes: list[int]) -> None:
        """Log exception answers once per streak, not once per poll."""
        if codes and not self._exception_streak:
            log.warning(
                "%s: device answers with exception code(s) %s", self.name, sorted(set(codes))
            )
        elif not codes and self._exception_streak:
            log.info("%s: device answers normally again", self.name)
        self._exception_streak = bool(codes)

    # --- change detection -------------------------------------------------------------------

    def process(self, snapshot: Mapping[str, Sequence[Any]], time_us: int) -> None:
        """Turn one poll's raw words (point name -> words or bits) into change events and
        heartbeat bookkeeping. Pure of I/O; garbage is counted, never raised."""
        self._apply(snapshot, time_us)
        self._check_heartbeat(snapshot)

    def _apply(self, snapshot: Mapping[str, Sequence[Any]], time_us: int) -> None:
        for name, point in self.map.status_points().items():
            raw = snapshot.get(name)
            if raw is None:
                continue
            try:
                value = decode(point, raw)
            except DecodeError as exc:
                self.count_error("garbage")
                log.debug("%s: %s", self.name, exc)
                continue
            role = point.effective_role
            if role == "state":
                self._on_state(point, value, raw, time_us)
            elif role == "alarms":
                self._on_alarms(point, value, time_us)
            elif role == "counter":
                self._on_counter(point, raw, time_us)
            self._values[name] = self._display(point, value, raw)

    def _display(self, point: Point, value: Any, raw: Sequence[Any]) -> Any:
        if point.enum is not None:
            code = raw_value(point, raw)
            name = point.enum.get(code) if code is not None else None
            return name if name is not None else f"unknown({code})"
        return value

    def _on_state(self, point: Point, value: Any, raw: Sequence[Any], time_us: int) -> None:
        shown = self._display(point, value, raw)
        if point.enum is not None and shown.startswith("unknown("):
            self.count_error("unknown_enum")
        code = raw_value(point, raw) if point.enum is not None else None
        self.state_changed(point.name, shown, code, point.enum is not None, time_us)

    def _on_alarms(self, point: Point, value: Any, time_us: int) -> None:
        self.alarms_changed(point.name, self._active_alarms(point, value), time_us)

    @staticmethod
    def _active_alarms(point: Point, value: Any) -> frozenset[str]:
        if point.type == "bool":
            return frozenset({point.name}) if value else frozenset()
        bits = point.bits or {}
        width = 16 * (point.length or 1)
        # A set bit the map does not name is still an alarm: reported as bitN, never dropped.
        return frozenset(
            bits.get(bit, f"bit{bit}") for bit in range(width) if int(value) >> bit & 1
        )

    def _on_counter(self, point: Point, raw: Sequence[Any], time_us: int) -> None:
        total = raw_value(point, raw)
        if total is not None:
            self.counter_changed(point.name, total, point.modulus, point.unit, time_us)

    # --- reachability and heartbeat ---------------------------------------------------------

    def where(self) -> str:
        o = self.options
        return (
            f"{o.serial} (RTU, id {o.device_id})"
            if o.serial
            else f"{o.host}:{o.port} (id {o.device_id})"
        )

    def _check_heartbeat(self, snapshot: Mapping[str, Sequence[Any]]) -> None:
        point = self.map.heartbeat
        if point is None:
            return
        raw = snapshot.get(point.name)
        if raw is not None:
            value = list(raw)
            if self._heartbeat is None or value != self._heartbeat:
                first = self._heartbeat is None
                self._heartbeat = value
                self.heartbeat_changed(first)
                return
        self.check_stale(point.name)

    # --- robot move handshake ---------------------------------------------------------------

    async def _handshake(self, client: Any, snapshot: Mapping[str, Sequence[Any]]) -> None:
        hs = self.map.handshake
        assert hs is not None

        async def read_record() -> MoveRecord:
            record = await self._read_blocks(client, self.record_blocks)
            seq, flag = self._int(hs.seq, record), bool(self._int(hs.flag, record))
            return MoveRecord(seq, flag, self._movement(record))

        flag, seq, ack = (self._int(n, snapshot) for n in (hs.flag, hs.seq, hs.ack))
        await self.moves.seen(
            bool(flag), seq, ack, read_record, lambda s: self._write_ack(client, s)
        )

    def _int(self, name: str, snapshot: Mapping[str, Sequence[Any]]) -> int | None:
        raw = snapshot.get(name)
        return None if raw is None else raw_value(self.map.points[name], raw)

    def _movement(self, record: Mapping[str, Sequence[Any]]) -> Movement | str:
        """The movement a record describes, or why it cannot be one."""
        hs = self.map.handshake
        assert hs is not None
        try:
            epc = self._text(hs.epc, record)
            tote = self._text(hs.tote, record)
            from_code = self._int(hs.from_station, record)
            to_code = self._int(hs.to_station, record)
        except DecodeError as exc:
            return f"garbage in the record: {exc}"
        return robot_movement(self.name, self.options.stations, epc, tote, from_code, to_code)

    def _text(self, name: str | None, record: Mapping[str, Sequence[Any]]) -> str | None:
        if name is None or name not in record:
            return None
        value = decode(self.map.points[name], record[name])
        return str(value) or None

    async def _write_ack(self, client: Any, seq: int) -> None:
        from pymodbus.exceptions import ModbusException

        hs = self.map.handshake
        assert hs is not None
        point = self.map.points[hs.ack]
        try:
            words = encode_register_value(point, seq)
        except ValueError:
            self.count_error("bad_move")
            return
        try:
            response = await client.write_registers(
                point.address, words, device_id=self.options.device_id
            )
        except (ModbusException, OSError, TimeoutError):
            self.count_error("ack_failed")  # retried by the next poll that sees the flag up
            return
        if response.isError():
            self.count_error(f"exception_{int(getattr(response, 'exception_code', 0) or 0)}")
            return
        log.debug("%s: acked move seq %d", self.name, seq)
