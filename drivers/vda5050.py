"""VDA 5050 observer: one AGV/AMR's `state` and `connection` messages on a fleet broker become
equipment events, and its finished pick/drop actions become `moved` movements, exactly once.

An observer, never a master control: the driver subscribes to
`{interface_name}/{major_version}/{manufacturer}/{serial_number}/state` and `.../connection`
and publishes nothing on the fleet broker (no order, no instant action, no will of its own).

Exactly once across restarts (docs/equipment.md, "VDA 5050"):
- the MQTT session is persistent (MQTT 5, clean_start False, `session_expiry_s`) and
  subscribed at QoS 1, so what the vehicle publishes at QoS 1 while the gateway is down is
  queued by the broker; messages are acknowledged by hand (paho's manual_ack), one at a time
  and in order, only once what they caused is durable: a message that was being processed
  when the gateway died is sent again;
- a finished pick/drop is booked with its cursor (drivers/vda5050_messages.BookedActions) in
  the same outbox transaction; a vehicle repeats an order's finished actions in every state
  until the next order, and a restart gets messages again, so the cursor, not the message,
  says whether an action is booked.

Message handling is in drivers/vda5050_messages.py; this module holds the MQTT session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from drivers.base import SessionEnded, Sink
from drivers.equipment import DeviceDown, EquipmentDriver
from drivers.options import VDA5050Options, secret_path
from drivers.runtime import Backoff
from drivers.vda5050_messages import (
    BookedActions,
    HeaderOrder,
    Invalid,
    LoadAction,
    finished_load_actions,
    message_time_us,
    parse,
    validator,
)

log = logging.getLogger(__name__)

_LOST = object()  # put on the queue when paho reports the connection lost
_TICK_S = 1.0  # serve() wakes this often for the stale check and the periodic status
_KEEPALIVE_S = 30
_CONNECTION_DOWN = {"CONNECTIONBROKEN": "connection_broken", "OFFLINE": "offline"}


@dataclass(frozen=True, slots=True)
class Received:
    """One message as paho handed it over (on its thread): what is needed to ack it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    dup: bool


class VDA5050Driver(EquipmentDriver):
    Options = VDA5050Options

    def __init__(self, device: Any, sink: Sink) -> None:
        super().__init__(device, sink)
        self.options: VDA5050Options = device.options
        o = self.options
        self.topic_base = f"{o.interface_name}/{o.major_version}/{o.manufacturer}/{o.serial_number}"
        self.client_id = o.client_id or f"fc-edge-vda5050-{self.name}"
        self.header_key = f"vda5050:{self.name}:state_header"
        self.booked = BookedActions(f"vda5050:{self.name}:booked", sink.cursor)
        self.state_order = HeaderOrder(sink.cursor(self.header_key))
        self.messages = 0  # messages received, for health and tests
        self.sessions = 0  # sessions subscribed
        self.loads_booked = 0  # movements made durable by this run
        self._refused: set[int] = set()  # load actions refused (counted and logged once each)
        self._rejected: Counter[str] = Counter()  # for logging the 1st, 101st, ... only
        self._answered = False  # the vehicle said something valid since the driver started
        self._state_seen = False  # a state applied: the status has points to show
        # Whether this session saw every state since the last one handled: false on a new
        # session (the broker kept nothing for us), until its first state.
        self._continuous = False
        self._client: Any = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        validator("state"), validator("connection")  # compiled now: a bad schema fails start-up

    def where(self) -> str:
        return f"{self.options.broker} {self.topic_base}"

    async def run(self) -> None:
        # EquipmentDriver.run starts a robot move handshake; loads here are booked from state
        # messages instead (the vehicle has no ack register to write), so the plain loop.
        await super(EquipmentDriver, self).run()

    # --- the reconnect loop's steps (the loop itself is Driver.run) --------------------------

    def make_backoff(self) -> Backoff:
        return Backoff(initial_s=1.0, cap_s=self.options.reconnect_max_s)

    async def connect(self) -> None:
        """A persistent session on the fleet broker, subscribed to the vehicle's topics."""
        self._queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        connected: asyncio.Future[Any] = loop.create_future()  # CONNACK: reason, session kept
        subscribed: asyncio.Future[Any] = loop.create_future()  # SUBACK: the reason codes
        client = self._client = self._new_client(loop, connected, subscribed)
        self._continuous = await self._open(client, connected)
        await self._subscribe(client, subscribed)
        self.sessions += 1
        log.info("%s: observing %s on %s", self.name, self.topic_base, self.options.broker)

    def _new_client(
        self,
        loop: asyncio.AbstractEventLoop,
        connected: asyncio.Future[Any],
        subscribed: asyncio.Future[Any],
    ) -> Any:
        """A paho client whose callbacks (on paho's thread) only hand over to the loop."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,  # acked once handled: see the module doc
        )
        self._set_credentials(client)

        def settle(future: asyncio.Future[Any], value: Any) -> None:
            if not future.done():
                future.set_result(value)

        def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
            loop.call_soon_threadsafe(settle, connected, (reason, flags.session_present))

        def on_subscribe(c: Any, u: Any, mid: int, reasons: Any, props: Any) -> None:
            loop.call_soon_threadsafe(settle, subscribed, reasons)

        def on_disconnect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
            loop.call_soon_threadsafe(self._queue.put_nowait, _LOST)

        def on_message(c: Any, u: Any, msg: Any) -> None:
            item = Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos, msg.dup)
            loop.call_soon_threadsafe(self._queue.put_nowait, item)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        return client

    async def _open(self, client: Any, connected: asyncio.Future[Any]) -> bool:
        """Connect with clean_start false; whether the broker kept our session."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = int(self.options.session_expiry_s)
        host, port = self._host_port()
        broker = self.options.broker
        try:
            async with asyncio.timeout(self.options.timeout_s):
                await asyncio.to_thread(
                    client.connect, host, port, _KEEPALIVE_S, clean_start=False, properties=props
                )
            client.loop_start()
            async with asyncio.timeout(self.options.timeout_s):
                reason, session_present = await connected
        except (OSError, TimeoutError) as exc:
            raise DeviceDown("refused", f"cannot connect to {broker}: {exc!r}") from None
        if reason.is_failure:
            raise DeviceDown("rejected", f"{broker} refused us: {reason}")
        return bool(session_present)

    async def _subscribe(self, client: Any, subscribed: asyncio.Future[Any]) -> None:
        client.subscribe([(f"{self.topic_base}/{kind}", 1) for kind in ("state", "connection")])
        try:
            async with asyncio.timeout(self.options.timeout_s):
                codes = await subscribed
        except TimeoutError:
            raise DeviceDown("timeout", "no SUBACK from the fleet broker") from None
        if any(code.is_failure for code in codes):
            raise DeviceDown("rejected", f"subscription to {self.topic_base} refused: {codes}")

    async def serve(self) -> None:
        """Handle each message and ack it; wake every _TICK_S for staleness and the status."""
        while True:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns an item that comes
            # in the same turn as a cancel and forgets the cancel (the daemon's stop then
            # waited for this loop until its shutdown timeout).
            try:
                async with asyncio.timeout(_TICK_S):
                    item = await self._queue.get()
            except TimeoutError:
                item = None
            if item is _LOST:
                raise DeviceDown("disconnected", f"lost the fleet broker {self.options.broker}")
            if item is not None:
                await self._handle(item)
                self._client.ack(item.mid, item.qos)
            if self._answered:
                self.check_stale("state")
                if self._state_seen and self.status_due():
                    self.emit_status(messages=self.messages, loads_booked=self.loads_booked)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        # A plain DISCONNECT keeps the session (its expiry was set at connect): what the
        # vehicle publishes meanwhile is queued for the next run.
        with contextlib.suppress(Exception):
            client.disconnect()
        await asyncio.to_thread(client.loop_stop)

    # --- messages -----------------------------------------------------------------------------

    async def _handle(self, item: Received) -> None:
        self.messages += 1
        kind = item.topic.rsplit("/", 1)[-1]
        o = self.options
        try:
            message = parse(kind, item.payload, o.manufacturer, o.serial_number)
        except Invalid as exc:
            self._reject(kind, "invalid", str(exc))
            return
        if kind == "connection":
            self._on_connection(message)
        else:
            await self._on_state(message, item.dup)

    def _on_connection(self, message: dict[str, Any]) -> None:
        # No headerId order here: the will (CONNECTIONBROKEN) was registered with the headerId
        # of its connect, before the ONLINE that followed, so it always arrives "older".
        time_us = message_time_us(message)
        state = message["connectionState"]
        self.state_changed("connection", state, None, False, time_us)
        if state == "ONLINE":
            self.state_order.reconnected()  # a rebooted vehicle starts its headerIds again
            self._answering(time_us)
            return
        reason = _CONNECTION_DOWN[state]
        self.count_error(reason)
        self.report_unreachable(DeviceDown(reason, f"the vehicle's connection is {state}"))

    async def _on_state(self, message: dict[str, Any], redelivered: bool) -> None:
        if self.state_order.accept(message["headerId"]):
            self._apply_state(message)
        elif not redelivered:  # a message sent again after our restart is no vehicle fault
            last = self.state_order.last
            self._reject("state", "out_of_order", f"headerId {message['headerId']} after {last}")
        # Its load actions still count (a stale message cannot book one twice: the cursor).
        actions = self._load_actions(message)
        if not self._continuous:
            # The first state of a new session: what it shows finished, finished while nobody
            # listened, and the vehicle may have left the node since: where is unknown.
            self._continuous = True
            for action in actions:
                self._refuse(
                    action, "finished before the gateway observed the vehicle", "unseen_load_action"
                )
            return
        for action in actions:
            # The newest headerId accepted, not an out-of-order message's older one.
            await self._book(action, max(message["headerId"], self.state_order.last or 0))

    def _apply_state(self, m: dict[str, Any]) -> None:
        time_us = message_time_us(m)
        self._answering(time_us)
        self._state_seen = True
        self.heartbeat_changed(False)
        battery = m["batteryState"]
        points = {
            "driving": m["driving"],
            "paused": m.get("paused"),
            "operating_mode": m["operatingMode"],
            "battery_charge": round(battery["batteryCharge"]),
            "charging": battery["charging"],
            "order_id": m["orderId"],
            "last_node_id": m["lastNodeId"],
            "e_stop": m["safetyState"]["eStop"],
            "loads": len(m.get("loads", [])),
        }
        for point, value in points.items():
            if value is not None:
                self.state_changed(point, value, None, False, time_us)
        self.alarms_changed("errors", frozenset(e["errorType"] for e in m["errors"]), time_us)
        if self.status_due():
            self.emit_status(time_us, messages=self.messages, loads_booked=self.loads_booked)

    def _answering(self, time_us: int) -> None:
        self.mark_data(time_us)
        self.report_recovered_from("unreachable")
        if not self._answered:
            self._answered = True
            self.set_state("up")

    # --- load moves ---------------------------------------------------------------------------

    def _load_actions(self, message: dict[str, Any]) -> list[LoadAction]:
        o = self.options
        actions = finished_load_actions(message, self.name, o.location, o.nodes)
        return [a for a in actions if a.key not in self.booked and a.key not in self._refused]

    async def _book(self, action: LoadAction, header_id: int) -> None:
        if isinstance(action.movement, str):
            self._refuse(action, action.movement, "bad_load_action")
            return
        cursors = self.booked.cursors_for(action.key, self.header_key, header_id)
        future = self.sink.movement(action.movement, cursors)
        try:
            await asyncio.wrap_future(future)
        except Exception as exc:
            # Not acked: a new session gets this message again from the broker.
            self.count_error("move_not_durable")
            raise SessionEnded("move_not_durable", f"{action.action_id}: {exc}") from None
        self.booked.booked(action.key)
        self.loads_booked += 1
        move = action.movement
        what = move.object_id or move.epc
        log.info("%s: %s of %s: %s -> %s", self.name, action.action_type, what, move.from_, move.to)

    def _refuse(self, action: LoadAction, reason: str, kind: str) -> None:
        """Counted and logged once per action, never booked half-right (docs/equipment.md)."""
        if len(self._refused) >= 4096:
            self._refused.clear()  # bounded; an action refused again is counted again
        self._refused.add(action.key)
        self.count_error(kind)
        log.error(
            "%s: %s %r not booked: %s", self.name, action.action_type, action.action_id, reason
        )
        self.emit({"event": "move_refused", "action_id": action.action_id, "reason": reason})

    def _reject(self, kind: str, what: str, detail: str) -> None:
        """A bad message: counted per kind (the device is the vehicle), logged 1st, 101st, ..."""
        error = f"{kind}_{what}"
        self.count_error(error)
        self._rejected[error] += 1
        if self._rejected[error] % 100 == 1:
            seen = self._rejected[error]
            log.warning(
                "%s: %s message rejected (%s, %d so far): %s", self.name, kind, what, seen, detail
            )

    # --- helpers ------------------------------------------------------------------------------

    def _host_port(self) -> tuple[str, int]:
        rest = self.options.broker.split("://", 1)[1].rstrip("/")
        host, _, port = rest.partition(":")
        return host, int(port or 1883)

    def _set_credentials(self, client: Any) -> None:
        o = self.options
        if o.username is not None and o.password_file is not None:
            password = secret_path(self.device, o.password_file).read_text().strip()
            client.username_pw_set(o.username, password)
