"""A fleet of simulated AMRs on an MQTT broker: each vehicle its own MQTT client with its
VDA 5050 last will (`connection` = CONNECTIONBROKEN, retained, QoS 1), an ONLINE message on
every connect, and one `state` message per step of its timeline (simulators/vda5050/vehicle.py).

Faults on demand (`control`): a schema-breaking state, an out-of-order headerId, and a
connection that breaks without a DISCONNECT, so that the broker publishes the will.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.vda5050.vehicle import Vehicle

log = logging.getLogger(__name__)


@dataclass
class SimulatedVehicle:
    """A Vehicle and its MQTT client."""

    vehicle: Vehicle
    topic: str  # interface/version/manufacturer/serial
    qos: int
    client: Any = None
    down_until: float = 0.0  # loop time until which the vehicle stays disconnected
    pending: list[str] = field(default_factory=list)  # faults to send with the next step

    def open(self, host: str, port: int) -> None:
        client = self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"vda5050-sim-{self.vehicle.serial}"
        )
        self._set_will()
        client.on_connect = self._on_connect
        client.connect(host, port, keepalive=10)
        client.loop_start()

    def _set_will(self) -> None:
        will = json.dumps(self.vehicle.connection("CONNECTIONBROKEN"))
        self.client.will_set(f"{self.topic}/connection", will, qos=1, retain=True)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self.publish("connection", self.vehicle.connection("ONLINE"), retain=True)

    def publish(self, subtopic: str, message: dict[str, Any], retain: bool = False) -> None:
        qos = 1 if subtopic == "connection" else self.qos
        self.client.publish(f"{self.topic}/{subtopic}", json.dumps(message), qos, retain)

    def step(self, hold: bool) -> None:
        """Send pending faults, then the next state (the same step again while held)."""
        for fault in self.pending:
            broken = self.vehicle.missing_fields() if fault == "missing_fields" else None
            self.publish("state", broken or self.vehicle.out_of_order())
        self.pending.clear()
        if not hold:
            self.vehicle.advance()
        self.publish("state", self.vehicle.state())

    def break_connection(self) -> None:
        """Drop the TCP connection without DISCONNECT: the broker sends the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def reconnect(self) -> None:
        self._set_will()  # with a headerId after the ONLINE that came before it
        self.client.reconnect()
        self.client.loop_start()

    def close(self) -> None:
        self.publish("connection", self.vehicle.connection("OFFLINE"), retain=True)
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Fleet:
    broker: str
    vehicles: list[SimulatedVehicle]
    step_s: float = 1.0
    hold: bool = False

    def start(self) -> None:
        url = urlsplit(self.broker)
        for v in self.vehicles:
            v.open(url.hostname or "127.0.0.1", url.port or 1883)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.step_s)
            for v in self.vehicles:
                if v.down_until and loop.time() >= v.down_until:
                    v.down_until = 0.0
                    v.reconnect()
                if not v.down_until:
                    v.step(self.hold)

    def stop(self) -> None:
        for v in self.vehicles:
            if not v.down_until:
                v.close()

    def control(self, command: dict[str, Any]) -> dict[str, Any]:
        """One control command (simulators/vda5050/cli.py lists them); its reply."""
        if command.get("status"):
            return {"ok": True, "vehicles": [self._status(v) for v in self.vehicles]}
        if "hold" in command:
            self.hold = bool(command["hold"])
            return {"ok": True, "hold": self.hold}
        fault = command.get("fault")
        targets = self._targets(command.get("vehicle"))
        if fault in ("missing_fields", "out_of_order"):
            for v in targets:
                v.pending.append(fault)
        elif fault == "connection_lost":
            down_s = float(command.get("down_s", 3.0))
            for v in targets:
                v.break_connection()
                v.down_until = asyncio.get_running_loop().time() + down_s
        else:
            raise ValueError(f"unknown command {command!r}")
        return {"ok": True, "fault": fault, "vehicles": [v.vehicle.serial for v in targets]}

    def _targets(self, serial: Any) -> list[SimulatedVehicle]:
        if serial is None:
            return self.vehicles
        chosen = [v for v in self.vehicles if v.vehicle.serial == serial]
        if not chosen:
            raise ValueError(f"no vehicle {serial!r}")
        return chosen

    @staticmethod
    def _status(v: SimulatedVehicle) -> dict[str, Any]:
        vehicle = v.vehicle
        return {
            "serial": vehicle.serial,
            "headers": dict(vehicle.headers),
            "orders": vehicle.orders_started,
            "connected": not v.down_until,
            "finished": list(vehicle.finished),
        }
