"""The control channel every device simulator speaks: JSON lines on stdout (the first says
where it listens), JSON commands on stdin each answered by one JSON line, until SIGINT or
SIGTERM. Shared by `fc-edge simulate modbus` and `fc-edge simulate opcua`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number in {text!r}") from None
    if not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host.strip("[]") or "127.0.0.1", number


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def answer_commands(control: Callable[[dict[str, Any]], dict[str, Any]], name: str) -> None:
    """Apply each stdin command with `control` and print its reply, until SIGINT/SIGTERM; a
    command `control` refuses (ValueError) is answered with the reason."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, done.set)

    def handle(line: str) -> None:
        try:
            command = json.loads(line)
            if not isinstance(command, dict):
                raise ValueError("expected a JSON object")
            emit(control(command))
        except ValueError as exc:
            emit({"ok": False, "error": str(exc)})

    def read_stdin() -> None:  # a thread: stdin has no portable asyncio reader
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(handle, line)

    threading.Thread(target=read_stdin, name=f"{name}-stdin", daemon=True).start()
    await done.wait()


def run_simulator(serve: Coroutine[Any, Any, int]) -> int:
    """Run a simulator's main coroutine; its exit code (130 on Ctrl-C)."""
    try:
        return asyncio.run(serve)
    except KeyboardInterrupt:
        return 130
