"""The pretend systemd and the HTTP scraping the ops tests use: a notify socket that records
what the daemon says, /metrics, /healthz and /readyz over HTTP, and replay captures for the
one-antenna zone reader."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid

ZONE_READER = """
[[readers]]
name = "zone-1"
driver = "replay"
file = "{capture}"
speed = 1.0
[readers.antennas]
1 = {{ location = "STAGING", read_point = "stg-1" }}
"""


# --- systemd's side of the notify protocol ----------------------------------------------------


@dataclass
class Datagram:
    lines: list[str]
    pid: int
    at: float  # time.monotonic() when received
    snapshot: dict[str, Any] = field(default_factory=dict)


class NotifySocket:
    """Binds a datagram socket like systemd's /run/systemd/notify and records every message.

    `on_ready` runs in the receiving thread the moment READY=1 arrives, to look at the world as
    it is then (is the outbox open? does /healthz answer?)."""

    def __init__(self, on_ready: Callable[[], dict[str, Any]] | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="fcn-")  # short: sun_path holds 107 bytes
        os.chmod(self.dir, 0o755)  # noqa: S103 (an unprivileged daemon must reach it)
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)  # noqa: S103 (an unprivileged daemon must be able to send)
        self.sock.settimeout(0.2)
        self.on_ready = on_ready
        self.lock = threading.Lock()
        self.received: list[Datagram] = []
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.closed:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(CREDS.size))
            except TimeoutError:
                continue
            except OSError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = CREDS.unpack(payload[: CREDS.size])[0]
            gram = Datagram(data.decode().split("\n"), pid, time.monotonic())
            if "READY=1" in gram.lines and self.on_ready is not None:
                gram.snapshot = self.on_ready()
            with self.lock:
                self.received.append(gram)

    def grams(self) -> list[Datagram]:
        with self.lock:
            return list(self.received)

    def lines(self) -> list[str]:
        return [line for g in self.grams() for line in g.lines]

    def statuses(self) -> list[str]:
        return [line[len("STATUS=") :] for line in self.lines() if line.startswith("STATUS=")]

    def index(self, line: str, after: int = -1) -> int | None:
        """Index of the first datagram after `after` that carries `line`."""
        for i, gram in enumerate(self.grams()):
            if i > after and line in gram.lines:
                return i
        return None

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def http_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    code, ctype, body = http_get(port, path)
    assert ctype.startswith("application/json"), ctype
    return code, json.loads(body)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics parsed with prometheus-client's own parser: (sample name, labels) -> value."""
    code, ctype, body = http_get(port, "/metrics")
    assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def write_capture(path: Path, epcs: list[str], per_second: float, reads_each: int = 4) -> int:
    """Each EPC read `reads_each` times 0.5 s apart on antenna 1, one new EPC every
    1/per_second s. Returns the number of reads written."""
    rows = []
    for i, epc in enumerate(epcs):
        rows += [(round(i / per_second + k * 0.5, 3), epc, 1) for k in range(reads_each)]
    return write_rows(path, rows)


def write_rows(path: Path, rows: list[tuple[float, str, int]]) -> int:
    rows.sort()
    with path.open("w") as f:
        for t, epc, antenna in rows:
            rec = {"t": t, "reader": "zone-1", "antenna": antenna, "epc": epc, "rssi": -55}
            f.write(json.dumps(rec) + "\n")
    return len(rows)
