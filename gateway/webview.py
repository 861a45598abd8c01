"""The local web page at the metrics listener's `/`, read-only, and the JSON it polls.

- `/` the page (gateway/web/index.html: one file, inline CSS and JS, no external assets);
- `/api/status` devices (state, reads/s, last data), outbox, broker, the last movements;
- `/api/antennas?window_s=N[&reader=NAME]` the commissioning view: per antenna, the tags read
  in the last N seconds (1-60, default 10), their RSSI distribution, the read rate and how the
  engine classified the reads (gateway/commissioning.py). Asking for it keeps the tap on.

Runs on the HTTP server's threads: it reads the devices' health, the outbox's stats and the
counters as /readyz and /metrics do, and the tap's copies; it never touches the engine.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from gateway.commissioning import MAX_WINDOW_S, Antenna, CommissioningTap, Key, antenna_view
from gateway.config import Settings
from gateway.health import Health
from gateway.metrics import Metrics, WebResponse
from gateway.model import iso_ms, now_us

log = logging.getLogger("fc_edge.web")

DEFAULT_WINDOW_S = 10.0
RATE_SPAN_S = 10.0  # reads/s are averaged over about this long (the page's last polls)
MOVEMENTS_SHOWN = 20

# The page may run its own inline script and style and fetch from this listener, nothing else:
# no external asset can load, and nothing it renders can reach anywhere else.
PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
)
JSON_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"))


def page_html() -> bytes:
    """The page, shipped as package data (pyproject.toml: gateway/web/*.html)."""
    return (resources.files("gateway") / "web" / "index.html").read_bytes()


class BadQuery(ValueError):
    """A query the API refuses (answered 400, counted and logged)."""


class WebView:
    def __init__(
        self,
        settings: Settings,
        health: Health,
        metrics: Metrics,
        tap: CommissioningTap,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.tap = tap
        self.clock = clock
        self.page = page_html()
        self.rates = ReadRates(metrics, clock)

    def route(self, path: str, query: str, host: str) -> WebResponse | None:
        """gateway.metrics.WebRoute: the page and its API; None for any other path."""
        if path != "/" and not path.startswith("/api/"):
            return None
        if not addressed_by_ip(host):
            # A page elsewhere can point a name of its own at this box (DNS rebinding) and
            # read what the browser fetches; it cannot make the browser send an IP as Host.
            self.metrics.rejected.labels("web", "host_not_an_address").inc()
            log.warning("refused %s for Host %r: open the page by IP address", path, host[:100])
            return _json(403, {"error": "open the page by IP address or localhost"})
        if path == "/":
            return WebResponse(200, self.page, "text/html; charset=utf-8", PAGE_HEADERS)
        if path == "/api/status":
            return _json(200, self.status())
        if path == "/api/antennas":
            try:
                window_s, reader = antennas_query(query)
            except BadQuery as exc:
                self.metrics.rejected.labels("web", "bad_query").inc()
                log.warning("refused /api/antennas?%s: %s", query[:200], exc)
                return _json(400, {"error": str(exc)})
            self.tap.watch()
            return _json(200, self.antennas(window_s, reader))
        return None

    # --- /api/status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        ready, body = self.health.ready()
        gw = self.settings.gateway
        return {
            "site": gw.site,
            "gateway": gw.id,
            "now": iso_ms(now_us()),
            "started": iso_ms(self.health.started_us),
            "ready": ready,
            "broker": {
                "state": body["broker"],
                "since": body.get("since"),
                "last_error": body.get("last_error"),
            },
            "outbox": body["outbox"],
            "warnings": body["warnings"],
            "devices": self.devices(body["devices"]),
            "movements": self.tap.movements()[:MOVEMENTS_SHOWN],
        }

    def devices(self, health: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Every configured device, in the config's order, whether its driver runs or not."""
        rates = self.rates.per_second()
        readers = {d.name for d in self.settings.readers}

        def reads_per_s(name: str) -> float | None:  # None: not a reader, or no rate yet
            return None if rates is None or name not in readers else rates.get(name, 0.0)

        out = []
        for device in self.settings.devices:
            h = health.get(device.name, {})
            out.append(
                {
                    "name": device.name,
                    "driver": device.driver,
                    "kind": "reader" if device.name in readers else "equipment",
                    "state": h.get("state", "not started"),
                    "since": h.get("since"),
                    "last_data": h.get("last_data"),
                    "detail": h.get("detail"),
                    "errors": sum(h.get("errors", {}).values()),
                    "reconnects": sum(h.get("reconnects", {}).values()),
                    "reads_per_s": reads_per_s(device.name),
                }
            )
        return out

    # --- /api/antennas ------------------------------------------------------------------------

    def antennas(self, window_s: float, reader: str | None) -> dict[str, Any]:
        """Every configured antenna (a dead one shows no reads), then any antenna read that the
        config does not name; optionally one reader's only."""
        collecting_s, seen = self.tap.snapshot(window_s)
        now = self.clock()
        out = []
        for key, info in self.configured_antennas().items():
            if reader is None or key[0] == reader:
                view = seen.pop(key, None)
                out.append(view if view is not None else antenna_view(info, [], [], now, window_s))
        out += [view for key, view in sorted(seen.items()) if reader is None or key[0] == reader]
        return {
            "window_s": window_s,
            "collecting_s": round(collecting_s, 1),
            "antennas": out,
        }

    def configured_antennas(self) -> dict[Key, Antenna]:
        """The config's antennas (a change to [[readers]] needs a restart, so this holds)."""
        min_rssi = self.settings.engine.min_rssi_dbm
        return {
            (d.name, n): Antenna(
                d.name,
                n,
                a.location,
                a.read_point or f"{d.name}:{n}",
                min_rssi - a.rssi_offset_db,
            )
            for d in self.settings.readers
            for n, a in sorted(d.antennas.items())
        }


def addressed_by_ip(host: str) -> bool:
    """Whether a Host header names this listener by IP address or as localhost (no Host: an
    HTTP/1.0 client, not a browser)."""
    if not host:
        return True
    name = host[1 : host.find("]")] if host.startswith("[") else host.rpartition(":")[0] or host
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def antennas_query(query: str) -> tuple[float, str | None]:
    """window_s (1 to MAX_WINDOW_S, default DEFAULT_WINDOW_S) and an optional reader."""
    try:
        params = parse_qs(query, strict_parsing=bool(query), max_num_fields=4)
    except ValueError as exc:
        raise BadQuery(f"malformed query: {exc}") from None
    unknown = set(params) - {"window_s", "reader"}
    if unknown:
        raise BadQuery(f"unknown parameter(s): {', '.join(sorted(unknown))[:100]}")
    window_s = DEFAULT_WINDOW_S
    if "window_s" in params:
        try:
            window_s = float(params["window_s"][-1])
        except ValueError:
            raise BadQuery("window_s: not a number") from None
        if not (math.isfinite(window_s) and 1 <= window_s <= MAX_WINDOW_S):
            raise BadQuery(f"window_s: must be 1 to {MAX_WINDOW_S:.0f} seconds")
    reader = params["reader"][-1] if "reader" in params else None
    return window_s, reader


class ReadRates:
    """Reads/s per reader from the fc_edge_reads counter, between this poll and one about
    RATE_SPAN_S earlier (samples at least a second apart; the first poll has no rate)."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.metrics = metrics
        self.clock = clock
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=int(RATE_SPAN_S))

    def per_second(self) -> dict[str, float] | None:
        now, totals = self.clock(), self.totals()
        with self._lock:
            samples = list(self._samples)
            if not samples or now - samples[-1][0] >= 1.0:
                self._samples.append((now, totals))
        earlier = [(t, old) for t, old in samples if now - t >= 1.0]
        recent = [(t, old) for t, old in earlier if now - t <= RATE_SPAN_S]
        if not earlier:
            return None
        then, old = (recent or earlier[-1:])[0]
        span = now - then
        return {name: round((n - old.get(name, 0.0)) / span, 1) for name, n in totals.items()}

    def totals(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for family in self.metrics.reads.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    totals[sample.labels["reader"]] = sample.value
        return totals


def _json(code: int, body: dict[str, Any]) -> WebResponse:
    return WebResponse(code, json.dumps(body).encode(), "application/json", JSON_HEADERS)
