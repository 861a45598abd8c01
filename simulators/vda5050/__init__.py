"""A VDA 5050 v2 fleet of AMRs on an MQTT broker (the twin of drivers/vda5050.py)."""

from simulators.vda5050.fleet import Fleet, SimulatedVehicle
from simulators.vda5050.vehicle import Vehicle

__all__ = ["Fleet", "SimulatedVehicle", "Vehicle"]
