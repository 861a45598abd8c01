"""Scripted Modbus devices: a conveyor, a PackML machine and a robot cell.

Each device owns a register image (coils, discrete inputs, holding and input registers) laid
out like the shipped map of the same name (drivers/maps/*.toml). The layouts below are
written out here on purpose, with the simulator's own encoders: the simulator never imports
the driver's map code, so a decoding bug in the driver cannot cancel itself out in a test.

A device is plain Python with no I/O: `tick(now)` advances its script, `write()` receives what
a client writes. simulators/modbus/server.py puts it on pymodbus's server.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Table = Literal["coil", "discrete", "holding", "input"]


class RegisterImage:
    """The four Modbus tables of one device, 0-based addresses as on the wire."""

    def __init__(self, registers: int = 256, bits: int = 64) -> None:
        self.holding = [0] * registers
        self.input = [0] * registers
        self.coil = [False] * bits
        self.discrete = [False] * bits

    def words(self, table: Table) -> list[int]:
        return self.holding if table == "holding" else self.input

    def bits(self, table: Table) -> list[bool]:
        return self.coil if table == "coil" else self.discrete

    # Encoders: big-endian bytes in each register; `low_word_first` for swapped 32-bit values.
    def put_u16(self, table: Table, address: int, value: int) -> None:
        self.words(table)[address] = value & 0xFFFF

    def put_i16(self, table: Table, address: int, value: int) -> None:
        self.put_u16(table, address, value & 0xFFFF)

    def put_u32(self, table: Table, address: int, value: int, low_word_first: bool = False) -> None:
        high, low = (value >> 16) & 0xFFFF, value & 0xFFFF
        first, second = (low, high) if low_word_first else (high, low)
        words = self.words(table)
        words[address], words[address + 1] = first, second

    def get_u32(self, table: Table, address: int) -> int:
        words = self.words(table)
        return words[address] << 16 | words[address + 1]

    def put_f32(self, table: Table, address: int, value: float) -> None:
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        words = self.words(table)
        words[address], words[address + 1] = high, low

    def put_text(self, table: Table, address: int, registers: int, text: str) -> None:
        data = text.encode("ascii")[: registers * 2].ljust(registers * 2, b"\x00")
        words = self.words(table)
        for i in range(registers):
            words[address + i] = data[2 * i] << 8 | data[2 * i + 1]


class SimulatedDevice:
    """Base: a register image plus a script. Subclasses set `name` and the layout."""

    name = "device"

    def __init__(self, heartbeat_s: float = 1.0, script: bool = True, seed: int = 1) -> None:
        self.image = RegisterImage()
        self.heartbeat_s = heartbeat_s
        self.script = script  # False: only the test's API calls change the registers
        self.random = random.Random(seed)
        self._last_beat: float | None = None
        self.beats = 0

    def tick(self, now: float) -> None:
        if self._last_beat is None:
            self._last_beat = now
        while now - self._last_beat >= self.heartbeat_s:
            self._last_beat += self.heartbeat_s
            self.beats += 1
            self.beat()
        if self.script:
            self.step(now)

    def beat(self) -> None:
        """Advance the heartbeat once."""

    def step(self, now: float) -> None:
        """Advance the script."""

    def write(self, table: Table, address: int, values: Sequence[int] | Sequence[bool]) -> None:
        if table in ("holding", "input"):
            words = self.image.words(table)
            for i, v in enumerate(values):
                words[address + i] = int(v) & 0xFFFF
        else:
            bits = self.image.bits(table)
            for i, v in enumerate(values):
                bits[address + i] = bool(v)
        self.written(table, address, len(values))

    def written(self, table: Table, address: int, count: int) -> None:
        """Hook: a client wrote `count` values at `address`."""


# --- conveyor ------------------------------------------------------------------------------


class ConveyorLayout:
    ZONES = (0, 1, 2, 3)  # input registers, one zone state each
    ZONE_IDLE, ZONE_RUNNING, ZONE_ACCUMULATING, ZONE_BLOCKED, ZONE_FAULTED = range(5)
    CONVEYSTOP = 10  # input register, bitfield
    ESTOP, PULL_CORD, GUARD_OPEN, MOTOR_OVERLOAD, JAM, AIR_LOW = range(6)
    BELT_SPEED = 20  # input registers 20-21, float32, high word first
    RUN_HOURS = 22  # input registers 22-23, uint32 LOW word first, hundredths of an hour
    CARTONS = 24  # input registers 24-25, uint32 counter
    HEARTBEAT = 0  # discrete input, toggles


class Conveyor(SimulatedDevice):
    name = "conveyor"
    L = ConveyorLayout

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.cartons = 0
        self.run_hours = 123_456  # hundredths
        self._next_change = 0.0
        self.set_speed(1.5)
        self.set_run_hours(self.run_hours)

    def beat(self) -> None:
        hb = self.L.HEARTBEAT
        self.image.discrete[hb] = not self.image.discrete[hb]

    def set_zone(self, zone: int, state: int) -> None:
        self.image.put_u16("input", self.L.ZONES[zone], state)

    def set_stop_bits(self, mask: int) -> None:
        self.image.put_u16("input", self.L.CONVEYSTOP, mask)

    def set_speed(self, metres_per_s: float) -> None:
        self.image.put_f32("input", self.L.BELT_SPEED, metres_per_s)

    def set_run_hours(self, hundredths: int) -> None:
        self.image.put_u32("input", self.L.RUN_HOURS, hundredths, low_word_first=True)

    def add_cartons(self, n: int) -> None:
        self.cartons = (self.cartons + n) & 0xFFFF_FFFF
        self.image.put_u32("input", self.L.CARTONS, self.cartons)

    def step(self, now: float) -> None:
        if now < self._next_change:
            return
        self._next_change = now + 1.0
        # Zones run, accumulate behind a blocked exit, now and then a jam trips ConveyStop.
        for zone in range(len(self.L.ZONES)):
            state = self.random.choice(
                [self.L.ZONE_RUNNING] * 6 + [self.L.ZONE_ACCUMULATING] * 2 + [self.L.ZONE_BLOCKED]
            )
            self.set_zone(zone, state)
        jam = self.random.random() < 0.05
        self.set_stop_bits(1 << self.L.JAM if jam else 0)
        self.set_speed(0.0 if jam else 1.5 + self.random.uniform(-0.05, 0.05))
        if not jam:
            self.add_cartons(self.random.randint(0, 3))
            self.run_hours += 1
            self.set_run_hours(self.run_hours)


# --- PackML machine ------------------------------------------------------------------------


class PackMLLayout:
    STATE = 0  # holding, uint16 PackML state code 0-17
    STOP_REASON = 1  # holding, uint16
    GOOD = 2  # holding 2-3, uint32
    REJECT = 4  # holding 4-5, uint32
    SPEED = 6  # holding, int16, tenths of a pack per minute
    ALARMS = 7  # holding, bitfield
    HEARTBEAT = 8  # holding, uint16, +1 per beat
    # PackML state codes
    (UNDEFINED, CLEARING, STOPPED, STARTING, IDLE, SUSPENDED, EXECUTE, STOPPING, ABORTING,
     ABORTED, HOLDING, HELD, UNHOLDING, SUSPENDING, UNSUSPENDING, RESETTING, COMPLETING,
     COMPLETED) = range(18)  # fmt: skip
    REASON_NONE, REASON_OPERATOR, REASON_ESTOP, REASON_JAM = 0, 1, 2, 3
    ALARM_ESTOP, ALARM_GUARD, ALARM_MOTOR, ALARM_AIR, ALARM_JAM, ALARM_TEMP = range(6)


class PackMLMachine(SimulatedDevice):
    name = "packml"
    L = PackMLLayout
    # The script: (state, seconds) in a loop; Execute produces, a fault now and then aborts.
    CYCLE = (
        (PackMLLayout.STOPPED, 1.0),
        (PackMLLayout.RESETTING, 0.5),
        (PackMLLayout.IDLE, 1.0),
        (PackMLLayout.STARTING, 0.5),
        (PackMLLayout.EXECUTE, 5.0),
        (PackMLLayout.COMPLETING, 0.5),
        (PackMLLayout.COMPLETED, 1.0),
        (PackMLLayout.RESETTING, 0.5),
    )

    def __init__(self, fault_rate: float = 0.1, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.fault_rate = fault_rate
        self.good = 0
        self.reject = 0
        self._index = 0
        self._until: float | None = None
        self._aborted = False
        self.set_state(self.L.STOPPED)

    def beat(self) -> None:
        hb = self.L.HEARTBEAT
        self.image.holding[hb] = (self.image.holding[hb] + 1) & 0xFFFF

    def set_state(self, code: int, stop_reason: int | None = None) -> None:
        self.image.put_u16("holding", self.L.STATE, code)
        if stop_reason is not None:
            self.image.put_u16("holding", self.L.STOP_REASON, stop_reason)

    def set_alarms(self, mask: int) -> None:
        self.image.put_u16("holding", self.L.ALARMS, mask)

    def set_speed(self, tenths: int) -> None:
        self.image.put_i16("holding", self.L.SPEED, tenths)

    def produce(self, good: int = 1, reject: int = 0) -> None:
        self.good = (self.good + good) & 0xFFFF_FFFF
        self.reject = (self.reject + reject) & 0xFFFF_FFFF
        self.image.put_u32("holding", self.L.GOOD, self.good)
        self.image.put_u32("holding", self.L.REJECT, self.reject)

    def set_counters(self, good: int, reject: int) -> None:
        self.good, self.reject = good, reject
        self.produce(0, 0)

    def step(self, now: float) -> None:
        state = self.image.holding[self.L.STATE]
        if state == self.L.EXECUTE:
            self.produce(self.random.randint(1, 3), 1 if self.random.random() < 0.05 else 0)
        if self._until is None:
            self._until = now + self.CYCLE[self._index][1]
        if now < self._until:
            return
        if state == self.L.EXECUTE and self.random.random() < self.fault_rate:
            self._abort(now)
            return
        if self._aborted:  # Aborting -> Aborted -> Clearing -> Stopped, alarms cleared
            self._recover(now, state)
            return
        self._index = (self._index + 1) % len(self.CYCLE)
        code, seconds = self.CYCLE[self._index]
        self.set_state(code)
        self.set_speed(1200 if code == self.L.EXECUTE else 0)
        self._until = now + seconds

    def _abort(self, now: float) -> None:
        self._aborted = True
        self.set_state(self.L.ABORTING, self.L.REASON_JAM)
        self.set_alarms(1 << self.L.ALARM_JAM)
        self.set_speed(0)
        self._until = now + 0.5

    def _recover(self, now: float, state: int) -> None:
        following = {
            self.L.ABORTING: self.L.ABORTED,
            self.L.ABORTED: self.L.CLEARING,
            self.L.CLEARING: self.L.STOPPED,
        }
        code = following.get(state, self.L.STOPPED)
        if code == self.L.CLEARING:
            self.set_alarms(0)
        if code == self.L.STOPPED:
            self._aborted = False
            self._index = 0
        self.set_state(code)
        self._until = now + 1.0


# --- robot cell ----------------------------------------------------------------------------


class RobotLayout:
    CELL_STATE = 0  # holding, uint16
    OFF, IDLE, PICKING, PLACING, FAULTED, MANUAL = range(6)
    ALARMS = 1  # holding, bitfield
    ALARM_ESTOP, ALARM_FENCE, ALARM_GRIPPER = 0, 1, 2
    HEARTBEAT = 2  # holding, uint16, +1 per beat
    PICKS = 3  # holding 3-4, uint32 counter
    MOVE_FLAG = 100  # holding: 1 = record waiting
    MOVE_SEQ = 101  # holding 101-102, uint32
    MOVE_FROM = 103  # holding, station number
    MOVE_TO = 104  # holding, station number
    MOVE_TOTE = 105  # holding 105-114, 20 ASCII chars
    TOTE_REGS = 10
    MOVE_EPC = 115  # holding 115-130, 32 ASCII hex chars
    EPC_REGS = 16
    MOVE_ACK = 131  # holding 131-132, uint32, written by the gateway


@dataclass(frozen=True, slots=True)
class MoveRecord:
    seq: int
    from_station: int
    to_station: int
    tote: str = ""
    epc: str = ""


class RobotCell(SimulatedDevice):
    """Produces move records (scripted at `move_every_s`, or queued with `queue_move`) and
    waits for each to be acknowledged before it writes the next, like a real cell would."""

    name = "robot"
    L = RobotLayout

    def __init__(self, move_every_s: float | None = 1.0, first_seq: int = 1, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.move_every_s = move_every_s
        self.next_seq = first_seq
        self.queue: deque[MoveRecord] = deque()
        self.pending: MoveRecord | None = None
        self.acked: list[int] = []  # seqs acknowledged by the gateway, in order
        self.ack_writes = 0
        self.picks = 0
        self._next_move = 0.0
        self.image.put_u16("holding", self.L.CELL_STATE, self.L.IDLE)

    def beat(self) -> None:
        hb = self.L.HEARTBEAT
        self.image.holding[hb] = (self.image.holding[hb] + 1) & 0xFFFF

    def set_cell_state(self, code: int) -> None:
        self.image.put_u16("holding", self.L.CELL_STATE, code)

    def set_alarms(self, mask: int) -> None:
        self.image.put_u16("holding", self.L.ALARMS, mask)

    def queue_move(
        self, from_station: int, to_station: int, tote: str = "", epc: str = ""
    ) -> MoveRecord:
        record = MoveRecord(self.next_seq, from_station, to_station, tote, epc)
        self.next_seq += 1
        self.queue.append(record)
        return record

    def tick(self, now: float) -> None:
        super().tick(now)
        if self.pending is None and self.queue:
            self._publish(self.queue.popleft())

    def step(self, now: float) -> None:
        if self.move_every_s is None or now < self._next_move:
            return
        self._next_move = now + self.move_every_s
        if self.pending is None and not self.queue:
            seq = self.next_seq
            stations = self.random.sample([1, 2, 3, 4], 2)
            if seq % 2:
                self.queue_move(stations[0], stations[1], tote=f"TOTE-{seq:06d}")
            else:
                self.queue_move(stations[0], stations[1], epc=f"30340242201D8840000{seq:05X}")

    def _publish(self, record: MoveRecord) -> None:
        img, L = self.image, self.L
        # The record first, the flag last: a reader that sees the flag sees a whole record.
        img.put_u32("holding", L.MOVE_SEQ, record.seq)
        img.put_u16("holding", L.MOVE_FROM, record.from_station)
        img.put_u16("holding", L.MOVE_TO, record.to_station)
        img.put_text("holding", L.MOVE_TOTE, L.TOTE_REGS, record.tote)
        img.put_text("holding", L.MOVE_EPC, L.EPC_REGS, record.epc)
        img.put_u16("holding", L.MOVE_FLAG, 1)
        self.set_cell_state(L.PLACING)
        self.pending = record

    def written(self, table: Table, address: int, count: int) -> None:
        ack = self.L.MOVE_ACK
        if table != "holding" or not (address < ack + 2 and address + count > ack):
            return
        self.ack_writes += 1
        value = self.image.get_u32("holding", ack)
        if self.pending is not None and value == self.pending.seq:
            self.acked.append(value)
            self.pending = None
            self.image.put_u16("holding", self.L.MOVE_FLAG, 0)
            self.picks += 1
            self.image.put_u32("holding", self.L.PICKS, self.picks)
            self.set_cell_state(self.L.IDLE)


DEVICES: dict[str, type[SimulatedDevice]] = {
    "conveyor": Conveyor,
    "packml": PackMLMachine,
    "robot": RobotCell,
}
