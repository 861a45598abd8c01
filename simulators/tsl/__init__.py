"""Simulated TSL ASCII 2 handheld reader: `python -m simulators.tsl --scenario FILE --pty`."""

from simulators.tsl.reader import SimulatedReader, TagInRange
from simulators.tsl.transport import PtyTransport, TcpTransport

__all__ = ["PtyTransport", "SimulatedReader", "TagInRange", "TcpTransport"]
