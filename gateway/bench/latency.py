"""Latency under load: how long after a pallet really crossed the dock door the IMS hears of it,
while the gateway also takes a steady stream of background reads.

    python -m gateway.bench latency [--json] [--quick] [--scenario dock-receive]
        [--background-reads-per-s 10000] [--background-readers 8]

Every part real, each its own process: mosquitto, the scenario's LLRP readers played in real
time (`fc-edge simulate llrp`, speed 1: latency is measured in wall seconds, so the scenario is
never played faster), background LLRP readers in generator mode (`python -m gateway.bench
serve-generators`) offering the background rate over tags the scenario never uses, each at a
zone of its own merged into the gateway config the simulator wrote, `fc-edge run` on that
config and `fc-edge listen` as the IMS. The scenario's truth is then scored against what the
IMS received (gateway.score's matching), and each matched movement's latency is split:

    total    = received_at - truth time    what the IMS sees
    decision = decided - truth time        what the engine needs to be sure (decided: the
                                           reader time of the read that settled it,
                                           observed.last_seen, as the simulator stamped it)
    delivery = received_at - decided       reader -> gateway transport, waiting for the other
                                           readers (event time), outbox, MQTT and the IMS

The truth time of a step is its end (docs/scenarios.md): a portal crossing is often settled
before the pallet has finished rolling through, so decision can be negative. The reads and
their stamps are the scenario's, so load moves decision only when reads reach the engine later
than its reorder window allows; delivery is where load shows.

The floor is the same scenario without background load, measured in the same invocation.
--quick drops the scenario's quiet tail (whatever comes 3 s after its last step ends) and
warms the background up for less time; the scenario itself still plays in real time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.bench.common import ROOT, _cpu_s, _loadavg, _ready, emit, machine, workdir
from gateway.devkit.process import stop

GOAL_MARGIN_S = 0.25  # the goal: p99 total <= the profile's confirm_s + 250 ms
QUICK_TAIL_S = 3.0  # --quick keeps this much of the scenario after its last step ends
START_ALLOWANCE_S = 6.0  # scenario t=0 this long after the simulator starts: gateway start-up
GRACE_S = 1.0  # the simulator serves this long after the scenario's end
SETTLE_TIMEOUT_S = 60.0  # after the scenario: at most this long for the outbox to empty
BACKGROUND_ZONE = "Z-{name}"  # each background reader's own location
_READS = re.compile(r'^fc_edge_reads_total\{[^}]*reader="([^"]*)"[^}]*\}\s+(\S+)')


# --- the scenario and the config ------------------------------------------------------------


def last_step_end(raw: Mapping[str, Any]) -> float:
    """When the scenario's last timeline step ends (t + duration), in scenario seconds."""
    return max(
        (float(step["t"]) + float(step.get("duration", 0)) for step in raw.get("timeline", [])),
        default=0.0,
    )


def cut_scenario(raw: Mapping[str, Any], cut_s: float) -> dict[str, Any]:
    """The scenario played only for its first cut_s seconds. Every step must have ended by
    then: cutting one in the middle would change the truth, not just shorten the run."""
    if cut_s < last_step_end(raw):
        raise ValueError(f"cut at {cut_s} s would end before the last step ({last_step_end(raw)})")
    out = dict(raw)
    out["duration"] = min(float(raw["duration"]), cut_s)
    return out


def merge_config(text: str, metrics_port: int, background: Mapping[str, int]) -> str:
    """The simulator's gateway config with metrics served on metrics_port and one zone plus one
    LLRP [[readers]] block per background reader (name -> port), as _pipeline_config writes
    them. Checked with tomllib: a name that clashes with the scenario's is an error."""
    before = tomllib.loads(text)
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    # The simulator writes "[metrics]\nenabled = false"; replace that table's body whole.
    replaced, n = re.subn(r"(?ms)^\[metrics\]\n.*?(?=^\[|\Z)", metrics + "\n", text)
    if n == 0:
        replaced = text.rstrip("\n") + "\n\n" + metrics
    blocks = [replaced.rstrip("\n") + "\n"]
    readers = {r["name"] for r in before.get("readers", [])}
    for name, port in background.items():
        zone = BACKGROUND_ZONE.format(name=name)
        if name in readers or zone in before.get("locations", {}):
            raise ValueError(f"background reader {name!r} clashes with the scenario's config")
        blocks.append(
            f"\n[locations.{zone}]\n\n"
            f'[[readers]]\nname = "{name}"\ndriver = "llrp"\nhost = "127.0.0.1"\nport = {port}\n'
            f'[readers.antennas]\n1 = {{ location = "{zone}" }}\n2 = {{ location = "{zone}" }}\n'
        )
    merged = "".join(blocks)
    after = tomllib.loads(merged)  # raises on a malformed merge
    assert after["metrics"].get("listen") == f"127.0.0.1:{metrics_port}", after["metrics"]
    return merged


@dataclass(frozen=True)
class Profiles:
    """What the gateway's engine uses for the scenario's locations."""

    of_location: dict[str, str]  # location -> profile name
    confirm_s: dict[str, float]  # profile name -> confirm_s
    reorder_window_s: float


def profiles_of(config_path: Path) -> Profiles:
    """Read the profiles the engine derives from the config (by rule, or a location's own)."""
    from gateway.config import load
    from gateway.engine import EngineConfig
    from gateway.engine.config import DEFAULT_PROFILES

    settings = load(config_path)
    engine = EngineConfig.from_settings(settings)
    named = {**DEFAULT_PROFILES, **settings.profiles}
    of_location: dict[str, str] = {}
    confirm: dict[str, float] = {}
    for loc, info in engine.locations.items():
        own = settings.locations[loc].profile
        name = own or next((k for k, v in named.items() if v == info.profile), "custom")
        of_location[loc] = name
        confirm[name] = info.profile.confirm_s
    return Profiles(of_location, confirm, engine.settings.reorder_window_s)


# --- measuring ---------------------------------------------------------------------------------


def scrape(port: int) -> tuple[dict[str, float], float]:
    """(reads per reader, outbox depth) from the gateway's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:  # noqa: S310 (loopback)
        text = reply.read().decode()
    reads: dict[str, float] = {}
    depth = 0.0
    for line in text.splitlines():
        m = _READS.match(line)
        if m:
            reads[m.group(1)] = reads.get(m.group(1), 0.0) + float(m.group(2))
        elif line.startswith("fc_edge_outbox_messages "):
            depth = float(line.rsplit(" ", 1)[1])
    return reads, depth


def _pct(values: Sequence[float]) -> dict[str, float | None]:
    from gateway.score import percentile

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {
        "p50": r(percentile(values, 50)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
        "n": len(values),
    }


def decided_at(movement: Mapping[str, Any], time_s: float) -> float:
    """When the engine decided a movement: the reader time of the read that settled it
    (`observed.last_seen`). A movement's `time` is when the evidence shows it happened (its
    first read at the new location, docs/messages.md), which can be a confirmation earlier."""
    from gateway.score import parse_time

    observed = movement.get("observed")
    if isinstance(observed, Mapping) and observed.get("last_seen") is not None:
        try:
            return parse_time(observed["last_seen"])
        except ValueError:
            pass
    return time_s


def latency_figures(
    truth: list[dict[str, Any]],
    got: list[dict[str, Any]],
    tolerance_s: float,
    profiles: Profiles,
) -> dict[str, Any]:
    """Score (gateway.score) and split each matched movement's latency into decision and
    delivery, overall and per profile of the location that decided it (where the tag went; a
    departure by absence, to null, waits departed_after_s instead and is kept apart)."""
    from gateway.score import matched_pairs, parse_time, score

    result = score(truth, got, tolerance_s)
    groups: dict[str, dict[str, list[float]]] = {}
    for t, g, total in matched_pairs(truth, got, tolerance_s):
        truth_s = parse_time(t["time"])
        to = t.get("to")
        name = "absence" if to is None else profiles.of_location.get(to, "?")
        decided = decided_at(g, parse_time(g["time"]))
        for key in (name, "all"):
            split = groups.setdefault(key, {"total": [], "decision": [], "delivery": []})
            split["total"].append(total)
            split["decision"].append(decided - truth_s)
            split["delivery"].append(truth_s + total - decided)
    latency = {
        key: {part: _pct(values) for part, values in split.items()}
        for key, split in sorted(groups.items())
    }
    return {
        "truth": result["truth"],
        "got": result["got"],
        "matched": result["matched"],
        "precision": result["precision"],
        "recall": result["recall"],
        "time_tolerance_s": tolerance_s,
        "latency_s": latency,
        "rejected": result["rejected"],
        "unmatched_truth": len(result["unmatched_truth"]),
        "unmatched_got": result["unmatched_got"][:5],
    }


def goal_of(run: dict[str, Any], profiles: Profiles) -> dict[str, Any]:
    """The issue's goal (p99 total <= the profile's confirm_s + 0.25 s) per profile that
    decided a movement, headlined by the portal profile when the scenario crosses a portal;
    and delivery's p99 against 0.25 s (reads are judged once every active reader has passed
    them, not after a fixed window: gateway/engine/sources.py)."""
    latency = run["latency_s"]
    per_profile: dict[str, Any] = {}
    for name, split in latency.items():
        if name in ("all", "absence") or name not in profiles.confirm_s:
            continue
        goal_s = round(profiles.confirm_s[name] + GOAL_MARGIN_S, 3)
        p99 = split["total"]["p99"]
        per_profile[name] = {
            "confirm_s": profiles.confirm_s[name],
            "goal_s": goal_s,
            "p99_total_s": p99,
            "movements": split["total"]["n"],
            "met": p99 is not None and p99 <= goal_s,
        }
    headline = "portal" if "portal" in per_profile else None
    if headline is None and per_profile:
        headline = max(per_profile, key=lambda k: per_profile[k]["movements"])
    head = per_profile.get(headline or "", {})
    delivery_goal = GOAL_MARGIN_S
    delivery_p99 = latency.get("all", {}).get("delivery", {}).get("p99")
    return {
        "what": "p99 of total latency (received_at - truth time) <= confirm_s of the profile "
        "of the location that decided the movement + 0.25 s",
        "profile": headline,
        "confirm_s": head.get("confirm_s"),
        "goal_s": head.get("goal_s"),
        "p99_total_s": head.get("p99_total_s"),
        "met": bool(head.get("met")),
        "per_profile": per_profile,
        "all_profiles_met": bool(per_profile) and all(p["met"] for p in per_profile.values()),
        "delivery": {
            "what": "p99 of delivery (received_at - decided, observed.last_seen), all scenario "
            "movements, "
            "<= 0.25 s (reorder_window_s: only how far behind a reader may fall before it no "
            "longer holds the others back)",
            "reorder_window_s": profiles.reorder_window_s,
            "goal_s": delivery_goal,
            "p99_delivery_s": delivery_p99,
            "met": delivery_p99 is not None and delivery_p99 <= delivery_goal,
        },
    }


# --- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Background:
    readers: int
    reads_per_s: float
    warmup_s: float


class _Procs:
    """Every child of one run, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[IO[bytes]] = []

    def start(
        self, argv: list[str], out: Path | int | None, err: Path | None = None
    ) -> subprocess.Popen[bytes]:
        stdout: IO[bytes] | int | None = None
        if isinstance(out, Path):
            stdout = open(out, "wb")  # noqa: SIM115 (closed in stop_all)
            self.files.append(stdout)
        else:
            stdout = out
        stderr: IO[bytes] | int = subprocess.STDOUT if err is None else open(err, "wb")  # noqa: SIM115
        if not isinstance(stderr, int):
            self.files.append(stderr)
        proc = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
            [sys.executable, *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop(proc, 15)
        for f in self.files:
            f.close()


def _first_json(proc: subprocess.Popen[bytes], what: str, log: Path | None = None) -> Any:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
        raise RuntimeError(f"{what} ended before it said where it listens: {tail}")
    return json.loads(line)


def _wait(cond: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process ended (status {proc.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout_s} s")
        time.sleep(0.1)


def _subscribed(err: Path) -> bool:
    try:
        return '"subscribed"' in err.read_text(errors="replace")
    except OSError:
        return False


def _scenario_start(truth_path: Path, scenario_path: Path) -> float | None:
    """The scenario's t=0 as the simulator played it: the truth's first time minus that
    line's scenario seconds (the simulator writes the truth in the rendering's order)."""
    from gateway.score import parse_time
    from simulators.scenario import load_scenario, truth

    lines = [json.loads(x) for x in truth_path.read_text().splitlines() if x.strip()]
    planned = truth(load_scenario(scenario_path))
    if not lines or not planned:
        return None
    return parse_time(lines[0]["time"]) - float(planned[0]["t_s"])


def _scrape_safe(port: int) -> tuple[dict[str, float], float] | None:
    try:
        return scrape(port)
    except OSError:
        return None


def run_once(
    tmp: Path,
    scenario_path: Path,
    duration_s: float,
    background: Background | None,
    tolerance_s: float,
) -> dict[str, Any]:
    """One play of the scenario (with or without background load) through the whole path."""
    from gateway.devkit.broker import Mosquitto
    from gateway.devkit.process import free_port
    from gateway.score import read_jsonl

    tmp.mkdir()
    procs = _Procs()
    broker = Mosquitto(tmp / "broker")
    broker.start()
    assert broker.proc is not None
    procs.procs.append(broker.proc)
    url = broker.url
    try:
        ports: dict[str, int] = {}
        generators = None
        if background is not None:
            generators = procs.start(
                [
                    "-m",
                    "gateway.bench",
                    "serve-generators",
                    str(background.readers),
                    str(background.reads_per_s / background.readers),
                ],
                subprocess.PIPE,
                tmp / "generators.err",
            )
            ports = _first_json(generators, "serve-generators", tmp / "generators.err")["ports"]
        delay = START_ALLOWANCE_S + (background.warmup_s if background else 0.0)
        config, truth_path = tmp / "gw.toml", tmp / "truth.jsonl"
        sim = procs.start(
            [
                "-m",
                "gateway.cli",
                "simulate",
                "llrp",
                "--scenario",
                str(scenario_path),
                "--truth",
                str(truth_path),
                "--gateway-config",
                str(config),
                "--speed",
                "1",
                "--start-delay-s",
                str(delay),
                "--grace-s",
                str(GRACE_S),
                "--state-dir",
                str(tmp / "state"),
                "--mqtt-url",
                url,
            ],
            subprocess.PIPE,
            tmp / "sim.err",
        )
        sim_started = time.time()
        _first_json(sim, "fc-edge simulate llrp", tmp / "sim.err")
        start = _scenario_start(truth_path, scenario_path) or sim_started + delay
        metrics_port = free_port()
        config.write_text(merge_config(config.read_text(), metrics_port, ports))
        profiles = profiles_of(config)
        site = tomllib.loads(config.read_text())["gateway"]["site"]
        listen_out, listen_err = tmp / "listen.jsonl", tmp / "listen.err"
        listen = procs.start(
            ["-m", "gateway.cli", "listen", "--broker", url, "--site", site],
            listen_out,
            listen_err,
        )
        _wait(lambda: _subscribed(listen_err), 30, "fc-edge listen subscribing", listen)
        gateway = procs.start(["-m", "gateway.cli", "run", "-c", str(config)], tmp / "gw.log")
        _wait(lambda: _ready(metrics_port), 60, "fc-edge run connecting to the broker", gateway)
        ready_margin = start - time.time()
        warmup = _warm_up(metrics_port, ports, start, gateway) if background else None

        def at(wall: float) -> tuple[dict[str, float], float, dict[str, float], float]:
            time.sleep(max(0.0, wall - time.time()))
            reads, depth = scrape(metrics_port)
            cpu = {"gateway": _cpu_s(gateway.pid)}
            if generators is not None:
                cpu["background_generators"] = _cpu_s(generators.pid)
            return reads, depth, cpu, time.perf_counter()

        reads0, _, cpu0, t0 = at(start)
        reads1, depth1, cpu1, t1 = at(start + duration_s)
        sim.wait(START_ALLOWANCE_S + GRACE_S + 30)
        sim_stats = _sim_stats(sim)
        settled = _settle(metrics_port)
        time.sleep(1.0)  # what the broker already holds reaches the IMS
    finally:
        procs.stop_all()
    truth, _ = read_jsonl(str(truth_path))
    got_all, _ = read_jsonl(str(listen_out))
    zones = {BACKGROUND_ZONE.format(name=n) for n in ports}
    got = [m for m in got_all if m.get("from") not in zones and m.get("to") not in zones]
    elapsed = t1 - t0
    bg = sum(reads1.get(n, 0.0) - reads0.get(n, 0.0) for n in ports)
    scenario_reads = sum(v - reads0.get(k, 0.0) for k, v in reads1.items() if k not in ports)
    run: dict[str, Any] = {
        "background": (
            {
                "readers": background.readers,
                "offered_reads_per_s": round(background.reads_per_s),
                "reads_per_s": round(bg / elapsed),
                "sustained": bg / elapsed >= 0.95 * background.reads_per_s,
                "warmup": warmup,
                "published_background_movements": len(got_all) - len(got),
            }
            if background
            else None
        ),
        "scenario_reads_per_s": round(scenario_reads / elapsed),
        "measured_s": round(elapsed, 2),
        "cpu": {k: round((cpu1[k] - cpu0[k]) / elapsed, 3) for k in cpu0},
        "gateway_ready_before_start_s": round(ready_margin, 2),
        "outbox_depth_at_end": depth1,
        "scenario_reads_dropped_by_simulator": sim_stats,
        "outbox_emptied_after": settled,
    }
    run.update(latency_figures(truth, got, tolerance_s, profiles))
    run["goal"] = goal_of(run, profiles)
    return run


def _goal_brief(goal: dict[str, Any]) -> dict[str, Any]:
    return {
        "p99_total_s": goal["p99_total_s"],
        "met": goal["met"],
        "all_profiles_met": goal["all_profiles_met"],
        "p99_delivery_s": goal["delivery"]["p99_delivery_s"],
        "delivery_met": goal["delivery"]["met"],
    }


def _warm_up(
    port: int, background: Mapping[str, int], start: float, gateway: subprocess.Popen[bytes]
) -> dict[str, Any]:
    """Until the scenario starts: every background reader read, and the burst of first-sighting
    arrivals (one per background tag) published, so it does not sit in front of the scenario."""
    _wait(
        lambda: all((_scrape_safe(port) or ({}, 0))[0].get(n, 0) > 0 for n in background),
        max(5.0, start - time.time()),
        "background reads reaching the gateway",
        gateway,
    )
    depth = 0.0
    while time.time() < start - 0.5:
        depth = scrape(port)[1]
        if depth == 0:
            break
        time.sleep(0.2)
    return {"outbox_depth_at_start": depth, "settled_before_start": depth == 0}


def _sim_stats(sim: subprocess.Popen[bytes]) -> dict[str, int]:
    """The simulator's reads it could not deliver (no client yet, or backpressure: the gateway
    not reading its socket fast enough), summed over its readers, from its last line."""
    assert sim.stdout is not None
    dropped: dict[str, int] = {}
    for line in sim.stdout.read().splitlines():
        stats = json.loads(line).get("stats", {})
        for reader in stats.values():
            for key, value in reader.items():
                if key.startswith("reads_dropped"):
                    dropped[key] = dropped.get(key, 0) + int(value)
    return dropped


def _settle(port: int) -> float | None:
    """Seconds until the outbox is empty (None: not within SETTLE_TIMEOUT_S)."""
    began = time.monotonic()
    while time.monotonic() - began < SETTLE_TIMEOUT_S:
        if scrape(port)[1] == 0:
            return round(time.monotonic() - began, 2)
        time.sleep(0.2)
    return None


# --- the bench ---------------------------------------------------------------------------------


def _compare(loaded: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("total", "decision", "delivery"):
        a = loaded["latency_s"].get("all", {}).get(part, {})
        b = floor["latency_s"].get("all", {}).get(part, {})
        row: dict[str, Any] = {}
        for p in ("p50", "p99"):
            if a.get(p) is not None and b.get(p) is not None:
                row[f"{p}_loaded_minus_floor_s"] = round(a[p] - b[p], 3)
                row[f"{p}_ratio"] = round(a[p] / b[p], 3) if b[p] > 0 else None
        out[part] = row
    return out


def bench_latency(
    scenario: str,
    background: Background,
    quick: bool,
    tolerance_s: float = 3.0,
    base: str | None = None,
) -> dict[str, Any]:
    from simulators.scenario import find_scenario, load_scenario

    source = find_scenario(scenario)
    raw = json.loads(source.read_text(encoding="utf-8"))
    cut = min(float(raw["duration"]), last_step_end(raw) + QUICK_TAIL_S) if quick else None
    doc: dict[str, Any] = {
        "bench": "latency",
        "machine": machine(),
        "params": {
            "scenario": source.name,
            "scenario_duration_s": float(raw["duration"]),
            "played_s": cut or float(raw["duration"]),
            "speed": 1.0,
            "background_readers": background.readers,
            "background_reads_per_s": background.reads_per_s,
            "background_warmup_s": background.warmup_s,
            "time_tolerance_s": tolerance_s,
            "path": "`fc-edge simulate llrp` (speed 1) + background generator readers -> "
            "sllurp in `fc-edge run` -> engine -> outbox -> mosquitto -> `fc-edge listen`, "
            "each its own process",
            "latency": "total = received_at - truth time; decision = movement time - truth "
            "time; delivery = received_at - movement time (nearest-rank percentiles)",
            "floor": "the same scenario, no background load, same invocation",
        },
    }
    with workdir(base, "fc-edge-bench-latency-") as tmp:
        played = source
        if cut is not None:
            played = tmp / source.name
            played.write_text(json.dumps(cut_scenario(raw, cut)), encoding="utf-8")
            load_scenario(played)  # still a valid scenario
        duration = cut or float(raw["duration"])
        floor = run_once(tmp / "floor", played, duration, None, tolerance_s)
        loaded = run_once(tmp / "loaded", played, duration, background, tolerance_s)
    goal = loaded.pop("goal")
    floor["goal"] = _goal_brief(floor["goal"])  # the same goal, met or not without load
    doc.update(
        {
            "goal": goal,
            "loaded": loaded,
            "floor": floor,
            "loaded_vs_floor": _compare(loaded, floor),
            "loadavg_after": _loadavg(),
        }
    )
    return doc


def summary(doc: dict[str, Any]) -> str:
    lines = [f"latency ({doc['params']['scenario']}, played {doc['params']['played_s']} s):"]
    for name in ("floor", "loaded"):
        run = doc[name]
        lat = run["latency_s"].get("all", {})
        bg = run["background"]
        load = (
            f"background {bg['reads_per_s']:,}/{bg['offered_reads_per_s']:,} reads/s"
            if bg
            else "no background"
        )
        lines.append(
            f"  {name:6} {load}; recall {run['recall']} precision {run['precision']}; "
            + "  ".join(
                f"{part} p50 {lat.get(part, {}).get('p50')} p99 {lat.get(part, {}).get('p99')}"
                for part in ("total", "decision", "delivery")
            )
        )
    goal = doc["goal"]
    lines.append(
        f"  goal: p99 total {goal['p99_total_s']} <= {goal['goal_s']} s ({goal['profile']}): "
        f"{'met' if goal['met'] else 'NOT met'}; delivery p99 "
        f"{goal['delivery']['p99_delivery_s']} <= {goal['delivery']['goal_s']} s: "
        f"{'met' if goal['delivery']['met'] else 'NOT met'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fc-edge bench latency", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--quick", action="store_true", help="no quiet tail, short warm-up")
    p.add_argument("--scenario", default="dock-receive", help="scenario name or file")
    p.add_argument("--background-reads-per-s", type=float, default=10_000.0)
    p.add_argument("--background-readers", type=int, default=8)
    p.add_argument(
        "--warmup-s", type=float, help="background alone before the scenario (default 15, quick 8)"
    )
    p.add_argument("--time-tolerance-s", type=float, default=3.0, help="truth matching window")
    p.add_argument("--dir", help="where the run's files go (default: a temp dir)")
    args = p.parse_args(argv)
    warmup = args.warmup_s if args.warmup_s is not None else (8.0 if args.quick else 15.0)
    if args.background_reads_per_s <= 0 or args.background_readers <= 0 or warmup < 0:
        p.error("--background-reads-per-s and --background-readers must be positive")
    background = Background(args.background_readers, args.background_reads_per_s, warmup)
    doc = bench_latency(args.scenario, background, args.quick, args.time_tolerance_s, args.dir)
    emit(doc, args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
