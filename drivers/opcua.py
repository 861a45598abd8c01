"""OPC UA equipment driver: PLC status, alarms and counters from monitored items (asyncua).

One driver instance holds one session with one server (its own asyncio task). It reads the
points of a node map (drivers/opcua_map.py) once at connect, then subscribes to every mapped
node and reports to the sink the same events as the Modbus driver, on the same equipment
topic (`status`, `state`, `alarm`, `counter`, `unreachable`, `stale`, `recovered`; shapes in
docs/equipment.md).

Reconnects are `Driver.run`'s loop: connect() opens a new session (a lost session is never
resumed: the server may have dropped its subscriptions with it), reads every point and
creates the subscription; serve() applies notifications until the connection is lost;
close() ends the session.

Two failure modes need more than the library gives (see /work/shared/DESIGN.md):
- a data-change callback that blocks kills asyncua's publish loop, so the handler only puts
  values on an asyncio queue; serve() does the work;
- a subscription can stall silently (the session is fine, values change, no notification
  comes). When no notification came for `subscription_timeout_s`, serve() reads every point
  itself, every `interval_s`, until notifications come again; a read that finds a value the
  subscription never reported is a stall: counted (`subscription_stalled`) and the
  subscription is created anew. Reads that fail end the session (unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from drivers.base import Sink
from drivers.equipment import (
    DeviceDown,
    EquipmentDriver,
    MoveHandshake,
    MoveRecord,
    robot_movement,
)
from drivers.opcua_map import DecodeError, NodeMap, NodePoint, interpret, load_map
from drivers.options import OPCUAOptions, secret_path
from drivers.runtime import Backoff, raise_if_cancel_swallowed
from gateway.model import now_us

log = logging.getLogger(__name__)

# asyncua logs every lost connection and failed request at WARNING/ERROR with tracebacks; this
# driver logs each transition once itself, so asyncua is quietened unless configured.
_asyncua_log = logging.getLogger("asyncua")
if _asyncua_log.level == logging.NOTSET:
    _asyncua_log.setLevel(logging.CRITICAL)

_LOST = object()  # put on the queue when the library reports the connection lost


class _Handler:
    """asyncua's subscription handler: hands values over, never blocks (see module doc)."""

    def __init__(self, queue: asyncio.Queue[Any], names: dict[str, str]) -> None:
        self.queue = queue
        self.names = names  # node id text -> point name

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        name = self.names.get(node.nodeid.to_string())
        status = data.monitored_item.Value.StatusCode
        good = status is None or status.is_good()
        if name is not None:
            self.queue.put_nowait((name, val, good))

    def status_change_notification(self, status: Any) -> None:
        self.queue.put_nowait(_LOST)


class OPCUADriver(EquipmentDriver):
    Options = OPCUAOptions

    def __init__(self, device: Any, sink: Sink) -> None:
        super().__init__(device, sink)
        self.options: OPCUAOptions = device.options
        # A bad map is a configuration error: raised here (MapError) so start-up fails loudly.
        self.map: NodeMap = load_map(device.resolve(self.options.map))
        self.notifications = 0  # data changes received, for health and tests
        self.polls = 0  # fallback reads of every point
        self.sessions = 0  # sessions opened
        self._client: Any = None
        self._subscription: Any = None
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._nodes: dict[str, Any] = {}  # point name -> asyncua Node
        self._codes: dict[str, Any] = {}  # last interpreted value per point
        self._last_notification = 0.0
        self._stalled = False  # a stall was counted and not yet followed by a notification
        self._first = True
        self._vtypes: dict[str, Any] = {}  # point name -> the server's VariantType (for writes)
        self.moves = MoveHandshake(self, f"opcua:{self.name}:ack_seq")
        self._record_changed = False  # a move record point changed since the last look
        self._record_looked = 0.0  # loop time of the last look

    # --- the reconnect loop's steps (the loop itself is Driver.run) --------------------------

    def make_backoff(self) -> Backoff:
        o = self.options
        return Backoff(initial_s=min(1.0, o.interval_s), cap_s=o.reconnect_max_s)

    async def connect(self) -> None:
        """A new session, every point read once, then the subscription."""
        from asyncua import ua

        self._queue = asyncio.Queue()
        client = self._client = await self._make_client()
        try:
            async with asyncio.timeout(self.options.timeout_s * 2 + 1):
                await client.connect()
        except (OSError, TimeoutError) as exc:
            raise DeviceDown("refused", f"cannot connect to {self.options.url}: {exc}") from None
        except ua.UaError as exc:  # a bad user, a rejected certificate, a wrong policy
            raise DeviceDown("rejected", f"{self.options.url}: {exc}") from None
        self.sessions += 1
        self._nodes = {name: client.get_node(p.node) for name, p in self.map.points.items()}
        await self._poll()
        await self._subscribe()
        await self._handshake()

    async def serve(self) -> None:
        """Apply notifications; wake every interval_s for the heartbeat, the status and the
        stall check."""
        loop = asyncio.get_running_loop()
        self._last_notification = loop.time()
        while True:
            item = await self._next_item(self.options.interval_s)
            if item is _LOST:
                raise DeviceDown("disconnected", "the server closed the session")
            if item is not None:
                self._last_notification = loop.time()
                self._stalled = False
                self._on_notification(*item)
            elif loop.time() - self._last_notification >= self.options.subscription_timeout_s:
                await self._fallback_poll()
            if self.map.heartbeat is not None:
                self.check_stale(self.map.heartbeat.name)
            self._maybe_status()
            await self._handshake()
            raise_if_cancel_swallowed()  # (asyncua's and our wait_for may have eaten a stop)

    async def close(self) -> None:
        client, self._client = self._client, None
        self._subscription = None
        if client is not None:
            with contextlib.suppress(Exception):  # the server may be gone already
                async with asyncio.timeout(self.options.timeout_s):
                    await client.disconnect()

    # --- the session --------------------------------------------------------------------------

    async def _make_client(self) -> Any:
        from asyncua import Client

        o = self.options
        # auto_reconnect off: Driver.run owns reconnects (a new session, every point re-read).
        client = Client(o.url, timeout=o.timeout_s, watchdog_intervall=o.interval_s)
        client.connection_lost_callback = self._connection_lost
        if o.username is not None and o.password_file is not None:
            from gateway.config import read_secret

            client.set_user(o.username)
            client.set_password(read_secret(str(secret_path(self.device, o.password_file))))
        if o.security != "None":
            await self._use_certificate(client)
        return client

    async def _use_certificate(self, client: Any) -> None:
        """Sign (and encrypt) with our certificate. A server checks that the ApplicationUri the
        client announces is the URI in its certificate, so the client takes that URI."""
        from asyncua.crypto import uacrypto
        from cryptography import x509

        assert self.options.certificate_file is not None
        path = self.device.resolve(self.options.certificate_file)
        cert = await uacrypto.load_certificate(path)
        with contextlib.suppress(x509.ExtensionNotFound):
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = names.get_values_for_type(x509.UniformResourceIdentifier)
            if uris:
                client.application_uri = uris[0]
        await client.set_security_string(self._security_string())

    def _security_string(self) -> str:
        """asyncua's "Policy,Mode,certificate,key[,server certificate]"."""
        o = self.options
        assert o.certificate_file is not None and o.private_key_file is not None
        parts = [
            o.security,
            str(self.device.resolve(o.certificate_file)),
            str(secret_path(self.device, o.private_key_file)),
        ]
        if o.server_certificate_file is not None:
            parts.append(str(self.device.resolve(o.server_certificate_file)))
        return ",".join(parts)

    async def _connection_lost(self, exc: Exception) -> None:
        self._queue.put_nowait(_LOST)

    async def _subscribe(self) -> None:
        from asyncua import ua

        names = {node.nodeid.to_string(): name for name, node in self._nodes.items()}
        handler = _Handler(self._queue, names)
        period_ms = self.options.interval_s * 1000
        try:
            sub = await self._client.create_subscription(period_ms, handler)
            await sub.subscribe_data_change(list(self._nodes.values()))
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            # ua.UaError: the server refused (e.g. BadTooManySubscriptions); retried anew
            raise DeviceDown("disconnected", f"cannot subscribe: {exc}") from None
        self._subscription = sub

    async def _resubscribe(self) -> None:
        old, self._subscription = self._subscription, None
        if old is not None:
            with contextlib.suppress(Exception):  # a stalled subscription may not answer
                await old.delete()
        await self._subscribe()

    async def _next_item(self, wait_s: float) -> Any:
        try:
            async with asyncio.timeout(wait_s):
                return await self._queue.get()
        except TimeoutError:
            return None

    async def _read_nodes(self, names: list[str]) -> list[Any]:
        """These points' DataValues, in one request; a failed read ends the session."""
        from asyncua import ua

        nodes = [self._nodes[name] for name in names]
        try:
            async with asyncio.timeout(self.options.timeout_s + 1):
                result: list[Any] = await self._client.read_attributes(
                    nodes, attr=ua.AttributeIds.Value
                )
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else "disconnected"
            raise DeviceDown(reason, f"read failed: {type(exc).__name__}: {exc}") from None
        return result

    async def _poll(self) -> bool:
        """Read every point and apply it; True if a value differs from what was known."""
        values = await self._read_nodes(list(self._nodes))
        self.polls += 1
        time_us = now_us()
        self.mark_data(time_us)
        self.report_recovered_from("unreachable")
        if self._first:
            self._first = False
            self.set_state("up")
            log.info("%s: session with %s, %d points", self.name, self.options.url, len(values))
        changed = False
        for name, dv in zip(self._nodes, values, strict=True):
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            value = dv.Value.Value if dv.Value is not None else None
            if good and dv.Value is not None:
                self._vtypes[name] = dv.Value.VariantType
            changed |= self._apply(name, value, good, time_us)
        self._maybe_status()
        return changed

    async def _fallback_poll(self) -> None:
        """The subscription said nothing for subscription_timeout_s: read the points. A value
        it never reported means it stalled: counted once per stall, and recreated."""
        changed = await self._poll()
        if changed and not self._stalled:
            self._stalled = True
            self.count_error("subscription_stalled")
            log.warning(
                "%s: subscription stalled (values changed, no notification for %.1f s): "
                "polling every %.1f s and subscribing again",
                self.name,
                self.options.subscription_timeout_s,
                self.options.interval_s,
            )
            await self._resubscribe()

    # --- change detection -------------------------------------------------------------------

    def _on_notification(self, name: str, value: Any, good: bool) -> None:
        self.notifications += 1
        time_us = now_us()
        self.mark_data(time_us)
        self._apply(name, value, good, time_us)

    def _apply(self, name: str, raw: Any, good: bool, time_us: int) -> bool:
        """One point's new value -> change events. True if it differs from the last one.
        A bad status or a value of the wrong kind is counted, never raised."""
        point = self.map.points[name]
        if not good:
            self.count_error("bad_status")
            return False
        try:
            value = interpret(point, raw)
        except DecodeError as exc:
            self.count_error("bad_value")
            log.debug("%s: %s", self.name, exc)
            return False
        if self._codes.get(name, _LOST) == value:
            return False
        first = name not in self._codes
        self._codes[name] = value
        if name in self.map.handshake_points:
            self._record_changed = True
            return True  # the robot's move record: read by _handshake, no events of its own
        if point is self.map.heartbeat:
            self.heartbeat_changed(first)
        role = point.effective_role
        if role == "state":
            self._on_state(point, value, time_us)
        elif role == "alarms":
            self._on_alarms(point, value, time_us)
        elif role == "counter":
            self._on_counter(point, value, time_us)
        else:
            self._values[name] = value
        return True

    def _shown(self, point: NodePoint, value: Any) -> Any:
        if point.enum is None or not isinstance(value, int):
            return value
        return point.enum.get(value, f"unknown({value})")

    def _on_state(self, point: NodePoint, value: Any, time_us: int) -> None:
        shown = self._shown(point, value)
        if point.enum is not None and value not in point.enum:
            self.count_error("unknown_enum")
        has_enum = point.enum is not None
        self.state_changed(point.name, shown, value if has_enum else None, has_enum, time_us)

    def _on_alarms(self, point: NodePoint, value: int, time_us: int) -> None:
        bits = point.bits or {}
        if not bits:  # a bool (or any non-zero word) is one alarm named after the point
            active = frozenset({point.name}) if value else frozenset()
        else:  # a set bit the map does not name is still an alarm: bitN, never dropped
            active = frozenset(bits.get(b, f"bit{b}") for b in range(64) if value >> b & 1)
        self._values[point.name] = value
        self.alarms_changed(point.name, active, time_us)

    def _on_counter(self, point: NodePoint, total: int, time_us: int) -> None:
        self._values[point.name] = total
        self.counter_changed(point.name, total, point.modulus, point.unit, time_us)

    def _maybe_status(self) -> None:
        if self.status_due():
            self.emit_status(notifications=self.notifications, polls=self.polls)

    def where(self) -> str:
        return self.options.url

    # --- robot move handshake (drivers.equipment.MoveHandshake) -------------------------------

    async def _handshake(self) -> None:
        """Look at the move record when it changed, and every interval_s (an ack that did not
        arrive is written again), not at every notification."""
        hs = self.map.handshake
        if hs is None or self._client is None:
            return
        now = asyncio.get_running_loop().time()
        if not self._record_changed and now - self._record_looked < self.options.interval_s:
            return
        self._record_changed, self._record_looked = False, now
        flag, seq, ack = (self._codes.get(n) for n in (hs.flag, hs.seq, hs.ack))
        await self.moves.seen(
            bool(flag),
            seq if isinstance(seq, int) else None,
            ack if isinstance(ack, int) else None,
            self._read_record,
            self._write_ack,
        )

    async def _read_record(self) -> MoveRecord | None:
        """The move record read afresh, all its nodes in one request."""
        hs = self.map.handshake
        assert hs is not None
        names = sorted(self.map.handshake_points)
        values = await self._read_nodes(names)
        record: dict[str, Any] = {}
        for name, dv in zip(names, values, strict=True):
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                self.count_error("bad_status")
                return None
            record[name] = dv.Value.Value if dv.Value is not None else None
        seq = record[hs.seq]
        texts = [record.get(n) if n else None for n in (hs.epc, hs.tote)]
        if not isinstance(seq, int) or not all(t is None or isinstance(t, str) for t in texts):
            return MoveRecord(None, False, "garbage in the record")
        epc, tote = (t.strip() if t else None for t in texts)
        move = robot_movement(
            self.name,
            self.options.stations,
            epc,
            tote,
            record[hs.from_station],
            record[hs.to_station],
        )
        return MoveRecord(seq, bool(record[hs.flag]), move)

    async def _write_ack(self, seq: int) -> None:
        from asyncua import ua

        hs = self.map.handshake
        assert hs is not None
        vtype = self._vtypes.get(hs.ack, ua.VariantType.UInt32)
        try:
            async with asyncio.timeout(self.options.timeout_s + 1):
                await self._client.write_values(
                    [self._nodes[hs.ack]], [ua.DataValue(ua.Variant(seq, vtype))]
                )
        except (OSError, TimeoutError, ConnectionError, ua.UaError, AttributeError) as exc:
            self.count_error("ack_failed")  # retried by the next read that sees the flag up
            log.debug("%s: ack of move seq %d failed: %s", self.name, seq, exc)
            return
        log.debug("%s: acked move seq %d", self.name, seq)
