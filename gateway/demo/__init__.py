"""`fc-edge demo`: a small site, simulated for real, through the real gateway into a broker of
its own, with a broker outage in the middle to show that nothing is lost.

    fc-edge demo [--duration-s 90] [--broker URL] [--no-tty]

What runs (each its own process, every one of them the project's own command):
  * mosquitto on a free loopback port (never the system one), persistence in the work dir so
    the IMS's session survives the outage;
  * `fc-edge simulate llrp` with simulators/scenarios/demo-site.json: two dock portals
    (receiving, shipping), staging, a conveyor zone, a store floor and a returns counter;
  * `fc-edge simulate modbus` twice: a conveyor PLC and a robot cell (its moves are movements);
  * `fc-edge simulate opcua --device robot`: a second robot cell, over OPC UA (its moves are
    movements too, between UA-CELL-* locations of its own);
  * `fc-edge simulate tsl`: a handheld doing a cycle count of the store floor;
  * `fc-edge simulate vda5050 --vehicles 2`: two AMRs moving totes from racks to packing, on a
    fleet broker of their own (a second mosquitto; only when the demo runs its own broker);
  * `fc-edge run` with one config merged from all of them, and `fc-edge listen` as the IMS.

The demo stops its broker for 20 s partway through (less when --duration-s is short), shows the
outbox filling and draining, then checks that nothing was lost: for every stream, what the IMS
received equals what the gateway ever put into its outbox (outbox seqs), with no seq gaps and
an empty outbox. With --no-tty (or when stdout is not a terminal) it prints short status lines
and, last, the figures as one JSON line. Exit 0 when the check holds, 1 when it does not, 130
on Ctrl-C. Every child process is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from gateway.devkit.broker import BrokerError, Mosquitto
from gateway.devkit.process import free_port
from gateway.devkit.toml import dumps as toml_dumps

# Where the gateway, drivers and simulators packages are: the checkout, or site-packages in an
# installed wheel. Everything the demo reads is package data found from here (pyproject.toml).
ROOT = Path(__file__).resolve().parents[2]
SITE_SCENARIO = ROOT / "simulators" / "scenarios" / "demo-site.json"
EQUIPMENT_MAPS = ROOT / "drivers" / "maps"
# Not package data: a file for operators, in the source tree only (named either way).
GRAFANA_DASHBOARD = ROOT / "config" / "grafana" / "fc-edge.json"
GRAFANA_SOURCE = "config/grafana/fc-edge.json in the fc-edge source tree"
INSTALL_RICH = "pip install 'fc-edge[demo]'"
GATEWAY_ID = "gw-demo"
IMS_CLIENT_ID = "fc-edge-demo-ims"
LISTEN_STREAMS = "movements,counts,equipment,dropped"
# listen's name of a stream (from the topic) -> the outbox's.
STREAM_OF_LISTEN = {"dropped": "notices"}
# The message schema -> the outbox stream it is appended to (seqs are per stream).
STREAM_OF_SCHEMA = {
    "fc-edge/movement/1": "movements",
    "fc-edge/count/1": "counts",
    "fc-edge/equipment/1": "equipment",
    "fc-edge/dropped/1": "notices",
}
# The robot cell's station numbers (simulators/modbus: 1..4) -> demo-site.json locations.
ROBOT_STATIONS = {"1": "CELL-IN", "2": "CELL-PICK-A", "3": "CELL-PICK-B", "4": "CELL-OUT"}
# The OPC UA robot cell: the same station numbers (simulators/opcua: 1..4) but locations of its
# own, so the two cells' moves (both simulators number their totes alike) stay apart.
UA_ROBOT = "robot-cell-ua"
UA_ROBOT_STATIONS = {code: f"UA-{name}" for code, name in ROBOT_STATIONS.items()}
UA_ROBOT_MAP = EQUIPMENT_MAPS / "opcua" / "robot.toml"
HANDHELD = "handheld-1"
# The AMRs' VDA 5050 nodes (simulators/vda5050) -> locations of their own, and where a tote is
# while a vehicle carries it.
AMR_NODES = {
    **{f"rack-0{i}": f"AMR-RACK-0{i}" for i in range(1, 5)},
    **{f"pack-0{i}": f"AMR-PACK-0{i}" for i in range(1, 3)},
}
COUNTED_LOCATION = "SALES-FLOOR"
COUNTED_BARCODE = "LOC-SALES-FLOOR"
EX_INTERRUPTED = 130


class DemoError(Exception):
    """The demo cannot go on (a tool missing, a child that did not start); says why."""


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """When things happen, in seconds from the scenario's start (the demo's t=0)."""

    duration_s: float
    speed: float  # LLRP scenario playback speed: the whole scenario plays within the demo
    outage_at_s: float
    outage_s: float

    @classmethod
    def for_duration(cls, duration_s: float, scenario_s: float) -> Plan:
        # 20 s of outage on a normal run; a short run gets a third of its time, so the
        # outbox still visibly fills and there is time left to see it drain.
        outage_s = 20.0 if duration_s >= 60 else max(3.0, round(duration_s / 3, 1))
        outage_at_s = max(4.0, round(0.3 * duration_s, 1))
        # The scenario ends at 80 % of the run: what it sets in motion settles before the end.
        speed = max(1.0, round(scenario_s / (0.8 * duration_s), 2))
        return cls(duration_s, speed, outage_at_s, outage_s)

    @property
    def outage_end_s(self) -> float:
        return self.outage_at_s + self.outage_s


# --- child processes -------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    out_path: Path | None
    files: list[IO[bytes]] = field(default_factory=list)


class Children:
    """The demo's child processes: each in its own session (the terminal's Ctrl-C reaches only
    the demo, which then stops them in order), output to files in the log directory."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        capture_stdout: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start argv; stderr (and stdout unless captured) to logs/NAME.log; a captured
        stdout goes to logs/NAME.out, which the demo reads while the child runs."""
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 (open as long as the child runs)
        files: list[IO[bytes]] = [log]
        out_path = None
        stdout: IO[bytes] = log
        if capture_stdout:
            out_path = self.log_dir / f"{name}.out"
            stdout = open(out_path, "wb")  # noqa: SIM115
            files.append(stdout)
        proc = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
            list(argv),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})},
            start_new_session=True,
        )
        child = Child(name, proc, log_path, out_path, files)
        self.children[name] = child
        return child

    def stop(self, name: str, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (each command drains and exits 0 on it), SIGKILL if it does not end."""
        child = self.children.get(name)  # forgotten only once it has ended (see below)
        if child is None:
            return None
        proc = child.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                # SIGABRT first: with PYTHONFAULTHANDLER set (see start()) a stuck Python child
                # writes every thread's stack to its log before it dies, which says why.
                for sig in (signal.SIGABRT, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(5)
                        break
        for f in child.files:
            f.close()
        # Only now: a Ctrl-C in the middle of this leaves it listed for stop_all() to finish.
        self.children.pop(name, None)
        return proc.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.children)):
            self.stop(name)

    def died(self) -> list[str]:
        """Children that ended on their own, with their exit code."""
        return [
            f"{c.name} (exit {c.proc.returncode})"
            for c in self.children.values()
            if c.proc.poll() is not None
        ]


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", *args]


def first_json_line(child: Child, timeout_s: float = 30.0) -> dict[str, Any]:
    """The first stdout line of a simulator: where it listens. Read from its output file."""
    assert child.out_path is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = child.out_path.read_text(encoding="utf-8", errors="replace")
        if "\n" in text:
            line = text.split("\n", 1)[0]
            try:
                value: dict[str, Any] = json.loads(line)
            except ValueError:
                raise DemoError(f"{child.name} printed {line[:200]!r}, not its address") from None
            return value
        if child.proc.poll() is not None:
            raise DemoError(f"{child.name} exited ({child.proc.returncode}); see {child.log_path}")
        time.sleep(0.05)
    raise DemoError(f"{child.name} did not say where it listens within {timeout_s:.0f} s")


# --- the site: simulators and the one gateway config ------------------------------------------


@dataclass
class Site:
    config_path: Path
    metrics_url: str
    readers: list[str]
    equipment: list[str]
    handheld: str | None  # None: the handheld simulator could not be started (see `notes`)
    notes: list[str] = field(default_factory=list)


def scenario_duration_s() -> float:
    return float(json.loads(SITE_SCENARIO.read_text(encoding="utf-8"))["duration"])


def handheld_scenario(plan: Plan, start_delay_s: float) -> dict[str, Any]:
    """The TSL handheld's script: two cycle counts of the store floor, the second one during
    the outage (so its counts message waits in the outbox). Its clock starts at the gateway's
    first command, a few seconds before the demo's t=0; the shelf tags are those of the LLRP
    scenario's `shelf` group, so the count and the fixed reader agree."""
    from simulators.scenario import sgtin96

    raw = json.loads(SITE_SCENARIO.read_text(encoding="utf-8"))
    spec = raw["tags"]["shelf"]["sgtin"]
    epcs = [
        sgtin96(spec["company"], spec["item"], serial)
        for serial in range(spec["serial_from"], spec["serial_from"] + spec["count"])
    ]
    lead = max(0.0, start_delay_s - 3.0)  # the gateway connects ~3 s before t=0
    first = lead + max(2.0, plan.outage_at_s / 2)
    second = lead + plan.outage_at_s + plan.outage_s / 2
    steps: list[dict[str, Any]] = []
    for at in (first, second):
        steps += [
            {"at": round(at, 2), "do": "scan", "barcode": COUNTED_BARCODE},
            {"at": round(at + 0.5, 2), "do": "pull", "hold_s": 1.5, "tags": ["shelf"]},
        ]
    return {
        "description": "fc-edge demo: cycle counts of the store floor (written by gateway/demo)",
        "round_s": 0.2,
        "start": "first_command",
        "seed": 7,
        "groups": {"shelf": [{"epc": epc, "rssi": -55} for epc in epcs]},
        "steps": steps,
    }


def start_site(
    children: Children, workdir: Path, plan: Plan, broker_url: str, fleet_url: str | None = None
) -> tuple[Site, float]:
    """Start the simulators, write the merged gateway config. Returns the site and the
    monotonic time of the scenario's t=0. `fleet_url`: the AMRs' broker (None: no AMRs)."""
    start_delay_s = 6.0  # the gateway's readers connect before the scenario starts
    base_config = workdir / "llrp-readers.toml"
    llrp = children.start(
        "llrp-sim",
        cli_argv(
            "simulate", "llrp", "--scenario", str(SITE_SCENARIO),
            "--gateway-config", str(base_config), "--truth", str(workdir / "truth.jsonl"),
            "--speed", str(plan.speed), "--start-delay-s", str(start_delay_s),
            "--grace-s", str(plan.duration_s + 120),  # the demo stops it, not the clock
            "--state-dir", str(workdir / "state"), "--mqtt-url", broker_url,
        ),
        capture_stdout=True,
    )  # fmt: skip
    conveyor = children.start(
        "conveyor-plc",
        cli_argv("simulate", "modbus", "--device", "conveyor", "--listen", "127.0.0.1:0"),
        capture_stdout=True,
    )
    robot = children.start(
        "robot-cell",
        cli_argv(
            "simulate", "modbus", "--device", "robot", "--listen", "127.0.0.1:0",
            "--move-every-s", "1.5",
        ),
        capture_stdout=True,
    )  # fmt: skip
    ua_robot = children.start(
        UA_ROBOT,
        cli_argv(
            "simulate", "opcua", "--device", "robot", "--listen", "127.0.0.1:0",
            "--move-every-s", "1.5", "--serial-offset", "500000",  # not the Modbus cell's ids
        ),
        capture_stdout=True,
    )  # fmt: skip
    notes: list[str] = []
    handheld_port: int | None = None
    hh_path = workdir / "handheld-count.json"
    hh_path.write_text(json.dumps(handheld_scenario(plan, start_delay_s), indent=2) + "\n")
    tsl = children.start(
        "handheld-sim",
        cli_argv("simulate", "tsl", "--scenario", str(hh_path), "--listen", "127.0.0.1:0"),
        capture_stdout=True,
    )
    amrs = None
    if fleet_url is not None:
        amrs = children.start(
            "amr-fleet",
            cli_argv(
                "simulate", "vda5050", "--broker", fleet_url, "--vehicles", "2",
                "--step-s", "1.0", "--start-delay-s", str(start_delay_s),
            ),
            capture_stdout=True,
        )  # fmt: skip
    readers_at = first_json_line(llrp)
    t0 = time.monotonic() + start_delay_s  # the LLRP simulator's t=0, from its first line
    equipment_ports = {
        "conveyor-plc": int(first_json_line(conveyor)["port"]),
        "robot-cell": int(first_json_line(robot)["port"]),
    }
    ua_robot_port = int(first_json_line(ua_robot)["port"])
    # HOOK (handheld): the TSL simulator is optional: if it fails, the demo goes on without
    # the handheld and says so, rather than failing the whole first five minutes.
    try:
        handheld_port = int(first_json_line(tsl, timeout_s=15)["port"])
    except (DemoError, KeyError, ValueError) as exc:
        notes.append(f"handheld left out: the TSL simulator did not start ({exc})")
        children.stop("handheld-sim")
    fleet = None
    if amrs is not None and fleet_url is not None:
        fleet = (fleet_url, [str(v) for v in first_json_line(amrs)["vehicles"]])
    metrics_port = free_port()
    raw = merge_config(
        tomllib.loads(base_config.read_text(encoding="utf-8")),
        metrics_port=metrics_port,
        equipment_ports=equipment_ports,
        handheld_port=handheld_port,
        fleet=fleet,
        ua_robot_port=ua_robot_port,
    )
    config_path = workdir / "demo.toml"
    write_config(raw, config_path)
    site = Site(
        config_path=config_path,
        metrics_url=f"http://127.0.0.1:{metrics_port}",
        readers=sorted(readers_at["readers"]),
        equipment=sorted([*equipment_ports, UA_ROBOT, *(fleet[1] if fleet else [])]),
        handheld=HANDHELD if handheld_port else None,
        notes=notes,
    )
    return site, t0


def merge_config(
    raw: dict[str, Any],
    *,
    metrics_port: int,
    equipment_ports: Mapping[str, int],
    handheld_port: int | None,
    fleet: tuple[str, Sequence[str]] | None = None,
    ua_robot_port: int | None = None,
) -> dict[str, Any]:
    """The LLRP simulator's generated config (readers, locations, portals) plus the Modbus
    equipment, the OPC UA robot cell (on `ua_robot_port`), the handheld, the AMRs (`fleet`:
    their broker and serial numbers), metrics on a free port and demo-friendly timings."""
    raw = json.loads(json.dumps(raw))  # a deep copy
    raw["gateway"] |= {"id": GATEWAY_ID, "shutdown_timeout_s": 10}
    # A demo's broker comes back after 20 s: reconnect within 2 s instead of up to 30 s.
    raw["mqtt"] |= {"client_id": f"fc-edge-{GATEWAY_ID}", "reconnect_max_s": 2}
    raw["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    raw["outbox"] = {"synchronous": "normal"}  # a laptop demo: no fsync per batch needed
    raw["locations"].setdefault(COUNTED_LOCATION, {})["barcode"] = COUNTED_BARCODE
    equipment = []
    for name, port in equipment_ports.items():
        kind = "robot" if name == "robot-cell" else "conveyor"
        entry: dict[str, Any] = {
            "name": name,
            "driver": "modbus",
            "host": "127.0.0.1",
            "port": port,
            "map": str(EQUIPMENT_MAPS / f"{kind}.toml"),
            "interval_s": 0.25,
            "stale_after_s": 5,
            "status_interval_s": 30,
        }
        if kind == "robot":
            entry["stations"] = dict(ROBOT_STATIONS)
        equipment.append(entry)
    if ua_robot_port is not None:
        equipment.append(ua_robot_entry(raw["locations"], ua_robot_port))
    if fleet is not None:
        equipment += amr_entries(raw["locations"], *fleet)
    raw["equipment"] = equipment
    if handheld_port is not None:
        raw["readers"].append(
            {
                "name": HANDHELD,
                "driver": "tsl",
                "port": f"socket://127.0.0.1:{handheld_port}",
                "workflow": "count",
                "allowed_locations": [COUNTED_LOCATION],
                "response_timeout_s": 5,
            }
        )
    return raw


def ua_robot_entry(locations: dict[str, Any], port: int) -> dict[str, Any]:
    """The `opcua` entry of the second robot cell; its stations' locations added to
    `locations` (they are not in demo-site.json, whose CELL-* are the Modbus cell's)."""
    for name in UA_ROBOT_STATIONS.values():
        locations.setdefault(name, {})
    return {
        "name": UA_ROBOT,
        "driver": "opcua",
        "url": f"opc.tcp://127.0.0.1:{port}",
        "map": str(UA_ROBOT_MAP),
        "interval_s": 0.25,
        "stale_after_s": 5,
        "status_interval_s": 30,
        "reconnect_max_s": 2,
        "stations": dict(UA_ROBOT_STATIONS),
    }


def amr_entries(
    locations: dict[str, Any], fleet_url: str, serials: Sequence[str]
) -> list[dict[str, Any]]:
    """One `vda5050` entry per AMR; their nodes' and vehicles' locations added to `locations`."""
    entries = []
    for name in AMR_NODES.values():
        locations.setdefault(name, {})
    for serial in serials:
        vehicle = f"AMR-{serial.upper()}"
        locations.setdefault(vehicle, {})
        entries.append(
            {
                "name": serial,
                "driver": "vda5050",
                "broker": fleet_url,
                "manufacturer": "fcsim",
                "serial_number": serial,
                "location": vehicle,
                "nodes": dict(AMR_NODES),
                "client_id": f"fc-edge-{GATEWAY_ID}-{serial}",
                "reconnect_max_s": 2,
            }
        )
    return entries


def write_config(raw: dict[str, Any], path: Path) -> None:
    """Validate with the gateway's own loader (a demo must never ship a config `fc-edge run`
    refuses), then write it as TOML."""
    from gateway import config as config_mod

    try:
        config_mod.from_dict(json.loads(json.dumps(raw)), path.name, str(path))
    except config_mod.ConfigError as exc:
        raise DemoError("the merged demo config is invalid:\n  " + "\n  ".join(exc.lines)) from None
    header = (
        "# Written by `fc-edge demo`: the LLRP readers, locations and portals generated from\n"
        "# simulators/scenarios/demo-site.json, plus the Modbus and OPC UA equipment, the AMRs\n"
        "# and the TSL handheld.\n"
        "# Check it with: fc-edge check-config -c " + str(path) + "\n"
    )
    path.write_text(header + toml_dumps(raw), encoding="utf-8")


# --- watching: the IMS's output, the gateway's /readyz and /metrics -----------------------------


class TailFile:
    """New complete lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete if line.strip()]


def http_get(url: str, timeout_s: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback URL)
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:  # /readyz answers 503 with a body while not ready
        return bytes(exc.read())
    except (OSError, ValueError):
        return None


@dataclass
class Watch:
    """Everything the demo shows, refreshed by poll()."""

    site: Site
    listen_out: TailFile
    listen_err: TailFile
    movements: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    by_type: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)  # movements per reporting device
    received: Counter[str] = field(default_factory=Counter)  # new messages per outbox stream
    seqs: dict[str, set[int]] = field(default_factory=dict)  # seqs received per outbox stream
    stock: dict[str, str] = field(default_factory=dict)  # epc / object id -> location
    counts: int = 0
    counted_epcs: int = 0
    equipment_events: Counter[str] = field(default_factory=Counter)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    listen_summary: dict[str, Any] | None = None
    ready: dict[str, Any] = field(default_factory=dict)
    reads: dict[str, float] = field(default_factory=dict)  # reader -> reads so far
    read_rates: dict[str, float] = field(default_factory=dict)
    equipment_states: dict[str, str] = field(default_factory=dict)  # device.point -> state
    depth_history: deque[int] = field(default_factory=lambda: deque(maxlen=120))
    last_metrics: bytes = b""
    _last_reads_at: float = 0.0

    def poll(self) -> None:
        self._read_listen()
        self._scrape()

    def _read_listen(self) -> None:
        for line in self.listen_out.lines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            schema = msg.get("schema", "")
            stream = STREAM_OF_SCHEMA.get(schema, "other")
            self.received[stream] += 1
            if isinstance(msg.get("seq"), int):
                self.seqs.setdefault(stream, set()).add(msg["seq"])
            if schema.startswith("fc-edge/movement"):
                self._movement(msg)
            elif schema.startswith("fc-edge/count"):
                self.counts += 1
                self.counted_epcs += len(msg.get("epcs") or [])
            elif schema.startswith("fc-edge/equipment"):
                self.equipment_events[f"{msg.get('device')}:{msg.get('event')}"] += 1
        for line in self.listen_err.lines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") == "seq_gap":
                self.gaps.append(entry)
            elif entry.get("event") == "summary":
                self.listen_summary = entry

    def _movement(self, m: dict[str, Any]) -> None:
        self.movements.append(m)
        self.by_type[str(m.get("type"))] += 1
        self.by_source[str(m.get("source"))] += 1
        key = m.get("epc") or m.get("object_id")
        if not key:
            return
        if m.get("type") == "departed" or not m.get("to"):  # the IMS's rule (gateway.listen)
            self.stock.pop(key, None)
        else:
            self.stock[key] = str(m["to"])

    def _scrape(self) -> None:
        body = http_get(self.site.metrics_url + "/readyz")
        if body:
            with contextlib.suppress(ValueError):
                self.ready = json.loads(body)
        outbox = self.ready.get("outbox") or {}
        if body and "depth" in outbox:
            self.depth_history.append(int(outbox["depth"]))
        metrics = http_get(self.site.metrics_url + "/metrics")
        if metrics:
            self.last_metrics = metrics
            self._parse_metrics(metrics.decode("utf-8", "replace"))

    def _parse_metrics(self, text: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        now = time.monotonic()
        reads: dict[str, float] = {}
        states: dict[str, str] = {}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "fc_edge_reads_total":
                        reads[sample.labels.get("reader", "?")] = sample.value
                    elif sample.name == "fc_edge_equipment_state" and sample.value == 1:
                        labels = sample.labels
                        states[f"{labels.get('device')}.{labels.get('point')}"] = labels.get(
                            "state", "?"
                        )
        except ValueError:
            return  # a half-written scrape: the next one will do
        elapsed = now - self._last_reads_at
        if self._last_reads_at and elapsed > 0:
            self.read_rates = {
                name: max(0.0, (value - self.reads.get(name, 0.0)) / elapsed)
                for name, value in reads.items()
            }
        self.reads, self._last_reads_at = reads, now
        self.equipment_states = states

    # --- figures derived from the polls -----------------------------------------------------

    @property
    def depth(self) -> int | None:
        outbox = self.ready.get("outbox")
        return int(outbox["depth"]) if outbox else None

    @property
    def broker_state(self) -> str:
        return str(self.ready.get("broker", "?"))

    def stock_by_location(self) -> Counter[str]:
        return Counter(self.stock.values())

    def devices(self) -> dict[str, dict[str, Any]]:
        devices: dict[str, dict[str, Any]] = self.ready.get("devices") or {}
        return devices

    def devices_up(self) -> tuple[int, int]:
        """How many devices /readyz shows up, of how many it lists."""
        devices = self.devices()
        return sum(1 for d in devices.values() if d.get("state") in UP_STATES), len(devices)

    def equipment_bookings(self) -> dict[str, int]:
        """Movements booked per equipment device (the robot cells' moves, the AMRs' totes)."""
        return {name: self.by_source.get(name, 0) for name in sorted(self.site.equipment)}


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Outage:
    planned: bool
    started_at: float | None = None  # monotonic
    ended_at: float | None = None
    max_depth: int = 0
    drained_at: float | None = None  # the outbox empty again after the broker came back
    skipped: str | None = None

    def phase(self, now: float) -> str:
        if self.started_at is not None and self.ended_at is None:
            return "broker down"
        if self.ended_at is not None and self.drained_at is None:
            return "draining"
        return "running"


class Interrupted(Exception):
    """SIGTERM / SIGHUP: stop the demo like Ctrl-C does."""


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    old = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def no_interruptions() -> Iterator[None]:
    """While children are being stopped, a second Ctrl-C must not leave some of them behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.plan = Plan.for_duration(args.duration_s, scenario_duration_s())
        self.workdir = Path(tempfile.mkdtemp(prefix="fc-edge-demo-"))
        self.log_dir = self.workdir / "logs"
        self.log_dir.mkdir()
        self.children = Children(self.log_dir)
        self.broker: Mosquitto | None = None
        self.fleet_broker: Mosquitto | None = None  # the AMRs' (with our own broker only)
        self.broker_url: str = args.broker or ""
        self.site: Site | None = None
        self.watch: Watch | None = None
        self.outage = Outage(planned=args.broker is None)
        if args.broker is not None:
            self.outage.skipped = "--broker: not our broker to stop"
        self.t0 = 0.0
        self.tty = not args.no_tty and sys.stdout.isatty()
        from rich.console import Console

        self.console = Console()
        self.result: dict[str, Any] = {}
        self.last_line_at = 0.0

    # --- setup ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.broker_url == "":
            # Persistence: the IMS's session and what is queued for it survive the outage, as
            # on a production broker.
            self.broker = Mosquitto(self.workdir / "broker", persistence=True, autosave_s=5)
            self.broker.start()
            self.broker_url = self.broker.url
            # The AMRs' fleet broker is another one (as on a real site): the outage is the IMS's.
            self.fleet_broker = Mosquitto(self.workdir / "fleet-broker")
            self.fleet_broker.start()
        self.say(f"broker {self.broker_url}; work dir {self.workdir}")
        fleet_url = self.fleet_broker.url if self.fleet_broker is not None else None
        self.site, self.t0 = start_site(
            self.children, self.workdir, self.plan, self.broker_url, fleet_url
        )
        for note in self.site.notes:
            self.say(note)
        site_name = self._site_name()
        listen = self.children.start(
            "listen",
            cli_argv(
                "listen", "--broker", self.broker_url, "--site", site_name,
                "--streams", LISTEN_STREAMS, *self._ims_session(),
            ),
            capture_stdout=True,
        )  # fmt: skip
        assert listen.out_path is not None
        self.children.start(
            "gateway", cli_argv("run", "-c", str(self.site.config_path), "--log-format", "text")
        )
        self.watch = Watch(self.site, TailFile(listen.out_path), TailFile(listen.log_path))
        self.say(
            f"site {site_name}: {len(self.site.readers)} LLRP readers, "
            f"{len(self.site.equipment)} equipment (PLC, Modbus and OPC UA robot cells, AMRs), "
            "handheld "
            f"{'yes' if self.site.handheld else 'no'}; scenario x{self.plan.speed}; metrics "
            f"{self.site.metrics_url}/metrics"
        )

    def _ims_session(self) -> list[str]:
        """On our own broker the IMS keeps a persistent session (as a real IMS does), so what
        the gateway publishes right after the outage waits for it. Never on someone else's
        broker: a session would outlive the demo there."""
        return [] if self.broker is None else ["--client-id", f"{IMS_CLIENT_ID}-{os.getpid()}"]

    def _site_name(self) -> str:
        assert self.site is not None
        raw = tomllib.loads(self.site.config_path.read_text(encoding="utf-8"))
        return str(raw["gateway"]["site"])

    # --- the show -------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> None:
        if self.tty:
            from rich.live import Live

            with Live(
                self.render(), console=self.console, auto_refresh=False, screen=False
            ) as live:
                self._loop(lambda: live.update(self.render(), refresh=True))
        else:
            self._loop(self._compact_line)

    def _loop(self, show: Any) -> None:
        while self.elapsed() < self.plan.duration_s:
            self.step()
            show()
            time.sleep(0.5)

    def step(self) -> None:
        assert self.watch is not None
        died = self.children.died()
        if died:
            raise DemoError(
                "stopped unexpectedly: " + ", ".join(died) + f"; logs in {self.log_dir}"
            )
        self.watch.poll()
        now = time.monotonic()
        t = self.elapsed()
        o = self.outage
        if self.broker is not None and o.planned:
            if o.started_at is None and t >= self.plan.outage_at_s:
                self.broker.stop()
                o.started_at = now
                self.say(f"outage: broker stopped for {self.plan.outage_s:.0f} s")
            elif o.started_at is not None and o.ended_at is None and t >= self.plan.outage_end_s:
                self.broker.start()
                o.ended_at = now
                self.say(f"broker back; outbox holds {self.watch.depth} messages")
        depth = self.watch.depth
        if o.started_at is not None and o.drained_at is None and depth is not None:
            o.max_depth = max(o.max_depth, depth)
            if o.ended_at is not None and depth == 0:
                o.drained_at = now
                drain_s = now - o.ended_at
                self.say(f"drained {drain_s:.1f} s after the broker came back (max {o.max_depth})")

    # --- the end --------------------------------------------------------------------------

    def finish(self) -> None:
        """Let everything reach the IMS, stop the gateway (it drains on SIGTERM), then compare
        what the IMS got with what the gateway's outbox ever held.

        The gateway stops while its devices are still up: a gateway whose readers are all
        unreachable can take much longer to stop (see the report of this demo's first runs)."""
        assert self.watch is not None and self.site is not None
        self.say("finishing: the gateway drains and stops, then the IMS's figures are checked")
        if self.broker is not None and not self.broker.running:
            self.broker.start()  # interrupted mid-outage: let the outbox drain anyway
        self._settle(timeout_s=15.0)
        with contextlib.suppress(OSError):
            (self.workdir / "metrics.txt").write_bytes(self.watch.last_metrics)
            (self.workdir / "readyz.json").write_text(json.dumps(self.watch.ready, indent=2))
        gateway_rc = self.children.stop("gateway", timeout_s=40)
        outbox = final_outbox_stats(self.site.config_path)
        # What the gateway appended on its way out (a last engine flush) still reaches the IMS.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._caught_up(outbox.get("last_seq", {})):
            time.sleep(0.2)
            self.watch.poll()
        self.children.stop("listen")
        self.watch.poll()
        self.result = self.figures(outbox, gateway_rc)

    def _settle(self, timeout_s: float) -> None:
        """Until the outbox is empty and the IMS has every seq the outbox handed out."""
        assert self.watch is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.watch.poll()
            last_seq = (self.watch.ready.get("outbox") or {}).get("last_seq", {})
            if self.watch.depth == 0 and self._caught_up(last_seq):
                o = self.outage
                if o.ended_at is not None and o.drained_at is None:
                    # Traffic went on until the end, so no poll of the run saw the outbox at
                    # exactly 0 (every message had a successor in flight): it drained by now.
                    o.drained_at = time.monotonic()
                return
            time.sleep(0.25)

    def _caught_up(self, last_seq: Mapping[str, int]) -> bool:
        assert self.watch is not None
        return all(self.watch.received.get(stream, 0) >= seq for stream, seq in last_seq.items())

    def figures(self, outbox: dict[str, Any], gateway_rc: int | None) -> dict[str, Any]:
        assert self.watch is not None
        w, o = self.watch, self.outage
        last_seq: dict[str, int] = outbox.get("last_seq", {})
        # Each stream's seqs start at 1 in a fresh outbox: the IMS must hold every seq from 1
        # to the outbox's last one (listen drops duplicates by id).
        lost = {
            stream: missing
            for stream, n in last_seq.items()
            if (missing := n - len(w.seqs.get(stream, set()) & set(range(1, n + 1))))
        }
        # listen counts a gap when a seq skips ahead; a gap filled later is a reordering,
        # not a loss: both are reported, and both fail the check.
        reordered = sum(
            1
            for g in w.gaps
            if set(range(g["from_seq"], g["to_seq"] + 1))
            <= w.seqs.get(STREAM_OF_LISTEN.get(g["stream"], g["stream"]), set())
        )
        gaps = len(w.gaps) if w.listen_summary is None else int(w.listen_summary.get("gaps", 0))
        drained = outbox.get("depth") == 0 and (o.drained_at is not None or not o.planned)
        up, listed = w.devices_up()
        return {
            "demo": "summary",
            "site": self._site_name(),
            "duration_s": self.plan.duration_s,
            "movements": dict(sorted(w.by_type.items())),
            "movements_total": sum(w.by_type.values()),
            "counts": {"messages": w.counts, "epcs": w.counted_epcs},
            "equipment_events": sum(w.equipment_events.values()),
            "equipment_events_by_device": dict(sorted(w.equipment_events.items())),
            "equipment_bookings": w.equipment_bookings(),
            "devices_up": {"up": up, "of": listed},
            "stock": dict(sorted(w.stock_by_location().items())),
            "received": dict(sorted(w.received.items())),
            "outbox_last_seq": last_seq,
            "gaps": gaps,
            "gaps_filled_later": reordered,
            "lost": lost,
            "outage": {
                "observed": o.started_at is not None and o.ended_at is not None,
                "seconds": round(o.ended_at - o.started_at, 1)
                if o.started_at and o.ended_at
                else 0,
                "max_outbox_depth": o.max_depth,
                "drain_s": round(o.drained_at - o.ended_at, 1)
                if o.drained_at and o.ended_at
                else None,
                **({"skipped": o.skipped} if o.skipped else {}),
            },
            "drained": drained,
            "outbox_depth_at_end": outbox.get("depth"),
            "handheld": self.site.handheld is not None if self.site else False,
            "gateway_exit": gateway_rc,
            "ok": drained and not lost and gaps == 0 and gateway_rc == 0,
        }

    # --- output ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        stamp = f"{self.elapsed():6.1f}s" if self.t0 else "  setup"
        if self.tty:
            self.console.print(f"[dim]{stamp}[/dim] {text}")  # above the live view
        else:
            print(f"demo {stamp}  {text}", flush=True)

    def _compact_line(self) -> None:
        now = time.monotonic()
        if now - self.last_line_at < 5:
            return
        self.last_line_at = now
        w = self.watch
        assert w is not None
        up, listed = w.devices_up()
        self.say(
            f"{self.outage.phase(now):11}  movements {sum(w.by_type.values()):4}  "
            f"outbox {w.depth if w.depth is not None else '?':>4}  broker {w.broker_state:12}  "
            f"devices {up}/{listed} up  gaps {len(w.gaps)}"
        )

    def render(self) -> Any:
        return render_live(self)

    def report(self, interrupted: bool) -> None:
        site = self.site
        lines = []
        if self.result:
            r = self.result
            moved = ", ".join(f"{k} {v}" for k, v in r["movements"].items()) or "none"
            lines.append(
                f"movements: {r['movements_total']} ({moved}); counts {r['counts']['messages']}; "
                f"equipment events {r['equipment_events']}; seq gaps {r['gaps']}"
                + (f" ({r['gaps_filled_later']} filled later: out of order)" if r["gaps"] else "")
            )
            booked = ", ".join(f"{k} {v}" for k, v in r["equipment_bookings"].items()) or "none"
            devices = r["devices_up"]
            lines.append(
                f"booked by equipment: {booked}; devices up {devices['up']}/{devices['of']}"
            )
            out = r["outage"]
            if out["observed"]:
                lines.append(
                    f"outage: {out['seconds']} s, outbox max {out['max_outbox_depth']} messages, "
                    + (
                        f"drained in {out['drain_s']} s; "
                        if out["drain_s"] is not None
                        else "NOT drained; "
                    )
                    + ("nothing lost" if not r["lost"] else f"LOST {r['lost']}")
                )
        lines.append("where to look next:")
        if site is not None:
            lines.append(
                f"  the config it used   {site.config_path}   (fc-edge check-config -c ...)"
            )
            lines.append(f"  metrics (while up)   {site.metrics_url}/metrics  /readyz  /healthz")
            scrapes = f"{self.workdir / 'metrics.txt'}  {self.workdir / 'readyz.json'}"
            lines.append(f"  last scrape          {scrapes}")
        lines.append(
            f"  the logs             {self.log_dir}/  (gateway.log, listen.out = what the IMS got)"
        )
        dashboard = GRAFANA_DASHBOARD if GRAFANA_DASHBOARD.exists() else GRAFANA_SOURCE
        lines.append(f"  Grafana dashboard    {dashboard}")
        lines.append("  run your own         fc-edge run -c config/example.toml   (README.md)")
        if interrupted:
            lines.insert(0, "interrupted: every child process stopped")
        for line in lines:
            print(line, flush=True)
        if not self.tty and self.result:
            print(json.dumps(self.result, separators=(",", ":")), flush=True)

    def cleanup(self) -> None:
        with no_interruptions():
            self.children.stop_all()
            for broker in (self.broker, self.fleet_broker):
                if broker is not None:
                    broker.stop()


UP_STATES = frozenset({"connected", "up", "running", "reading", "inventory", "ok", "idle"})


# --- the live view (rich) --------------------------------------------------------------------

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int], width: int = 60) -> str:
    tail = list(values)[-width:]
    top = max(tail, default=0)
    if top == 0:
        return SPARK[0] * len(tail)
    return "".join(SPARK[min(len(SPARK) - 1, v * (len(SPARK) - 1) // top)] for v in tail)


def movement_subject(m: Mapping[str, Any]) -> str:
    """GTIN and serial when the EPC decodes, else the robot's object id, else the EPC."""
    item = m.get("item") or {}
    if item.get("gtin"):
        return f"{item['gtin']} #{item.get('serial', '')}"
    return str(m.get("object_id") or m.get("epc") or "?")


def render_live(demo: Demo) -> Any:
    """The whole screen: header, movements | (stock, devices, equipment), outbox and IMS."""
    from rich.layout import Layout
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    w = demo.watch
    layout = Layout()
    layout.split_column(
        Layout(name="header", size=3), Layout(name="body"), Layout(name="footer", size=6)
    )
    layout["body"].split_row(Layout(name="movements", ratio=3), Layout(name="side", ratio=2))
    layout["side"].split_column(
        Layout(name="stock"), Layout(name="devices"), Layout(name="equipment")
    )

    now = time.monotonic()
    phase = demo.outage.phase(now) if demo.t0 else "starting"
    style = {"broker down": "bold red", "draining": "bold yellow"}.get(phase, "bold green")
    header = Text.assemble(
        ("fc-edge demo", "bold"),
        f"  site {demo._site_name() if demo.site else '...'}  ",
        (f"t {max(0.0, demo.elapsed()):5.1f} / {demo.plan.duration_s:.0f} s  ", ""),
        (phase.upper(), style),
    )
    o = demo.outage
    if phase == "broker down" and o.started_at is not None:
        header.append(f"  back in {max(0.0, demo.plan.outage_s - (now - o.started_at)):.0f} s")
    elif o.planned and o.started_at is None and demo.t0:
        header.append(
            f"  outage at t={demo.plan.outage_at_s:.0f} s for {demo.plan.outage_s:.0f} s", "dim"
        )
    layout["header"].update(Panel(header))
    if w is None:
        layout["body"].update(Panel("starting the broker, the simulators and the gateway ..."))
        return layout

    moves = Table(expand=True, box=None, show_edge=False)
    for col in ("time", "type", "what", "from", "to", "by", "seq"):
        moves.add_column(col, no_wrap=True)
    colors = {"arrived": "green", "moved": "cyan", "departed": "magenta"}
    for m in list(w.movements)[-40:][::-1]:
        moves.add_row(
            str(m.get("time", ""))[11:23],
            Text(str(m.get("type")), colors.get(str(m.get("type")), "")),
            movement_subject(m),
            str(m.get("from") or "-"),
            str(m.get("to") or "-"),
            str(m.get("source") or ""),
            str(m.get("seq", "")),
        )
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(w.by_type.items())) or "none yet"
    layout["movements"].update(Panel(moves, title=f"movements (IMS view): {by_type}"))

    stock = Table(expand=True, box=None)
    stock.add_column("location")
    stock.add_column("items", justify="right")
    for location, n in sorted(w.stock_by_location().items()):
        stock.add_row(location, str(n))
    layout["stock"].update(Panel(stock, title=f"stock by location ({len(w.stock)} items)"))

    devices = Table(expand=True, box=None)
    for col in ("device", "state", "reads/s", "reconnects"):
        devices.add_column(col, no_wrap=True)
    for name, d in sorted(w.devices().items()):
        state = str(d.get("state"))
        rate = w.read_rates.get(name)
        devices.add_row(
            name,
            Text(state, "green" if state in UP_STATES else "yellow"),
            f"{rate:.0f}" if rate is not None else "",
            str(sum((d.get("reconnects") or {}).values())),
        )
    layout["devices"].update(Panel(devices, title="readers and equipment (/readyz)"))

    equipment = Table(expand=True, box=None)
    equipment.add_column("point")
    equipment.add_column("state")
    for point, state in sorted(w.equipment_states.items()):
        equipment.add_row(point, state)
    events = sum(w.equipment_events.values())
    layout["equipment"].update(Panel(equipment, title=f"equipment states ({events} events)"))

    depth = w.depth
    footer = Text()
    footer.append(f"outbox depth {depth if depth is not None else '?':>5}", "bold")
    footer.append(f"   max during outage {o.max_depth}   broker ")
    footer.append(w.broker_state, "green" if w.broker_state == "connected" else "bold red")
    footer.append(f"\n{sparkline(list(w.depth_history))}\n", "yellow")
    received = sum(w.received.values())
    footer.append(f"IMS (fc-edge listen): {received} messages, seq gaps {len(w.gaps)}")
    if o.drained_at is not None and o.ended_at is not None:
        footer.append(
            f"   drained {o.drained_at - o.ended_at:.1f} s after the broker came back", "green"
        )
    layout["footer"].update(Panel(footer, title="store and forward"))
    return layout


def final_outbox_stats(config_path: Path) -> dict[str, Any]:
    """The outbox as the stopped gateway left it: depth and the last seq of every stream."""
    from gateway import config as config_mod
    from gateway.outbox import Outbox, OutboxError

    try:
        settings = config_mod.load(config_path)
        outbox = Outbox(settings.state_path / "outbox.db")
    except (config_mod.ConfigError, OutboxError) as exc:
        return {"error": str(exc)}
    try:
        stats: dict[str, Any] = outbox.stats().to_json()
        return stats
    finally:
        outbox.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fc-edge demo", description=__doc__.split("\n")[0])
    p.add_argument("--duration-s", type=float, default=90.0, help="how long the site runs (>= 15)")
    p.add_argument("--broker", help="use this broker instead of starting one (no outage then)")
    p.add_argument(
        "--no-tty", action="store_true", help="status lines and a JSON summary, no live view"
    )
    args = p.parse_args(argv)
    if args.duration_s < 15:
        p.error("--duration-s must be at least 15")
    return args


def rich_missing() -> str | None:
    """Why the demo cannot run without rich (an optional extra: only the demo uses it), or None."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return f"fc-edge demo: needs rich, the demo's optional extra: {INSTALL_RICH}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # --help works without rich
    missing = rich_missing()
    if missing is not None:
        print(missing, file=sys.stderr)
        return 1
    demo = Demo(args)
    interrupted = False
    try:
        with stop_signals():
            try:
                demo.start()
                demo.run()
                demo.finish()
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
    except (DemoError, BrokerError) as exc:
        demo.cleanup()
        print(f"fc-edge demo: {exc}", file=sys.stderr)
        demo.report(interrupted=False)
        return 1
    finally:
        demo.cleanup()
    demo.report(interrupted)
    if interrupted:
        return EX_INTERRUPTED
    return 0 if demo.result.get("ok") else 1
