"""The local page's data, without a browser: the commissioning tap (gateway/commissioning.py)
against a real engine, and the page and its JSON API (gateway/webview.py) served by the real
metrics listener over loopback HTTP, for a gateway with no devices and one with 300.

- a read is classified against the engine's view of its tag: counted, cross_read, pending,
  stray, weak, unmapped;
- the tap holds nothing and asks the engine nothing while nobody watches, lets go of what it
  held once nobody has watched for a minute, and stays bounded while watched however many
  reads come (reads are counted exactly, a budget of them classified and kept);
- GET / is the page (one file, no external assets, a CSP that forbids any), every other method
  is 405; a bad query is a counted 400, a Host that is a name (DNS rebinding) a counted 403;
  /api/status names every configured device.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import commissioning, config
from gateway.commissioning import CommissioningTap
from gateway.config import Settings
from gateway.engine import Engine, EngineConfig
from gateway.health import Devices, Health
from gateway.metrics import HealthServer, Metrics
from gateway.model import Outgoing, TagRead, movement_body
from gateway.outbox_thread import OutboxThread
from gateway.webview import ReadRates, WebView
from tests.support.helpers import free_port

T0 = 1_700_000_000_000_000  # reader time, µs
PLACED = "3034257BF7194E4000000001"
NEW = "3034257BF7194E4000000002"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def site_toml(tmp_path: Path, readers: int = 1, far: bool = False) -> Path:
    """`readers` LLRP readers (never started here), each with antenna 1 at DOCK and antenna 2
    (3 dB hotter than it reports) at SHELF; with `far`, a reader "far" reading only BACK."""
    text = f"""
[gateway]
site = "S1"
id = "gw-1"
state_dir = "{tmp_path / "state"}"
[mqtt]
url = "mqtt://127.0.0.1:9"
[locations.DOCK]
[locations.SHELF]
[locations.BACK]
"""
    if far:
        text += '[[readers]]\nname = "far"\ndriver = "llrp"\nhost = "192.0.2.99"\n'
        text += '[readers.antennas]\n1 = { location = "BACK" }\n'
    for n in range(readers):
        text += f"""
[[readers]]
name = "r{n}"
driver = "llrp"
host = "192.0.2.{n % 250 + 1}"
[readers.antennas]
1 = {{ location = "DOCK" }}
2 = {{ location = "SHELF", rssi_offset_db = 3.0 }}
"""
    path = tmp_path / f"site-{readers}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def engine_with_a_placed_tag(settings: Settings) -> Engine:
    """A real engine that has placed PLACED at DOCK (25 reads at r0's antenna 1 over 2.4 s)."""
    engine = Engine(EngineConfig.from_settings(settings))
    reads = [TagRead(PLACED, "r0", 1, -50, T0 + i * 100_000) for i in range(25)]
    engine.feed(reads, "r0", T0 + 2_500_000)
    state = engine.state_of(PLACED)
    assert state is not None and state.location == "DOCK", state
    return engine


def read(epc: str, antenna: int, rssi: float, reader: str = "r0") -> TagRead:
    return TagRead(epc, reader, antenna, rssi, T0 + 3_000_000)


# --- the tap ----------------------------------------------------------------------------------


def test_each_read_is_classified_against_the_engines_view_of_its_tag(tmp_path: Path) -> None:
    settings = config.load(site_toml(tmp_path, far=True))
    engine = engine_with_a_placed_tag(settings)
    clock = Clock()
    tap = CommissioningTap(clock)
    tap.watch()
    unjudged = read("3034257BF7194E40000000FF", 1, -50)  # observed, never fed: not tracked
    tap.observe([unjudged], engine)
    batch = [
        read(PLACED, 1, -55),  # placed at DOCK, read at DOCK: counted
        read(PLACED, 2, -60),  # read at SHELF by r0, which reads DOCK too: cross_read
        read(PLACED, 2, -82),  # -82 + 3 dB = -79: above the -80 floor, still a cross-read
        read(PLACED, 1, -81),  # below the floor: weak
        read(PLACED, 2, -84),  # -84 + 3 = -81: weak
        read(NEW, 1, -50),  # fed below: tracked, not placed yet
        read(PLACED, 7, -40),  # antenna 7 is in no config
        read(PLACED, 1, -66, reader="far"),  # at BACK, by a reader that never reads DOCK: stray
    ]
    engine.feed(batch, "r0", T0 + 3_100_000)
    tap.observe(batch, engine)
    _, views = tap.snapshot(10)
    assert views[("r0", 1)]["classes"] == {
        "counted": 1, "cross_read": 0, "stray": 0, "pending": 2, "weak": 1, "unmapped": 0,
    }  # fmt: skip
    assert views[("r0", 2)]["classes"] == {
        "counted": 0, "cross_read": 2, "stray": 0, "pending": 0, "weak": 1, "unmapped": 0,
    }  # fmt: skip
    assert views[("far", 1)]["classes"]["stray"] == 1
    assert views[("r0", 7)]["classes"]["unmapped"] == 1
    assert views[("r0", 7)]["location"] is None
    # The floor is shown as the RSSI the reader reports: -80 dBm less the antenna's offset.
    assert (views[("r0", 1)]["floor_dbm"], views[("r0", 2)]["floor_dbm"]) == (-80.0, -83.0)
    top = {t["epc"]: t for t in views[("r0", 1)]["top"]}
    assert top[PLACED]["class"] == "weak" and top[PLACED]["reads"] == 2
    assert top[PLACED]["rssi_max"] == -55 and top[PLACED]["rssi_mean"] == -68.0
    rssi = views[("r0", 2)]["rssi"]
    assert (rssi["min"], rssi["median"], rssi["max"]) == (-84, -82, -60)
    assert sum(rssi["bins"]) == 3


def test_the_tap_does_nothing_unless_watched_and_forgets_once_nobody_looks(
    tmp_path: Path,
) -> None:
    settings = config.load(site_toml(tmp_path))
    engine = engine_with_a_placed_tag(settings)
    clock = Clock()
    tap = CommissioningTap(clock)
    tap.observe([read(PLACED, 1, -50)], engine)
    assert tap.snapshot(60) == (0.0, {})
    tap.watch()
    tap.observe([read(PLACED, 1, -50)], engine)
    clock.now += 2.0
    collecting, views = tap.snapshot(60)
    assert collecting == 2.0 and views[("r0", 1)]["reads"] == 1
    assert views[("r0", 1)]["reads_per_s"] == 0.5  # over the 2 s it was on, not all 60
    assert views[("r0", 1)]["classes"]["counted"] == 1
    clock.now += commissioning.WATCH_S  # nobody asked for a minute
    assert not tap.watching
    tap.observe([read(PLACED, 1, -50)], engine)  # the next hand-over lets go
    assert tap.snapshot(60) == (0.0, {})


def test_the_tap_stays_bounded_however_many_reads_come(tmp_path: Path) -> None:
    settings = config.load(site_toml(tmp_path))
    engine = engine_with_a_placed_tag(settings)
    clock = Clock()
    tap = CommissioningTap(clock)
    tap.watch()
    many = [read(f"3034257BF7194E40{k:08X}", 1 + k % 2, -55) for k in range(5_000)]
    for _ in range(10):  # 50,000 reads within one second
        tap.observe(many, engine)
        clock.now += 0.05
    _, views = tap.snapshot(10)
    assert views[("r0", 1)]["reads"] + views[("r0", 2)]["reads"] == 50_000  # every read counted
    kept = [len(w.kept) for w in tap._windows.values()]
    # A second's budget (and what refilled in the half second the batches took), spread evenly.
    assert sum(kept) <= commissioning.CLASSIFY_PER_S * 1.5 + 1, kept
    assert min(kept) > 0.4 * max(kept), kept
    for _ in range(200):  # 200 s more of it, the page open: no window outgrows its cap
        clock.now += 1.0
        tap.watch()
        tap.observe(many, engine)
    assert max(len(w.kept) for w in tap._windows.values()) <= commissioning.READS_PER_ANTENNA
    clock.now += 1.0
    tap.observe(many[:1], engine)
    oldest = min(w.kept[0][0] for w in tap._windows.values())
    assert clock.now - oldest <= commissioning.MAX_WINDOW_S + 1.0  # nothing older is held
    # Antennas outside the config are capped too; their extra reads are counted, not kept.
    unmapped = [read(PLACED, 100 + k, -50) for k in range(commissioning.MAX_UNMAPPED_ANTENNAS + 10)]
    tap.observe(unmapped, engine)
    _, views = tap.snapshot(10)
    assert sum(1 for v in views.values() if v["location"] is None) == 64
    assert tap.unmapped_dropped == 10


def test_the_last_committed_movements_are_kept_newest_first() -> None:
    tap = CommissioningTap()
    from gateway.model import Movement

    def moved(k: int) -> Outgoing:
        move = Movement("arrived", f"{k:024X}", None, "DOCK", T0 + k, "r0", via="r0:1")
        return Outgoing("movements", "movements", movement_body(move, "S1", "gw-1"))

    equipment = Outgoing("equipment", "equipment/plc", {"device": "plc"})
    tap.committed([moved(k) for k in range(30)] + [equipment])
    tap.committed([moved(k) for k in range(30, 70)])
    shown = tap.movements()
    assert len(shown) == commissioning.MOVEMENTS_KEPT
    assert [m["epc"] for m in shown[:2]] == [f"{69:024X}", f"{68:024X}"]
    assert shown[0] == {
        "type": "arrived", "epc": f"{69:024X}", "from": None, "to": "DOCK", "via": "r0:1",
        "source": "r0", "time": shown[0]["time"],
    }  # fmt: skip


def test_reads_per_second_come_from_the_reads_counter() -> None:
    metrics = Metrics()
    clock = Clock()
    rates = ReadRates(metrics, clock)
    metrics.reads.labels("r0").inc(10)
    assert rates.per_second() is None  # one sample: no rate yet
    clock.now += 2.0
    metrics.reads.labels("r0").inc(100)
    metrics.reads.labels("r1").inc(40)
    assert rates.per_second() == {"r0": 50.0, "r1": 20.0}


# --- the page and its API over HTTP -----------------------------------------------------------


class Served:
    """A WebView over real parts (an open outbox, the devices' health, the metrics) behind the
    real metrics listener on a loopback port."""

    def __init__(self, settings: Settings, tap: CommissioningTap | None = None) -> None:
        self.store = OutboxThread()
        asyncio.run(self.store.open(settings.state_path / "outbox.db", settings.outbox))
        self.metrics = Metrics()
        self.health = Health(Devices(settings.devices), self.store)
        self.tap = tap or CommissioningTap()
        view = WebView(settings, self.health, self.metrics, self.tap)
        self.server = HealthServer(
            ("127.0.0.1", free_port()), self.metrics, self.health.healthz, self.health.ready,
            view.route,
        )  # fmt: skip
        self.server.start()

    def request(
        self, path: str, method: str = "GET", host: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        url = f"http://127.0.0.1:{self.server.port}{path}"
        req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
        if host is not None:
            req.add_header("Host", host)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (http, loopback)
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def json(self, path: str) -> dict[str, Any]:
        code, _, body = self.request(path)
        assert code == 200, (code, body)
        result: dict[str, Any] = json.loads(body)
        return result

    def close(self) -> None:
        self.server.stop()
        asyncio.run(self.store.close())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(config.load(site_toml(tmp_path)))
    yield s
    s.close()


def test_the_page_is_one_file_with_no_external_assets(served: Served) -> None:
    code, headers, body = served.request("/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    html = body.decode()
    assert "<script>" in html and "<style>" in html
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?(https?:)?//""", html)
    assert "innerHTML" not in html  # names and EPCs are set as text, never parsed
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert headers["Cache-Control"] == "no-store"


def test_only_get_is_served_and_a_refusal_is_counted(served: Served) -> None:
    for method in ("POST", "PUT", "DELETE"):
        code, headers, _ = served.request("/", method)
        assert (code, headers["Allow"]) == (405, "GET"), method
    code, _, _ = served.request("/api/status", "POST")
    assert code == 405
    refused = served.metrics.rejected.labels("http", "method_not_allowed")._value.get()
    assert refused == 4
    assert served.request("/nope")[0] == 404
    assert served.request("/metrics")[0] == 200  # the listener's own paths are untouched


def test_the_page_answers_only_to_an_ip_address_or_localhost(served: Served) -> None:
    """A name in Host may be a stranger's DNS pointed at this box (rebinding): refused."""
    for host in ("localhost:9100", "127.0.0.1:9464", "[::1]:9464", "10.1.2.3"):
        assert served.request("/api/status", host=host)[0] == 200, host
    refused = served.metrics.rejected.labels("web", "host_not_an_address")
    for n, host in enumerate(("attacker.example:9464", "127.0.0.1.nip.io", "edgebox"), start=1):
        assert served.request("/", host=host)[0] == 403, host
        assert served.request("/api/antennas", host=host)[0] == 403, host
        assert refused._value.get() == 2 * n
    assert not served.tap.watching
    assert served.request("/metrics", host="edgebox:9464")[0] == 200  # Prometheus by name


BAD_QUERIES = (
    "window_s=abc", "window_s=0", "window_s=61", "window_s=nan", "window_s=inf", "colour=red",
    "window_s", "a=1&b=2&c=3&d=4&e=5",
)  # fmt: skip


def test_a_bad_query_is_a_counted_400(served: Served) -> None:
    refused = served.metrics.rejected.labels("web", "bad_query")
    for n, query in enumerate(BAD_QUERIES, start=1):
        code, _, body = served.request(f"/api/antennas?{query}")
        assert code == 400, (query, body)
        assert json.loads(body)["error"]
        assert refused._value.get() == n, query
    assert not served.tap.watching  # a refused request turns nothing on


def test_the_antenna_api_turns_the_tap_on_and_lists_every_configured_antenna(
    served: Served,
) -> None:
    assert not served.tap.watching
    view = served.json("/api/antennas?window_s=30&reader=r0")
    assert served.tap.watching
    assert view["window_s"] == 30.0
    assert [(a["reader"], a["antenna"], a["location"]) for a in view["antennas"]] == [
        ("r0", 1, "DOCK"),
        ("r0", 2, "SHELF"),
    ]
    assert view["antennas"][0]["reads"] == 0 and view["antennas"][0]["top"] == []
    assert served.json("/api/antennas?reader=elsewhere")["antennas"] == []
    status = served.json("/api/status")
    assert [d["name"] for d in status["devices"]] == ["r0"]
    assert status["devices"][0]["state"] == "not started"  # configured, its driver not running
    assert status["broker"]["state"] == "disconnected"
    assert status["outbox"]["depth"] == 0
    assert (status["site"], status["gateway"]) == ("S1", "gw-1")


def test_a_gateway_with_no_devices(tmp_path: Path) -> None:
    # The config asks for at least one device; the page must not depend on it.
    settings = dataclasses.replace(config.load(site_toml(tmp_path)), readers=(), equipment=())
    served = Served(settings)
    try:
        status = served.json("/api/status")
        assert status["devices"] == [] and status["movements"] == []
        assert served.json("/api/antennas")["antennas"] == []
        assert served.request("/")[0] == 200
    finally:
        served.close()


def test_a_gateway_with_300_devices_is_served_within_a_bound(tmp_path: Path) -> None:
    served = Served(config.load(site_toml(tmp_path, readers=300)))
    try:
        started = time.monotonic()
        status = served.json("/api/status")
        antennas = served.json("/api/antennas?window_s=60")
        took = time.monotonic() - started
        assert [d["name"] for d in status["devices"]] == [f"r{n}" for n in range(300)]
        assert len(antennas["antennas"]) == 600
        assert took < 2.0, took  # ~0.05 s measured; a shared 2-core box has its moments
        assert len(json.dumps(antennas)) < 1_000_000
    finally:
        served.close()
