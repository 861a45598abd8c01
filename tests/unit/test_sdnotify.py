"""gateway/sdnotify.py against a real AF_UNIX datagram socket, the way systemd listens.

systemd reads each datagram as newline-separated NAME=value lines and, with NotifyAccess=main,
accepts it only from the main PID: the sender's credentials (SO_PASSCRED) are checked here too.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import sdnotify

CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Listener:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock.bind(bind_to)
        self.sock.settimeout(5)
        self.address = address

    def receive(self) -> tuple[list[str], int]:
        """One datagram: its lines and the sender's PID."""
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDS.size))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = CREDS.unpack(payload[: CREDS.size])[0]
        return data.decode().split("\n"), pid

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    directory = tempfile.mkdtemp(prefix="sdn-")  # short: sun_path holds 107 bytes
    path = os.path.join(directory, "notify")
    lis = Listener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield lis
    lis.close()
    os.unlink(path)
    os.rmdir(directory)


def test_lines_arrive_as_one_datagram_from_our_pid(listener: Listener) -> None:
    assert sdnotify.notify("READY=1", "STATUS=4/4 readers up, outbox 0, broker connected")
    lines, pid = listener.receive()
    assert lines == ["READY=1", "STATUS=4/4 readers up, outbox 0, broker connected"]
    assert pid == os.getpid(), "NotifyAccess=main accepts only the main process"


def test_each_call_is_its_own_datagram(listener: Listener) -> None:
    sdnotify.notify("WATCHDOG=1")
    sdnotify.notify("STOPPING=1")
    assert listener.receive()[0] == ["WATCHDOG=1"]
    assert listener.receive()[0] == ["STOPPING=1"]


def test_utf8_status_survives(listener: Listener) -> None:
    sdnotify.notify("STATUS=ドック 3: 2/2 readers up")
    assert listener.receive()[0] == ["STATUS=ドック 3: 2/2 readers up"]


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd in containers hands out "@name" addresses (Linux abstract namespace)."""
    address = f"@fc-edge-test-{uuid.uuid4().hex}"
    lis = Listener(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    try:
        assert sdnotify.notify("READY=1")
        assert lis.receive()[0] == ["READY=1"]
    finally:
        lis.close()


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_a_vanished_socket_is_never_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """systemd restarting or shutting down: the daemon must go on, not crash on ECONNREFUSED."""
    gone = tmp_path / "gone"
    lis = Listener(str(gone))
    lis.close()  # the file stays, nobody listens: ECONNREFUSED
    monkeypatch.setenv("NOTIFY_SOCKET", str(gone))
    assert sdnotify.notify("WATCHDOG=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "never-existed"))
    assert sdnotify.notify("WATCHDOG=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval_s() == 15.0


def test_no_watchdog_without_usec_or_for_another_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for our parent, say
    assert sdnotify.watchdog_interval_s() is None
