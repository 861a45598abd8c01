"""SIGHUP reload (gateway.daemon.Gateway.reload, what the daemon's SIGHUP handler runs) reaches the
handheld workflows: a location label added, or a location's bizStep changed, applies to the
handhelds at once, as it does to the portals' engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.base import DeviceEvent
from gateway import config
from gateway.daemon import Gateway
from gateway.engine import Engine, EngineConfig
from gateway.handheld import Workflow
from gateway.ingest import GatewaySink, Ingest
from gateway.model import TagRead, now_us

EPC = "30340242201D8840009EFDFE"


def site(tmp_path: Path, locations: str) -> str:
    return f"""
[gateway]
site = "S1"
id = "gw-1"
state_dir = "{tmp_path / "state"}"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[metrics]
enabled = false

{locations}

[[readers]]
name = "hh-count"
driver = "tsl"
port = "loop://"

[[readers]]
name = "hh-returns"
driver = "tsl"
port = "loop://"
workflow = "returns"
returns_location = "RETURNS"
"""


BEFORE = """
[locations.SHELF-A]
barcode = "LOC-A"

[locations.RETURNS]
biz_step = "receiving"
disposition = "returned"
"""

AFTER = """
[locations.SHELF-A]
barcode = "LOC-A"

[locations.SHELF-B]
barcode = "LOC-B"

[locations.RETURNS]
biz_step = "inspecting"
disposition = "returned"
"""


def started_gateway(path: Path) -> Gateway:
    """What a reload touches of a gateway as open() leaves it: the settings, and an ingest with
    an engine and one workflow per handheld (no outbox file, no publisher)."""
    settings = config.load(path)
    gateway = Gateway(settings)
    engine = Engine.restore([], EngineConfig.from_settings(settings))
    sink = GatewaySink({}, gateway.devices.state_changed)
    gateway.ingest = Ingest(settings, engine, sink, gateway.store, gateway.metrics)
    return gateway


def workflows(gateway: Gateway) -> dict[str, Workflow]:
    assert gateway.ingest is not None
    return gateway.ingest.workflows


def test_sighup_reload_reaches_the_handheld_workflows(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site(tmp_path, BEFORE))
    gateway = started_gateway(path)
    counting, returns = workflows(gateway)["hh-count"], workflows(gateway)["hh-returns"]
    now = now_us()
    label = DeviceEvent("hh-count", "barcode", {"barcode": "LOC-B"}, now)
    assert counting.on_event(label, now).feedback == ["error"]  # not a location label yet

    path.write_text(site(tmp_path, AFTER))
    asyncio.run(gateway.reload())

    assert "SHELF-B" in gateway.settings.locations  # the reload itself went through
    assert gateway.ingest is not None and gateway.ingest.settings is gateway.settings
    out = counting.on_event(label, now)
    assert out.feedback == ["ok"], out.log  # the new label is known to the handheld
    read = TagRead(EPC, "hh-returns", 1, -50.0, now)
    (booked,) = returns.on_reads([read], now).movements
    assert (booked.to, booked.biz_step) == ("RETURNS", "inspecting")


def test_a_refused_reload_leaves_the_workflows_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site(tmp_path, BEFORE))
    gateway = started_gateway(path)
    path.write_text(site(tmp_path, AFTER.replace('barcode = "LOC-B"', "barcode = 7")))
    asyncio.run(gateway.reload())
    now = now_us()
    out = workflows(gateway)["hh-count"].on_event(
        DeviceEvent("hh-count", "barcode", {"barcode": "LOC-A"}, now), now
    )
    assert out.feedback == ["ok"]
    assert "SHELF-B" not in gateway.settings.locations


def test_a_scanned_location_removed_by_a_reload_must_be_scanned_again(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site(tmp_path, AFTER))
    gateway = started_gateway(path)
    counting = workflows(gateway)["hh-count"]
    now = now_us()
    scan = DeviceEvent("hh-count", "barcode", {"barcode": "LOC-B"}, now)
    assert counting.on_event(scan, now).feedback == ["ok"]

    path.write_text(site(tmp_path, BEFORE))  # SHELF-B is gone
    asyncio.run(gateway.reload())
    pull = DeviceEvent("hh-count", "trigger", {"state": "single"}, now)
    out = counting.on_event(pull, now)
    assert out.feedback == ["error"] and "no location scanned" in out.log[0]
