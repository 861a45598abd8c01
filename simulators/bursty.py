"""The second noise model of the scenario simulator: `"radio": {"model": "bursty", ...}`.

Written separately from the first model (simulators/scenario.py, `_render_round`), sharing
only the geometry (which antennas hold a group in their field, cross-read it or catch its
strays), with what real UHF RFID does and the first model lacks:

* **bursty misses**: every tag x antenna link is a two-state Gilbert-Elliott channel. In the
  good state a read succeeds with `read_rate`, in the bad state with `bad_read_rate`; the link
  stays good for `mean_good_s` and bad for `mean_bad_s` on average (geometric dwell, one
  transition chance per round). A tag in a null of the field is missed for several rounds in a
  row, not one round at a time;
* **read-rate spread between tags**: each tag draws once a standard normal q (orientation,
  the material behind it). Its read probabilities are multiplied by
  exp(tag_spread * q - tag_spread^2 / 2) (mean 1) and its RSSI is shifted by
  tag_rssi_sigma_db * q: a badly placed tag is both weaker and read less often;
* **per-antenna gain offsets**: `antenna_gain_db` {"reader:antenna": dB} plus, per antenna,
  N(0, antenna_gain_sigma_db) drawn once; they shift the RSSI of every read on the antenna;
* **slow fading**: an Ornstein-Uhlenbeck process per tag x antenna (stationary sigma
  `fading_sigma_db`, correlation time `fading_tau_s`) adds to the RSSI, on top of the per-read
  scatter `rssi_sigma`;
* **crowding**: an antenna shares its time between the tags in its field, so a tag's read
  probabilities there are multiplied by 1 / (1 + n / crowd_n0), n = the other tags in that
  antenna's field in the round (crowd_n0 = 0: no crowding).

Cross-reads and strays follow the link too: their probability (`cross_read_rate`,
`stray_rate`) is scaled by the link's state (bad_read_rate / read_rate in the bad state), the
tag's factor and the antenna's crowding, and their RSSI carries the gain, the tag's offset and
the link's fading.

Deterministic for the scenario seed: per-round draws come from one random.Random seeded with
"bursty/<seed>", in a fixed order (round, group in file order, tag, antenna in sorted order:
fields, cross, strays; per link: state, fading, read, time, RSSI), and per-tag / per-antenna
properties from generators seeded with the tag's EPC or the antenna's name, so a tag keeps its
properties whatever else happens in the scenario. Link states advance lazily and exactly (the
closed-form k-step transition of the two-state chain and of the OU process), so a link that was
out of every field for a minute resumes where the processes would have taken it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Ref = tuple[str, int]  # (reader, antenna)
Emitted = tuple[float, str, int, str, int]  # (t_s, reader, antenna, epc, rssi)

RSSI_FLOOR, RSSI_CEILING = -110, -10  # what a reader reports as PeakRSSI, whole dBm
STRAY_BELOW_NEAR_DB = 10.0  # strays come in this much below rssi_near (as in the first model)

# Defaults of the bursty keys of "radio" (docs/scenarios.md, scenario.schema.json).
DEFAULTS: Mapping[str, Any] = {
    "bad_read_rate": 0.1,
    "mean_good_s": 2.0,
    "mean_bad_s": 0.5,
    "tag_spread": 0.3,
    "tag_rssi_sigma_db": 2.0,
    "antenna_gain_db": {},
    "antenna_gain_sigma_db": 0.0,
    "fading_sigma_db": 3.0,
    "fading_tau_s": 2.0,
    "crowd_n0": 200.0,
}


@dataclass(frozen=True, slots=True)
class BurstyRadio:
    """The bursty model's own parameters (the shared ones stay in scenario.Radio)."""

    bad_read_rate: float = DEFAULTS["bad_read_rate"]
    mean_good_s: float = DEFAULTS["mean_good_s"]
    mean_bad_s: float = DEFAULTS["mean_bad_s"]
    tag_spread: float = DEFAULTS["tag_spread"]
    tag_rssi_sigma_db: float = DEFAULTS["tag_rssi_sigma_db"]
    antenna_gain_db: tuple[tuple[Ref, float], ...] = ()
    antenna_gain_sigma_db: float = DEFAULTS["antenna_gain_sigma_db"]
    fading_sigma_db: float = DEFAULTS["fading_sigma_db"]
    fading_tau_s: float = DEFAULTS["fading_tau_s"]
    crowd_n0: float = DEFAULTS["crowd_n0"]

    def transition(self, round_s: float) -> tuple[float, float]:
        """(P(good -> bad), P(bad -> good)) per round."""
        return min(1.0, round_s / self.mean_good_s), min(1.0, round_s / self.mean_bad_s)

    def bad_share(self, round_s: float) -> float:
        """The stationary share of rounds a link spends in the bad state."""
        p_gb, p_bg = self.transition(round_s)
        return p_gb / (p_gb + p_bg)

    def mean_read_rate(self, read_rate: float, round_s: float) -> float:
        """The long-run read probability of a typical tag (factor 1) alone in the field."""
        bad = self.bad_share(round_s)
        return (1.0 - bad) * read_rate + bad * self.bad_read_rate


class _RadioLike(Protocol):
    @property
    def round_ms(self) -> float: ...
    @property
    def read_rate(self) -> float: ...
    @property
    def rssi_near(self) -> float: ...
    @property
    def rssi_sigma(self) -> float: ...
    @property
    def cross_read_rate(self) -> float: ...
    @property
    def cross_read_drop_db(self) -> float: ...
    @property
    def stray_rate(self) -> float: ...


class _LayoutLike(Protocol):
    @property
    def fields(self) -> tuple[Ref, ...]: ...
    @property
    def cross(self) -> tuple[Ref, ...]: ...
    @property
    def strays(self) -> tuple[Ref, ...]: ...


Active = Callable[[float], Sequence[tuple[Sequence[str], _LayoutLike]]]


class _Links:
    """Per tag x antenna: the Gilbert-Elliott state and the fading level, advanced lazily."""

    __slots__ = (
        "rng",
        "p_gb",
        "p_bg",
        "lam",
        "pi_bad",
        "rho",
        "fade_sigma",
        "state",
    )

    def __init__(self, rng: random.Random, b: BurstyRadio, round_s: float) -> None:
        self.rng = rng
        self.p_gb, self.p_bg = b.transition(round_s)
        self.lam = 1.0 - self.p_gb - self.p_bg  # the chain's second eigenvalue
        self.pi_bad = self.p_gb / (self.p_gb + self.p_bg)
        self.fade_sigma = b.fading_sigma_db
        self.rho = math.exp(-round_s / b.fading_tau_s) if b.fading_tau_s > 0 else 0.0
        self.state: dict[tuple[str, Ref], list[Any]] = {}  # -> [round, bad, fade]

    def at(self, epc: str, ref: Ref, k: int) -> tuple[bool, float]:
        """(bad, fade_db) of the link in round k (rounds only move forward)."""
        rng = self.rng
        key = (epc, ref)
        s = self.state.get(key)
        if s is None:
            bad = rng.random() < self.pi_bad  # a new link starts from the stationary mix
            fade = rng.gauss(0.0, self.fade_sigma) if self.fade_sigma > 0 else 0.0
            self.state[key] = [k, bad, fade]
            return bad, fade
        steps = k - s[0]
        if steps <= 0:
            return s[1], s[2]
        if steps == 1:
            p_bad = 1.0 - self.p_bg if s[1] else self.p_gb
            rho_k = self.rho
        else:
            lam_k = self.lam**steps
            p_bad = self.pi_bad + (1.0 - self.pi_bad) * lam_k if s[1] else self.pi_bad * (1 - lam_k)
            rho_k = self.rho**steps
        bad = rng.random() < p_bad
        fade = s[2]
        if self.fade_sigma > 0:
            fade = rho_k * fade + self.fade_sigma * math.sqrt(1.0 - rho_k * rho_k) * rng.gauss(
                0.0, 1.0
            )
        s[0], s[1], s[2] = k, bad, fade
        return bad, fade


def _tag_properties(seed: int, epc: str, b: BurstyRadio) -> tuple[float, float]:
    """(read-rate factor, RSSI offset dB) of a tag: one standard normal drives both."""
    q = random.Random(f"bursty/{seed}/tag/{epc}").gauss(0.0, 1.0)
    factor = math.exp(b.tag_spread * q - b.tag_spread * b.tag_spread / 2.0)
    return factor, b.tag_rssi_sigma_db * q


def antenna_gains(seed: int, refs: Sequence[Ref], b: BurstyRadio) -> dict[Ref, float]:
    """Gain offset (dB) of every antenna: the explicit one plus its own random draw."""
    explicit = dict(b.antenna_gain_db)
    gains = {}
    for reader, number in refs:
        gain = explicit.get((reader, number), 0.0)
        if b.antenna_gain_sigma_db > 0:
            draw = random.Random(f"bursty/{seed}/antenna/{reader}:{number}")
            gain += draw.gauss(0.0, b.antenna_gain_sigma_db)
        gains[(reader, number)] = gain
    return gains


def _reported(level: float) -> int:
    """A PeakRSSI as a reader reports it: whole dBm within its range."""
    whole = math.floor(level + 0.5)
    return RSSI_FLOOR if whole < RSSI_FLOOR else RSSI_CEILING if whole > RSSI_CEILING else whole


def _read(
    rng: random.Random,
    t0: float,
    round_s: float,
    ref: Ref,
    epc: str,
    level: float,
    sigma: float,
) -> Emitted:
    """A read within its round, at `level` plus the per-read scatter."""
    when = round(t0 + round_s * rng.random(), 6)
    if sigma > 0:
        level += rng.gauss(0.0, sigma)
    return (when, ref[0], ref[1], epc, _reported(level))


def iter_bursty(
    seed: int,
    radio: _RadioLike,
    b: BurstyRadio,
    refs: Sequence[Ref],
    active: Active,
    until_s: float | None,
) -> Iterator[Emitted]:
    """(t_s, reader, antenna, epc, rssi) in time order, round after round (endless when until_s
    is None). `active(t0)` gives the groups in some field at t0 with their layout."""
    rng = random.Random(f"bursty/{seed}")
    round_s = radio.round_ms / 1000.0
    links = _Links(rng, b, round_s)
    gains = antenna_gains(seed, refs, b)
    tags: dict[str, tuple[float, float]] = {}
    good, bad_rate = radio.read_rate, b.bad_read_rate
    # cross-reads and strays scale with the link's state relative to a good link
    bad_scale = bad_rate / good if good > 0 else 0.0
    near, sigma = radio.rssi_near, radio.rssi_sigma
    cross_near = near - radio.cross_read_drop_db
    stray_near = near - STRAY_BELOW_NEAR_DB
    n0 = b.crowd_n0
    k = 0
    while True:
        t0 = k * round_s
        if until_s is not None and t0 >= until_s:
            return
        groups = active(t0)
        crowd: dict[Ref, int] = {}
        for epcs, layout in groups:
            for ref in layout.fields:
                crowd[ref] = crowd.get(ref, 0) + len(epcs)
        out: list[Emitted] = []
        for epcs, layout in groups:
            for epc in epcs:
                props = tags.get(epc)
                if props is None:
                    props = tags[epc] = _tag_properties(seed, epc, b)
                factor, offset = props
                for ref in layout.fields:
                    others = crowd[ref] - 1
                    share = 1.0 / (1.0 + others / n0) if n0 > 0 else 1.0
                    is_bad, fade = links.at(epc, ref, k)
                    p = (bad_rate if is_bad else good) * factor * share
                    if rng.random() < p:
                        level = near + gains[ref] + offset + fade
                        out.append(_read(rng, t0, round_s, ref, epc, level, sigma))
                crossed: set[Ref] = set()
                for ref in layout.cross:
                    share = 1.0 / (1.0 + crowd.get(ref, 0) / n0) if n0 > 0 else 1.0
                    is_bad, fade = links.at(epc, ref, k)
                    p = radio.cross_read_rate * (bad_scale if is_bad else 1.0) * factor * share
                    if rng.random() < p:
                        crossed.add(ref)
                        level = cross_near + gains[ref] + offset + fade
                        out.append(_read(rng, t0, round_s, ref, epc, level, sigma))
                for ref in layout.strays:
                    if ref in crossed:
                        continue  # at most one read per tag, antenna and round
                    share = 1.0 / (1.0 + crowd.get(ref, 0) / n0) if n0 > 0 else 1.0
                    is_bad, fade = links.at(epc, ref, k)
                    p = radio.stray_rate * (bad_scale if is_bad else 1.0) * factor * share
                    if rng.random() < p:
                        level = stray_near + gains[ref] + offset + fade
                        out.append(_read(rng, t0, round_s, ref, epc, level, sigma))
        out.sort(key=lambda r: r[0])
        yield from out
        k += 1


def from_raw(raw: Mapping[str, Any]) -> BurstyRadio:
    """The bursty keys of a scenario's "radio" object (defaults for the missing ones)."""
    gains = tuple(
        sorted(
            ((text.rpartition(":")[0], int(text.rpartition(":")[2])), float(db))
            for text, db in raw.get("antenna_gain_db", {}).items()
        )
    )
    values = {k: float(raw.get(k, v)) for k, v in DEFAULTS.items() if k != "antenna_gain_db"}
    return BurstyRadio(antenna_gain_db=gains, **values)
