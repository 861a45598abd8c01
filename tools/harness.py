"""Running the real gateway from outside, for the tests and for tools/soak.py alike: JSON lines
another process is writing, SGTIN-96 EPCs made quickly, the real `fc-edge` CLI in a subprocess
and `fc-edge listen` as the IMS (ports, polling and the broker: gateway.devkit).

Not test code: tools/ imports nothing from tests/, and tests/support/ re-exports these."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.devkit.process import free_port, wait_for

__all__ = ["ROOT", "ListenProcess", "fc_edge", "free_port", "json_lines", "sgtin96", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a running process has written to `path` so far. A last line without its
    newline is still being written and is left for the next look (parsing it failed a CI run
    once); every complete line must parse."""
    text = path.read_text(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def sgtin96(company: int, item: int, serial: int, filter_value: int = 1) -> str:
    """An SGTIN-96 EPC (hex) for a 7-digit company prefix (partition 5), packed by hand so
    tests can make thousands quickly; decode_epc() checks the packing against epcpy."""
    value = 0x30
    value = value << 3 | filter_value
    value = value << 3 | 5  # partition 5: 24-bit company prefix, 20-bit item reference
    value = value << 24 | company
    value = value << 20 | item
    value = value << 38 | serial
    return f"{value:024X}"


def fc_edge(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """Start the real CLI in a subprocess (python -m gateway.cli), output to files or pipes."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    argv = [sys.executable, "-m", "gateway.cli", *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, **kw)  # noqa: S603 (our own interpreter and CLI)


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
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
                self.proc.wait(10)
                stacks = self.err_path.read_text()[-4000:]
                raise AssertionError(
                    f"fc-edge listen ignored SIGTERM for 15 s:\n{stacks}"
                ) from None
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
