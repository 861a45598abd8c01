"""SIGHUP reload (gateway.pipeline._reload, what the daemon's SIGHUP handler runs) reaches the
handheld workflows: a location label added, or a location's bizStep changed, applies to the
handhelds at once, as it does to the portals' engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.base import DeviceEvent
from gateway import config
from gateway.engine import Engine, EngineConfig
from gateway.model import TagRead, now_us
from gateway.pipeline import Pipeline, _reload, make_workflows

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


def started_pipeline(path: Path) -> Pipeline:
    """A pipeline as start_drivers leaves it: an engine and one workflow per handheld."""
    settings = config.load(path)
    pipeline = Pipeline(settings)
    pipeline.engine = Engine.restore([], EngineConfig.from_settings(settings))
    pipeline.workflows = make_workflows(settings, pipeline.engine)
    return pipeline


def test_sighup_reload_reaches_the_handheld_workflows(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site(tmp_path, BEFORE))
    pipeline = started_pipeline(path)
    counting, returns = pipeline.workflows["hh-count"], pipeline.workflows["hh-returns"]
    now = now_us()
    label = DeviceEvent("hh-count", "barcode", {"barcode": "LOC-B"}, now)
    assert counting.on_event(label, now).feedback == ["error"]  # not a location label yet

    path.write_text(site(tmp_path, AFTER))
    asyncio.run(_reload(pipeline))

    assert "SHELF-B" in pipeline.settings.locations  # the reload itself went through
    out = counting.on_event(label, now)
    assert out.feedback == ["ok"], out.log  # the new label is known to the handheld
    read = TagRead(EPC, "hh-returns", 1, -50.0, now)
    (booked,) = returns.on_reads([read], now).movements
    assert (booked.to, booked.biz_step) == ("RETURNS", "inspecting")


def test_a_refused_reload_leaves_the_workflows_as_they_were(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site(tmp_path, BEFORE))
    pipeline = started_pipeline(path)
    path.write_text(site(tmp_path, AFTER.replace('barcode = "LOC-B"', "barcode = 7")))
    asyncio.run(_reload(pipeline))
    now = now_us()
    out = pipeline.workflows["hh-count"].on_event(
        DeviceEvent("hh-count", "barcode", {"barcode": "LOC-A"}, now), now
    )
    assert out.feedback == ["ok"]
    assert "SHELF-B" not in pipeline.settings.locations


def test_a_scanned_location_removed_by_a_reload_must_be_scanned_again(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(site(tmp_path, AFTER))
    pipeline = started_pipeline(path)
    counting = pipeline.workflows["hh-count"]
    now = now_us()
    scan = DeviceEvent("hh-count", "barcode", {"barcode": "LOC-B"}, now)
    assert counting.on_event(scan, now).feedback == ["ok"]

    path.write_text(site(tmp_path, BEFORE))  # SHELF-B is gone
    asyncio.run(_reload(pipeline))
    pull = DeviceEvent("hh-count", "trigger", {"state": "single"}, now)
    out = counting.on_event(pull, now)
    assert out.feedback == ["error"] and "no location scanned" in out.log[0]
