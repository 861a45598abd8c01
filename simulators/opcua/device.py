"""Simulated OPC UA devices: plain Python, no I/O (simulators/opcua/server.py serves them).

A PackML machine on a timeline:

States follow ISA-TR88.00.02 (PackTags Status.StateCurrent codes): from Stopped the machine
cycles Resetting -> Idle -> Starting -> Execute -> Completing -> Completed -> Resetting ...,
one state per `step_s`, counting good units (and now and then a reject) while in Execute.
`abort()` (a jam) goes Aborting -> Aborted -> Clearing -> Stopped with the MaterialJam alarm
and stop reason Jam; the cycle then goes on. The heartbeat counts up every `heartbeat_s`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from asyncua.ua import VariantType

STOPPED, STARTING, IDLE, EXECUTE = 2, 3, 4, 6
ABORTING, ABORTED, CLEARING = 8, 9, 1
RESETTING, COMPLETING, COMPLETED = 15, 16, 17
CYCLE = (RESETTING, IDLE, STARTING, EXECUTE, EXECUTE, EXECUTE, COMPLETING, COMPLETED)
AFTER_ABORT = (ABORTING, ABORTED, CLEARING, STOPPED)
JAM_REASON = 3
JAM_ALARM_BIT = 4  # MaterialJam
SPEED_PPM = 120.0


class SimulatedDevice:
    """What the server needs of a device: its nodes (name -> type; the first is the one
    `bad_status` spoils), those a client may write, and the script."""

    kind: ClassVar[str]  # the --device name; the namespace is urn:fc-edge:simulator:{kind}
    object_name: ClassVar[str]  # node ids are "{object_name}.{node}"
    NODES: ClassVar[dict[str, VariantType]]
    WRITABLE: ClassVar[frozenset[str]] = frozenset()
    frozen: bool

    def values(self) -> dict[str, Any]:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        raise NotImplementedError

    def written(self, name: str, value: Any, now: float) -> None:
        """A client wrote `value` into the writable node `name`."""

    def abort(self) -> None:
        """A jam, where the device can have one."""

    def extra_status(self) -> dict[str, Any]:
        return {}


@dataclass
class PackMLTimeline(SimulatedDevice):
    kind: ClassVar[str] = "packml"
    object_name: ClassVar[str] = "Packer"
    NODES: ClassVar[dict[str, VariantType]] = {
        "State": VariantType.Int32,  # PackML state code
        "StopReason": VariantType.Int32,
        "GoodCount": VariantType.UInt32,
        "RejectCount": VariantType.UInt32,
        "MachineSpeed": VariantType.Double,  # ppm
        "Alarms": VariantType.UInt32,  # bits: 4 = MaterialJam
        "Heartbeat": VariantType.UInt32,  # +1 a beat
    }

    step_s: float = 1.0
    heartbeat_s: float = 1.0
    seed: int = 1
    state: int = STOPPED
    stop_reason: int = 0
    good: int = 0
    reject: int = 0
    speed: float = 0.0
    alarms: int = 0
    heartbeat: int = 0
    frozen: bool = False  # the script and the heartbeat stop (the server still answers)
    _plan: list[int] = field(default_factory=list)
    _next_step: float | None = None
    _next_beat: float | None = None

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def values(self) -> dict[str, int | float]:
        """Node name (as in NODES) -> current value."""
        return {
            "State": self.state,
            "StopReason": self.stop_reason,
            "GoodCount": self.good,
            "RejectCount": self.reject,
            "MachineSpeed": self.speed,
            "Alarms": self.alarms,
            "Heartbeat": self.heartbeat,
        }

    def tick(self, now: float) -> None:
        if self.frozen:
            return
        if self._next_step is None:
            self._next_step, self._next_beat = now + self.step_s, now + self.heartbeat_s
        assert self._next_beat is not None
        while now >= self._next_beat:
            self._next_beat += self.heartbeat_s
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF_FFFF
        while now >= self._next_step:
            self._next_step += self.step_s
            self._step()

    def abort(self) -> None:
        """A jam: the machine aborts now, then clears and stops before cycling on."""
        self._plan = list(AFTER_ABORT[1:])
        self._enter(ABORTING)

    def _step(self) -> None:
        if not self._plan:
            self._plan = list(CYCLE)
        self._enter(self._plan.pop(0))

    def _enter(self, state: int) -> None:
        self.state = state
        self.speed = SPEED_PPM if state == EXECUTE else 0.0
        if state == EXECUTE:
            self.good += 10
            self.reject += 1 if self.random.random() < 0.3 else 0
        if state == ABORTING:
            self.stop_reason = JAM_REASON
            self.alarms |= 1 << JAM_ALARM_BIT
        elif state == CLEARING:
            self.alarms = 0
        elif state == RESETTING:
            self.stop_reason = 0


@dataclass
class RobotCell(SimulatedDevice):
    """A robot that hands over a move record every `move_every_s`: it fills the record (odd
    seq: a tote id, even seq: an EPC ending in the seq; stations 1 -> 2 -> 3 -> 4 -> 1), raises
    MoveFlag, and waits until the client writes the seq into MoveAck before the next. The tote
    ids and EPC serials are the seq plus `serial_offset`, so that two robots on one site (the
    demo's Modbus and OPC UA cells) move different objects."""

    kind: ClassVar[str] = "robot"
    object_name: ClassVar[str] = "Robot"
    NODES: ClassVar[dict[str, VariantType]] = {
        "State": VariantType.Int32,  # 1 = Running
        "Heartbeat": VariantType.UInt32,
        "MoveFlag": VariantType.Boolean,
        "MoveSeq": VariantType.UInt32,
        "MoveFrom": VariantType.Int32,
        "MoveTo": VariantType.Int32,
        "MoveEpc": VariantType.String,
        "MoveTote": VariantType.String,
        "MoveAck": VariantType.UInt32,
    }
    WRITABLE: ClassVar[frozenset[str]] = frozenset({"MoveAck"})

    move_every_s: float = 1.0
    heartbeat_s: float = 1.0
    serial_offset: int = 0
    frozen: bool = False
    heartbeat: int = 0
    seq: int = 0
    flag: bool = False
    from_station: int = 0
    to_station: int = 0
    epc: str = ""
    tote: str = ""
    ack: int = 0
    acked: list[int] = field(default_factory=list)
    _next_move: float | None = None
    _next_beat: float | None = None

    def values(self) -> dict[str, Any]:
        return {
            "State": 1,
            "Heartbeat": self.heartbeat,
            "MoveFlag": self.flag,
            "MoveSeq": self.seq,
            "MoveFrom": self.from_station,
            "MoveTo": self.to_station,
            "MoveEpc": self.epc,
            "MoveTote": self.tote,
            "MoveAck": self.ack,
        }

    def tick(self, now: float) -> None:
        if self.frozen:
            return
        if self._next_beat is None or self._next_move is None:
            self._next_beat, self._next_move = now + self.heartbeat_s, now + self.move_every_s
        while now >= self._next_beat:
            self._next_beat += self.heartbeat_s
            self.heartbeat = (self.heartbeat + 1) & 0xFFFF_FFFF
        if not self.flag and now >= self._next_move:
            self._new_record()

    def _new_record(self) -> None:
        self.seq += 1
        self.from_station = (self.seq - 1) % 4 + 1
        self.to_station = self.seq % 4 + 1
        odd = self.seq % 2 == 1
        serial = self.seq + self.serial_offset
        self.tote = f"TOTE-{serial:06d}" if odd else ""
        self.epc = "" if odd else f"30340242201D8840000{serial:05X}"
        self.flag = True

    def written(self, name: str, value: Any, now: float) -> None:
        self.ack = int(value)
        if self.flag and self.ack == self.seq:
            self.flag = False
            self.acked.append(self.seq)
            self._next_move = now + self.move_every_s

    def extra_status(self) -> dict[str, Any]:
        return {"acked": list(self.acked)}
