"""`fc-edge simulate vda5050`: AMRs publishing VDA 5050 v2 state and connection messages.

    fc-edge simulate vda5050 --broker mqtt://127.0.0.1:1883 --vehicles 2

The first stdout line is `{"broker": ..., "topics": [...], "vehicles": [serial, ...]}`. Then
control commands are read from stdin, one JSON object per line, each answered by one JSON
line on stdout ("vehicle": a serial number; without it, every vehicle):

    {"fault": "missing_fields"}    a state without driving and batteryState (schema-invalid)
    {"fault": "out_of_order"}      an older state sent again with its old headerId
    {"fault": "connection_lost", "down_s": 3}
                                   the TCP connection drops without DISCONNECT: the broker
                                   publishes the will (CONNECTIONBROKEN); back after down_s
    {"hold": true}                 no new steps: the current state is repeated (false: go on;
                                   --start-delay-s holds the vehicles that long at the start)
    {"status": true}               per vehicle: headerIds, orders, the finished pick/drops
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from simulators.control import answer_commands, emit, run_simulator
from simulators.vda5050.fleet import Fleet, SimulatedVehicle
from simulators.vda5050.vehicle import Vehicle


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fc-edge simulate vda5050", description=__doc__.split("\n")[0])
    p.add_argument("--broker", required=True, help="the fleet broker, mqtt://HOST[:PORT]")
    p.add_argument("--vehicles", type=int, default=2, help="how many AMRs (default 2)")
    p.add_argument("--manufacturer", default="fcsim")
    p.add_argument("--serial-prefix", default="amr-", help="serial numbers: PREFIX1, PREFIX2, …")
    p.add_argument("--interface-name", default="uagv")
    p.add_argument("--major-version", default="v2")
    p.add_argument("--step-s", type=float, default=1.0, help="seconds per step (one state each)")
    p.add_argument(
        "--start-delay-s",
        type=float,
        default=0.0,
        help="the vehicles stand still (repeating an idle state) this long before the first order",
    )
    # VDA 5050 says QoS 0 for state; 1 lets the broker queue states for a gateway that is down.
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS of state messages")
    return p


def make_fleet(args: argparse.Namespace) -> Fleet:
    vehicles = []
    for i in range(1, args.vehicles + 1):
        vehicle = Vehicle(f"{args.serial_prefix}{i}", args.manufacturer, i)
        topic = f"{args.interface_name}/{args.major_version}/{args.manufacturer}/{vehicle.serial}"
        vehicles.append(SimulatedVehicle(vehicle, topic, args.qos))
    return Fleet(args.broker, vehicles, step_s=args.step_s)


async def serve(args: argparse.Namespace) -> int:
    fleet = make_fleet(args)
    try:
        fleet.start()
    except OSError as exc:
        print(f"cannot connect to {args.broker}: {exc}", file=sys.stderr)
        return 1
    topics = [f"{v.topic}/{{state,connection}}" for v in fleet.vehicles]
    emit(
        {
            "broker": args.broker,
            "topics": topics,
            "vehicles": [v.vehicle.serial for v in fleet.vehicles],
        }
    )
    fleet.hold = args.start_delay_s > 0  # an observer starting meanwhile misses no action
    runner = asyncio.create_task(fleet.run())
    asyncio.get_running_loop().call_later(args.start_delay_s, setattr, fleet, "hold", False)
    await answer_commands(fleet.control, "vda5050-sim")
    runner.cancel()
    fleet.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.vehicles < 1 or args.step_s <= 0:
        print("--vehicles must be at least 1 and --step-s positive", file=sys.stderr)
        return 2
    return run_simulator(serve(args))


if __name__ == "__main__":
    sys.exit(main())
