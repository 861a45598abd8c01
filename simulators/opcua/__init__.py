"""OPC UA device simulator (a PackML machine) on asyncua's server."""

from simulators.opcua.device import PackMLTimeline
from simulators.opcua.server import NODES, PackMLServer

__all__ = ["NODES", "PackMLServer", "PackMLTimeline"]
