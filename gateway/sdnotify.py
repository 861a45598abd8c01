"""systemd's notify protocol: a datagram of NAME=value lines to $NOTIFY_SOCKET.

A few lines, so written here rather than pulled in as a dependency. Without $NOTIFY_SOCKET
(not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> bool:
    """Send lines such as "READY=1", "STATUS=..."; returns False when there is no socket."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        return True
    except OSError:
        return False  # systemd gone (shutdown) or a stale variable: never fatal


def watchdog_interval_s() -> float | None:
    """Half of WatchdogSec (systemd's advice), or None when no watchdog is configured."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
