"""A scripted device on pymodbus's own server, with faults switchable at run time.

Uses the `pymodbus.simulator` data model (SimDevice/SimData; no deprecated datastore and no
off-by-one): four separate tables spanning the device's whole image, and an `action` hook
that copies the device's register image into pymodbus's memory before every read and hands
every write to the device. Faults:

- exception: every request is answered with a Modbus exception code (e.g. 6, device busy);
- no_answer: requests are received and silently dropped (the client times out);
- garbage: responses are replaced by random bytes;
- disconnect: every open client connection is closed (one shot);
- freeze: the script and the heartbeat stop (the device answers, but nothing changes).

`SimulatorThread` runs one on its own event loop in a thread, for tests and the CLI alike;
every public method is safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.modbus.devices import SimulatedDevice, Table

T = TypeVar("T")

# Function code -> table, as the Modbus spec assigns them.
_FC_TABLE: dict[int, Table] = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input"}
_FC_TABLE.update({fc: "holding" for fc in (3, 6, 16, 22, 23)})


@dataclass
class Faults:
    exception: int | None = None
    no_answer: bool = False
    garbage: bool = False
    freeze: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "exception": self.exception,
            "no_answer": self.no_answer,
            "garbage": self.garbage,
            "freeze": self.freeze,
        }


class SimulatorServer:
    """Serve one SimulatedDevice over Modbus TCP (host/port) or RTU (serial path)."""

    def __init__(
        self,
        device: SimulatedDevice,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial: str | None = None,
        baudrate: int = 19200,
        device_id: int = 1,
        step_s: float = 0.05,
    ) -> None:
        self.device = device
        self.host = host
        self.port = port
        self.serial = serial
        self.baudrate = baudrate
        self.device_id = device_id
        self.step_s = step_s
        self.faults = Faults()
        self.requests = 0  # requests that reached the device
        self.requests_by_fc: dict[int, int] = {}
        self._server: Any = None
        self._ticker: asyncio.Task[None] | None = None

    def _sim_device(self) -> SimDevice:
        img = self.device.image
        registers, bits = len(img.holding), len(img.coil)
        return SimDevice(
            id=self.device_id,
            simdata=(
                [SimData(0, values=[False] * bits, datatype=DataType.BITS)],
                [SimData(0, values=[False] * bits, datatype=DataType.BITS)],
                [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def start(self) -> tuple[str, int]:
        if self.serial is not None:
            self._server = ModbusSerialServer(
                self._sim_device(),
                port=self.serial,
                baudrate=self.baudrate,
                trace_packet=self._trace_packet,
            )
        else:
            self._server = ModbusTcpServer(
                self._sim_device(),
                address=(self.host, self.port),
                trace_packet=self._trace_packet,
            )
        await self._server.serve_forever(background=True)
        if self.serial is None:
            self.port = int(self._server.transport.sockets[0].getsockname()[1])
        self._ticker = asyncio.create_task(self._tick_forever())
        return self.host, self.port

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            await self._server.shutdown()

    async def _tick_forever(self) -> None:
        while True:
            if not self.faults.freeze:
                self.device.tick(time.monotonic())
            await asyncio.sleep(self.step_s)

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this on every request, with its memory of the addressed table."""
        self.requests += 1
        self.requests_by_fc[function_code] = self.requests_by_fc.get(function_code, 0) + 1
        if self.faults.exception is not None:
            return ExcCodes(self.faults.exception)
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if set_values is not None:
            self.device.write(table, address, list(set_values))
            return None
        self._fill(table, start_address, registers)
        return None

    def _fill(self, table: Table, start_address: int, registers: list[int]) -> None:
        img = self.device.image
        if table in ("holding", "input"):
            words = img.words(table)
            for i in range(min(len(registers), len(words) - start_address)):
                registers[i] = words[start_address + i]
            return
        # Bit tables: pymodbus packs 16 bits per word, bit 0 of a word = lowest address.
        bits = img.bits(table)
        for i in range(len(registers)):
            base = (start_address + i) * 16
            chunk = bits[base : base + 16]
            if not chunk:
                break
            registers[i] = sum(1 << n for n, on in enumerate(chunk) if on)

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        if self.faults.no_answer:
            return b""  # nothing is written: the client waits for its timeout
        if self.faults.garbage:
            return os.urandom(max(len(data), 4))
        return data

    def disconnect(self) -> int:
        """Close every open client connection (TCP). Returns how many were closed."""
        if self._server is None or self.serial is not None:
            return 0
        connections = list(self._server.active_connections.values())
        for connection in connections:
            connection.close()
        return len(connections)

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """One JSON control command (the CLI reads them from stdin). Returns a reply."""
        fault = command.get("fault")
        if fault == "exception":
            code = int(command.get("code", ExcCodes.DEVICE_BUSY))
            ExcCodes(code)  # ValueError on a code Modbus does not define
            self.faults.exception = code
        elif fault == "no_answer":
            self.faults.no_answer = bool(command.get("on", True))
        elif fault == "garbage":
            self.faults.garbage = bool(command.get("on", True))
        elif fault == "freeze":
            self.faults.freeze = bool(command.get("on", True))
        elif fault == "disconnect":
            return {"ok": True, "closed": self.disconnect()}
        elif fault in ("none", "clear"):
            self.faults = Faults()
        elif "status" in command:
            return {"ok": True, "status": self.status()}
        else:
            raise ValueError(f"unknown command {command!r}")
        return {"ok": True, "faults": self.faults.to_json()}

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.device.name,
            "requests": self.requests,
            "faults": self.faults.to_json(),
        }
        acked = getattr(self.device, "acked", None)
        if acked is not None:
            out["acked"] = list(acked)
        return out


class SimulatorThread:
    """A SimulatorServer on its own event loop in a daemon thread."""

    def __init__(self, server: SimulatorServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name=f"modbus-sim-{server.device.name}", daemon=True
        )

    @property
    def device(self) -> SimulatedDevice:
        return self.server.device

    def start(self) -> tuple[str, int]:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn on the simulator's loop (device state is only touched there) and wait."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(10)

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.call(lambda: self.server.control(command))

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
