"""Simulated devices (device.py) served by asyncua's own OPC UA server.

Each device's nodes live in namespace `urn:fc-edge:simulator:{device}` (index 2, the first
one registered) under one object, with string ids `{Object}.{Name}`; the device says their
names and types (device.py: PackMLTimeline.NODES, RobotCell.NODES). They are written out
there, not read from the driver's map code: a mistake in one cannot cancel itself out in the
other (drivers/maps/opcua/*.toml are checked against them in tests).

Faults (`control`): `freeze` stops the timeline and the heartbeat; `stall` keeps the values
moving but serves them to reads only, so subscriptions hear nothing (a silently stalled
subscription); `bad_status` gives the first node a bad status code (BadDeviceFailure);
`abort` jams a PackML machine now; `none` clears every fault. A client's write to a writable
node (the robot's MoveAck) reaches the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from asyncua import Server, ua

from simulators.opcua.device import SimulatedDevice

FAULTS = ("none", "freeze", "stall", "bad_status", "abort")
_TICK_S = 0.05

# asyncua's server logs each client that goes away at WARNING with a traceback; a simulator
# whose clients are killed on purpose would flood stderr.
logging.getLogger("asyncua.server").setLevel(logging.ERROR)


class DeviceServer:
    """One simulated device on one OPC UA endpoint. `start()` returns the bound (host, port)."""

    def __init__(self, device: SimulatedDevice, host: str = "127.0.0.1", port: int = 0) -> None:
        self.device = device
        self.host, self.port = host, port
        self.server = Server()
        self.nodes: dict[str, Any] = {}
        self.stall = False
        self.bad_status = False
        self._sent: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        device = self.device
        await self.server.init()
        self.server.set_endpoint(f"opc.tcp://{self.host}:{self.port}/")
        self.server.set_server_name(f"fc-edge {device.kind} simulator")
        idx = ua.Int16(await self.server.register_namespace(f"urn:fc-edge:simulator:{device.kind}"))
        root = device.object_name
        obj = await self.server.nodes.objects.add_object(ua.NodeId(ua.String(root), idx), root)
        for name, vtype in device.NODES.items():
            initial = ua.Variant(device.values()[name], vtype)
            node_id = ua.NodeId(ua.String(f"{root}.{name}"), idx)
            self.nodes[name] = node = await obj.add_variable(node_id, name, initial)
            if name in device.WRITABLE:
                await node.set_writable()
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
            await self._take_writes(loop.time())
            self.device.tick(loop.time())
            await self._publish()
            await asyncio.sleep(_TICK_S)

    async def _take_writes(self, now: float) -> None:
        """A writable node whose value is not what we served was written by a client."""
        for name in self.device.WRITABLE:
            value = await self.nodes[name].read_value()
            if value != self.device.values()[name]:
                self.device.written(name, value, now)

    async def _publish(self) -> None:
        first = next(iter(self.device.NODES))
        for name, value in self.device.values().items():
            bad = self.bad_status and name == first
            key = (value, bad, self.stall)
            if self._sent.get(name) == key:
                continue
            self._sent[name] = key
            await self._write(name, value, bad)

    async def _write(self, name: str, value: Any, bad: bool) -> None:
        node = self.nodes[name]
        dv = ua.DataValue(ua.Variant(value, self.device.NODES[name]))
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
            self.device.abort()
            return
        if fault == "none":
            self.device.frozen = self.stall = self.bad_status = False
            self._sent.clear()  # write every value again: a stall's values reach subscribers
            return
        self.device.frozen = self.device.frozen or fault == "freeze"
        self.stall = self.stall or fault == "stall"
        self.bad_status = self.bad_status or fault == "bad_status"

    def status(self) -> dict[str, Any]:
        return {
            "values": self.device.values(),
            "frozen": self.device.frozen,
            **self.device.extra_status(),
            "stall": self.stall,
            "bad_status": self.bad_status,
        }
