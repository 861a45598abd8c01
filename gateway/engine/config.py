"""The engine's view of the site: antennas -> locations, portals, per-location profiles.

Derived once from Settings (and again on reload); the engine sees nothing else of the config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.engine.settings import EngineSettings, ProfileSettings

# Profiles chosen by rule when a location names none. Both react within about two seconds of a
# tag going quiet where it was (EdgeX's asset-tracking numbers: 6 dB, 0.5 s, 8 dB/s); a zone asks
# for a little more confirmation and waits longer before calling an unread tag gone. A shelf
# that must hold its stock through minutes of read gaps names the "shelf" profile.
DEFAULT_PROFILES: Mapping[str, ProfileSettings] = MappingProxyType(
    {
        "portal": ProfileSettings(
            confirm_s=0.5,
            departed_after_s=10.0,
            forget_after_s=600.0,
            threshold_db=6.0,
            holdoff_s=0.5,
            decay_db_per_s=8.0,
        ),
        "zone": ProfileSettings(
            confirm_s=0.75,
            departed_after_s=30.0,
            forget_after_s=3600.0,
            threshold_db=6.0,
            holdoff_s=0.5,
            decay_db_per_s=8.0,
        ),
        "shelf": ProfileSettings(
            confirm_s=10.0,
            departed_after_s=900.0,
            forget_after_s=86400.0,
            threshold_db=8.0,
            holdoff_s=60.0,
            decay_db_per_s=0.1,
        ),
    }
)


@dataclass(frozen=True, slots=True)
class Place:
    """What one antenna means."""

    location: str
    read_point: str
    rssi_offset_db: float
    offsite: bool
    portal: str | None  # the portal this antenna belongs to, if any
    side: str | None  # "inside" | "outside" when it belongs to a portal


@dataclass(frozen=True, slots=True)
class LocationInfo:
    name: str
    offsite: bool
    biz_step: str | None
    disposition: str | None
    profile: ProfileSettings


@dataclass(frozen=True, slots=True)
class PortalInfo:
    name: str
    outside: frozenset[tuple[str, int]]
    inside: frozenset[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    places: Mapping[tuple[str, int], Place]  # (reader, antenna) -> place
    locations: Mapping[str, LocationInfo]
    portals: Mapping[str, PortalInfo]
    settings: EngineSettings

    @classmethod
    def from_settings(cls, s: object) -> EngineConfig:
        from gateway.config import Settings

        assert isinstance(s, Settings)
        readers = [(r.name, r.antennas) for r in s.readers]
        return cls.build(readers, s.locations, s.portals, s.profiles, s.engine)

    @classmethod
    def build(
        cls,
        readers: Iterable[tuple[str, Mapping[int, Any]]],
        locations: Mapping[str, Any],
        portals: Mapping[str, Any],
        profiles: Mapping[str, ProfileSettings] | None = None,
        settings: EngineSettings | None = None,
    ) -> EngineConfig:
        """From the config's parts: readers as (name, {antenna: AntennaSettings}), locations as
        LocationSettings, portals as PortalSettings (anything with the same attributes)."""
        all_profiles = {**DEFAULT_PROFILES, **(profiles or {})}
        portal_infos: dict[str, PortalInfo] = {}
        side_of: dict[tuple[str, int], tuple[str, str]] = {}
        for name, p in portals.items():
            outside = frozenset(parse_ref(r) for r in p.outside)
            inside = frozenset(parse_ref(r) for r in p.inside)
            portal_infos[name] = PortalInfo(name, outside, inside)
            side_of.update({ref: (name, "outside") for ref in outside})
            side_of.update({ref: (name, "inside") for ref in inside})
        portal_locations = set()
        places: dict[tuple[str, int], Place] = {}
        for reader, antennas in readers:
            for number, a in antennas.items():
                key = (reader, number)
                portal, side = side_of.get(key, (None, None))
                if portal is not None:
                    portal_locations.add(a.location)
                places[key] = Place(
                    location=a.location,
                    read_point=a.read_point or f"{reader}:{number}",
                    rssi_offset_db=a.rssi_offset_db,
                    offsite=locations[a.location].offsite,
                    portal=portal,
                    side=side,
                )
        infos = {}
        for name, loc in locations.items():
            default = "portal" if name in portal_locations else "zone"
            profile = all_profiles[loc.profile or default]
            infos[name] = LocationInfo(name, loc.offsite, loc.biz_step, loc.disposition, profile)
        return cls(
            MappingProxyType(places),
            MappingProxyType(infos),
            MappingProxyType(portal_infos),
            settings or EngineSettings(),
        )


def parse_ref(ref: str) -> tuple[str, int]:
    reader, _, antenna = ref.rpartition(":")
    return reader, int(antenna)
