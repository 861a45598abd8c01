"""Prometheus metrics (one registry per gateway) and the /metrics, /healthz, /readyz server.

Counters that the components already keep (the engine's suppression counts, the outbox's
depth) are read at scrape time by a custom collector instead of being mirrored on the hot path.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

PREFIX = "fc_edge"
log = logging.getLogger("fc_edge.http")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(
            registry=r
        )  # process_cpu_seconds_total, process_resident_memory_bytes, fds
        PlatformCollector(registry=r)
        self.reads = Counter(f"{PREFIX}_reads", "Tag reads received", ["reader"], registry=r)
        self.outbox_appends = Counter(
            f"{PREFIX}_outbox_appended_messages", "Messages appended to the outbox", registry=r
        )
        self.outbox_commits = Counter(
            f"{PREFIX}_outbox_commits", "Outbox transactions committed", registry=r
        )
        self.published = Counter(
            f"{PREFIX}_publisher_published_messages", "QoS 1 messages handed to MQTT", registry=r
        )
        self.acked = Counter(
            f"{PREFIX}_publisher_acked_messages", "Messages acknowledged (PUBACK)", registry=r
        )
        self.publish_refused = Counter(
            f"{PREFIX}_publisher_refused",
            "Publishes the MQTT client refused to queue (the messages are leased again)",
            registry=r,
        )
        self.publish_latency = Histogram(
            f"{PREFIX}_publisher_ack_latency_seconds",
            "Time from publish to PUBACK",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            f"{PREFIX}_movement_publish_delay_seconds",
            "Time from the movement's event time to its PUBACK",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.broker_connected = Gauge(
            f"{PREFIX}_broker_connected", "1 while connected to the MQTT broker", registry=r
        )
        self.broker_connects = Counter(
            f"{PREFIX}_broker_connects", "Successful MQTT connections", registry=r
        )
        self.events = Counter(
            f"{PREFIX}_device_events",
            "Device events (barcode, trigger, equipment)",
            ["device", "kind"],
            registry=r,
        )
        self.equipment_state = Gauge(
            f"{PREFIX}_equipment_state",
            "1 for the current state of each equipment state point (PackML, cell, zone)",
            ["device", "point", "state"],
            registry=r,
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected_inputs",
            "Inputs rejected with a reason (bad frames, lines, values)",
            ["source", "reason"],
            registry=r,
        )

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_FunctionCollector(collect))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _FunctionCollector(Collector):
    def __init__(self, fn: Callable[[], Iterable[Metric]]) -> None:
        self.fn = fn

    def collect(self) -> Iterable[Metric]:
        return self.fn()


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels or {}))
    g.add_metric(list((labels or {}).values()), value)
    return g


def counter(name: str, doc: str, values: dict[tuple[str, ...], float], labels: list[str]) -> Metric:
    c = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
    for key, value in values.items():
        c.add_metric(list(key), value)
    return c


class WebResponse(NamedTuple):
    """What a web route answers (gateway/webview.py: the local page and its JSON)."""

    code: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


# (path, query string, Host header) -> the response, or None when the path is not the route's.
WebRoute = Callable[[str, str, str], WebResponse | None]


def _no_web(path: str, query: str, host: str) -> WebResponse | None:
    """No page served: every other path is a 404."""
    return None


class HealthServer:
    """GET /metrics, /healthz, /readyz on one port (loopback by default), in its own thread;
    any other GET path goes to `web` (the read-only page). Only GET: other methods get 405."""

    def __init__(
        self,
        address: tuple[str, int],
        metrics: Metrics,
        health: Callable[[], dict[str, Any]],
        ready: Callable[[], tuple[bool, dict[str, Any]]],
        web: WebRoute = _no_web,
    ) -> None:
        self.metrics = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path, _, query = self.path.partition("?")
                if path == "/metrics":
                    self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, health())
                elif path == "/readyz":
                    ok, body = ready()
                    self._json(200 if ok else 503, body)
                elif (page := web(path, query, self.headers.get("Host", ""))) is not None:
                    self._send(page.code, page.body, page.content_type, page.headers)
                else:
                    self._json(
                        404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]}
                    )

            def _read_only(self) -> None:
                """Nothing here changes the gateway: every method but GET is refused."""
                metrics.rejected.labels("http", "method_not_allowed").inc()
                log.warning("refused %s %s: the listener is read-only", self.command, self.path)
                self._send(
                    405,
                    json.dumps({"error": "method not allowed", "allow": "GET"}).encode(),
                    "application/json",
                    (("Allow", "GET"),),
                )

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _read_only

            def _json(self, code: int, body: dict[str, Any]) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(
                self,
                code: int,
                data: bytes,
                content_type: str,
                headers: tuple[tuple[str, str], ...] = (),
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # scrapes every 15 s would flood the log

        self.server = ThreadingHTTPServer(address, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
