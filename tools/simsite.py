"""A whole simulated site for the chaos tests (tests/chaos/) and the soak (tools/soak.py), every
part real and its own process where the gateway would meet it in production:

* the LLRP simulator (`fc-edge simulate llrp`, the demo's site scenario, HTTP control channel),
  fed extra reads through its control channel so every reader delivers all the time;
* two Modbus simulators (`fc-edge simulate modbus`: a conveyor PLC and a robot cell), commanded
  over their stdin (faults);
* the TSL handheld simulator (in this process: its TCP transport can then be made to vanish at
  the moment a test chooses), doing a cycle count every few seconds;
* one gateway config merged from all of them by gateway/demo/'s own functions.

Plus what the tests read: /metrics and /readyz, the outbox (read-only), /proc of the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from gateway import demo
from simulators.scenario import sgtin96 as scenario_sgtin96
from simulators.tsl.reader import SimulatedReader
from simulators.tsl.scenario import ScenarioRunner
from simulators.tsl.scenario import load as load_tsl_scenario
from simulators.tsl.transport import TcpTransport
from tools.harness import fc_edge, free_port, sgtin96, wait_for

LLRP_SITE = demo.SITE_SCENARIO
ROBOT = "robot-cell"
CONVEYOR = "conveyor-plc"
HANDHELD = demo.HANDHELD


# --- reading the gateway from outside ------------------------------------------------------------


def http_json(url: str, body: Mapping[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # /readyz answers 503 with a body while not ready
        return json.loads(exc.read())


def scrape(metrics_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics as {(sample name, labels): value}; {} while the daemon does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    body = demo.http_get(metrics_url + "/metrics", timeout_s=5)
    if not body:
        return {}
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The sum of every sample called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def outbox_db(state_dir: Path) -> sqlite3.Connection | None:
    path = state_dir / "outbox.db"
    if not path.exists():
        return None
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def outbox_depth(state_dir: Path) -> int:
    db = outbox_db(state_dir)
    if db is None:
        return 0
    try:
        return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def last_appended(state_dir: Path) -> dict[str, int]:
    """The outbox's `streams` table: the last seq appended per stream (read-only)."""
    db = outbox_db(state_dir)
    assert db is not None, "no outbox"
    try:
        return {str(s): int(n) for s, n in db.execute("SELECT stream, last_seq FROM streams")}
    finally:
        db.close()


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/PID/status (e.g. VmRSS in kB, Threads); 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    return proc_status(pid, "VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Tail:
    """The JSON lines another process appends to a file, read incrementally (the IMS's output
    grows to hundreds of thousands of lines: never re-read it whole)."""

    def __init__(self, path: Path) -> None:
        self.file = demo.TailFile(path)
        self.items: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        for line in self.file.lines():
            with contextlib.suppress(ValueError):
                self.items.append(json.loads(line))
        return self.items


# --- the IMS's view ------------------------------------------------------------------------------

STREAM_OF_SCHEMA = demo.STREAM_OF_SCHEMA


def by_stream(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for m in lines:
        stream = STREAM_OF_SCHEMA.get(m.get("schema", ""))
        if stream is not None and isinstance(m.get("seq"), int):
            out.setdefault(stream, []).append(m)
    return out


def exactly_once_problems(lines: list[dict[str, Any]], last: Mapping[str, int]) -> list[str]:
    """Every seq 1..last of every stream present, each seq carried by one id only, each id once.
    Returns what is wrong (empty: all well)."""
    problems = []
    streams = by_stream(lines)
    for stream, n in sorted(last.items()):
        got = streams.get(stream, [])
        ids_of_seq: dict[int, set[str]] = {}
        id_count: dict[str, int] = {}
        for m in got:
            ids_of_seq.setdefault(m["seq"], set()).add(m["id"])
            id_count[m["id"]] = id_count.get(m["id"], 0) + 1
        missing = sorted(set(range(1, n + 1)) - set(ids_of_seq))
        if missing:
            problems.append(
                f"{stream}: {len(missing)} of seqs 1..{n} missing, first {missing[:10]}"
            )
        beyond = sorted(s for s in ids_of_seq if s > n or s < 1)
        if beyond:
            problems.append(f"{stream}: seqs outside 1..{n}: {beyond[:10]}")
        reused = {s: ids for s, ids in ids_of_seq.items() if len(ids) > 1}
        if reused:
            problems.append(
                f"{stream}: {len(reused)} seqs carried by several ids: {list(reused.items())[:3]}"
            )
        twice = [i for i, c in id_count.items() if c > 1]
        if twice:
            problems.append(f"{stream}: {len(twice)} ids printed more than once")
    return problems


# --- the simulators ------------------------------------------------------------------------------


class ModbusSim:
    """`fc-edge simulate modbus`, commanded over stdin (one JSON reply per command)."""

    def __init__(self, workdir: Path, device: str, *args: str) -> None:
        self.device = device
        self.err = open(workdir / f"sim-{device}.err", "wb")  # noqa: SIM115 (as long as it runs)
        self.proc = fc_edge(
            "simulate", "modbus", "--device", device, "--listen", "127.0.0.1:0", *args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])
        self.lock = threading.Lock()

    def command(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
            return dict(json.loads(self.proc.stdout.readline()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()


def handheld_script(minutes: float, every_s: float = 6.0) -> dict[str, Any]:
    """The handheld counts the store floor every `every_s` seconds for `minutes`: a location
    scan, then the trigger held for a second. Its tags are the LLRP scenario's shelf group."""
    raw = json.loads(LLRP_SITE.read_text())
    spec = raw["tags"]["shelf"]["sgtin"]
    epcs = [
        scenario_sgtin96(spec["company"], spec["item"], serial)
        for serial in range(spec["serial_from"], spec["serial_from"] + spec["count"])
    ]
    steps: list[dict[str, Any]] = []
    at = 1.0
    while at < minutes * 60:
        steps += [
            {"at": round(at, 2), "do": "scan", "barcode": demo.COUNTED_BARCODE},
            {"at": round(at + 0.5, 2), "do": "pull", "hold_s": 1.0, "tags": ["shelf"]},
        ]
        at += every_s
    return {
        "description": "chaos: cycle counts of the store floor, over and over",
        "round_s": 0.2,
        "start": "now",
        "seed": 8,
        "groups": {"shelf": [{"epc": epc, "rssi": -55} for epc in epcs]},
        "steps": steps,
    }


class Handheld:
    """The TSL simulator in this process, on TCP (the gateway's socket:// port)."""

    def __init__(self, workdir: Path, minutes: float) -> None:
        path = workdir / "handheld.json"
        path.write_text(json.dumps(handheld_script(minutes)))
        self.reader = SimulatedReader(seed=8)
        self.transport = TcpTransport(self.reader, "127.0.0.1", 0)
        self.port = int(self.transport.start()["port"])  # type: ignore[call-overload]
        self.runner = ScenarioRunner(load_tsl_scenario(path), self.reader, self.vanish)
        self.runner.start()

    def vanish(self, for_s: float) -> None:
        self.transport.vanish(for_s)

    def vanish_in_background(self, for_s: float) -> threading.Thread:
        t = threading.Thread(target=self.vanish, args=(for_s,), daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self.runner.stop()
        self.transport.stop()


class ReadFeeder:
    """Keeps every LLRP reader delivering: each second, through the simulator's control channel,
    each reader is given reads of its own small tag pool, and the staging zone new EPCs (which
    arrive, and depart 30 s after their last read: a steady flow of movements)."""

    def __init__(
        self, control_url: str, readers: Mapping[str, list[int]], new_per_s: int = 5
    ) -> None:
        self.control_url = control_url
        self.readers = readers  # name -> antennas
        self.new_per_s = new_per_s
        self.stop_event = threading.Event()
        self.serial = 0
        self.errors = 0
        self.thread = threading.Thread(target=self._run, name="read-feeder", daemon=True)

    def start(self) -> ReadFeeder:
        self.thread.start()
        return self

    def _run(self) -> None:
        rnd = random.Random(88)
        pools = {
            name: [sgtin96(7654321, 1000 + i, k) for k in range(10)]
            for i, name in enumerate(self.readers)
        }
        recent: list[list[str]] = []  # the staging zone's new EPCs of the last 3 seconds
        while not self.stop_event.wait(1.0):
            fresh = []
            for _ in range(self.new_per_s):
                self.serial += 1
                fresh.append(sgtin96(7654321, 999, self.serial))
            recent = [*recent[-2:], fresh]  # each read for 3 s: past any zone's confirm_s
            for name, antennas in self.readers.items():
                reads = [[antennas[-1], epc, -50 - rnd.randint(0, 5)] for epc in pools[name]]
                if name == "staging":
                    reads += [[antennas[-1], epc, -48] for batch in recent for epc in batch]
                try:
                    # twice, 0.4 s apart: two reads each, enough for any zone's min_reads
                    http_json(
                        f"{self.control_url}/readers/{name}/reads", {"in_s": 0.0, "reads": reads}
                    )
                    http_json(
                        f"{self.control_url}/readers/{name}/reads", {"in_s": 0.4, "reads": reads}
                    )
                except OSError:
                    self.errors += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


class Site:
    """Everything but the broker, the gateway and the IMS. `config` is the merged gateway
    config; `start_gateway()` runs `fc-edge run` on it."""

    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        *,
        minutes: float,
        llrp_speed: float = 1.0,
        robot_every_s: float = 0.5,
        outbox: Mapping[str, Any] | None = None,
        new_per_s: int = 5,
    ) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.children = demo.Children(self.log_dir)
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gw_log: IO[bytes] | None = None
        self.modbus: dict[str, ModbusSim] = {}
        self.handheld: Handheld | None = None
        self.feeder: ReadFeeder | None = None
        base = workdir / "llrp-readers.toml"
        try:
            llrp = self.children.start(
                "llrp-sim",
                demo.cli_argv(
                    "simulate", "llrp", "--scenario", str(LLRP_SITE), "--gateway-config", str(base),
                    "--speed", str(llrp_speed), "--start-delay-s", "5", "--control-port", "0",
                    "--grace-s", str(minutes * 60 + 600), "--state-dir", str(self.state_dir),
                    "--mqtt-url", broker_url,
                ),
                capture_stdout=True,
            )  # fmt: skip
            self.modbus[CONVEYOR] = ModbusSim(self.log_dir, "conveyor")
            self.modbus[ROBOT] = ModbusSim(
                self.log_dir, "robot", "--move-every-s", str(robot_every_s)
            )
            self.handheld = Handheld(workdir, minutes)
            first = demo.first_json_line(llrp)
            control = first["control"]
            self.control_url = f"http://{control['host']}:{control['port']}"
            self.metrics_url = f"http://127.0.0.1:{free_port()}"
            raw = demo.merge_config(
                tomllib.loads(base.read_text()),
                metrics_port=int(self.metrics_url.rsplit(":", 1)[1]),
                equipment_ports={name: sim.port for name, sim in self.modbus.items()},
                handheld_port=self.handheld.port,
            )
            raw["outbox"] = dict(outbox or {"synchronous": "full"})
            for entry in raw["equipment"]:
                entry["interval_s"] = 0.1
            self.raw = raw
            self.config = workdir / "gw.toml"
            demo.write_config(raw, self.config)
            self.site_name = str(raw["gateway"]["site"])
            self.readers = {
                r["name"]: sorted(int(a) for a in r["antennas"])
                for r in raw["readers"]
                if r["driver"] == "llrp"
            }
            self.feeder = ReadFeeder(self.control_url, self.readers, new_per_s).start()
        except BaseException:
            self.stop()
            raise

    @property
    def devices(self) -> list[str]:
        return [*self.readers, HANDHELD, CONVEYOR, ROBOT]

    def start_gateway(self) -> subprocess.Popen[bytes]:
        if self.gw_log is None:
            self.gw_log = open(self.log_dir / "gateway.log", "ab")  # noqa: SIM115
        self.gateway = fc_edge(
            "run", "-c", str(self.config), "--log-format", "text",
            stdout=self.gw_log, stderr=self.gw_log, env={"PYTHONFAULTHANDLER": "1"},
        )  # fmt: skip
        return self.gateway

    def stop_gateway(self, timeout: float = 60) -> int:
        """SIGTERM, as systemd stops it; returns its exit code."""
        gw = self.gateway
        assert gw is not None
        if gw.poll() is None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(timeout)
            except subprocess.TimeoutExpired:
                gw.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack to the log
                gw.wait(10)
        return int(gw.returncode)

    def ready(self) -> dict[str, Any]:
        try:
            return dict(http_json(self.metrics_url + "/readyz", timeout=5))
        except (OSError, ValueError):
            return {}

    def device_states(self) -> dict[str, str]:
        devices = self.ready().get("devices") or {}
        return {name: str(d.get("state")) for name, d in devices.items()}

    def all_up(self) -> bool:
        states = self.device_states()
        return bool(states) and all(states.get(d) == "up" for d in self.devices)

    def gateway_log(self, tail: int | None = 5000) -> str:
        """The daemon's log (all its runs), by default its last `tail` characters."""
        path = self.log_dir / "gateway.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if tail is None else text[-tail:]

    def stop(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.kill()
            self.gateway.wait(10)
        if self.gw_log is not None:
            self.gw_log.close()
        if self.feeder is not None:
            self.feeder.stop()
        if self.handheld is not None:
            self.handheld.stop()
        for sim in self.modbus.values():
            sim.stop()
        self.children.stop_all()


@contextlib.contextmanager
def running_site(workdir: Path, broker_url: str, **kw: Any) -> Iterator[Site]:
    site = Site(workdir, broker_url, **kw)
    try:
        yield site
    finally:
        site.stop()


def wait_all_up(site: Site, timeout: float = 120) -> None:
    try:
        wait_for(site.all_up, timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(
            f"devices not all up: {site.device_states()}\n{site.gateway_log()}"
        ) from None


def wait_connected(broker_workdir: Path, client_id: str, timeout: float = 60) -> None:
    """Until mosquitto's log shows `client_id` connected (a persistent session exists)."""
    log = broker_workdir / "mosquitto.log"
    wait_for(
        lambda: log.exists() and f" as {client_id} " in log.read_text(errors="replace"),
        timeout,
        0.2,
    )
