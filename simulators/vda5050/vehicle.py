"""One simulated AMR's VDA 5050 v2 messages: its own message builder (it shares nothing with
drivers/vda5050*.py, so a misreading of the standard on one side is caught by the other).

The vehicle runs one transport order after another: drive to a rack node, pick a tote, drive
to a pack node, drop it. Each step is one `state` message; a finished action stays in every
later state until the next order replaces the action list (as VDA 5050 requires), and the
loadId it handled is the action's resultDescription (the identity the vehicle read).
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

VERSION = "2.1.0"
RACKS = ("rack-01", "rack-02", "rack-03", "rack-04")
PACKS = ("pack-01", "pack-02")
# Steps of one order: (phase, driving, the node reached, pick status, drop status).
STEPS = (
    ("to_pick", True, "previous", "WAITING", "WAITING"),
    ("at_pick", False, "pick", "RUNNING", "WAITING"),
    ("picked", False, "pick", "FINISHED", "WAITING"),
    ("to_drop", True, "pick", "FINISHED", "WAITING"),
    ("at_drop", False, "drop", "FINISHED", "RUNNING"),
    ("dropped", False, "drop", "FINISHED", "FINISHED"),
)
SGTIN_PREFIX = "30340242201D8840"  # an SGTIN-96 header, company and item; the serial varies


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Order:
    number: int
    order_id: str
    pick_node: str
    drop_node: str
    load_id: str


@dataclass
class Vehicle:
    """The vehicle's timeline and message headers. `index` (from 1) varies its routes."""

    serial: str
    manufacturer: str
    index: int
    racks: tuple[str, ...] = RACKS
    packs: tuple[str, ...] = PACKS
    headers: dict[str, int] = field(default_factory=lambda: {"state": 0, "connection": 0})
    step: int = -1  # index into STEPS; -1 before the first order
    order: Order | None = None
    orders_started: int = 0
    last_node: str = "charger"
    battery: float = 100.0
    finished: list[dict[str, str]] = field(default_factory=list)  # load actions published
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))

    def next_header(self, topic: str) -> int:
        self.headers[topic] += 1
        return self.headers[topic]

    def advance(self) -> None:
        """One step of the timeline (a new order after a drop)."""
        self.step += 1
        if self.order is None or self.step >= len(STEPS):
            self.order = self._new_order()
            self.step = 0
        phase, driving, at, *_ = STEPS[self.step]
        if at != "previous":
            self.last_node = self.order.pick_node if at == "pick" else self.order.drop_node
        self.battery = max(5.0, self.battery - (0.4 if driving else 0.1))
        if phase in ("picked", "dropped"):
            action = "pick" if phase == "picked" else "drop"
            self.finished.append(
                {"load": self.order.load_id, "action": action, "node": self.last_node}
            )

    def _new_order(self) -> Order:
        self.orders_started += 1
        k = self.orders_started
        if k % 3 == 0:  # every third load carries an RFID tag: its loadId is the EPC
            load = f"{SGTIN_PREFIX}{self.index:02X}{k:06X}"
        else:
            load = f"TOTE-{self.serial}-{k:05d}"
        pick = self.racks[(k + self.index) % len(self.racks)]
        drop = self.packs[(k + self.index) % len(self.packs)]
        return Order(k, f"order-{self.serial}-{k}", pick, drop, load)

    # --- messages -----------------------------------------------------------------------------

    def header(self, topic: str) -> dict[str, Any]:
        return {
            "headerId": self.next_header(topic),
            "timestamp": timestamp(),
            "version": VERSION,
            "manufacturer": self.manufacturer,
            "serialNumber": self.serial,
        }

    def connection(self, state: str) -> dict[str, Any]:
        return {**self.header("connection"), "connectionState": state}

    def state(self) -> dict[str, Any]:
        """The state message of the current step (a new headerId each time)."""
        order = self.order
        phase, driving, _, pick, drop = STEPS[max(self.step, 0)] if order else STEPS[0]
        message = {
            **self.header("state"),
            "orderId": order.order_id if order else "",
            "orderUpdateId": 0,
            "lastNodeId": self.last_node,
            "lastNodeSequenceId": 2 * max(self.step, 0),
            "driving": driving,
            "paused": False,
            "operatingMode": "AUTOMATIC",
            "nodeStates": [],
            "edgeStates": [],
            "actionStates": self._actions(order, pick, drop) if order else [],
            "loads": self._loads(order, phase),
            "batteryState": {"batteryCharge": round(self.battery, 1), "charging": False},
            "errors": self._errors(order, phase),
            "safetyState": {"eStop": "NONE", "fieldViolation": False},
        }
        self.recent.append(copy.deepcopy(message))
        return message

    def _actions(self, order: Order, pick: str, drop: str) -> list[dict[str, Any]]:
        actions = []
        for kind, status in (("pick", pick), ("drop", drop)):
            action: dict[str, Any] = {
                "actionId": f"{order.order_id}-{kind}",
                "actionType": kind,
                "actionStatus": status,
            }
            if status == "FINISHED":
                action["resultDescription"] = order.load_id
            actions.append(action)
        return actions

    def _loads(self, order: Order | None, phase: str) -> list[dict[str, Any]]:
        carrying = order is not None and phase in ("picked", "to_drop", "at_drop")
        return [{"loadId": order.load_id, "loadType": "tote"}] if carrying and order else []

    def _errors(self, order: Order | None, phase: str) -> list[dict[str, Any]]:
        # Every fourth order meets an obstacle on its way to the drop: a warning, cleared there.
        if order is not None and order.number % 4 == 0 and phase == "to_drop":
            return [{"errorType": "obstacleDetected", "errorLevel": "WARNING"}]
        return []

    # --- faults -------------------------------------------------------------------------------

    def missing_fields(self) -> dict[str, Any]:
        """A state without `driving` and `batteryState` (required): breaks the schema."""
        message = self.state()
        del message["driving"], message["batteryState"]
        return message

    def out_of_order(self) -> dict[str, Any]:
        """An older state sent again, with its old headerId (as a buggy queue would)."""
        return copy.deepcopy(self.recent[0]) if self.recent else self.state()
