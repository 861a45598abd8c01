"""OPC UA device simulators (a PackML machine, a robot cell) on asyncua's server."""

from simulators.opcua.device import PackMLTimeline, RobotCell, SimulatedDevice
from simulators.opcua.server import DeviceServer

__all__ = ["DeviceServer", "PackMLTimeline", "RobotCell", "SimulatedDevice"]
