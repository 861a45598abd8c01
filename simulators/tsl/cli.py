"""`fc-edge simulate tsl --scenario FILE [--pty [--link PATH] | --listen HOST:PORT]`

Prints one JSON line first — `{"pty": "/dev/pts/5", "link": "..."}` or `{"host": ..., "port":
...}` — then one JSON line per scenario step and per port change, and runs until interrupted
(or, with --exit-when-done, until the scenario has played).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from simulators.scenario import find_scenario
from simulators.tsl.reader import SimulatedReader
from simulators.tsl.scenario import ScenarioError, ScenarioRunner, load
from simulators.tsl.transport import PtyTransport, TcpTransport, Transport


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fc-edge simulate tsl", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", required=True, help="scenario JSON file")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--pty", action="store_true", help="serve on a pseudo-terminal (default)")
    where.add_argument("--listen", metavar="HOST:PORT", help="serve on TCP (for socket://)")
    p.add_argument("--link", help="with --pty: keep a stable symlink to the current pty here")
    p.add_argument("--seed", type=int, help="random seed (RSSI jitter, noise bytes)")
    p.add_argument("--exit-when-done", action="store_true", help="exit once the scenario played")
    args = p.parse_args(argv)
    if args.link and args.listen:
        p.error("--link goes with --pty")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scenario = load(find_scenario(args.scenario))  # a path or a bundled name
    except ScenarioError as exc:
        print(f"fc-edge simulate tsl: {exc}", file=sys.stderr)
        return 2
    reader = SimulatedReader(seed=args.seed if args.seed is not None else scenario.get("seed"))
    transport: Transport
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        try:
            transport = TcpTransport(reader, host or "127.0.0.1", int(port))
        except ValueError:
            print(f"fc-edge simulate tsl: bad --listen {args.listen!r}", file=sys.stderr)
            return 2
    else:
        transport = PtyTransport(reader, args.link)
    lock = threading.Lock()

    def say(event: dict[str, Any]) -> None:
        with lock:
            print(json.dumps(event), flush=True)

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Before the first line is printed: whoever reads it may stop us at once.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        info = transport.start()
    except OSError as exc:
        print(f"fc-edge simulate tsl: cannot open port: {exc}", file=sys.stderr)
        return 1
    say(info)
    transport.on_change = lambda new: say({"event": "port", **new})
    runner = ScenarioRunner(scenario, reader, transport.vanish, say)
    runner.start()
    try:
        while not stop.wait(0.1):
            if args.exit_when_done and runner.done.is_set():
                break
    finally:
        runner.stop()
        transport.stop()
        say(
            {
                "event": "stopped",
                "commands": len(reader.stats.commands),
                "alerts": len(reader.stats.alerts),
                "power_ups": reader.stats.power_ups,
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
