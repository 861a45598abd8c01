"""Scenarios: a site and what physically happens in it, rendered into noisy reads AND the truth.

A scenario file (JSON, schema in scenario.schema.json, documented in docs/scenarios.md) names the
readers and their antennas, the portals, the radio noise, groups of tags and a timeline of what
the groups do (`at`, `through`, `to`, `leave`). From it this module renders:

* the reads every simulated reader reports, round by round, with the noise model of the docs
  (read rate, RSSI scatter, cross-reads, stray reads), deterministic for the scenario's seed;
* the truth: the movements an ideal gateway would report (arrived / moved / departed), following
  the movement semantics of docs/messages.md;
* a gateway config for the scenario (write_gateway_config) and a replay capture (write_capture).

The simulator side never imports a driver: it only produces plain tuples.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import jsonschema

from gateway.devkit.toml import key as _toml_key
from gateway.devkit.toml import value as _toml_value
from simulators import bursty as bursty_model
from simulators.bursty import BurstyRadio

SCHEMA_PATH = Path(__file__).with_name("scenario.schema.json")
SCENARIOS_DIR = Path(__file__).with_name("scenarios")

Ref = tuple[str, int]  # (reader, antenna)
Read = tuple[float, int, str, int]  # (t_s, antenna, epc_hex_upper, rssi_dbm)
Op = Literal["at", "through", "to", "leave"]

# The crossing of a portal: the near side's field for the first 60% of the step, the far side's
# for the last 60%, so for the middle 20% both sides read the tags (as on a real dock door).
NEAR_SIDE_UNTIL = 0.6
FAR_SIDE_FROM = 0.4
STRAY_DROP_DB = 10.0  # stray reads come in this much below rssi_near
RSSI_MIN, RSSI_MAX = -110, -10  # a reported PeakRSSI is clamped into what a real reader reports
SGTIN96_MAX_SERIAL = 2**38 - 1

# biz_step / disposition by rule (GS1 CBV 2.0). A location's explicit role wins, then the rule
# of a portal it belongs to, then on-site locations default to a storage zone.
ROLE_BUSINESS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "zone": ("storing", "sellable_accessible"),
        "staging": ("staging_outbound", "in_progress"),
        "pickup": ("holding", "reserved"),
        "returns": ("receiving", "returned"),
        "conveyor": ("transporting", "in_progress"),
        "sales_floor": ("stocking", "sellable_accessible"),
    }
)
# portal kind -> (business of its inside location, business of its outside location)
PORTAL_BUSINESS: Mapping[str, tuple[tuple[str, str] | None, tuple[str, str] | None]] = (
    MappingProxyType(
        {
            "receiving": (("receiving", "in_progress"), None),
            "shipping": (("staging_outbound", "in_progress"), ("shipping", "in_transit")),
            "returns": (("receiving", "returned"), None),
            "exit": (None, ("retail_selling", "retail_sold")),
        }
    )
)


class ScenarioError(ValueError):
    """A scenario file that cannot be used; `lines` holds one `file: $.json.path: reason` each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Radio:
    round_ms: float
    read_rate: float
    rssi_near: float
    rssi_sigma: float
    cross_read_rate: float = 0.0
    cross_read_drop_db: float = 8.0
    stray_rate: float = 0.0
    model: Literal["independent", "bursty"] = "independent"
    bursty: BurstyRadio | None = None  # the second model's own parameters (model "bursty")


@dataclass(frozen=True, slots=True)
class Outage:
    """A reader's link to the gateway is down over [at_s, at_s + for_s) (gateway time)."""

    at_s: float
    for_s: float
    buffer: bool = True  # the reader keeps its reports and sends them on reconnect

    @property
    def end_s(self) -> float:
        return self.at_s + self.for_s


@dataclass(frozen=True, slots=True)
class Transport:
    """How a reader's reports reach the gateway (docs/scenarios.md, *Reader transport*)."""

    clock_offset_s: float = 0.0  # the reader's clock runs ahead: stamp = true time + offset
    delivery_delay_s: float = 0.0  # a report arrives this long after the read
    delivery_jitter_s: float = 0.0  # plus U(0, jitter), keeping the reader's order
    outages: tuple[Outage, ...] = ()

    @property
    def trivial(self) -> bool:
        return self == NO_TRANSPORT

    def blind(self) -> list[tuple[float, float]]:
        """Spans of true read time whose reads are lost (outages without buffering): a read
        made then would have arrived during the outage."""
        return [
            (max(0.0, o.at_s - self.delivery_delay_s), o.end_s)
            for o in self.outages
            if not o.buffer
        ]


NO_TRANSPORT = Transport()


@dataclass(frozen=True, slots=True)
class AntennaSpec:
    location: str
    read_point: str | None = None


@dataclass(frozen=True, slots=True)
class PortalSpec:
    name: str
    outside: tuple[Ref, ...]
    inside: tuple[Ref, ...]
    outside_location: str
    inside_location: str
    kind: str


@dataclass(frozen=True, slots=True)
class Step:
    index: int  # position in the file's timeline (for error messages)
    t: float
    group: str
    op: Op
    location: str | None = None  # `at` / `to` target; for `through` the far side
    portal: str | None = None  # `through`
    duration: float = 0.0
    stray_near: str | None = None

    @property
    def end(self) -> float:
        return self.t + self.duration


@dataclass(frozen=True)
class Scenario:
    path: str
    site: str
    seed: int
    duration: float
    offsite: frozenset[str]
    roles: Mapping[str, str]  # location -> role (declared in `locations`)
    readers: Mapping[str, Mapping[int, AntennaSpec]]
    portals: Mapping[str, PortalSpec]
    radio: Radio
    groups: Mapping[str, tuple[str, ...]]  # group -> EPCs (upper-case hex), file order
    timeline: tuple[Step, ...]
    # reader -> its transport, for readers that have one (clock offset, delays, outages)
    transport: Mapping[str, Transport] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def locations(self) -> tuple[str, ...]:
        """Every location the scenario knows, in first-mention order."""
        names: dict[str, None] = {}
        for antennas in self.readers.values():
            for a in antennas.values():
                names[a.location] = None
        for name in (*self.offsite, *self.roles):
            names[name] = None
        return tuple(names)

    def antennas_at(self, location: str) -> frozenset[Ref]:
        return frozenset(
            (reader, number)
            for reader, antennas in self.readers.items()
            for number, a in antennas.items()
            if a.location == location
        )

    def visible(self, location: str) -> bool:
        return bool(self.antennas_at(location))


# --- loading and checking ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def load_scenario(path: str | Path) -> Scenario:
    """Read, validate (JSON Schema, then names and timeline) and build a scenario."""
    path = Path(path)
    label = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise ScenarioError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ScenarioError([f"{label}: not UTF-8 text"]) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(
            [f"{label}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    return scenario_from_dict(raw, label, str(path))


def scenario_from_dict(raw: Any, label: str = "scenario", path: str = "") -> Scenario:
    validator = jsonschema.Draft202012Validator(schema())
    schema_errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.path])
    if schema_errors:
        raise ScenarioError([f"{label}: {e.json_path}: {e.message}" for e in schema_errors])
    errors: list[str] = []
    scenario = _build(raw, path, errors)
    if not errors:
        plan(scenario, errors)  # timeline order and crossing directions
    if errors:
        raise ScenarioError([f"{label}: {line}" for line in errors])
    return scenario


def _names(known: Iterable[str]) -> str:
    return ", ".join(sorted(known)) or "none"


def _build(raw: dict[str, Any], path: str, errors: list[str]) -> Scenario:
    offsite = frozenset(raw.get("offsite", []))
    roles = {name: spec.get("role", "zone") for name, spec in raw.get("locations", {}).items()}
    readers = {
        name: MappingProxyType(
            {
                int(number): AntennaSpec(a["location"], a.get("read_point"))
                for number, a in spec["antennas"].items()
            }
        )
        for name, spec in raw["readers"].items()
    }
    known = {a.location for ants in readers.values() for a in ants.values()} | offsite | set(roles)
    portals = _build_portals(raw.get("portals", {}), readers, known, offsite, errors)
    groups = _build_groups(raw["tags"], errors)
    timeline = _build_timeline(raw["timeline"], raw["duration"], known, portals, groups, errors)
    return Scenario(
        path=path,
        site=raw["site"],
        seed=raw["seed"],
        duration=float(raw["duration"]),
        offsite=offsite,
        roles=MappingProxyType(roles),
        readers=MappingProxyType(readers),
        portals=MappingProxyType(portals),
        radio=_build_radio(raw["radio"], readers, errors),
        groups=MappingProxyType(groups),
        timeline=tuple(timeline),
        transport=MappingProxyType(_build_transport(raw["readers"], errors)),
    )


_SHARED_RADIO_KEYS = (
    "round_ms",
    "read_rate",
    "rssi_near",
    "rssi_sigma",
    "cross_read_rate",
    "cross_read_drop_db",
    "stray_rate",
)


def _build_radio(
    raw: dict[str, Any], readers: Mapping[str, Mapping[int, AntennaSpec]], errors: list[str]
) -> Radio:
    shared = {k: raw[k] for k in _SHARED_RADIO_KEYS if k in raw}
    if raw.get("model", "independent") == "independent":
        return Radio(**shared)
    for text in raw.get("antenna_gain_db", {}):
        reader, _, number = text.rpartition(":")
        if reader not in readers or int(number) not in readers[reader]:
            errors.append(f"$.radio.antenna_gain_db.{text}: no such antenna")
    return Radio(**shared, model="bursty", bursty=bursty_model.from_raw(raw))


def _build_transport(raw: dict[str, Any], errors: list[str]) -> dict[str, Transport]:
    out = {}
    for name, spec in raw.items():
        outages = tuple(
            Outage(float(o["at_s"]), float(o["for_s"]), bool(o.get("buffer", True)))
            for o in spec.get("outages", [])
        )
        ordered = sorted(range(len(outages)), key=lambda i: outages[i].at_s)
        for a, b in itertools.pairwise(ordered):
            if outages[b].at_s < outages[a].end_s:
                errors.append(
                    f"$.readers.{name}.outages[{b}]: starts at {outages[b].at_s:g} s, before "
                    f"outages[{a}] ends ({outages[a].end_s:g} s)"
                )
        transport = Transport(
            float(spec.get("clock_offset_s", 0.0)),
            float(spec.get("delivery_delay_s", 0.0)),
            float(spec.get("delivery_jitter_s", 0.0)),
            tuple(outages[i] for i in ordered),
        )
        if not transport.trivial:
            out[name] = transport
    return out


def _build_portals(
    raw: dict[str, Any],
    readers: Mapping[str, Mapping[int, AntennaSpec]],
    known: set[str],
    offsite: frozenset[str],
    errors: list[str],
) -> dict[str, PortalSpec]:
    portals: dict[str, PortalSpec] = {}
    used: dict[Ref, str] = {}
    for name, spec in raw.items():
        here = f"$.portals.{name}"
        sides: dict[str, tuple[Ref, ...]] = {}
        for side in ("outside", "inside"):
            location = spec[f"{side}_location"]
            loc_path = f"{here}.{side}_location"
            if location not in known:
                errors.append(f"{loc_path}: unknown location {location!r} (known: {_names(known)})")
            elif side == "outside" and location not in offsite:
                errors.append(
                    f"{loc_path}: {location!r} must be an offsite location (list it in $.offsite)"
                )
            elif side == "inside" and location in offsite:
                errors.append(f"{loc_path}: {location!r} is offsite; a portal's inside is on-site")
            refs = []
            for i, text in enumerate(spec[side]):
                ref_path = f"{here}.{side}[{i}]"
                reader, _, number_text = text.rpartition(":")
                ref = (reader, int(number_text))
                if reader not in readers:
                    errors.append(
                        f"{ref_path}: unknown reader {reader!r} (known: {_names(readers)})"
                    )
                    continue
                antenna = readers[reader].get(ref[1])
                if antenna is None:
                    have = ", ".join(str(n) for n in sorted(readers[reader]))
                    errors.append(
                        f"{ref_path}: reader {reader!r} has no antenna {ref[1]} (it has {have})"
                    )
                    continue
                if ref in used:
                    errors.append(f"{ref_path}: antenna {text} is already a side of {used[ref]}")
                    continue
                used[ref] = f"portal {name!r}"
                if antenna.location != location:
                    errors.append(
                        f"{ref_path}: antenna {text} is at {antenna.location!r}, not at the "
                        f"portal's {side}_location {location!r}"
                    )
                refs.append(ref)
            sides[side] = tuple(refs)
        portals[name] = PortalSpec(
            name,
            sides["outside"],
            sides["inside"],
            spec["outside_location"],
            spec["inside_location"],
            spec["kind"],
        )
    return portals


def _build_groups(raw: dict[str, Any], errors: list[str]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for name, spec in raw.items():
        here = f"$.tags.{name}"
        if "sgtin" in spec:
            epcs = _sgtin_group(spec["sgtin"], f"{here}.sgtin", errors)
            where = [f"{here}.sgtin" for _ in epcs]
        else:
            epcs = [epc.upper() for epc in spec["epcs"]]
            where = [f"{here}.epcs[{i}]" for i in range(len(epcs))]
        kept = []
        for epc, at in zip(epcs, where, strict=True):
            if epc in owner:
                errors.append(f"{at}: EPC {epc} is already in group {owner[epc]!r}")
                continue
            owner[epc] = name
            kept.append(epc)
        groups[name] = tuple(kept)
    return groups


def _sgtin_group(spec: dict[str, Any], here: str, errors: list[str]) -> list[str]:
    company, item = spec["company"], spec["item"]
    first, count = spec["serial_from"], spec["count"]
    if len(company) + len(item) != 13:
        errors.append(
            f"{here}: company prefix ({len(company)} digits) + item reference ({len(item)} "
            "digits) must be 13 digits (indicator digit included in the item reference)"
        )
        return []
    if first + count - 1 > SGTIN96_MAX_SERIAL:
        errors.append(
            f"{here}: serials up to {first + count - 1} exceed SGTIN-96's {SGTIN96_MAX_SERIAL}"
        )
        return []
    return [sgtin96(company, item, serial) for serial in range(first, first + count)]


def sgtin96(company: str, item: str, serial: int) -> str:
    """SGTIN-96 EPC (upper-case hex), filter value 1 (point of sale item). epcpy picks the
    partition from the company prefix length (7 digits -> partition 5)."""
    from epcpy.epc_schemes.sgtin import SGTIN, SGTINFilterValue

    uri = f"urn:epc:id:sgtin:{company}.{item}.{serial}"
    hex_text: str = SGTIN(uri).hex(
        binary_coding_scheme=SGTIN.BinaryCodingScheme.SGTIN_96,
        filter_value=SGTINFilterValue.POS_ITEM,
    )
    return hex_text.upper().rjust(24, "0")


_OPS = ("at", "through", "to", "leave")


def _build_timeline(
    raw: list[dict[str, Any]],
    duration: float,
    known: set[str],
    portals: Mapping[str, PortalSpec],
    groups: Mapping[str, tuple[str, ...]],
    errors: list[str],
) -> list[Step]:
    steps = []
    for index, entry in enumerate(raw):
        here = f"$.timeline[{index}]"
        count = len(errors)
        if entry["group"] not in groups:
            errors.append(
                f"{here}.group: unknown group {entry['group']!r} (known: {_names(groups)})"
            )
        op = _op_of(entry, here, errors)
        for key in ("at", "to"):
            if key in entry and entry[key] not in known:
                errors.append(
                    f"{here}.{key}: unknown location {entry[key]!r} (known: {_names(known)})"
                )
        for key in ("through", "stray_near"):
            if key in entry and entry[key] not in portals:
                errors.append(
                    f"{here}.{key}: unknown portal {entry[key]!r} (known: {_names(portals)})"
                )
        end = entry["t"] + entry.get("duration", 0)
        if end > duration:
            errors.append(
                f"{here}: ends at {end:g} s, after the scenario's duration {duration:g} s"
            )
        if op is None or len(errors) > count:
            continue
        location = entry.get("at", entry.get("to"))
        steps.append(
            Step(
                index=index,
                t=float(entry["t"]),
                group=entry["group"],
                op=op,
                location=location,
                portal=entry.get("through"),
                duration=float(entry.get("duration", 0)),
                stray_near=entry.get("stray_near"),
            )
        )
    return steps


def _op_of(entry: dict[str, Any], here: str, errors: list[str]) -> Op | None:
    """Exactly one of at / through / to (alone) / leave; `duration` only where it has a meaning."""
    present: list[str] = [k for k in ("at", "through", "leave") if k in entry]
    if not present and "to" in entry:
        present = ["to"]
    if len(present) != 1:
        what = " and ".join(present) if present else "none"
        errors.append(f"{here}: needs exactly one of at, through, to or leave (has {what})")
        return None
    op: Op = present[0]  # type: ignore[assignment]
    allowed = {
        "at": {"t", "group", "at", "stray_near"},
        "through": {"t", "group", "through", "to", "duration"},
        "to": {"t", "group", "to", "duration"},
        "leave": {"t", "group", "leave"},
    }[op]
    for key in sorted(set(entry) - allowed):
        errors.append(
            f"{here}.{key}: not allowed with {op!r} (allowed: {', '.join(sorted(allowed))})"
        )
    if op == "to" and "duration" not in entry:
        errors.append(f"{here}.duration: required with 'to' (seconds the move takes; 0 is allowed)")
    return op


# --- the plan: where every group is, and the truth -------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    """A group is in the field of `fields` (and strays near `strays`) during [start, end)."""

    start: float
    end: float
    fields: frozenset[Ref]
    strays: frozenset[Ref] = frozenset()


@dataclass(frozen=True, slots=True)
class TruthEvent:
    t_s: float
    group: str
    type: Literal["arrived", "moved", "departed"]
    from_: str | None
    to: str | None


@dataclass
class Plan:
    intervals: dict[str, list[Interval]] = field(default_factory=dict)
    events: list[TruthEvent] = field(default_factory=list)


def plan(scenario: Scenario, errors: list[str] | None = None) -> Plan:
    """Walk each group's steps: the fields it is in over time and the movements it makes.

    Problems (overlapping steps, impossible crossings) go to `errors` when given, else raise.
    """
    collected: list[str] = [] if errors is None else errors
    result = Plan()
    blind = blind_spans(scenario)
    by_group: dict[str, list[Step]] = {g: [] for g in scenario.groups}
    for step in sorted(scenario.timeline, key=lambda s: (s.t, s.index)):
        by_group[step.group].append(step)
    for group, steps in by_group.items():
        walker = _GroupWalker(scenario, group, collected)
        for step in steps:
            walker.apply(step)
        walker.finish()
        result.intervals[group] = walker.intervals
        if blind:
            result.events.extend(_observed_events(scenario, group, walker.moves, blind))
        else:
            result.events.extend(walker.events)
    group_order = {g: i for i, g in enumerate(scenario.groups)}
    result.events.sort(key=lambda e: (e.t_s, group_order[e.group]))
    if errors is None and collected:
        raise ScenarioError(collected)
    return result


class _GroupWalker:
    """One group's life: a location (None = nowhere near any reader) and its resting strays."""

    def __init__(self, scenario: Scenario, group: str, errors: list[str]) -> None:
        self.s = scenario
        self.group = group
        self.errors = errors
        self.where: str | None = None
        self.strays: frozenset[Ref] = frozenset()
        self.rest_from = 0.0
        self.busy_until = 0.0
        self.busy_step = -1
        self.intervals: list[Interval] = []
        self.events: list[TruthEvent] = []
        self.moves: list[tuple[float, str | None, str | None]] = []  # (t, where, came_from)

    def apply(self, step: Step) -> None:
        here = f"$.timeline[{step.index}]"
        if step.t < self.busy_until:
            self.errors.append(
                f"{here}.t: group {self.group!r} is still moving until {self.busy_until:g} s "
                f"($.timeline[{self.busy_step}])"
            )
            return
        if step.op == "through":
            self._through(step, here)
        else:
            self._rest_until(step.t)
            target = None if step.op == "leave" else step.location
            if step.op == "to" and step.duration > 0:
                half = step.t + step.duration / 2
                self._field(step.t, half, self._fields_of(self.where))
                self._field(half, step.end, self._fields_of(target))
            self._transition(target, step.end)
            self.strays = frozenset()
            if step.stray_near is not None:
                p = self.s.portals[step.stray_near]
                self.strays = frozenset(p.outside) | frozenset(p.inside)
        self.rest_from = self.busy_until = step.end
        self.busy_step = step.index

    def _through(self, step: Step, here: str) -> None:
        assert step.portal is not None
        p = self.s.portals[step.portal]
        on_site = self.where is not None and self.where not in self.s.offsite
        if step.location is None:
            inbound = not on_site
        elif step.location in (p.inside_location, p.outside_location):
            inbound = step.location == p.inside_location
        else:
            self.errors.append(
                f"{here}.to: {step.location!r} is neither side of portal {p.name!r} "
                f"(outside {p.outside_location!r}, inside {p.inside_location!r})"
            )
            return
        if inbound and on_site:
            self.errors.append(
                f"{here}: group {self.group!r} is on-site at {self.where!r}; an inbound crossing "
                f"of {p.name!r} starts from off-site or nowhere"
            )
            return
        if not inbound and self.where != p.inside_location:
            self.errors.append(
                f"{here}: group {self.group!r} is at {self.where!r}; an outbound crossing of "
                f"{p.name!r} starts at its inside location {p.inside_location!r} "
                "(add a 'to' step first)"
            )
            return
        self._rest_until(step.t)
        near, far = (p.outside, p.inside) if inbound else (p.inside, p.outside)
        d = step.duration
        self._field(step.t, step.t + NEAR_SIDE_UNTIL * d, frozenset(near))
        self._field(step.t + FAR_SIDE_FROM * d, step.end, frozenset(far))
        # Crossing inbound, the gateway saw the tags on the outside: that is where they came from.
        came_from = p.outside_location if inbound else None
        self._transition(p.inside_location if inbound else p.outside_location, step.end, came_from)
        self.strays = frozenset()

    def finish(self) -> None:
        self._rest_until(math.inf)

    def _fields_of(self, location: str | None) -> frozenset[Ref]:
        return frozenset() if location is None else self.s.antennas_at(location)

    def _field(self, start: float, end: float, fields: frozenset[Ref]) -> None:
        if end > start and fields:
            self.intervals.append(Interval(start, end, fields))

    def _rest_until(self, end: float) -> None:
        fields = self._fields_of(self.where)
        if end > self.rest_from and (fields or self.strays):
            self.intervals.append(Interval(self.rest_from, end, fields, self.strays))

    def _observed(self, location: str | None) -> tuple[str | None, str | None]:
        """(present_at, seen_offsite_at) as an ideal gateway sees a group at `location`."""
        if location is None or not self.s.visible(location):
            return None, None
        if location in self.s.offsite:
            return None, location
        return location, None

    def _transition(self, target: str | None, t: float, came_from: str | None = None) -> None:
        self.moves.append((t, target, came_from))
        before, before_offsite = self._observed(self.where)
        after, after_offsite = self._observed(target)
        self.where = target
        if before is not None and after is not None:
            if before != after:
                self._event(t, "moved", before, after)
        elif before is not None:
            self._event(t, "departed", before, after_offsite)  # to None: out of every field
        elif after is not None:
            self._event(t, "arrived", came_from or before_offsite, after)

    def _event(self, t: float, kind: Any, from_: str | None, to: str | None) -> None:
        self.events.append(TruthEvent(round(t, 6), self.group, kind, from_, to))


def blind_spans(scenario: Scenario) -> dict[str, list[tuple[float, float]]]:
    """reader -> spans of true time whose reads never reach the gateway (unbuffered outages)."""
    return {reader: spans for reader, tr in scenario.transport.items() if (spans := tr.blind())}


def _observed_events(
    scenario: Scenario,
    group: str,
    moves: Sequence[tuple[float, str | None, str | None]],
    blind: Mapping[str, list[tuple[float, float]]],
) -> list[TruthEvent]:
    """The truth of one group when some reader loses reads (an unbuffered outage): what an
    ideal gateway fed only the reads that arrive could tell. While every reader covering a
    location is blind, the gateway cannot see a tag there, nor see that it left: a change
    becomes observable when the tag is seen somewhere (a reader covering its new location is
    not blind) or, for a tag gone out of every field, when a reader covering where it was is
    back. It is dated then; several changes within one blind span collapse into one (from
    the last observed state to the state at that moment), and a crossing's outside location
    is its `from` only when the crossing itself was seen. Without blind spans this gives the
    events of _GroupWalker, change for change."""

    def blind_at(reader: str, t: float) -> bool:
        return any(a <= t < b for a, b in blind.get(reader, ()))

    def seeing(location: str | None, t: float) -> bool:
        refs = scenario.antennas_at(location) if location is not None else frozenset()
        return any(not blind_at(reader, t) for reader, _ in refs)

    def observed(location: str | None) -> tuple[str | None, str | None]:
        if location is None or not scenario.visible(location):
            return None, None
        if location in scenario.offsite:
            return None, location
        return location, None

    # Every move when it happens, and every end of a blind span (after the moves of that time).
    checks = [(t, 0, i) for i, (t, _, _) in enumerate(moves)]
    checks += [(b, 1, -1) for b in sorted({b for spans in blind.values() for _, b in spans})]
    checks.sort()
    events: list[TruthEvent] = []
    seen_at: str | None = None  # where the gateway last saw the group (None: nowhere)
    k = -1
    for t, kind, i in checks:
        if kind == 0:
            k = i
        if k < 0:
            continue
        _, where, came_from = moves[k]
        if observed(where) == observed(seen_at):
            seen_at = where
            continue
        visible_now = where is not None and scenario.visible(where)
        if not (seeing(where, t) if visible_now else seeing(seen_at, t) or seen_at is None):
            continue
        before, before_offsite = observed(seen_at)
        after, after_offsite = observed(where)
        stamp = round(t, 6)
        if before is not None and after is not None:
            events.append(TruthEvent(stamp, group, "moved", before, after))
        elif before is not None:
            events.append(TruthEvent(stamp, group, "departed", before, after_offsite))
        elif after is not None:
            origin = came_from if kind == 0 else None
            events.append(TruthEvent(stamp, group, "arrived", origin or before_offsite, after))
        seen_at = where
    return events


# --- rendering ---------------------------------------------------------------------------------


Delivery = tuple[float, float, int, str, int]  # (arrival_s, stamp_s, antenna, epc, rssi)


@dataclass
class Rendering:
    scenario: Scenario
    duration_s: float
    # reader -> the reads it reports, sorted by t = its own timestamp (seconds from the scenario
    # start; the true time of the read plus the reader's clock_offset_s); reads lost in an
    # unbuffered outage are not here
    reads: dict[str, list[Read]]
    truth: list[dict[str, Any]]  # {"epc", "type", "from", "to", "t_s"}
    # reader -> the same reads as the gateway receives them, in arrival order: (arrival_s on the
    # gateway's clock, the reader's stamp, antenna, epc, rssi). Without transport settings
    # arrival_s == stamp == t.
    deliveries: dict[str, list[Delivery]] = field(default_factory=dict)


def render(scenario: Scenario, until_s: float | None = None) -> Rendering:
    """Reads of every reader for [0, until_s) (default: the scenario's duration) and the truth."""
    until = scenario.duration if until_s is None else until_s
    made: dict[str, list[Read]] = {name: [] for name in scenario.readers}
    for t, reader, antenna, epc, rssi in iter_reads(scenario, until):
        made[reader].append((t, antenna, epc, rssi))
    reads: dict[str, list[Read]] = {}
    deliveries: dict[str, list[Delivery]] = {}
    for name, physical in made.items():
        reads[name], deliveries[name] = transport(scenario, name, physical)
    return Rendering(scenario, until, reads, truth(scenario), deliveries)


def transport(
    scenario: Scenario, reader: str, made: list[Read]
) -> tuple[list[Read], list[Delivery]]:
    """The reads a reader reports (stamped by its clock) and their deliveries (docs/scenarios.md,
    *Reader transport*), from the reads it made (true time, in order).

    A report arrives delivery_delay_s + U(0, delivery_jitter_s) after the read, never before an
    earlier one (one connection keeps its order). During an outage [at_s, at_s + for_s) of
    gateway time nothing arrives: a report that would have arrived then (made before the outage
    ends) is held by the reader and sent when the link is back (arriving at the end plus the
    delay, all at once, in order), or lost without `buffer`. The jitter draws come from their
    own generator ("transport/<seed>/<reader>"): the reads do not change with the transport."""
    tr = scenario.transport.get(reader, NO_TRANSPORT)
    if tr.trivial:
        return made, [(t, t, antenna, epc, rssi) for t, antenna, epc, rssi in made]
    rng = random.Random(f"transport/{scenario.seed}/{reader}")
    delay, jitter, offset = tr.delivery_delay_s, tr.delivery_jitter_s, tr.clock_offset_s
    reported: list[Read] = []
    delivered: list[Delivery] = []
    last = -math.inf
    for t, antenna, epc, rssi in made:
        arrival = t + delay + (jitter * rng.random() if jitter > 0 else 0.0)
        lost = False
        for o in tr.outages:
            if t < o.end_s and arrival >= o.at_s:
                lost = not o.buffer
                arrival = o.end_s + delay
                break
        if lost:
            continue
        last = arrival = max(last, arrival)
        stamp = round(t + offset, 6)
        reported.append((stamp, antenna, epc, rssi))
        delivered.append((round(arrival, 6), stamp, antenna, epc, rssi))
    return reported, delivered


def truth(scenario: Scenario) -> list[dict[str, Any]]:
    """One line per EPC per movement an ideal gateway would report, in time order."""
    lines = []
    for e in plan(scenario).events:
        for epc in scenario.groups[e.group]:
            lines.append({"epc": epc, "type": e.type, "from": e.from_, "to": e.to, "t_s": e.t_s})
    return lines


def iter_reads(
    scenario: Scenario, until_s: float | None = None
) -> Iterator[tuple[float, str, int, str, int]]:
    """(t_s, reader, antenna, epc, rssi) in time order, round after round; endless when until_s
    is None, so a simulator keeps rendering the final state for as long as it runs. The same
    seed gives the same stream, however far it is read. The true time of each read: the
    reader transport (clock offsets, delays, outages) is applied by render()."""
    if scenario.radio.model == "bursty":
        yield from _iter_bursty(scenario, until_s)
        return
    rng = random.Random(scenario.seed)
    radio = scenario.radio
    round_s = radio.round_ms / 1000.0
    intervals = plan(scenario).intervals
    groups = [(scenario.groups[g], intervals[g]) for g in scenario.groups if intervals[g]]
    layouts: dict[tuple[frozenset[Ref], frozenset[Ref]], _Layout] = {}
    for k in itertools.count():
        t0 = k * round_s
        if until_s is not None and t0 >= until_s:
            return
        batch: list[tuple[float, str, int, str, int]] = []
        for epcs, spans in groups:
            fields, strays = _active(spans, t0)
            if not fields and not strays:
                continue
            key = (fields, strays)
            layout = layouts.get(key) or layouts.setdefault(key, _Layout.of(scenario, *key))
            _render_round(rng, radio, round_s, t0, epcs, layout, batch)
        batch.sort(key=lambda r: r[0])
        yield from batch


def _iter_bursty(
    scenario: Scenario, until_s: float | None
) -> Iterator[tuple[float, str, int, str, int]]:
    """The second noise model (simulators/bursty.py) over the same plan and geometry."""
    radio = scenario.radio
    assert radio.bursty is not None
    intervals = plan(scenario).intervals
    groups = [(scenario.groups[g], intervals[g]) for g in scenario.groups if intervals[g]]
    layouts: dict[tuple[frozenset[Ref], frozenset[Ref]], _Layout] = {}

    def active(t0: float) -> list[tuple[Sequence[str], _Layout]]:
        out: list[tuple[Sequence[str], _Layout]] = []
        for epcs, spans in groups:
            fields, strays = _active(spans, t0)
            if fields or strays:
                key = (fields, strays)
                layout = layouts.get(key) or layouts.setdefault(key, _Layout.of(scenario, *key))
                out.append((epcs, layout))
        return out

    refs = [(r, n) for r, antennas in scenario.readers.items() for n in sorted(antennas)]
    yield from bursty_model.iter_bursty(scenario.seed, radio, radio.bursty, refs, active, until_s)


def _active(spans: list[Interval], t: float) -> tuple[frozenset[Ref], frozenset[Ref]]:
    fields: frozenset[Ref] = frozenset()
    strays: frozenset[Ref] = frozenset()
    for span in spans:
        if span.start <= t < span.end:
            fields |= span.fields
            strays |= span.strays
    return fields, strays


@dataclass(frozen=True, slots=True)
class _Layout:
    """Which antennas read a group in a round: in the field, cross-reading, or catching strays."""

    fields: tuple[Ref, ...]
    cross: tuple[Ref, ...]  # other antennas of the readers whose field holds the group
    strays: tuple[Ref, ...]  # portal antennas near a parked group, not already in its field

    @classmethod
    def of(cls, scenario: Scenario, fields: frozenset[Ref], strays: frozenset[Ref]) -> _Layout:
        readers = {reader for reader, _ in fields}
        cross = {
            (reader, number)
            for reader in readers
            for number in scenario.readers[reader]
            if (reader, number) not in fields
        }
        return cls(tuple(sorted(fields)), tuple(sorted(cross)), tuple(sorted(strays - fields)))


def _render_round(
    rng: random.Random,
    radio: Radio,
    round_s: float,
    t0: float,
    epcs: Sequence[str],
    layout: _Layout,
    out: list[tuple[float, str, int, str, int]],
) -> None:
    """The noise model of docs/scenarios.md, for one group in one round. Every draw happens in a
    fixed order, so the stream depends on the seed alone."""
    near, sigma = radio.rssi_near, radio.rssi_sigma
    cross_rssi = near - radio.cross_read_drop_db
    stray_rssi = near - STRAY_DROP_DB
    for epc in epcs:
        for reader, antenna in layout.fields:
            if rng.random() < radio.read_rate:
                out.append((_when(rng, t0, round_s), reader, antenna, epc, _rssi(rng, near, sigma)))
        crossed = set()
        for ref in layout.cross:
            if rng.random() < radio.cross_read_rate:
                crossed.add(ref)
                rssi = _rssi(rng, cross_rssi, sigma)
                out.append((_when(rng, t0, round_s), ref[0], ref[1], epc, rssi))
        for ref in layout.strays:
            # at most one read per tag, antenna and round: a cross-read already counts
            if rng.random() < radio.stray_rate and ref not in crossed:
                rssi = _rssi(rng, stray_rssi, sigma)
                out.append((_when(rng, t0, round_s), ref[0], ref[1], epc, rssi))


def _when(rng: random.Random, t0: float, round_s: float) -> float:
    return round(t0 + rng.random() * round_s, 6)


def _rssi(rng: random.Random, mean: float, sigma: float) -> int:
    value = round(mean + rng.gauss(0.0, sigma)) if sigma > 0 else round(mean)
    return max(RSSI_MIN, min(RSSI_MAX, int(value)))


# --- outputs -----------------------------------------------------------------------------------


def truth_lines(
    rendering: Rendering, start_epoch_us: int, speed: float = 1.0
) -> list[dict[str, Any]]:
    """The truth as published-time lines {"epc","type","from","to","time"}: a run started at
    `start_epoch_us` and played `speed` times faster than real time."""
    from gateway.model import iso_ms

    return [
        {
            "epc": line["epc"],
            "type": line["type"],
            "from": line["from"],
            "to": line["to"],
            "time": iso_ms(start_epoch_us + round(line["t_s"] / speed * 1e6)),
        }
        for line in rendering.truth
    ]


def write_truth(lines: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


def merged_reads(rendering: Rendering) -> list[tuple[float, str, int, str, int]]:
    """All readers' reads in one time-ordered list."""
    merged = [
        (t, reader, antenna, epc, rssi)
        for reader, reads in rendering.reads.items()
        for t, antenna, epc, rssi in reads
    ]
    merged.sort(key=lambda r: r[0])
    return merged


def write_capture(rendering: Rendering, path: str | Path, start_epoch_us: int = 0) -> int:
    """The replay driver's capture format, one read a line, in time order; returns the count.
    `t` is seconds: since the scenario start, plus start_epoch_us when given."""
    offset = start_epoch_us / 1e6
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for t, reader, antenna, epc, rssi in merged_reads(rendering):
            line = {"t": round(offset + t, 6), "reader": reader, "antenna": antenna}
            line |= {"epc": epc, "rssi": rssi}
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
            count += 1
    return count


def location_business(scenario: Scenario) -> dict[str, tuple[str, str]]:
    """biz_step / disposition per location, by rule (see ROLE_BUSINESS and PORTAL_BUSINESS)."""
    business: dict[str, tuple[str, str]] = {}
    for portal in scenario.portals.values():
        inside, outside = PORTAL_BUSINESS[portal.kind]
        if inside is not None:
            business.setdefault(portal.inside_location, inside)
        if outside is not None:
            business.setdefault(portal.outside_location, outside)
    for name in scenario.locations:
        if name in scenario.roles:
            business[name] = ROLE_BUSINESS[scenario.roles[name]]
        elif name not in scenario.offsite:
            business.setdefault(name, ROLE_BUSINESS["zone"])
    return business


def gateway_config_text(
    scenario: Scenario,
    ports: Mapping[str, int],
    host: str,
    *,
    state_dir: str,
    mqtt_url: str,
    site: str | None = None,
    gateway_id: str = "gw-sim",
    topic_prefix: str = "fc",
    metrics_listen: str | None = None,
    driver: str = "llrp",
    reader_options: Mapping[str, Any] | None = None,
) -> str:
    """A complete gateway TOML for the scenario (see write_gateway_config)."""
    missing = [r for r in scenario.readers if driver == "llrp" and r not in ports]
    if missing:
        raise ValueError(f"no port for reader(s) {', '.join(missing)}")
    out: list[str] = []

    def table(name: str, values: Mapping[str, Any]) -> None:
        out.append(f"\n[{name}]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())

    out.append(f"# Generated from scenario {Path(scenario.path).name or scenario.site}.")
    out.append("# Location profiles are chosen by rule (portal sides vs zones), never here.")
    table(
        "gateway",
        {"site": site or scenario.site, "id": gateway_id, "state_dir": state_dir},
    )
    table(
        "mqtt",
        {"url": mqtt_url, "topic_prefix": topic_prefix, "client_id": f"fc-edge-{gateway_id}"},
    )
    table("metrics", {"listen": metrics_listen} if metrics_listen else {"enabled": False})
    business = location_business(scenario)
    for name in scenario.locations:
        values: dict[str, Any] = {}
        if name in scenario.offsite:
            values["offsite"] = True
        if name in business:
            values["biz_step"], values["disposition"] = business[name]
        table(f"locations.{_toml_key(name)}", values)
    for name, portal in scenario.portals.items():
        table(
            f"portals.{_toml_key(name)}",
            {
                "outside": [f"{r}:{a}" for r, a in portal.outside],
                "inside": [f"{r}:{a}" for r, a in portal.inside],
            },
        )
    for name, antennas in scenario.readers.items():
        entry: dict[str, Any] = {"name": name, "driver": driver}
        if driver == "llrp":
            entry |= {"host": host, "port": ports[name]}
        entry |= dict(reader_options or {})
        out.append("\n[[readers]]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items())
        out.append("[readers.antennas]")
        for number in sorted(antennas):
            a = antennas[number]
            spec = {"location": a.location, "read_point": a.read_point or f"{name}:{number}"}
            out.append(f"{number} = {_toml_value(spec)}")
    return "\n".join(out).lstrip("\n") + "\n"


def write_gateway_config(
    scenario: Scenario,
    ports: Mapping[str, int],
    host: str,
    path: str | Path,
    *,
    state_dir: str,
    mqtt_url: str,
    site: str | None = None,
    gateway_id: str = "gw-sim",
    topic_prefix: str = "fc",
    metrics_listen: str | None = None,
    driver: str = "llrp",
    reader_options: Mapping[str, Any] | None = None,
) -> str:
    """Write a complete gateway config: [gateway], [mqtt], [metrics] (off unless
    metrics_listen is given, so parallel test gateways never fight over a port), a
    [locations.X] per location (offsite flag, biz_step/disposition by rule), [portals.X] and
    one [[readers]] per simulated reader (driver "llrp" at host:ports[name]; another driver,
    e.g. "replay", gets `reader_options` instead). Returns the text written."""
    text = gateway_config_text(
        scenario,
        ports,
        host,
        state_dir=state_dir,
        mqtt_url=mqtt_url,
        site=site,
        gateway_id=gateway_id,
        topic_prefix=topic_prefix,
        metrics_listen=metrics_listen,
        driver=driver,
        reader_options=reader_options,
    )
    Path(path).write_text(text, encoding="utf-8")
    return text


def find_scenario(name: str) -> Path:
    """A path, or the name of a bundled scenario ("dock-receive" or "dock-receive.json")."""
    path = Path(name)
    if path.exists():
        return path
    bundled = SCENARIOS_DIR / (name if name.endswith(".json") else f"{name}.json")
    return bundled if bundled.exists() else path


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`fc-edge scenario FILE`: check a scenario and render it for the replay driver.

    Exit 0, or 65 (EX_DATAERR) with one line per problem naming the JSON path.
    """
    parser = argparse.ArgumentParser(
        prog="fc-edge scenario",
        description="Check a scenario; optionally write its replay capture, truth and config.",
    )
    parser.add_argument("scenario", help="scenario file, or the name of a bundled one")
    parser.add_argument("--capture", help="write the reads as a replay capture (JSON Lines)")
    parser.add_argument("--truth", help="write the truth (JSON Lines)")
    parser.add_argument("--start-epoch-us", type=int, default=None, help="truth time origin")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed, for truth times")
    parser.add_argument("--gateway-config", help="write a gateway config using the replay driver")
    parser.add_argument("--state-dir", default="state", help="state_dir of that config")
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    args = parser.parse_args(argv)
    try:
        scenario = load_scenario(find_scenario(args.scenario))
    except ScenarioError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 65
    rendering = render(scenario)
    reads = sum(len(r) for r in rendering.reads.values())
    summary = {"scenario": scenario.path, "reads": reads, "truth": len(rendering.truth)}
    if args.capture:
        write_capture(rendering, args.capture)
    if args.truth:
        import time

        start = args.start_epoch_us if args.start_epoch_us is not None else time.time_ns() // 1000
        write_truth(truth_lines(rendering, start, args.speed), args.truth)
    if args.gateway_config:
        capture = str(Path(args.capture).resolve()) if args.capture else "capture.jsonl"
        write_gateway_config(
            scenario,
            {},
            "",
            args.gateway_config,
            state_dir=args.state_dir,
            mqtt_url=args.mqtt_url,
            driver="replay",
            reader_options={"file": capture, "speed": args.speed},
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = [
    "Rendering",
    "Scenario",
    "ScenarioError",
    "iter_reads",
    "load_scenario",
    "render",
    "truth_lines",
    "write_capture",
    "write_gateway_config",
]
