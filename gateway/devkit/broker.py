"""A mosquitto of our own on a loopback port: never the system broker. Used by the demo, the
benchmarks, the soak and the tests (tests/conftest.py's `broker` fixtures)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.devkit.process import free_port, listening


class BrokerError(RuntimeError):
    """mosquitto is missing, or exited, or did not listen in time (the message says which)."""


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise BrokerError("mosquitto is not installed: sudo apt-get install -y mosquitto")
    return binary


@dataclass
class Mosquitto:
    """start() / stop() keep the port (chosen free on the first start when not given) and the
    persistence file, so a restart is the same broker to its clients, as after an outage."""

    workdir: Path
    port: int | None = None
    persistence: bool = False
    autosave_s: int = 1  # with persistence: how often mosquitto writes its file
    tls: dict[str, str] | None = None  # ca, cert, key; "require_certificate" for mTLS
    extra: list[str] = field(default_factory=list)  # more mosquitto.conf lines
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> Path:
        return self.workdir / "mosquitto.log"

    def config_lines(self) -> list[str]:
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        if os.geteuid() == 0:  # else mosquitto drops to user mosquitto and cannot use workdir
            lines.append("user root")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                f"autosave_interval {self.autosave_s}",
            ]
        else:
            lines.append("persistence false")
        if self.tls:
            lines += [
                f"cafile {self.tls['ca']}",
                f"certfile {self.tls['cert']}",
                f"keyfile {self.tls['key']}",
            ]
            if self.tls.get("require_certificate"):
                lines.append("require_certificate true")
        # The defaults (1,000 queued, 20 in flight) would drop an IMS's backlog after an outage.
        lines += ["max_queued_messages 1000000", "max_inflight_messages 0", *self.extra]
        return lines

    def start(self, timeout: float = 10.0) -> int:
        """Start it and wait until it listens; its port."""
        binary = mosquitto_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(self.config_lines()) + "\n")
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            log_from = log.tell()
            self.proc = subprocess.Popen(  # noqa: S603 (fixed argv)
                [binary, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited: {self._log_since(log_from)[-300:]}")
            # Ours once it says it runs (a port that accepts may be somebody else's listener).
            if " running" in self._log_since(log_from) and listening(self.port):
                return self.port
            time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise BrokerError(
            f"mosquitto did not listen on {self.port} within {timeout} s: see {self.log}"
        )

    def _log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: mosquitto saves its persistence file first)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
