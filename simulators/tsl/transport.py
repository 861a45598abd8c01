"""How the simulated reader reaches the gateway: a pseudo-terminal (what a USB cradle or a
Bluetooth rfcomm port looks like) or a TCP port (for pyserial's socket:// URLs).

Both can "vanish" and come back, as Bluetooth links do: the pty is closed (the host's reads
fail with EIO) and a new one is made behind the same stable symlink; the TCP listener and its
client are closed and the port is listened on again.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Callable

from simulators.tsl.reader import SimulatedReader

WRITE_TIMEOUT_S = 2.0  # nobody reading for this long: drop the data, like a serial line does


class Transport:
    def __init__(self, reader: SimulatedReader) -> None:
        self.reader = reader
        self.stop_event = threading.Event()
        self.write_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.on_change: Callable[[dict[str, object]], None] = lambda info: None
        reader.emit = self.write

    def start(self) -> dict[str, object]:
        info = self.open()
        self.thread = threading.Thread(target=self._serve, name="tsl-sim-io", daemon=True)
        self.thread.start()
        return info

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(5.0)
        self.close()

    def vanish(self, for_s: float) -> None:
        """The port disappears for for_s seconds; the reader powers up again afterwards."""
        self.close()
        self.reader.power_up()
        if self.stop_event.wait(for_s):
            return
        self.on_change(self.open())

    # subclasses
    def open(self) -> dict[str, object]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        raise NotImplementedError


class PtyTransport(Transport):
    def __init__(self, reader: SimulatedReader, link: str | None = None) -> None:
        super().__init__(reader)
        self.link = link
        self.master: int | None = None
        self.slave: int | None = None
        self.path: str | None = None
        self.dropped = 0

    def open(self) -> dict[str, object]:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: bytes pass as a serial line's do
        os.set_blocking(master, False)
        with self.write_lock:
            self.master, self.slave = master, slave
            self.path = os.ttyname(slave)
        if self.link:
            tmp = f"{self.link}.tmp{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.path, tmp)
            os.replace(tmp, self.link)  # atomic: the link never points nowhere while open
        return {"pty": self.path, "link": self.link}

    def close(self) -> None:
        with self.write_lock:
            master, slave = self.master, self.slave
            self.master = self.slave = None
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def write(self, data: bytes) -> None:
        with self.write_lock:
            fd = self.master
            if fd is None:
                self.reader.stats.dropped_bytes += len(data)
                return
            deadline = time.monotonic() + WRITE_TIMEOUT_S
            view = memoryview(data)
            while view:
                try:
                    sent = os.write(fd, view)
                    view = view[sent:]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.reader.stats.dropped_bytes += len(view)
                        return
                    select.select([], [fd], [], min(left, 0.05))
                except OSError:
                    self.reader.stats.dropped_bytes += len(view)
                    return

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            fd = self.master
            if fd is None:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(fd, 4096)
            except (OSError, ValueError):
                time.sleep(0.02)  # closed under us by vanish(): the next open() replaces it
                continue
            if data:
                self.reader.receive(data)


class TcpTransport(Transport):
    """One client at a time (a serial line has two ends); a new client replaces the old."""

    def __init__(self, reader: SimulatedReader, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(reader)
        self.host, self.port = host, port
        self.listener: socket.socket | None = None
        self.client: socket.socket | None = None

    def open(self) -> dict[str, object]:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(1)
        self.port = listener.getsockname()[1]
        self.listener = listener
        return {"host": self.host, "port": self.port}

    def close(self) -> None:
        with self.write_lock:
            client, self.client = self.client, None
        listener, self.listener = self.listener, None
        for sock in (client, listener):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def write(self, data: bytes) -> None:
        with self.write_lock:
            client = self.client
            if client is None:
                self.reader.stats.dropped_bytes += len(data)
                return
            try:
                client.sendall(data)
            except OSError:
                self.reader.stats.dropped_bytes += len(data)

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            listener, client = self.listener, self.client
            watch = [s for s in (listener, client) if s is not None]
            if not watch:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select(watch, [], [], 0.05)
            except (OSError, ValueError):
                continue
            for sock in ready:
                if sock is listener:
                    self._accept(sock)
                else:
                    self._receive(sock)

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.settimeout(WRITE_TIMEOUT_S)
        with self.write_lock:
            old, self.client = self.client, conn
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()

    def _receive(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if data:
            self.reader.receive(data)
            return
        with self.write_lock:
            if self.client is sock:
                self.client = None
        with contextlib.suppress(OSError):
            sock.close()
