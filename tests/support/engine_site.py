"""The small site the engine's rule tests and golden tests share: a dock door, a ship door
and two zones; and the KEEPALIVE every configured reader sends."""

from __future__ import annotations

from types import SimpleNamespace as NS

from gateway.engine import Engine, EngineConfig
from gateway.engine.settings import EngineSettings

T0 = 1_764_000_000_000_000  # reader clock at t=0
EPC = "3074257BF7194E4000001A85"


def site(**settings: object) -> EngineConfig:
    """A dock door (YARD offsite outside, DOCK inside), a ship door (SHIP inside, TRAILER
    outside) and two zones A and B on one reader."""

    def loc(offsite: bool = False, biz: str | None = None, disp: str | None = None) -> NS:
        return NS(offsite=offsite, biz_step=biz, disposition=disp, profile=None)

    def ant(location: str) -> NS:
        return NS(location=location, read_point=None, rssi_offset_db=0.0)

    return EngineConfig.build(
        [
            ("dock", {1: ant("YARD"), 2: ant("DOCK")}),
            ("ship", {1: ant("TRAILER"), 2: ant("SHIP")}),
            ("zones", {1: ant("A"), 2: ant("B")}),
        ],
        {
            "YARD": loc(offsite=True),
            "DOCK": loc(biz="receiving", disp="in_progress"),
            "SHIP": loc(biz="staging_outbound", disp="in_progress"),
            "TRAILER": loc(offsite=True, biz="shipping", disp="in_transit"),
            "A": loc(biz="storing", disp="sellable_accessible"),
            "B": loc(biz="storing", disp="sellable_accessible"),
        },
        {
            "dock-door": NS(outside=("dock:1",), inside=("dock:2",)),
            "ship-door": NS(outside=("ship:1",), inside=("ship:2",)),
        },
        settings=EngineSettings(**settings),  # type: ignore[arg-type]
    )


def keepalive(engine: Engine, now: int) -> None:
    """Every configured reader vouches that it sent all it read before `now` (what an LLRP
    reader's KEEPALIVE tells the driver, which calls progress())."""
    for reader in {reader for reader, _ in engine.config.places}:
        engine.progress(reader, now)
