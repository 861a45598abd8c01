"""A mosquitto of our own on a free loopback port (plain or TLS), and test certificates made
with the openssl CLI. tests/conftest.py builds its `broker`, `tls_broker` and `certs` fixtures
on these."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.helpers import wait_for

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
