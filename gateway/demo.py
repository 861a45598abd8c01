"""`fc-edge demo`: a bundled capture through the real gateway into a mosquitto of its own, with
`fc-edge listen` as the IMS, so a new user sees the whole data path in a minute.

It never touches a system broker: it starts its own on a free loopback port (or uses
--broker), writes its config under a temporary state directory, and prints where to look next.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise SystemExit("mosquitto is not installed: sudo apt-get install -y mosquitto")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    log = open(workdir / "mosquitto.log", "wb")  # noqa: SIM115 (lives as long as the broker)
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)  # noqa: S603 (fixed argv)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"mqtt://127.0.0.1:{port}"
        time.sleep(0.05)
    raise SystemExit("mosquitto did not start; see " + str(workdir / "mosquitto.log"))


def cli(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gateway.cli", *args]
    return subprocess.Popen(argv, cwd=ROOT, **kw)  # noqa: S603 (our own CLI, no shell)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge demo", description=__doc__.split("\n")[0])
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--broker", help="use this broker instead of starting one")
    p.add_argument("--no-tty", action="store_true", help="print a summary, no live view")
    args = p.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="fc-edge-demo-"))
    broker_proc = None
    broker = args.broker
    if broker is None:
        broker_proc, broker = start_broker(workdir)
    metrics_port = free_port()
    config = (ROOT / "config" / "example.toml").read_text()
    config = config.replace('"captures/', f'"{ROOT}/config/captures/')
    config = config.replace("127.0.0.1:9464", f"127.0.0.1:{metrics_port}")
    conf_path = workdir / "demo.toml"
    conf_path.write_text(config)
    env = {**os.environ, "FC_EDGE_STATE_DIR": str(workdir / "state"), "FC_EDGE_MQTT_URL": broker}
    print(f"demo: broker {broker}, config {conf_path}, state {workdir / 'state'}")
    listen_out = open(workdir / "listen.jsonl", "wb")  # noqa: SIM115
    listen = cli(
        "listen",
        "--broker",
        broker,
        "--site",
        "TYO-FC1",
        "--streams",
        "movements,dropped",
        stdout=listen_out,
        stderr=subprocess.DEVNULL,
    )
    gw_log = open(workdir / "gateway.log", "wb")  # noqa: SIM115
    gateway = cli(
        "run", "-c", str(conf_path), "--log-format", "text", stdout=gw_log, stderr=gw_log, env=env
    )
    shown = 0
    try:
        deadline = time.monotonic() + args.duration_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            shown = show_new(workdir / "listen.jsonl", shown, quiet=args.no_tty)
    except KeyboardInterrupt:
        pass
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        time.sleep(0.5)
        listen.send_signal(signal.SIGTERM)
        listen.wait(10)
        listen_out.close()
        gw_log.close()
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(10)
    shown = show_new(workdir / "listen.jsonl", shown, quiet=args.no_tty)
    summarize(workdir / "listen.jsonl")
    print(f"\nnext: the config it used: {conf_path}")
    print(f"      the gateway's log: {workdir / 'gateway.log'}")
    print("      run it yourself: fc-edge run -c config/example.toml (see README.md)")
    return 0


def read_lines(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def show_new(path: Path, shown: int, quiet: bool) -> int:
    lines = read_lines(path)
    if not quiet:
        for m in lines[shown:]:
            print(
                f"  {m.get('time', '')}  {m.get('type', ''):9} {m.get('epc') or m.get('object_id')}"
                f"  {m.get('from') or '-'} -> {m.get('to') or '-'}  seq {m.get('seq')}"
            )
    return len(lines)


def summarize(path: Path) -> None:
    lines = read_lines(path)
    by_type: dict[str, int] = {}
    for m in lines:
        by_type[m.get("type", "?")] = by_type.get(m.get("type", "?"), 0) + 1
    print(json.dumps({"demo": "summary", "messages": len(lines), "by_type": by_type}))
