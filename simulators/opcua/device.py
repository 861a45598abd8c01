"""A PackML machine on a timeline: plain Python, no I/O (simulators/opcua/server.py serves it).

States follow ISA-TR88.00.02 (PackTags Status.StateCurrent codes): from Stopped the machine
cycles Resetting -> Idle -> Starting -> Execute -> Completing -> Completed -> Resetting ...,
one state per `step_s`, counting good units (and now and then a reject) while in Execute.
`abort()` (a jam) goes Aborting -> Aborted -> Clearing -> Stopped with the MaterialJam alarm
and stop reason Jam; the cycle then goes on. The heartbeat counts up every `heartbeat_s`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

STOPPED, STARTING, IDLE, EXECUTE = 2, 3, 4, 6
ABORTING, ABORTED, CLEARING = 8, 9, 1
RESETTING, COMPLETING, COMPLETED = 15, 16, 17
CYCLE = (RESETTING, IDLE, STARTING, EXECUTE, EXECUTE, EXECUTE, COMPLETING, COMPLETED)
AFTER_ABORT = (ABORTING, ABORTED, CLEARING, STOPPED)
JAM_REASON = 3
JAM_ALARM_BIT = 4  # MaterialJam
SPEED_PPM = 120.0


@dataclass
class PackMLTimeline:
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
