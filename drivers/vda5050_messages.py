"""What the VDA 5050 observer makes of a vehicle's messages, without MQTT: schema checks, the
headerId order, and which finished pick/drop actions are load moves still to book.

Kept apart from drivers/vda5050.py (the MQTT session) so that each rule here is testable on
plain dicts, and so the exactly-once bookkeeping reads in one place (docs/equipment.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any

from drivers.equipment import robot_movement
from gateway.model import Movement, now_us

#: Finished pick/drop actions remembered per vehicle as booked (the cursor ring's size). A
#: vehicle repeats an order's finished actions in every state until the next order, so this
#: must exceed the pick/drop actions one order holds.
BOOKED_RING = 256
#: An EPC loadId: hex of a whole number of 16-bit words, at least 96 bits (a tote id like
#: "TOTE-0001" or a short number is an object id, never mistaken for an EPC).
_EPC = re.compile(r"(?:[0-9A-Fa-f]{4}){6,}")
LOAD_ACTIONS = ("pick", "drop")


@cache
def validator(kind: str) -> Any:
    """The compiled validator of the official schema `kind` ("state", "connection"): built
    once per process, as compiling costs far more than validating."""
    import jsonschema

    text = files("drivers").joinpath("schemas", "vda5050", f"{kind}.schema").read_text()
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


class Invalid(ValueError):
    """A message that is not JSON, breaks its schema or names another vehicle."""


def parse(kind: str, payload: bytes, manufacturer: str, serial: str) -> dict[str, Any]:
    """The message as a dict, or Invalid saying why (the first schema error is enough)."""
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"not JSON: {exc}") from None
    error = next(iter(validator(kind).iter_errors(message)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        raise Invalid(f"{where}: {error.message}")
    if (message["manufacturer"], message["serialNumber"]) != (manufacturer, serial):
        raise Invalid(f"names vehicle {message['manufacturer']}/{message['serialNumber']}")
    return dict(message)


class HeaderOrder:
    """headerId per topic goes up by one per message sent. One at or below the last one is out
    of order, except after the vehicle (re)connected: a rebooted vehicle starts again at 0."""

    def __init__(self, last: int | None = None) -> None:
        self.last = last
        self.restarted = last is None

    def reconnected(self) -> None:
        self.restarted = True

    def accept(self, header_id: int) -> bool:
        """Whether `header_id` is newer than the last accepted (then it becomes the last)."""
        if self.restarted or self.last is None or header_id > self.last:
            self.last = header_id
            self.restarted = False
            return True
        return False


def action_key(order_id: str, action_id: str) -> int:
    """A 63-bit key for one action of one order: an SQLite integer cursor value. actionIds
    are meant to be unique, but a master control may reuse them across orders."""
    digest = hashlib.blake2b(f"{order_id}\0{action_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True, slots=True)
class LoadAction:
    """A finished pick or drop the state reports, and what it means."""

    key: int  # action_key(orderId, actionId)
    action_id: str
    action_type: str
    movement: Movement | str  # or why it cannot be one


def finished_load_actions(
    state: Mapping[str, Any], device: str, vehicle_location: str, nodes: Mapping[str, str]
) -> list[LoadAction]:
    """Every finished pick/drop in this state (booked or not: the caller's cursor decides)."""
    found = []
    for action in state["actionStates"]:
        kind = str(action.get("actionType", "")).lower()
        if action["actionStatus"] != "FINISHED" or kind not in LOAD_ACTIONS:
            continue
        key = action_key(state["orderId"], action["actionId"])
        move = load_movement(state, kind, action, device, vehicle_location, nodes)
        found.append(LoadAction(key, action["actionId"], kind, move))
    return found


def load_movement(
    state: Mapping[str, Any],
    kind: str,
    action: Mapping[str, Any],
    device: str,
    vehicle_location: str,
    nodes: Mapping[str, str],
) -> Movement | str:
    """A pick moves the load from its node onto the vehicle, a drop from the vehicle to its
    node. The node is the state's lastNodeId: a pick or drop is a blocking node action, so the
    vehicle stands there when it finishes. The loadId is the action's resultDescription (the
    identity the vehicle read, "e.g. the result of an RFID reading" in VDA 5050 6.10.6)."""
    node = state["lastNodeId"]
    if node not in nodes:
        return f"node {node!r} has no location in nodes"
    load_id = str(action.get("resultDescription", "")).strip()
    if not load_id:
        return f"{kind} {action['actionId']!r} reports no loadId in resultDescription"
    epc = load_id if _EPC.fullmatch(load_id) else None
    places = {"node": nodes[node], "vehicle": vehicle_location}
    ends = ("node", "vehicle") if kind == "pick" else ("vehicle", "node")
    move = robot_movement(device, places, epc, None if epc else load_id, *ends)
    if isinstance(move, str):
        return move
    return dataclasses.replace(move, time_us=message_time_us(state))


def message_time_us(message: Mapping[str, Any]) -> int:
    """The vehicle's timestamp (when it happened, also for a message redelivered after a
    restart); the gateway clock if it cannot be read."""
    try:
        stamp = datetime.fromisoformat(str(message["timestamp"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return now_us()
    if stamp.tzinfo is None:
        return now_us()
    return int(stamp.timestamp() * 1_000_000)


class BookedActions:
    """The finished load actions booked for one vehicle, as outbox cursors: `{base}:n` counts
    them, `{base}:{i}` (i = n mod BOOKED_RING) holds each one's action_key. A movement and the
    cursor that says it is booked commit in one transaction; so after any crash the ring says
    exactly which repeated or redelivered actions are booked already."""

    def __init__(self, base: str, cursor: Any) -> None:
        self.base = base
        self.count: int = cursor(f"{base}:n") or 0
        used = min(self.count, BOOKED_RING)
        self.slots: list[int | None] = [cursor(f"{base}:{i}") for i in range(used)]
        self.slots += [None] * (BOOKED_RING - used)
        self.keys = {k for k in self.slots if k is not None}

    def __contains__(self, key: int) -> bool:
        return key in self.keys

    def cursors_for(self, key: int, header_key: str, header_id: int) -> dict[str, int]:
        """The cursors that book `key` next (call booked() once they are durable)."""
        n = self.count
        slot = f"{self.base}:{n % BOOKED_RING}"
        return {f"{self.base}:n": n + 1, slot: key, header_key: header_id}

    def booked(self, key: int) -> None:
        self.slots[self.count % BOOKED_RING] = key  # the oldest booking leaves the ring
        self.count += 1
        self.keys = {k for k in self.slots if k is not None}
