"""`fc-edge simulate llrp`: serve a scenario's readers over LLRP until stopped.

    fc-edge simulate llrp --scenario FILE [--host 127.0.0.1] [--truth FILE]
                          [--gateway-config FILE [--state-dir D] [--mqtt-url URL]]
                          [--speed N] [--control-port N] [--grace-s S] [--start-delay-s S]
                          [--profile impinj|zebra] [--stale-session-s S]

FILE may also name a bundled scenario ("dock-receive"). `--profile` says what every reader is
(simulators/llrp/profiles.py: the Impinj R420, or a Zebra FX reader); `--stale-session-s S`
starts each reader held by a client that is gone without closing: connections are refused
("a Client initiated connection already exists") until S seconds after start.

The first stdout line (flushed) says where everything listens:
    {"readers": {"NAME": {"host": ..., "port": ...}}, "control": {"host": ..., "port": ...}}
The truth file (JSON lines) and the gateway config are written before that line. The command
runs until SIGTERM/SIGINT, or until the scenario's duration (scaled by speed) plus the grace
period has passed; it then prints one line {"stopped": ..., "stats": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from simulators.llrp.profiles import PROFILES
from simulators.llrp.server import Read, ReaderSpec, SimServer

logger = logging.getLogger("simulators.llrp.cli")


def _iso_ms(time_us: int) -> str:
    from gateway.model import iso_ms  # the project's one time format

    return iso_ms(time_us)


def truth_lines(truth: Sequence[Mapping[str, Any]], start_epoch_us: int, speed: float) -> list[str]:
    """Truth records with relative `t_s` turned into the UTC wall time at which the simulated
    readers play that moment: start + t_s/speed."""
    lines = []
    for record in truth:
        out = {k: v for k, v in record.items() if k != "t_s"}
        t_s = float(record.get("t_s", 0.0))
        out["time"] = _iso_ms(start_epoch_us + round(t_s * 1e6 / speed))
        lines.append(json.dumps(out))
    return lines


async def serve(
    reads: Mapping[str, Sequence[Read]],
    *,
    host: str = "127.0.0.1",
    speed: float = 1.0,
    control_port: int = 0,
    duration_s: float | None = None,
    grace_s: float = 5.0,
    start_delay_s: float = 0.0,
    truth: Sequence[Mapping[str, Any]] = (),
    truth_path: Path | None = None,
    write_config: Callable[[dict[str, int]], None] | None = None,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    profile: str = "impinj",
    stale_session_s: float = 0.0,
) -> dict[str, Any]:
    """Run the readers; returns the final stats. `duration_s` is in scenario seconds."""
    specs = [
        ReaderSpec(name, reads=list(rs), profile=profile, stale_session_s=stale_session_s)
        for name, rs in reads.items()
    ]
    server = SimServer(
        specs,
        host=host,
        speed=speed,
        control_port=control_port,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    await server.start(start_delay_s)
    try:
        if truth_path is not None:
            lines = truth_lines(truth, server.start_epoch_us, speed)
            truth_path.write_text("".join(line + "\n" for line in lines))
        if write_config is not None:
            write_config({name: r.port for name, r in server.readers.items()})
        control = server.control_address
        first = {
            "readers": server.addresses(),
            "control": {"host": control[0], "port": control[1]} if control else None,
        }
        print(json.dumps(first), file=out, flush=True)
        timeout = None if duration_s is None else start_delay_s + duration_s / speed + grace_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # (3.11's wait_for can swallow a cancel)
                await stop.wait()
        reason = "signal" if stop.is_set() else "duration"
    finally:
        stats = {name: dict(r.stats) for name, r in server.readers.items()}
        await server.stop()
    result = {"stopped": reason, "stats": stats}
    print(json.dumps(result), file=out, flush=True)
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fc-edge simulate llrp", description=__doc__.split("\n")[0])
    p.add_argument("--scenario", required=True, type=Path, help="scenario JSON file")
    p.add_argument("--host", default="127.0.0.1", help="address the readers listen on")
    p.add_argument("--truth", type=Path, help="write the ground truth here (JSON lines)")
    p.add_argument("--gateway-config", type=Path, help="write a gateway config for the readers")
    p.add_argument("--speed", type=float, default=1.0, help="play the scenario N times faster")
    p.add_argument("--control-port", type=int, default=0, help="HTTP control port (0: any)")
    p.add_argument("--grace-s", type=float, default=5.0, help="run this long after the end")
    p.add_argument(
        "--start-delay-s", type=float, default=0.0, help="scenario t=0 this long after startup"
    )
    p.add_argument("--state-dir", default="state", help="state_dir of the gateway config")
    p.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883", help="broker of that config")
    p.add_argument(
        "--profile", choices=sorted(PROFILES), default="impinj", help="what the readers are"
    )
    p.add_argument(
        "--stale-session-s",
        type=float,
        default=0.0,
        help="a stale client holds each reader this long after start (refused until then)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    if args.speed <= 0 or min(args.start_delay_s, args.grace_s, args.stale_session_s) < 0:
        print(
            "error: --speed must be > 0, --start-delay-s, --grace-s and --stale-session-s >= 0",
            file=sys.stderr,
        )
        return 2
    from simulators import scenario as scenarios

    try:
        scenario = scenarios.load_scenario(scenarios.find_scenario(str(args.scenario)))
        rendering = scenarios.render(scenario)
    except scenarios.ScenarioError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 65  # EX_DATAERR, as `fc-edge scenario` does
    reads: dict[str, Sequence[Read]] = {name: [] for name in scenario.readers}
    reads.update(rendering.reads)

    write_config = None
    if args.gateway_config is not None:
        path = args.gateway_config

        def write_config(ports: dict[str, int]) -> None:
            scenarios.write_gateway_config(
                scenario, ports, args.host, path, state_dir=args.state_dir, mqtt_url=args.mqtt_url
            )

    asyncio.run(
        serve(
            reads,
            host=args.host,
            speed=args.speed,
            control_port=args.control_port,
            duration_s=rendering.duration_s,
            grace_s=args.grace_s,
            start_delay_s=args.start_delay_s,
            truth=rendering.truth,
            truth_path=args.truth,
            write_config=write_config,
            profile=args.profile,
            stale_session_s=args.stale_session_s,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
