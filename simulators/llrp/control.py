"""A small HTTP/1.1 control channel for the simulator, bound to 127.0.0.1 only.

    GET  /readers                     -> {"NAME": status, ...}
    GET  /readers/NAME                -> status
    POST /readers/NAME/fault  {"fault": "drop_mid_frame"}          -> status
                              {"fault": "refuse", "seconds": 5}
                              {"fault": "malformed", "kind": "length"}
                              {"fault": "clear"}
    POST /readers/NAME/reads  {"in_s": 0.5, "reads": [[antenna, "epc hex", rssi], ...]}
                              -> {"accepted": N}

Errors answer 400 (bad JSON, unknown fault), 404 (unknown reader or path) or 405, with
{"error": "..."}; each one is counted in the server's `rejected` counter. One request per
connection (the response carries Connection: close), so `curl` and `urllib` just work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from simulators.llrp.errors import FaultError


class _Reader(Protocol):
    """What the control API does with one simulated reader (server.SimReader)."""

    def _status_now(self) -> dict[str, Any]: ...
    def set_fault(
        self, fault: str, seconds: float | None = None, kind: str | None = None
    ) -> dict[str, Any]: ...
    def add_reads_in(self, delay_s: float, reads: Iterable[tuple[int, str, float]], /) -> int: ...


class _Simulator(Protocol):
    """What the control API sees of the simulator (server.SimServer): its readers. A Protocol,
    so that this module does not import the server that starts it."""

    @property
    def readers(self) -> Mapping[str, _Reader]: ...


logger = logging.getLogger("simulators.llrp.control")

MAX_BODY = 1 << 20
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large"}  # fmt: skip


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer:
    def __init__(self, sim: _Simulator) -> None:
        self.sim = sim
        self.counts: Counter[str] = Counter()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._on_connect, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):  # (3.11's wait_for can swallow a cancel)
                    await self._server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10.0):
                method, path, body = await _read_request(reader)
            status, payload = 200, self._route(method, path, body)
            self.counts["requests"] += 1
        except HttpError as exc:
            self.counts["rejected"] += 1
            status, payload = exc.status, {"error": str(exc)}
            logger.warning("control: %s", exc)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        data = json.dumps(payload).encode()
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + data)
            await writer.drain()
        writer.close()

    def _route(self, method: str, path: str, body: bytes) -> Any:
        parts = [p for p in path.split("?")[0].split("/") if p]
        if not parts or parts[0] != "readers":
            raise HttpError(404, f"no such path {path!r}")
        if len(parts) == 1:
            _expect(method, "GET")
            return {name: r._status_now() for name, r in self.sim.readers.items()}
        name = parts[1]
        if name not in self.sim.readers:
            raise HttpError(404, f"no reader {name!r}; have {sorted(self.sim.readers)}")
        sim_reader = self.sim.readers[name]
        if len(parts) == 2:
            _expect(method, "GET")
            return sim_reader._status_now()
        if len(parts) == 3 and parts[2] == "fault":
            _expect(method, "POST")
            request = _json_object(body)
            try:
                return sim_reader.set_fault(
                    request.get("fault", ""), request.get("seconds"), request.get("kind")
                )
            except FaultError as exc:
                raise HttpError(400, str(exc)) from exc
        if len(parts) == 3 and parts[2] == "reads":
            _expect(method, "POST")
            request = _json_object(body)
            reads = request.get("reads")
            in_s = request.get("in_s", 0.0)
            if not isinstance(reads, list) or not isinstance(in_s, int | float):
                raise HttpError(400, 'expected {"in_s": seconds, "reads": [[ant, epc, rssi]]}')
            rows = [tuple(r) for r in reads if isinstance(r, list) and len(r) == 3]
            accepted = sim_reader.add_reads_in(float(in_s), rows)  # type: ignore[arg-type]
            return {"accepted": accepted, "rejected": len(reads) - accepted}
        raise HttpError(404, f"no such path {path!r}")


def _expect(method: str, wanted: str) -> None:
    if method != wanted:
        raise HttpError(405, f"use {wanted}")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise HttpError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise HttpError(400, "body must be a JSON object")
    return value


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    request_line = (await reader.readline()).decode("latin-1").strip()
    pieces = request_line.split()
    if len(pieces) != 3:
        raise HttpError(400, f"bad request line {request_line!r}")
    length = 0
    while True:
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            break
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError as exc:
                raise HttpError(400, "bad Content-Length") from exc
    if length > MAX_BODY or length < 0:
        raise HttpError(413, f"body of {length} bytes")
    body = await reader.readexactly(length) if length else b""
    return pieces[0].upper(), pieces[1], body
