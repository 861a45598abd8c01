"""The local web page in a real headless browser (Debian's chromium), every part real: simulated
LLRP readers over loopback TCP -> sllurp inside `fc-edge run` -> mosquitto; the page at the
metrics listener's `/`, its script polling the JSON API, the DOM as chromium leaves it.

The site: a dock door reader whose inside antenna reads 30 tags strongly and whose outside
antenna hears a third of them weakly (a leaking antenna) plus reads below the RSSI floor, a
shelf reader with tags of its own, and a reader nobody answers for (its antenna is dead). The
DOM must name every configured device, show the dock's inside antenna with counted reads, the
outside antenna's cross-reads and weak reads, the outbox depth and the broker state. A
screenshot is kept under pytest's tmp dir (the path is printed) for a person to look at.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gateway.devkit.process import stop
from simulators.llrp import ReaderSpec, SimServer
from tests.support.broker import Broker
from tests.support.gateway import fc_edge, gateway_toml
from tests.support.helpers import free_port, wait_for

pytestmark = pytest.mark.slow

PORTAL_TAGS = [f"3034257BF7194E40000D{k:04X}" for k in range(30)]
SHELF_TAGS = [f"3034257BF7194E40000E{k:04X}" for k in range(8)]
PLAY_S = 300.0  # the readers' scripts outlast the test


def portal_reads(rng: random.Random) -> list[tuple[float, int, str, int]]:
    """Inside (antenna 1) reads every tag twice a second near -52 dBm; outside (antenna 2)
    hears every third tag near -70 dBm, and now and then one below the -80 dBm floor."""
    reads = []
    for k, epc in enumerate(PORTAL_TAGS):
        t = 0.3 + k * 0.013
        while t < PLAY_S:
            reads.append((t, 1, epc, round(rng.gauss(-52, 3))))
            if k % 3 == 0:
                reads.append((t + 0.2, 2, epc, round(rng.gauss(-70, 2))))
            if k % 10 == 1:
                reads.append((t + 0.3, 2, epc, rng.randint(-90, -84)))
            t += 0.5
    return sorted(reads)


def shelf_reads(rng: random.Random) -> list[tuple[float, int, str, int]]:
    reads = []
    for k, epc in enumerate(SHELF_TAGS):
        t = 0.4 + k * 0.05
        while t < PLAY_S:
            reads.append((t, 1, epc, round(rng.gauss(-60, 4))))
            t += 1.0
    return sorted(reads)


def site_config(tmp_path: Path, broker: Broker, ports: dict[str, int], metrics_port: int) -> Path:
    readers = ""
    for name, antennas in (
        ("dock-03", {1: "DOCK-03", 2: "YARD"}),
        ("shelf-b", {1: "STAGING"}),
        ("dock-09", {1: "DOCK-03"}),
    ):
        readers += f"""
[[readers]]
name = "{name}"
driver = "llrp"
host = "127.0.0.1"
port = {ports[name]}
keepalive_s = 2.0
reconnect_max_s = 1.0
[readers.antennas]
""" + "".join(f'{n} = {{ location = "{loc}" }}\n' for n, loc in antennas.items())
    portal = '[portals.dock-03]\noutside = ["dock-03:2"]\ninside = ["dock-03:1"]\n'
    text = gateway_toml(
        tmp_path / "state", broker.url, readers, extra=portal, metrics_port=metrics_port
    )
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def get_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def antenna(view: dict[str, Any], reader: str, number: int) -> dict[str, Any]:
    return next(a for a in view["antennas"] if (a["reader"], a["antenna"]) == (reader, number))


# --- the browser ------------------------------------------------------------------------------


def chromium(profile: Path, url: str, *args: str) -> str:
    """Headless chromium from the distribution (Makefile APT_TOOLS), nothing downloaded and no
    network but the page's: its output (the DOM with --dump-dom)."""
    binary = shutil.which("chromium")
    assert binary is not None, "chromium is not installed: make system-deps (apt-get install)"
    argv = [
        binary,
        "--headless",
        "--no-sandbox",  # as root in CI containers
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        # The page polls every 2 s: 5 s of its (virtual) time is two or three polls.
        "--virtual-time-budget=5000",
        *args,
        url,
    ]
    done = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element | str] = []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants of this tag whose attributes include these (names with - as _)."""
        out = []
        for child in self.children:
            if isinstance(child, Element):
                if (tag is None or child.tag == tag) and all(
                    child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()
                ):
                    out.append(child)
                out += child.find_all(tag, **attrs)
        return out

    def find(self, tag: str | None = None, **attrs: str) -> Element:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, (attrs, len(found))
        return found[0]


VOID = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "source", "wbr"}


class Dom(HTMLParser):
    """The DOM chromium dumped, as a tree of Elements (enough for attribute and text checks)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.root = self.node = Element("#document", {}, None)
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.children.append(element)
        if tag not in VOID:
            self.node = element

    def handle_endtag(self, tag: str) -> None:
        node: Element | None = self.node
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.node = node.parent

    def handle_data(self, data: str) -> None:
        self.node.children.append(data)


# --- the test ---------------------------------------------------------------------------------


def test_the_page_shows_devices_antennas_outbox_and_broker_in_a_real_browser(
    tmp_path: Path, broker: Broker
) -> None:
    rng = random.Random(18)
    sim = SimServer(
        [
            ReaderSpec("dock-03", reads=portal_reads(rng)),
            ReaderSpec("shelf-b", reads=shelf_reads(rng)),
        ]
    )
    with sim.running():
        ports = {name: sim.reader(name).port for name in ("dock-03", "shelf-b")}
        ports["dock-09"] = free_port()  # nobody listens: the reader stays down
        metrics_port = free_port()
        log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
        gw = fc_edge(
            "run", "-c", str(site_config(tmp_path, broker, ports, metrics_port)),
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            check_the_page(tmp_path, metrics_port)
        finally:
            stop(gw, timeout=30)
            log.close()


def check_the_page(tmp_path: Path, port: int) -> None:
    wait_for(lambda: _answers(port), timeout=30)
    # The page has been open a while (its antenna API turns the tap on): reads accumulate.
    get_json(port, "/api/antennas")

    def counted_at_the_dock() -> bool:
        view = get_json(port, "/api/antennas?window_s=10")
        inside, outside = antenna(view, "dock-03", 1), antenna(view, "dock-03", 2)
        return inside["classes"]["counted"] > 0 and outside["classes"]["cross_read"] > 0

    wait_for(counted_at_the_dock, timeout=90)
    wait_for(lambda: get_json(port, "/api/status")["broker"]["state"] == "connected", timeout=30)
    time.sleep(1.1)  # a second status poll: reads/s need two counter samples a second apart
    status = get_json(port, "/api/status")
    url = f"http://127.0.0.1:{port}/"

    dom = Dom(chromium(tmp_path / "chromium-dom", url, "--dump-dom")).root
    rows = {row.attrs["data-device"]: row for row in dom.find(id="devices").find_all("tr")}
    assert set(rows) == {"dock-03", "shelf-b", "dock-09"}, rows.keys()
    assert rows["dock-03"].attrs["data-state"] == "up"
    assert rows["dock-09"].attrs["data-state"] != "up"
    inside = dom.find(data_reader="dock-03", data_antenna="1")
    assert int(inside.find(data_class="counted").text) > 0
    outside = dom.find(data_reader="dock-03", data_antenna="2")
    assert int(outside.find(data_class="cross_read").text) > 0
    assert int(outside.find(data_class="weak").text) > 0
    assert "YARD" in outside.text and "DOCK-03" in inside.text
    listed = {row.attrs["data-epc"] for row in inside.find_all("tr") if "data-epc" in row.attrs}
    assert listed and listed <= set(PORTAL_TAGS), listed
    dead = dom.find(data_reader="dock-09", data_antenna="1")
    assert int(dead.find(data_figure="reads-per-s").text.split(".")[0]) == 0
    assert f"reader {rows['dock-09'].attrs['data-state']}" in dead.text  # flagged: reader down
    depth = dom.find(id="outbox-depth").text
    assert depth.replace(",", "").isdigit(), depth
    assert dom.find(id="broker-state").text == "connected"
    assert "S1 / gw-1" in dom.find(id="title").text
    assert status["devices"][0]["reads_per_s"] is not None

    shot = tmp_path / "web-page.png"
    chromium(
        tmp_path / "chromium-shot", url, f"--screenshot={shot}", "--window-size=1280,1600",
        "--hide-scrollbars",
    )  # fmt: skip
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    print(f"screenshot of the page: {shot}")


# A device name the config allows (a topic level: no '/', '+', '#'), as markup: shown as text.
HOSTILE = "<img src=x onerror=document.body.setAttribute('data-pwned','1')>"


def test_the_page_with_300_devices_and_no_broker_in_a_real_browser(tmp_path: Path) -> None:
    """300 replay readers with nothing to replay (each ends at once: stopped), one named as
    markup, and a broker nobody answers for: every device is named, as text, every antenna has
    its card."""
    (tmp_path / "empty.jsonl").write_text("")
    names = [HOSTILE] + [f"door-{n:03d}" for n in range(1, 300)]
    readers = "".join(
        f'[[readers]]\nname = "{name}"\ndriver = "replay"\nfile = "empty.jsonl"\n'
        f'[readers.antennas]\n1 = {{ location = "DOCK-03" }}\n'
        for name in names
    )
    port = free_port()
    conf = tmp_path / "gw.toml"
    conf.write_text(
        gateway_toml(tmp_path / "state", "mqtt://127.0.0.1:9", readers, metrics_port=port)
    )
    log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115
    gw = fc_edge("run", "-c", str(conf), stdout=log, stderr=log)
    try:
        wait_for(lambda: _answers(port), timeout=60)
        started = time.monotonic()
        dom = Dom(chromium(tmp_path / "chromium", f"http://127.0.0.1:{port}/", "--dump-dom")).root
        took = time.monotonic() - started
    finally:
        stop(gw, timeout=30)
        log.close()
    rows = dom.find(id="devices").find_all("tr")
    assert [row.attrs["data-device"] for row in rows] == names
    assert HOSTILE in rows[0].text  # as text: no element was made of it, no script ran
    assert not dom.find_all("img") and not dom.find_all(data_pwned="1")
    assert len(dom.find_all("div", data_antenna="1")) == 300
    assert dom.find(id="broker-state").text == "disconnected"
    assert took < 60, took  # chromium's start and 5 s of the page's time: ~4 s measured


def _answers(port: int) -> bool:
    try:
        return bool(get_json(port, "/api/status")["devices"])
    except OSError:
        return False
