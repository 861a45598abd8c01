"""`fc-edge simulate modbus`: one scripted Modbus device on TCP (or RTU on a serial port).

    fc-edge simulate modbus --device robot --listen 127.0.0.1:5020

The first stdout line is `{"host": ..., "port": ...}` (or `{"serial": ...}` for RTU). Then
control commands are read from stdin, one JSON object per line, each answered by one JSON
line on stdout:

    {"fault": "exception", "code": 6}    answer every request with exception code 6
    {"fault": "no_answer"}               drop every request (clients time out)
    {"fault": "garbage"}                 answer with random bytes
    {"fault": "freeze"}                  stop the script and the heartbeat
    {"fault": "disconnect"}              close all client connections now
    {"fault": "none"}                    clear all faults
    {"status": true}                     requests served, faults, acked robot moves
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from simulators.control import answer_commands, emit, parse_listen, run_simulator
from simulators.modbus.devices import DEVICES, PackMLMachine, RobotCell, SimulatedDevice
from simulators.modbus.server import SimulatorServer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fc-edge simulate modbus", description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=sorted(DEVICES), required=True)
    p.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 0),
        help="HOST:PORT for Modbus TCP (port 0: any free port; default 127.0.0.1:0)",
    )
    p.add_argument(
        "--serial", help="serve Modbus RTU on this serial port (e.g. one end of a pty pair)"
    )
    p.add_argument("--baudrate", type=int, default=19200)
    p.add_argument("--device-id", type=int, default=1)
    p.add_argument("--heartbeat-s", type=float, default=1.0)
    p.add_argument("--move-every-s", type=float, default=2.0, help="robot: seconds between moves")
    p.add_argument("--fault-rate", type=float, default=0.1, help="packml: chance of an abort")
    p.add_argument("--no-script", action="store_true", help="registers change only on command")
    p.add_argument("--seed", type=int, default=1)
    return p


def make_device(args: argparse.Namespace) -> SimulatedDevice:
    common: dict[str, Any] = {
        "heartbeat_s": args.heartbeat_s,
        "script": not args.no_script,
        "seed": args.seed,
    }
    if args.device == "robot":
        return RobotCell(move_every_s=args.move_every_s, **common)
    if args.device == "packml":
        return PackMLMachine(fault_rate=args.fault_rate, **common)
    return DEVICES[args.device](**common)


async def serve(args: argparse.Namespace) -> int:
    host, port = args.listen
    server = SimulatorServer(
        make_device(args),
        host=host,
        port=port,
        serial=args.serial,
        baudrate=args.baudrate,
        device_id=args.device_id,
    )
    try:
        bound_host, bound_port = await server.start()
    except (OSError, RuntimeError) as exc:
        print(f"cannot serve: {exc}", file=sys.stderr)
        return 1
    emit({"serial": args.serial} if args.serial else {"host": bound_host, "port": bound_port})
    await answer_commands(server.control, "modbus-sim")
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_simulator(serve(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
