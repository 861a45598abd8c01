"""The engine's view of the site: antennas -> locations, portals, per-location profiles.

Derived once from Settings (and again on reload); the engine sees nothing else of the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from gateway.engine.settings import EngineSettings, ProfileSettings

# Profiles chosen by rule when a location names none: a portal side must react within a
# second, a zone (shelf, staging, conveyor) is stable and forgets slowly.
DEFAULT_PROFILES: Mapping[str, ProfileSettings] = MappingProxyType(
    {
        "portal": ProfileSettings(confirm_s=0.5, departed_after_s=None, forget_after_s=600.0),
        "zone": ProfileSettings(confirm_s=2.0, departed_after_s=None, forget_after_s=3600.0),
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
        profiles = {**DEFAULT_PROFILES, **s.profiles}
        portals: dict[str, PortalInfo] = {}
        side_of: dict[tuple[str, int], tuple[str, str]] = {}
        for name, p in s.portals.items():
            outside = frozenset(parse_ref(r) for r in p.outside)
            inside = frozenset(parse_ref(r) for r in p.inside)
            portals[name] = PortalInfo(name, outside, inside)
            side_of.update({ref: (name, "outside") for ref in outside})
            side_of.update({ref: (name, "inside") for ref in inside})
        portal_locations = set()
        places: dict[tuple[str, int], Place] = {}
        for reader in s.readers:
            for number, a in reader.antennas.items():
                key = (reader.name, number)
                portal, side = side_of.get(key, (None, None))
                if portal is not None:
                    portal_locations.add(a.location)
                places[key] = Place(
                    location=a.location,
                    read_point=a.read_point or f"{reader.name}:{number}",
                    rssi_offset_db=a.rssi_offset_db,
                    offsite=s.locations[a.location].offsite,
                    portal=portal,
                    side=side,
                )
        locations = {}
        for name, loc in s.locations.items():
            default = "portal" if name in portal_locations else "zone"
            profile = profiles[loc.profile or default]
            locations[name] = LocationInfo(name, loc.offsite, loc.biz_step, loc.disposition, profile)
        return cls(
            MappingProxyType(places),
            MappingProxyType(locations),
            MappingProxyType(portals),
            s.engine,
        )


def parse_ref(ref: str) -> tuple[str, int]:
    reader, _, antenna = ref.rpartition(":")
    return reader, int(antenna)
