"""Modbus device simulators (conveyor, PackML machine, robot cell) on pymodbus's server."""

from simulators.modbus.devices import (
    DEVICES,
    Conveyor,
    PackMLMachine,
    RobotCell,
    SimulatedDevice,
)
from simulators.modbus.server import Faults, SimulatorServer, SimulatorThread

__all__ = [
    "DEVICES",
    "Conveyor",
    "Faults",
    "PackMLMachine",
    "RobotCell",
    "SimulatedDevice",
    "SimulatorServer",
    "SimulatorThread",
]
