"""What every benchmark shares: the machine it ran on, a scratch folder, one JSON document out,
and the child processes it measures. A leaf: the bench modules import it, it imports none of
them (gateway.bench, gateway.bench.engine and gateway.bench.latency used to import each other).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


@contextmanager
def workdir(base: str | None, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def emit(doc: dict[str, Any], as_json: bool, summary: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        print(json.dumps(doc, indent=2))
    else:
        print(summary(doc))


def _ready(port: int) -> bool:
    import urllib.error
    import urllib.request

    # /readyz answers 503 once the replay reader has played its (empty) file: that is fine
    # here, only the broker connection matters.
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:  # noqa: S310 (loopback)
            raw = reply.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
    except (OSError, urllib.error.URLError):
        return False
    try:
        return bool(json.loads(raw).get("broker") == "connected")
    except ValueError:
        return False


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of `pid` ("main") and of each of its live children (by "child-PID"): a
    gateway with decoder processes spends its CPU in several."""
    out = {"main": _cpu_s(pid)}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out[f"child-{entry.name}"] = _cpu_s(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return out
