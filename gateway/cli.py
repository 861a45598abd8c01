"""fc-edge: run | check-config | listen | simulate | score | record | bench | outbox | demo."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Callable

from gateway import config as config_mod

EX_USAGE = 64
EX_CONFIG = config_mod.EX_CONFIG

# Subcommands implemented elsewhere: name -> "module:function" taking argv, imported lazily so
# that `fc-edge run` never pays for the simulators and benchmarks.
DELEGATED = {
    "listen": "gateway.listen:main",
    "score": "gateway.score:main",
    "record": "gateway.record:main",
    "demo": "gateway.demo:main",
    "scenario": "simulators.scenario:main",
}
SIMULATORS = {
    "llrp": "simulators.llrp.cli:main",
    "tsl": "simulators.tsl.cli:main",
    "modbus": "simulators.modbus.cli:main",
    "opcua": "simulators.opcua.cli:main",
    "vda5050": "simulators.vda5050.cli:main",
}
BENCHES = {
    "outbox": "gateway.bench:outbox_main",
    "drain": "gateway.bench:drain_main",
    "engine": "gateway.bench.engine:main",
    "accuracy": "gateway.bench.engine:main",
    "llrp": "gateway.bench.llrp:main",
    "memory": "gateway.bench:memory_main",
    "reduction": "gateway.bench:reduction_main",
    "pipeline": "gateway.bench:pipeline_main",
    "latency": "gateway.bench.latency:main",
    "all": "gateway.bench:all_main",
}


def load_function(target: str) -> Callable[[list[str]], int]:
    module_name, func = target.split(":")
    fn: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func)
    return fn


def load_settings(path: str, files_too: bool = False) -> config_mod.Settings | None:
    """The settings, or None once every problem is printed. `files_too`: also check that every
    file the config names can be read (what `run` will open), as check-config and run do."""
    try:
        settings = config_mod.load(path)
        if files_too:
            config_mod.check_named_files(settings)
        return settings
    except config_mod.ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config, files_too=True)
    if settings is None:
        return EX_CONFIG
    print(config_mod.summary(settings))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.daemon import run_gateway

    logs.setup(
        args.log_level, json_lines=None if args.log_format == "auto" else args.log_format == "json"
    )
    settings = load_settings(args.config, files_too=True)  # before the outbox is opened
    if settings is None:
        return EX_CONFIG
    if settings.mqtt.tls and settings.mqtt.tls.insecure:
        import logging

        logging.getLogger("fc_edge").warning(
            "TLS certificate verification is OFF (mqtt.tls.insecure)"
        )
    return asyncio.run(run_gateway(settings))


def cmd_outbox(args: argparse.Namespace) -> int:
    from gateway.outbox import Outbox, OutboxError

    settings = load_settings(args.config)
    if settings is None:
        return EX_CONFIG
    try:
        outbox = Outbox(settings.state_path / "outbox.db")
    except OutboxError as exc:
        print(exc, file=sys.stderr)
        return 74
    try:
        if args.action == "stats":
            print(json.dumps(outbox.stats().to_json(), indent=2))
        else:
            limit = args.limit if args.action == "peek" else 1 << 62
            for row in outbox.peek(limit, args.stream):
                print(json.dumps({"topic": row.subtopic, "message": json.loads(row.payload)}))
    finally:
        outbox.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fc-edge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("-c", "--config", required=True)
    run.add_argument("--log-level", default="info")
    run.add_argument("--log-format", choices=["auto", "json", "text"], default="auto")
    run.set_defaults(fn=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(fn=cmd_check_config)

    outbox = sub.add_parser("outbox", help="look at what waits in the outbox")
    outbox.add_argument("action", choices=["stats", "peek", "export"])
    outbox.add_argument("-c", "--config", required=True)
    outbox.add_argument("--limit", type=int, default=20)
    outbox.add_argument("--stream")
    outbox.set_defaults(fn=cmd_outbox)

    for name in DELEGATED:
        sub.add_parser(name, add_help=False, help=f"see fc-edge {name} --help")
    sim = sub.add_parser(
        "simulate", add_help=False, help="simulate a device: llrp | tsl | modbus | opcua | vda5050"
    )
    sim.add_argument("kind", choices=sorted(SIMULATORS))
    bench = sub.add_parser("bench", add_help=False, help="benchmarks: " + " | ".join(BENCHES))
    bench.add_argument("what", choices=sorted(BENCHES))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return load_function(DELEGATED[argv[0]])(argv[1:])
    if len(argv) >= 2 and argv[0] == "simulate" and argv[1] in SIMULATORS:
        return load_function(SIMULATORS[argv[1]])(argv[2:])
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHES:
        rest = argv[2:]
        if argv[1] in ("engine", "accuracy"):
            rest = [argv[1], *rest]  # bench_engine.main takes the figure as its first word
        return load_function(BENCHES[argv[1]])(rest)
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
