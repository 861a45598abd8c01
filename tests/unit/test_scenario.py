"""Scenarios: loading and its errors, the noise model's statistics, the truth of every timeline
step, and the files made from a scenario (replay capture, truth, gateway config)."""

from __future__ import annotations

import copy
import importlib.util
import json
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.base import REGISTRY, Driver
from gateway import config as gateway_config
from gateway.model import decode_epc
from simulators import scenario as sc

# simulators/scenarios/ also holds the TSL handheld's scenarios (another format): ours name
# their schema.
BUNDLED = [
    p
    for p in sorted(sc.SCENARIOS_DIR.glob("*.json"))
    if json.loads(p.read_text()).get("$schema", "").endswith("scenario.schema.json")
]


def base(**changes: Any) -> dict[str, Any]:
    """A small valid scenario: a receiving dock (YARD | DOCK), a staging reader with two zones,
    a BACKROOM without antenna, two groups."""
    raw: dict[str, Any] = {
        "site": "S1",
        "seed": 7,
        "duration": 60,
        "offsite": ["YARD", "TRAILER"],
        "locations": {"BACKROOM": {"role": "zone"}},
        "readers": {
            "dock": {
                "antennas": {
                    "1": {"location": "YARD", "read_point": "d-out"},
                    "2": {"location": "DOCK", "read_point": "d-in"},
                }
            },
            "stg": {"antennas": {"1": {"location": "ZONE-A"}, "2": {"location": "ZONE-B"}}},
        },
        "portals": {
            "dock": {
                "outside": ["dock:1"],
                "inside": ["dock:2"],
                "outside_location": "YARD",
                "inside_location": "DOCK",
                "kind": "receiving",
            }
        },
        "radio": {
            "round_ms": 100,
            "read_rate": 0.7,
            "rssi_near": -52,
            "rssi_sigma": 4.0,
            "cross_read_rate": 0.0,
            "cross_read_drop_db": 8,
            "stray_rate": 0.0,
        },
        "tags": {
            "g": {"sgtin": {"company": "4912345", "item": "067890", "serial_from": 1, "count": 5}},
            "h": {"epcs": ["3034257bf7194e4000001a85", "E2801160600002084A5B1C3D"]},
        },
        "timeline": [],
    }
    raw.update(changes)
    return raw


def load(raw: dict[str, Any]) -> sc.Scenario:
    return sc.scenario_from_dict(copy.deepcopy(raw), "test.json")


def events(raw: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Truth of group g as (type, from, to, t_s), once per movement (not per EPC)."""
    s = load(raw)
    g = set(s.groups["g"])
    lines = [x for x in sc.render(s, until_s=0).truth if x["epc"] in g]
    out = []
    for x in lines:
        key = (x["type"], x["from"], x["to"], x["t_s"])
        if key not in out:
            out.append(key)
    assert len(lines) == len(out) * len(g)  # every EPC of the group moves together
    return out


# --- bundled scenarios and determinism ---------------------------------------------------------


def test_at_least_the_five_scenarios_ship() -> None:
    names = {p.stem for p in BUNDLED}
    assert {"dock-receive", "ship-door", "conveyor", "store-floor", "noisy"} <= names


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_scenarios_load_render_and_have_truth(path: Path) -> None:
    s = sc.load_scenario(path)
    assert 60 <= s.duration <= 180
    r = sc.render(s)
    assert r.truth, "a scenario without truth tests nothing"
    total = 0
    for reader, reads in r.reads.items():
        assert reader in s.readers
        assert [x[0] for x in reads] == sorted(x[0] for x in reads)
        for t, antenna, epc, rssi in reads:
            assert 0 <= t < s.duration + s.radio.round_ms / 1000
            assert antenna in s.readers[reader]
            assert epc == epc.upper() and isinstance(rssi, int)
        total += len(reads)
    assert total > 0
    every_epc = {e for epcs in s.groups.values() for e in epcs}
    assert {x["epc"] for x in r.truth} <= every_epc


def test_dock_receive_is_a_200_tag_pallet_of_real_sgtins() -> None:
    s = sc.load_scenario(sc.SCENARIOS_DIR / "dock-receive.json")
    (pallet,) = s.groups.values()
    assert len(pallet) == 200
    truth = sc.render(s, until_s=0).truth
    kinds = {(x["type"], x["from"], x["to"]) for x in truth}
    assert kinds == {("arrived", "YARD", "DOCK-07"), ("moved", "DOCK-07", "STAGING")}


def test_rendering_is_deterministic_per_seed() -> None:
    raw = base(timeline=[{"t": 1, "group": "g", "through": "dock", "duration": 4}])
    raw["radio"] |= {"cross_read_rate": 0.2, "stray_rate": 0.1}
    first = sc.render(load(raw))
    again = sc.render(load(raw))
    assert first.reads == again.reads and first.truth == again.truth
    other = sc.render(load(raw | {"seed": 8}))
    assert other.reads != first.reads
    assert other.truth == first.truth  # the truth does not depend on the noise


def test_the_endless_stream_continues_the_rendering_and_keeps_the_final_state() -> None:
    raw = base(timeline=[{"t": 1, "group": "g", "to": "ZONE-A", "duration": 2}])
    s = load(raw)
    rendered = sc.merged_reads(sc.render(s))
    stream = sc.iter_reads(s)  # no end: a simulator may run past the scenario's duration
    prefix = [next(stream) for _ in range(len(rendered))]
    assert prefix == rendered
    later = [next(stream) for _ in range(200)]
    assert all(r[0] >= s.duration - 0.1 for r in later)
    assert {(r[1], r[2]) for r in later} == {("stg", 1)}  # still at ZONE-A


# --- the noise model ---------------------------------------------------------------------------


def test_rendered_statistics_match_the_radio_parameters() -> None:
    """The formulas of docs/scenarios.md: 50 tags parked at ZONE-A for 60 s (30,000 tag-rounds)
    near the dock door. Direct reads on stg:1, cross-reads on stg:2 (same reader), strays on
    both door antennas (another reader: no cross-reads there)."""
    raw = base(
        duration=60,
        tags={
            "g": {"sgtin": {"company": "4912345", "item": "067890", "serial_from": 1, "count": 50}}
        },
        timeline=[{"t": 0, "group": "g", "at": "ZONE-A", "stray_near": "dock"}],
    )
    raw["radio"] |= {"read_rate": 0.7, "cross_read_rate": 0.2, "stray_rate": 0.05}
    s = load(raw)
    r = sc.render(s)
    trials = 50 * 600
    radio = s.radio

    def on(reader: str, antenna: int) -> list[int]:
        return [x[3] for x in r.reads[reader] if x[1] == antenna]

    direct, cross = on("stg", 1), on("stg", 2)
    stray_out, stray_in = on("dock", 1), on("dock", 2)
    assert len(direct) / trials == pytest.approx(radio.read_rate, abs=0.015)
    assert statistics.fmean(direct) == pytest.approx(radio.rssi_near, abs=0.15)
    # integer RSSI adds 1/12 dB² of variance: negligible next to sigma
    assert statistics.pstdev(direct) == pytest.approx(radio.rssi_sigma, abs=0.15)
    assert len(cross) / trials == pytest.approx(radio.cross_read_rate, abs=0.012)
    drop = radio.rssi_near - radio.cross_read_drop_db
    assert statistics.fmean(cross) == pytest.approx(drop, abs=0.3)
    assert statistics.pstdev(cross) == pytest.approx(radio.rssi_sigma, abs=0.3)
    for strays in (stray_out, stray_in):
        assert len(strays) / trials == pytest.approx(radio.stray_rate, abs=0.008)
        assert statistics.fmean(strays) == pytest.approx(radio.rssi_near - 10, abs=0.6)
    # every read lies in its round; at most one read per tag, antenna and round
    seen = set()
    for reader, reads in r.reads.items():
        for t, antenna, epc, _ in reads:
            key = (reader, antenna, epc, int(t * 10 + 1e-9))
            assert key not in seen
            seen.add(key)


def test_through_renders_the_sixty_sixty_overlap() -> None:
    raw = base(timeline=[{"t": 10, "group": "g", "through": "dock", "duration": 10}])
    raw["radio"] |= {"read_rate": 1.0}
    r = sc.render(load(raw))
    outside = [t for t, a, _, _ in r.reads["dock"] if a == 1]
    inside = [t for t, a, _, _ in r.reads["dock"] if a == 2]
    assert 10 <= min(outside) < 10.1 and 15.9 <= max(outside) < 16.0  # first 60% of 10 s
    assert 14 <= min(inside) < 14.1  # last 60%: from 40% on, and then the final state
    assert max(inside) > 59  # resting at DOCK until the run ends
    assert not r.reads["stg"]


def test_to_renders_halves() -> None:
    raw = base(
        timeline=[
            {"t": 0, "group": "g", "at": "ZONE-A"},
            {"t": 10, "group": "g", "to": "ZONE-B", "duration": 4},
        ]
    )
    raw["radio"] |= {"read_rate": 1.0}
    reads = sc.render(load(raw)).reads["stg"]
    assert max(t for t, a, _, _ in reads if a == 1) < 12.0
    assert 12.0 <= min(t for t, a, _, _ in reads if a == 2) < 12.1


# --- truth: one test per timeline step ---------------------------------------------------------


def test_truth_through_inbound_arrives_from_the_outside() -> None:
    raw = base(timeline=[{"t": 4, "group": "g", "through": "dock", "to": "DOCK", "duration": 4}])
    assert events(raw) == [("arrived", "YARD", "DOCK", 8.0)]


def test_truth_through_outbound_departs_to_the_outside() -> None:
    raw = base(
        timeline=[
            {"t": 0, "group": "g", "at": "DOCK"},
            {"t": 10, "group": "g", "through": "dock", "duration": 5},
            {"t": 30, "group": "g", "leave": True},  # the trailer leaves: not present, no truth
        ]
    )
    assert events(raw) == [("arrived", None, "DOCK", 0.0), ("departed", "DOCK", "YARD", 15.0)]


def test_truth_to_moves_and_leave_departs_to_null() -> None:
    raw = base(
        timeline=[
            {"t": 0, "group": "g", "at": "ZONE-A"},
            {"t": 20, "group": "g", "to": "ZONE-B", "duration": 3},
            {"t": 40, "group": "g", "leave": True},
            {"t": 50, "group": "g", "leave": True},  # already gone: nothing more
        ]
    )
    assert events(raw) == [
        ("arrived", None, "ZONE-A", 0.0),
        ("moved", "ZONE-A", "ZONE-B", 23.0),
        ("departed", "ZONE-B", None, 40.0),
    ]


def test_truth_at_with_stray_near_is_one_arrival_and_strays_are_noise() -> None:
    raw = base(timeline=[{"t": 0, "group": "g", "at": "ZONE-A", "stray_near": "dock"}])
    raw["radio"] |= {"stray_rate": 0.2}
    s = load(raw)
    r = sc.render(s)
    assert {a for _, a, _, _ in r.reads["dock"]} == {1, 2}  # strays on both door antennas
    assert events(raw) == [("arrived", None, "ZONE-A", 0.0)]
    # the same strays from an invisible location: reads, but nothing an ideal gateway reports
    hidden = base(timeline=[{"t": 0, "group": "g", "at": "BACKROOM", "stray_near": "dock"}])
    hidden["radio"] |= {"stray_rate": 0.2}
    assert sc.render(load(hidden)).reads["dock"]
    assert events(hidden) == []


def test_truth_of_invisible_locations() -> None:
    raw = base(
        timeline=[
            {"t": 0, "group": "g", "at": "BACKROOM"},  # no antenna: nothing to observe
            {"t": 5, "group": "g", "to": "ZONE-A", "duration": 2},  # appears: arrived from null
            {"t": 20, "group": "g", "to": "BACKROOM", "duration": 2},  # vanishes: like a leave
            {"t": 30, "group": "g", "to": "ZONE-B", "duration": 2},
        ]
    )
    assert events(raw) == [
        ("arrived", None, "ZONE-A", 7.0),
        ("departed", "ZONE-A", None, 22.0),
        ("arrived", None, "ZONE-B", 32.0),
    ]


def test_truth_offsite_steps() -> None:
    raw = base(
        timeline=[
            {"t": 0, "group": "g", "at": "TRAILER"},  # offsite and invisible
            {"t": 5, "group": "g", "to": "YARD", "duration": 1},  # offsite, seen: no truth
            {"t": 10, "group": "g", "to": "ZONE-A", "duration": 2},  # seen in YARD just before
            {"t": 20, "group": "g", "to": "YARD", "duration": 2},  # on-site -> visible offsite
        ]
    )
    assert events(raw) == [
        ("arrived", "YARD", "ZONE-A", 12.0),
        ("departed", "ZONE-A", "YARD", 22.0),
    ]


def test_tags_never_in_any_field_have_no_truth() -> None:
    raw = base(
        timeline=[
            {"t": 0, "group": "g", "at": "BACKROOM"},
            {"t": 10, "group": "g", "to": "TRAILER", "duration": 5},
            {"t": 20, "group": "g", "leave": True},
        ]
    )
    assert events(raw) == []
    assert not any(sc.render(load(raw)).reads.values())


def test_truth_lines_have_the_issue_shape_and_scale_with_speed() -> None:
    raw = base(timeline=[{"t": 4, "group": "h", "through": "dock", "duration": 4}])
    r = sc.render(load(raw), until_s=0)
    start = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
    lines = sc.truth_lines(r, start)
    assert lines[0] == {
        "epc": "3034257BF7194E4000001A85",
        "type": "arrived",
        "from": "YARD",
        "to": "DOCK",
        "time": "2026-01-01T00:00:08.000Z",
    }
    assert sc.truth_lines(r, start, speed=4.0)[0]["time"] == "2026-01-01T00:00:02.000Z"


# --- tags ---------------------------------------------------------------------------------------


def test_sgtin_groups_are_real_sgtin96_with_filter_1() -> None:
    s = load(base())
    epcs = s.groups["g"]
    assert len(epcs) == 5 and len(set(epcs)) == 5
    item = decode_epc(epcs[0])
    assert item is not None and item["uri"] == "urn:epc:id:sgtin:4912345.067890.1"
    bits = bin(int(epcs[0], 16))[2:].zfill(96)
    assert bits[:8] == "00110000"  # SGTIN-96 header
    assert int(bits[8:11], 2) == 1  # filter: point of sale item
    assert int(bits[11:14], 2) == 5  # partition of a 7-digit company prefix
    assert sc.sgtin96("0614141", "812345", 6789) == "3034257BF7194E4000001A85"  # GS1 vector
    twelve = sc.sgtin96("061414112345", "1", 1)
    assert int(bin(int(twelve, 16))[2:].zfill(96)[11:14], 2) == 0
    assert s.groups["h"][0] == "3034257BF7194E4000001A85"  # explicit EPCs are upper-cased


# --- bad files ---------------------------------------------------------------------------------


def errors_of(raw: Any) -> str:
    with pytest.raises(sc.ScenarioError) as info:
        sc.scenario_from_dict(copy.deepcopy(raw), "bad.json")
    assert all(line.startswith("bad.json: ") for line in info.value.lines)
    return str(info.value)


def with_timeline(*steps: dict[str, Any]) -> dict[str, Any]:
    return base(timeline=list(steps))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (base(seed="x"), "$.seed: 'x' is not of type 'integer'"),
        ({k: v for k, v in base().items() if k != "radio"}, "$: 'radio' is a required property"),
        (base(colour="red"), "Additional properties are not allowed ('colour'"),
        (base(radio=base()["radio"] | {"read_rate": 1.5}), "$.radio.read_rate: 1.5 is greater"),
        (
            base(tags={"g": {"epcs": ["XYZ"]}}),
            "$.tags.g.epcs[0]: 'XYZ' does not match",
        ),
        (
            base(readers={"r": {"antennas": {"0": {"location": "A"}}}}),
            "$.readers.r.antennas: '0' does not match",
        ),
        (
            with_timeline({"t": 0, "group": "nope", "at": "ZONE-A"}),
            "$.timeline[0].group: unknown group 'nope' (known: g, h)",
        ),
        (
            with_timeline({"t": 0, "group": "g", "at": "DOKC"}),
            "$.timeline[0].at: unknown location 'DOKC' (known: BACKROOM, DOCK, TRAILER,",
        ),
        (
            with_timeline({"t": 0, "group": "g", "to": "DOKC", "duration": 1}),
            "$.timeline[0].to: unknown location 'DOKC'",
        ),
        (
            with_timeline({"t": 0, "group": "g", "through": "door-9", "duration": 1}),
            "$.timeline[0].through: unknown portal 'door-9' (known: dock)",
        ),
        (
            with_timeline({"t": 0, "group": "g", "at": "DOCK", "stray_near": "door-9"}),
            "$.timeline[0].stray_near: unknown portal 'door-9'",
        ),
        (
            with_timeline({"t": 0, "group": "g", "at": "DOCK", "leave": True}),
            "$.timeline[0]: needs exactly one of at, through, to or leave (has at and leave)",
        ),
        (
            with_timeline({"t": 0, "group": "g"}),
            "$.timeline[0]: needs exactly one of at, through, to or leave (has none)",
        ),
        (
            with_timeline({"t": 0, "group": "g", "to": "DOCK"}),
            "$.timeline[0].duration: required with 'to'",
        ),
        (
            with_timeline({"t": 0, "group": "g", "at": "DOCK", "duration": 3}),
            "$.timeline[0].duration: not allowed with 'at'",
        ),
        (
            with_timeline({"t": 58, "group": "g", "to": "DOCK", "duration": 5}),
            "$.timeline[0]: ends at 63 s, after the scenario's duration 60 s",
        ),
        (
            with_timeline(
                {"t": 0, "group": "g", "to": "ZONE-A", "duration": 10},
                {"t": 5, "group": "g", "to": "ZONE-B", "duration": 1},
            ),
            "$.timeline[1].t: group 'g' is still moving until 10 s ($.timeline[0])",
        ),
        (
            with_timeline(
                {"t": 0, "group": "g", "at": "ZONE-A"},
                {"t": 5, "group": "g", "through": "dock", "duration": 1},
            ),
            "$.timeline[1]: group 'g' is at 'ZONE-A'; an outbound crossing of 'dock' starts at "
            "its inside location 'DOCK'",
        ),
        (
            with_timeline({"t": 0, "group": "g", "through": "dock", "to": "ZONE-A", "duration": 1}),
            "$.timeline[0].to: 'ZONE-A' is neither side of portal 'dock'",
        ),
        (
            base(
                tags={
                    "g": {
                        "sgtin": {
                            "company": "4912345",
                            "item": "67890",
                            "serial_from": 1,
                            "count": 2,
                        }
                    }
                }
            ),
            "$.tags.g.sgtin: company prefix (7 digits) + item reference (5 digits) must be 13",
        ),
        (
            base(
                tags={
                    "a": {"epcs": ["3034257BF7194E4000001A85"]},
                    "b": {"epcs": ["3034257bf7194e4000001a85"]},
                }
            ),
            "$.tags.b.epcs[0]: EPC 3034257BF7194E4000001A85 is already in group 'a'",
        ),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) else None,
)
def test_bad_scenarios_give_errors_naming_the_json_path(raw: Any, expected: str) -> None:
    assert expected in errors_of(raw)


def test_bad_portals_name_the_antenna_and_location() -> None:
    raw = base()
    raw["portals"]["dock"] |= {"outside": ["dokc:1", "dock:7", "stg:1"], "inside": ["dock:1"]}
    raw["portals"]["dock"]["inside_location"] = "YARD"
    text = errors_of(raw)
    assert "$.portals.dock.outside[0]: unknown reader 'dokc' (known: dock, stg)" in text
    assert "$.portals.dock.outside[1]: reader 'dock' has no antenna 7 (it has 1, 2)" in text
    assert "$.portals.dock.outside[2]: antenna stg:1 is at 'ZONE-A', not at the portal's " in text
    assert "$.portals.dock.inside_location: 'YARD' is offsite; a portal's inside is on-site" in text
    raw = base()
    raw["portals"]["dock"]["outside_location"] = "DOCK"
    assert "$.portals.dock.outside_location: 'DOCK' must be an offsite location" in errors_of(raw)


def test_load_scenario_reports_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(sc.ScenarioError, match="no such file"):
        sc.load_scenario(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"site": "S1",\n "seed": }')
    with pytest.raises(sc.ScenarioError, match=r"bad.json: not valid JSON: line 2 column 10"):
        sc.load_scenario(bad)
    bad.write_text("[]")
    with pytest.raises(sc.ScenarioError, match=r"bad.json: \$: \[\] is not of type 'object'"):
        sc.load_scenario(bad)


def test_every_error_is_reported_at_once() -> None:
    raw = with_timeline(
        {"t": 0, "group": "nope", "at": "ZONE-A"},
        {"t": 0, "group": "g", "at": "NOWHERE"},
    )
    assert len(errors_of(raw).splitlines()) == 2


# --- files made from a scenario ----------------------------------------------------------------


def test_write_capture_is_the_replay_format(tmp_path: Path) -> None:
    raw = base(timeline=[{"t": 1, "group": "g", "to": "ZONE-A", "duration": 1}], duration=5)
    r = sc.render(load(raw))
    path = tmp_path / "capture.jsonl"
    count = sc.write_capture(r, path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert count == len(lines) == sum(len(v) for v in r.reads.values()) > 0
    assert set(lines[0]) == {"t", "reader", "antenna", "epc", "rssi"}
    assert [x["t"] for x in lines] == sorted(x["t"] for x in lines)
    shifted = tmp_path / "shifted.jsonl"
    sc.write_capture(r, shifted, start_epoch_us=2_000_000)
    first = json.loads(shifted.read_text().splitlines()[0])
    assert first["t"] == pytest.approx(lines[0]["t"] + 2.0)


@dataclass(frozen=True, slots=True)
class StandInOptions:
    """The keys write_gateway_config gives an llrp reader (until drivers/llrp.py exists)."""

    host: str
    port: int


class StandInLLRP(Driver):
    Options = StandInOptions

    async def run(self) -> None:
        raise NotImplementedError


def use_llrp_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("drivers.llrp") is None:
        monkeypatch.setitem(REGISTRY, "llrp", f"{__name__}:StandInLLRP")


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_gateway_config_for_llrp_loads(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_llrp_driver(monkeypatch)
    s = sc.load_scenario(path)
    ports = {name: 15000 + i for i, name in enumerate(s.readers)}
    out = tmp_path / "gw.toml"
    sc.write_gateway_config(
        s,
        ports,
        "127.0.0.1",
        out,
        state_dir=str(tmp_path / "state"),
        mqtt_url="mqtt://127.0.0.1:1884",
    )
    settings = gateway_config.load(out)
    assert settings.gateway.site == s.site and settings.gateway.id == "gw-sim"
    assert set(settings.locations) == set(s.locations)
    assert {n for n, loc in settings.locations.items() if loc.offsite} == set(s.offsite)
    assert all(loc.profile is None for loc in settings.locations.values())  # chosen by rule
    assert set(settings.portals) == set(s.portals)
    assert [d.name for d in settings.readers] == list(s.readers)
    for device in settings.readers:
        assert device.driver == "llrp"
        assert (device.options.host, device.options.port) == ("127.0.0.1", ports[device.name])
        assert {n: a.location for n, a in device.antennas.items()} == {
            n: a.location for n, a in s.readers[device.name].items()
        }
    assert not settings.metrics.enabled  # parallel test gateways never fight over a port
    raw = tomllib.loads(out.read_text())
    assert all("profile" not in loc for loc in raw["locations"].values())
    assert all(set(r) == {"name", "driver", "host", "port", "antennas"} for r in raw["readers"])


def test_gateway_config_business_by_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_llrp_driver(monkeypatch)
    ship = sc.load_scenario(sc.SCENARIOS_DIR / "ship-door.json")
    store = sc.load_scenario(sc.SCENARIOS_DIR / "store-floor.json")
    dock = sc.load_scenario(sc.SCENARIOS_DIR / "dock-receive.json")

    def biz(s: sc.Scenario) -> dict[str, tuple[str | None, str | None]]:
        out = tmp_path / f"{s.site}-{len(s.readers)}.toml"
        ports = dict.fromkeys(s.readers, 5084)
        sc.write_gateway_config(s, ports, "127.0.0.1", out, state_dir="st", mqtt_url="mqtt://h")
        locs = gateway_config.load(out).locations
        return {n: (loc.biz_step, loc.disposition) for n, loc in locs.items()}

    assert biz(dock) == {
        "YARD": (None, None),
        "DOCK-07": ("receiving", "in_progress"),
        "STAGING": ("storing", "sellable_accessible"),
    }
    assert biz(ship)["TRAILER"] == ("shipping", "in_transit")
    assert biz(ship)["PACK-OUT"] == ("staging_outbound", "in_progress")
    store_biz = biz(store)
    assert store_biz["RETURNS-COUNTER"] == ("receiving", "returned")
    assert store_biz["PICKUP-SHELF"] == ("holding", "reserved")
    assert store_biz["STREET"] == ("retail_selling", "retail_sold")


def test_gateway_config_for_replay_loads_with_the_replay_driver(tmp_path: Path) -> None:
    s = sc.load_scenario(sc.SCENARIOS_DIR / "conveyor.json")
    sc.write_capture(sc.render(s), tmp_path / "capture.jsonl")
    out = tmp_path / "gw.toml"
    sc.write_gateway_config(
        s,
        {},
        "",
        out,
        state_dir=str(tmp_path),
        mqtt_url="mqtt://127.0.0.1:1884",
        metrics_listen="127.0.0.1:9999",
        driver="replay",
        reader_options={"file": "capture.jsonl", "speed": 10.0},
    )
    settings = gateway_config.load(out)
    (device,) = settings.readers
    assert device.driver == "replay" and device.options.speed == 10.0
    assert device.resolve(device.options.file) == tmp_path / "capture.jsonl"
    assert settings.metrics.listen == ("127.0.0.1", 9999)


def test_gateway_config_needs_a_port_per_llrp_reader(tmp_path: Path) -> None:
    s = sc.load_scenario(sc.SCENARIOS_DIR / "dock-receive.json")
    with pytest.raises(ValueError, match="no port for reader"):
        sc.write_gateway_config(
            s, {"dock-07": 1}, "h", tmp_path / "x.toml", state_dir="s", mqtt_url="mqtt://h"
        )


def test_scenario_command_writes_capture_truth_and_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "store-floor",
        "--capture",
        str(tmp_path / "c.jsonl"),
        "--truth",
        str(tmp_path / "t.jsonl"),
        "--start-epoch-us",
        "0",
        "--gateway-config",
        str(tmp_path / "gw.toml"),
        "--state-dir",
        str(tmp_path / "state"),
    ]
    assert sc.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["truth"] == 21 and summary["reads"] > 0
    truth = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert truth[0]["time"].startswith("1970-01-01T00:00:08")
    assert gateway_config.load(tmp_path / "gw.toml").readers[0].driver == "replay"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(base(seed="x")))
    assert sc.main([str(bad)]) == 65
    assert "$.seed" in capsys.readouterr().err
