"""The PackML timeline (device.py) served by asyncua's own OPC UA server.

Nodes live in namespace `urn:fc-edge:simulator:packml` (index 2, the first one registered)
under an object `Packer`, with string ids `Packer.<Name>` and these types:

    Packer.State        Int32   PackML state code      Packer.MachineSpeed  Double  ppm
    Packer.StopReason   Int32   stop reason code       Packer.Alarms        UInt32  bits
    Packer.GoodCount    UInt32  good units             Packer.Heartbeat     UInt32  +1 a beat
    Packer.RejectCount  UInt32  rejected units

Written out here, not read from the driver's map code: a mistake in one cannot cancel itself
out in the other (drivers/maps/opcua/packml.toml is checked against this in tests).

Faults (`control`): `freeze` stops the timeline and the heartbeat; `stall` keeps the values
moving but serves them to reads only, so subscriptions hear nothing (a silently stalled
subscription); `bad_status` gives State a bad status code (BadDeviceFailure); `abort` jams
the machine now; `none` clears every fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asyncua import Server, ua

from simulators.opcua.device import PackMLTimeline

NAMESPACE = "urn:fc-edge:simulator:packml"
NODES: dict[str, ua.VariantType] = {
    "State": ua.VariantType.Int32,
    "StopReason": ua.VariantType.Int32,
    "GoodCount": ua.VariantType.UInt32,
    "RejectCount": ua.VariantType.UInt32,
    "MachineSpeed": ua.VariantType.Double,
    "Alarms": ua.VariantType.UInt32,
    "Heartbeat": ua.VariantType.UInt32,
}
FAULTS = ("none", "freeze", "stall", "bad_status", "abort")
_TICK_S = 0.05

# asyncua's server logs each client that goes away at WARNING with a traceback; a simulator
# whose clients are killed on purpose would flood stderr.
logging.getLogger("asyncua.server").setLevel(logging.ERROR)


class PackMLServer:
    """One PackML machine on one OPC UA endpoint. `start()` returns the bound (host, port)."""

    def __init__(self, machine: PackMLTimeline, host: str = "127.0.0.1", port: int = 0) -> None:
        self.machine = machine
        self.host, self.port = host, port
        self.server = Server()
        self.nodes: dict[str, Any] = {}
        self.stall = False
        self.bad_status = False
        self._sent: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        await self.server.init()
        self.server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        self.server.set_server_name("fc-edge PackML simulator")
        idx = await self.server.register_namespace(NAMESPACE)
        packer = await self.server.nodes.objects.add_object(
            ua.NodeId(ua.String("Packer"), ua.Int16(idx)), "Packer"
        )
        for name, vtype in NODES.items():
            initial = ua.Variant(self.machine.values()[name], vtype)
            self.nodes[name] = await packer.add_variable(
                ua.NodeId(ua.String(f"Packer.{name}"), ua.Int16(idx)), name, initial
            )
        await self.server.start()
        assert self.server.bserver is not None
        self.port = self.server.bserver.port  # the bound one, when asked for port 0
        self._task = asyncio.create_task(self._run())
        return self.host, self.port

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.server.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.machine.tick(loop.time())
            await self._publish()
            await asyncio.sleep(_TICK_S)

    async def _publish(self) -> None:
        for name, value in self.machine.values().items():
            bad = self.bad_status and name == "State"
            key = (value, bad, self.stall)
            if self._sent.get(name) == key:
                continue
            self._sent[name] = key
            await self._write(name, value, bad)

    async def _write(self, name: str, value: Any, bad: bool) -> None:
        node = self.nodes[name]
        dv = ua.DataValue(ua.Variant(value, NODES[name]))
        if bad:
            dv = ua.DataValue(StatusCode=ua.StatusCode(ua.UInt32(ua.StatusCodes.BadDeviceFailure)))
        if self.stall:
            # Served to reads through a value callback, which (unlike a write) notifies no
            # monitored item: what a silently stalled subscription looks like from the client.
            def serve(
                _node: ua.NodeId, _attr: ua.AttributeIds, dv: ua.DataValue = dv
            ) -> ua.DataValue:
                return dv

            self.server.iserver.aspace.set_attribute_value_callback(
                node.nodeid, ua.AttributeIds.Value, serve
            )
            return
        await self.server.write_attribute_value(node.nodeid, dv)

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """Apply one command ({"fault": ...} or {"status": true}); returns the reply."""
        if "fault" in command:
            fault = command["fault"]
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
            self._apply_fault(fault)
            return {"ok": True, "fault": fault}
        if command.get("status"):
            return {"ok": True, "status": self.status()}
        raise ValueError('expected {"fault": ...} or {"status": true}')

    def _apply_fault(self, fault: str) -> None:
        if fault == "abort":
            self.machine.abort()
            return
        if fault == "none":
            self.machine.frozen = self.stall = self.bad_status = False
            self._sent.clear()  # write every value again: a stall's values reach subscribers
            return
        self.machine.frozen = self.machine.frozen or fault == "freeze"
        self.stall = self.stall or fault == "stall"
        self.bad_status = self.bad_status or fault == "bad_status"

    def status(self) -> dict[str, Any]:
        return {
            "values": self.machine.values(),
            "frozen": self.machine.frozen,
            "stall": self.stall,
            "bad_status": self.bad_status,
        }
