"""`fc-edge simulate opcua`: a PackML machine or a robot cell on an OPC UA server (asyncua).

    fc-edge simulate opcua --device packml --listen 127.0.0.1:4840
    fc-edge simulate opcua --device robot --listen 127.0.0.1:4841

The first stdout line is `{"host": ..., "port": ..., "url": ...}`. Then control commands are
read from stdin, one JSON object per line, each answered by one JSON line on stdout:

    {"fault": "abort"}        the machine jams now (Aborting, MaterialJam, stop reason Jam)
    {"fault": "freeze"}       the timeline and the heartbeat stop (the server still answers)
    {"fault": "stall"}        values move, subscriptions hear nothing (reads still see them)
    {"fault": "bad_status"}   State has the status BadDeviceFailure
    {"fault": "none"}         clear every fault
    {"status": true}          the current values and faults (robot: the acked seqs)
"""

from __future__ import annotations

import argparse
import sys

from simulators.control import answer_commands, emit, parse_listen, run_simulator
from simulators.opcua.device import PackMLTimeline, RobotCell, SimulatedDevice
from simulators.opcua.server import DeviceServer

DEVICES = ("packml", "robot")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fc-edge simulate opcua", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=DEVICES, required=True)
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 0),
        help="HOST:PORT to serve opc.tcp on (port 0: any free port; default 127.0.0.1:0)",
    )
    p.add_argument("--step-s", type=float, default=1.0, help="packml: seconds per PackML state")
    p.add_argument("--move-every-s", type=float, default=1.0, help="robot: seconds between moves")
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument(
        "--serial-offset",
        type=int,
        default=0,
        help="robot: added to every tote id and EPC serial (two robots on one site: 500000)",
    )
    p.add_argument("--seed", type=int, default=1)
    return p


def make_device(args: argparse.Namespace) -> SimulatedDevice:
    if args.device == "robot":
        return RobotCell(
            move_every_s=args.move_every_s,
            heartbeat_s=args.heartbeat_s,
            serial_offset=args.serial_offset,
        )
    return PackMLTimeline(step_s=args.step_s, heartbeat_s=args.heartbeat_s, seed=args.seed)


async def serve(args: argparse.Namespace) -> int:
    host, port = args.listen
    server = DeviceServer(make_device(args), host=host, port=port)
    try:
        bound_host, bound_port = await server.start()
    except OSError as exc:
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 1
    emit({"host": bound_host, "port": bound_port, "url": f"opc.tcp://{bound_host}:{bound_port}"})
    await answer_commands(server.control, "opcua-sim")
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_simulator(serve(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
