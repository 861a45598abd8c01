"""Fixtures shared by all tests: a real mosquitto on a free loopback port (plain and TLS),
and a way to write gateway configs and run the real `fc-edge` process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, json_lines, wait_for

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class Broker:
    """A mosquitto of our own. stop()/start() keep its port (and its persistence file)."""

    workdir: Path
    port: int
    persistence: bool = False
    tls: dict[str, str] | None = None
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        if os.geteuid() == 0:  # else mosquitto drops to user mosquitto and cannot read tmp files
            lines.append("user root")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        else:
            lines += ["persistence false"]
        if self.tls:
            lines += [
                f"cafile {self.tls['ca']}",
                f"certfile {self.tls['cert']}",
                f"keyfile {self.tls['key']}",
            ]
            if self.tls.get("require_certificate"):
                lines += ["require_certificate true"]
        lines += ["max_queued_messages 1000000", "max_inflight_messages 0", *self.extra]
        path = self.workdir / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        conf = self.write_config()
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 (kept open for the process)
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        wait_for(self._listening, timeout=10)

    def _listening(self) -> bool:
        import socket

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "broker", free_port())
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop()


def make_certs(directory: Path) -> dict[str, str]:
    """A CA, a server cert for 127.0.0.1 and a client cert, made with the openssl CLI."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fc-edge test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            "-extfile",
            "san.ext",
        )
    return {
        k: str(directory / v)
        for k, v in {
            "ca": "ca.pem",
            "cert": "server.pem",
            "key": "server.key",
            "client_cert": "client.pem",
            "client_key": "client.key",
        }.items()
    }


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_broker(tmp_path: Path, certs: dict[str, str]) -> Iterator[Broker]:
    b = Broker(tmp_path / "tls-broker", free_port(), tls=dict(certs))
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop()


# --- running the real gateway ----------------------------------------------------------------


def gateway_toml(
    state_dir: Path,
    broker_url: str,
    readers: str,
    *,
    extra: str = "",
    outbox: str = "",
    site: str = "S1",
    gw: str = "gw-1",
    metrics_port: int | None = None,
) -> str:
    metrics = (
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        if metrics_port
        else "[metrics]\nenabled = false\n"
    )
    return f"""
[gateway]
site = "{site}"
id = "{gw}"
state_dir = "{state_dir}"
shutdown_timeout_s = 5

[mqtt]
url = "{broker_url}"
client_id = "fc-edge-{gw}"

[outbox]
{outbox}

{metrics}

[locations.YARD]
offsite = true

[locations.DOCK-03]
biz_step = "receiving"
disposition = "in_progress"

[locations.STAGING]
biz_step = "storing"
disposition = "sellable_not_accessible"

{extra}

{readers}
"""


def gateway_head(state_dir: Path, broker_url: str, site: str = "S1", gw: str = "gw-1") -> str:
    """[gateway], [mqtt] and metrics off: the part every test config shares."""
    return f"""
[gateway]
site = "{site}"
id = "{gw}"
state_dir = "{state_dir}"
shutdown_timeout_s = 5
[mqtt]
url = "{broker_url}"
client_id = "fc-edge-{gw}"
[metrics]
enabled = false
"""


def replay_reader(capture: Path, name: str = "dock-03", speed: float = 1.0) -> str:
    return f"""
[[readers]]
name = "{name}"
driver = "replay"
file = "{capture}"
speed = {speed}
[readers.antennas]
1 = {{ location = "YARD", read_point = "{name}-outside" }}
2 = {{ location = "DOCK-03", read_point = "{name}-inside" }}

[portals.{name}]
outside = ["{name}:1"]
inside = ["{name}:2"]
"""


def fc_edge(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """Start the real CLI in a subprocess (python -m gateway.cli), output to files or pipes."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], cwd=ROOT, env=env, **kw)


class ListenProcess:
    """`fc-edge listen` writing its stdout to a file we can read while it runs."""

    def __init__(
        self, workdir: Path, broker_url: str, site: str = "S1", *args: str, wait: bool = True
    ) -> None:
        self.out_path = workdir / f"listen-{time.monotonic_ns()}.jsonl"
        self.err_path = self.out_path.with_suffix(".err")
        self.out = open(self.out_path, "wb")  # noqa: SIM115
        self.err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = fc_edge(
            "listen",
            "--broker",
            broker_url,
            "--site",
            site,
            *args,
            stdout=self.out,
            stderr=self.err,
        )
        if wait:  # a QoS 1 message published before the subscription exists is not ours
            self.wait_subscribed()

    def wait_subscribed(self, timeout: float = 30) -> None:
        wait_for(lambda: any(e.get("event") == "subscribed" for e in self.stderr_events()), timeout)

    def lines(self) -> list[dict[str, Any]]:
        return json_lines(self.out_path)

    def stop(self) -> dict[str, Any]:
        """Stop it; returns the final summary it printed on stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.out.close()
        self.err.close()
        summary = {}
        for line in self.err_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "summary":
                summary = entry
        return summary

    def stderr_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.err_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out
