"""Soak: a realistic site through the real daemon for N minutes, watching the daemon's memory,
file descriptors, threads, outbox and engine state for growth.

    python -m tools.soak [--minutes 125] [--readers 16] [--rate 100] [--warmup-min 15]
                         [--decoder-processes N]
    (make soak: 125 minutes, the RSS slope fitted over the 110 after warm-up, a broker
    outage an hour)

What runs: a mosquitto of its own; N simulated LLRP readers (the LLRP simulator's generator:
`--rate` reads/s each over a population of 200 tags per reader) plus a staging zone fed 5 new
EPCs a second (arrivals, and departures 30 s later: steady movements and engine churn); a
conveyor PLC and a robot cell (`fc-edge simulate modbus`, the robot moving every second); a TSL
handheld counting the store floor every 6 s; `fc-edge run` on one config merged with
gateway/demo/'s functions; `fc-edge listen` as the IMS (a persistent session). The broker
(persistence on) is stopped for `--outage-s` seconds every `--outage-every-min` minutes, the
first half-way through the first period, as a site's broker restarts or its uplink drops.
Every zone forgets a departed tag after 10 minutes (the zone profile's forget_after_s, set
by the site: a busy staging lane's choice), so the engine's state reaches its steady size
within the warm-up instead of growing for the default's hour.

Every `--sample-s` seconds it samples the daemon's RSS (/proc/PID/status VmRSS), threads
(Threads) and open file descriptors (/proc/PID/fd), the outbox depth, the engine's tracked
tags and the read/appended/acked counters (/metrics). With `--decoder-processes N` (the
daemon's `[gateway] decoder_processes`; 0, the default, decodes in the daemon) the LLRP
readers are decoded in N child processes, and each sample also counts the daemon's live
decoder processes and sums their RSS. The first `--warmup-min` minutes are
warm-up (imports done, caches and SQLite's page cache filled, every device connected, the
engine's churn at its steady size). The verdict, against bounds chosen for a process whose
working set should be flat once warm:

  * RSS slope: a least-squares line through every sample after warm-up rises by at most
    `--slope-bound-mb-h` (1 MB/hour). A leak of one byte per message or per read (20 and
    1,600 a second here) would be 0.07 and 5.8 MB/h; a leak per new tag (5/s) 18 KB/h per byte.
    The fit needs time to see that: over less than an hour after warm-up the slope is
    reported, and only `--rss-bound-mb` judges;
  * RSS growth: the median of the last 3 samples exceeds the median of the first 3 after
    warm-up by less than `--rss-bound-mb` (20 MB);
  * fds and threads: max - min after warm-up within `--fd-bound` (5: every device holds one
    socket; a leak per reconnect or per commit would show) and `--thread-bound` (2);
  * decoder processes (with `--decoder-processes N`): exactly N alive in every sample after
    warm-up (a restart in between would show as a missing one, or as the restarts counter),
    and their summed RSS grows by less than `--rss-bound-mb`, judged like the daemon's;
  * engine state: tracked tags never above what the site can hold (every reader's population,
    the feeder's pools, and new EPCs/s x their read time, departed_after_s and
    forget_after_s, with 20 % slack);
  * outbox: after each outage it drains (below 100 messages within 3 minutes of the broker's
    return), it is empty at the end, the daemon stopped cleanly (exit 0) and the IMS holds
    every seq 1..last-appended of every stream, none twice.

Exit 0 when every bound holds, 1 otherwise; the figures as one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python tools/soak.py` as well as `python -m tools.soak`
    sys.path.insert(0, str(ROOT))

from gateway import demo  # noqa: E402
from gateway.devkit.broker import Mosquitto  # noqa: E402
from gateway.engine.config import DEFAULT_PROFILES  # noqa: E402
from simulators.llrp.server import Generator, ReaderSpec, SimServer  # noqa: E402
from tools.harness import ListenProcess, fc_edge, free_port, wait_for  # noqa: E402
from tools.simsite import (  # noqa: E402
    CONVEYOR,
    ROBOT,
    Handheld,
    ModbusSim,
    ReadFeeder,
    Tail,
    exactly_once_problems,
    last_appended,
    metric,
    open_fds,
    outbox_depth,
    proc_status,
    rss_kb,
    scrape,
    wait_connected,
)

SITE = "SOAK"
CHURN_READER = "staging"
CHURN_PER_S = 5
CHURN_READ_S, CHURN_DEPARTED_S, CHURN_FORGET_S = 3.0, 30.0, 600.0  # ReadFeeder's, the profile's
DRAINED_BELOW, DRAIN_WITHIN_S = 100, 180.0


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    threads: int
    tracked: int
    depth: int
    reads: float
    appended: float
    acked: float
    decoders: int = 0  # the daemon's live decoder processes
    decoder_rss_mb: float = 0.0  # their RSS, summed
    decoder_restarts: float = 0.0


def decoder_pids(daemon_pid: int) -> list[int]:
    """The daemon's live decoder processes: its children running drivers.llrp_worker (a
    zombie not yet reaped is not one)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # it ended while we looked
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == daemon_pid and b"drivers.llrp_worker" in cmdline and state != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def decoders_rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += rss_kb(pid)
        except OSError:
            pass  # it ended since it was listed: the count shows that
    return total


@dataclass
class Soak:
    minutes: float
    readers: int = 16
    rate: float = 100.0
    sample_s: float = 10.0
    warmup_min: float = 2.0
    rss_bound_mb: float = 20.0
    slope_bound_mb_h: float = 1.0
    fd_bound: int = 5
    thread_bound: int = 2
    outage_every_min: float = 60.0
    outage_s: float = 60.0
    decoder_processes: int = 0
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fc-edge-soak-")))
    samples: list[Sample] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)  # (down at, back at) s
    log: Any = None

    def say(self, text: str) -> None:
        print(f"soak {time.strftime('%H:%M:%S')}  {text}", file=sys.stderr, flush=True)

    # --- the site -----------------------------------------------------------------------------

    def reader_specs(self) -> list[ReaderSpec]:
        specs = [
            ReaderSpec(
                f"r{i:02d}",
                generator=Generator(
                    tags=200,
                    rate=self.rate,
                    tags_per_report=10,
                    epc_prefix=f"303400000{i:03d}00",  # distinct tags per reader
                ),
            )
            for i in range(self.readers)
        ]
        return [*specs, ReaderSpec(CHURN_READER)]

    def gateway_config(
        self, sim: SimServer, broker_url: str, equipment: dict[str, int], handheld: int
    ) -> Path:
        locations: dict[str, dict[str, Any]] = {f"ZONE-{i:02d}": {} for i in range(self.readers)}
        locations["STAGING"] = {"biz_step": "storing"}
        for station in demo.ROBOT_STATIONS.values():
            locations[station] = {}
        readers = [
            {
                "name": name,
                "driver": "llrp",
                "host": "127.0.0.1",
                "port": reader.port,
                "antennas": {
                    "1": {
                        "location": "STAGING" if name == CHURN_READER else f"ZONE-{name[1:]}",
                        "read_point": f"{name}-1",
                    }
                },
            }
            for name, reader in sim.readers.items()
        ]
        raw = {
            "gateway": {
                "site": SITE,
                "id": "gw-soak",
                "state_dir": str(self.workdir / "state"),
                "decoder_processes": self.decoder_processes,
            },
            "mqtt": {"url": broker_url, "client_id": "fc-edge-gw-soak"},
            "locations": locations,
            # Every zone forgets a departed tag after 10 minutes (the default zone profile
            # with a shorter forget_after_s). A departed tag has no location left, so the
            # engine forgets it after the longest forget_after_s of any location: a staging
            # profile of its own would not shorten it.
            "profiles": {"zone": zone_profile(forget_after_s=CHURN_FORGET_S)},
            "readers": readers,
        }
        self.metrics_url = f"http://127.0.0.1:{free_port()}"
        raw = demo.merge_config(
            raw,
            metrics_port=int(self.metrics_url.rsplit(":", 1)[1]),
            equipment_ports=equipment,
            handheld_port=handheld,
        )
        raw["outbox"] = {"synchronous": "full"}  # production's setting
        path = self.workdir / "gw.toml"
        demo.write_config(raw, path)
        tomllib.loads(path.read_text())  # written as TOML it parses back
        return path

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        broker = Mosquitto(self.workdir / "broker", persistence=True, autosave_s=5)
        broker.start()
        modbus: dict[str, ModbusSim] = {}
        handheld = feeder = listen = gw = None
        logs = self.workdir / "logs"
        logs.mkdir()
        try:
            modbus[CONVEYOR] = ModbusSim(logs, "conveyor")
            modbus[ROBOT] = ModbusSim(logs, "robot", "--move-every-s", "1.0")
            handheld = Handheld(self.workdir, self.minutes + 5)
            with SimServer(self.reader_specs(), control_port=0).running() as sim:
                conf = self.gateway_config(
                    sim, broker.url, {n: s.port for n, s in modbus.items()}, handheld.port
                )
                assert sim.control_address is not None
                control = f"http://{sim.control_address[0]}:{sim.control_address[1]}"
                feeder = ReadFeeder(control, {CHURN_READER: [1]}, new_per_s=CHURN_PER_S).start()
                listen = ListenProcess(
                    self.workdir, broker.url, SITE,
                    "--streams", "movements,counts,equipment,dropped", "--client-id", "ims-soak",
                )  # fmt: skip
                wait_connected(broker.workdir, "ims-soak")
                self.log = open(logs / "gateway.log", "ab")  # noqa: SIM115
                gw = fc_edge("run", "-c", str(conf), stdout=self.log, stderr=self.log)
                self.say(
                    f"site up: {self.readers} readers x {self.rate:g} reads/s, "
                    f"work dir {self.workdir}"
                )
                self.sample_loop(gw.pid, broker)
                feeder.stop()
                wait_for(lambda: outbox_depth(self.workdir / "state") == 0, 300, interval=1)
                exit_code = self.stop(gw)
                last = last_appended(self.workdir / "state")
                tail = Tail(listen.out_path)
                wait_for(lambda: len(tail.poll()) >= sum(last.values()), 300, interval=1)
            return self.verdict(exit_code, last, tail.poll())
        finally:
            if gw is not None and gw.poll() is None:
                gw.kill()
            if feeder is not None:
                feeder.stop()
            if listen is not None:
                listen.stop()
            if handheld is not None:
                handheld.stop()
            for s in modbus.values():
                s.stop()
            broker.stop()
            if self.log is not None:
                self.log.close()

    def sample_loop(self, pid: int, broker: Mosquitto) -> None:
        started = time.monotonic()
        end = started + self.minutes * 60
        next_at = started
        while time.monotonic() < end:
            next_at += self.sample_s
            time.sleep(max(0.0, next_at - time.monotonic()))
            self.outage_step(broker, time.monotonic() - started)
            s = scrape(self.metrics_url)
            decoders = decoder_pids(pid)
            sample = Sample(
                t_s=round(time.monotonic() - started, 1),
                rss_mb=round(rss_kb(pid) / 1024, 1),
                fds=open_fds(pid),
                threads=proc_status(pid, "Threads"),
                tracked=int(metric(s, "fc_edge_engine_tracked_tags")),
                depth=int(metric(s, "fc_edge_outbox_messages")),
                reads=metric(s, "fc_edge_reads_total"),
                appended=metric(s, "fc_edge_outbox_appended_messages_total"),
                acked=metric(s, "fc_edge_publisher_acked_messages_total"),
                decoders=len(decoders),
                decoder_rss_mb=round(decoders_rss_kb(decoders) / 1024, 1),
                decoder_restarts=metric(s, "fc_edge_decoder_restarts_total"),
            )
            self.samples.append(sample)
            if len(self.samples) % 6 == 0:
                self.say(
                    f"t={sample.t_s:.0f}s rss {sample.rss_mb} MB fds {sample.fds} "
                    f"threads {sample.threads} tags {sample.tracked} outbox {sample.depth} "
                    f"reads {sample.reads:.0f} acked {sample.acked:.0f}"
                    + self.decoders_said(sample)
                )
        if not broker.running:  # the run ended inside an outage
            broker.start()
            self.outages[-1] = (self.outages[-1][0], round(time.monotonic() - started, 1))

    def decoders_said(self, sample: Sample) -> str:
        if not self.decoder_processes:
            return ""
        return (
            f" decoders {sample.decoders} rss {sample.decoder_rss_mb} MB "
            f"restarts {sample.decoder_restarts:.0f}"
        )

    def outage_step(self, broker: Mosquitto, t_s: float) -> None:
        """Stop the broker when the next outage is due; start it again when it has lasted."""
        if self.outage_every_min <= 0:
            return
        period = self.outage_every_min * 60
        if broker.running:
            due = period / 2 + len(self.outages) * period
            fits = due + self.outage_s < self.minutes * 60  # one the run would cut short: none
            if t_s >= due and fits:
                self.say(f"broker outage: stopping it for {self.outage_s:g} s")
                broker.stop()
                self.outages.append((round(t_s, 1), -1.0))
        elif t_s >= self.outages[-1][0] + self.outage_s:
            broker.start()
            self.outages[-1] = (self.outages[-1][0], round(t_s, 1))
            self.say("broker back")

    def stop(self, gw: Any) -> int:
        import signal
        import subprocess

        gw.send_signal(signal.SIGTERM)
        try:
            return int(gw.wait(60))
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait(10)
            return -9

    def verdict(
        self, exit_code: int, last: dict[str, int], lines: list[dict[str, Any]]
    ) -> dict[str, Any]:
        warm = [s for s in self.samples if s.t_s >= self.warmup_min * 60]
        if len(warm) < 6:
            raise SystemExit("soak: too short for a verdict (need 6 samples after warm-up)")
        rss_start = statistics.median(s.rss_mb for s in warm[:3])
        rss_end = statistics.median(s.rss_mb for s in warm[-3:])
        fds = [s.fds for s in warm]
        thread_counts = [s.threads for s in warm]
        elapsed = warm[-1].t_s - warm[0].t_s
        slope = rss_slope_mb_per_h(warm)
        problems = exactly_once_problems(lines, last)
        undrained = [o for o in self.outages if not self.drained_after(o)]
        checks = {
            "rss_growth_mb": round(rss_end - rss_start, 1),
            "rss_ok": rss_end - rss_start < self.rss_bound_mb,
            "rss_slope_mb_per_h": round(slope, 3),
            "slope_judged": elapsed >= 3600,
            "slope_ok": elapsed < 3600 or slope <= self.slope_bound_mb_h,
            "fd_spread": max(fds) - min(fds),
            "fds_ok": max(fds) - min(fds) <= self.fd_bound,
            "thread_spread": max(thread_counts) - min(thread_counts),
            "threads_ok": max(thread_counts) - min(thread_counts) <= self.thread_bound,
            "max_tracked_tags": max(s.tracked for s in self.samples),
            "tracked_bound": self.tracked_bound(),
            "engine_ok": max(s.tracked for s in self.samples) <= self.tracked_bound(),
            "outages": self.outages,
            "outbox_drained_after_outages": not undrained,
            "clean_exit": exit_code == 0,
            "ims_complete": not problems,
            **self.decoder_checks(warm),
        }
        first, final = self.samples[0], self.samples[-1]
        return {
            "soak": "result",
            "minutes": self.minutes,
            "readers": self.readers,
            "reads_per_s_offered": self.readers * self.rate,
            "reads_per_s": round(final.reads / final.t_s),
            "messages_per_s": round(final.appended / final.t_s, 1),
            "messages": sum(last.values()),
            "rss_mb": {"first": first.rss_mb, "after_warmup": rss_start, "end": rss_end,
                       "max": max(s.rss_mb for s in self.samples)},
            "fds": {"min": min(fds), "max": max(fds)},
            "threads": {"min": min(thread_counts), "max": max(thread_counts)},
            "max_outbox_depth": max(s.depth for s in self.samples),
            "bounds": {"rss_growth_mb": self.rss_bound_mb, "fd_spread": self.fd_bound,
                       "rss_slope_mb_per_h": self.slope_bound_mb_h,
                       "thread_spread": self.thread_bound},
            "window_s": elapsed,
            **checks,
            "problems": problems,
            "ok": all(v for k, v in checks.items() if isinstance(v, bool) and k != "slope_judged"),
            "samples": [s.__dict__ for s in self.samples],
            "workdir": str(self.workdir),
        }  # fmt: skip

    def decoder_checks(self, warm: list[Sample]) -> dict[str, Any]:
        """The decoder processes, bounded like the daemon: all N alive in every sample after
        warm-up, none restarted, their summed RSS grown by less than rss_bound_mb."""
        if not self.decoder_processes:
            return {}
        growth = statistics.median(s.decoder_rss_mb for s in warm[-3:]) - statistics.median(
            s.decoder_rss_mb for s in warm[:3]
        )
        counts = [s.decoders for s in warm]
        return {
            "decoder_processes": {"min": min(counts), "max": max(counts)},
            "decoders_ok": set(counts) == {self.decoder_processes},
            "decoder_restarts": self.samples[-1].decoder_restarts,
            "decoder_restarts_ok": self.samples[-1].decoder_restarts == 0,
            "decoder_rss_mb": {"after_warmup": warm[0].decoder_rss_mb,
                               "end": warm[-1].decoder_rss_mb,
                               "max": max(s.decoder_rss_mb for s in self.samples)},
            "decoder_rss_growth_mb": round(growth, 1),
            "decoder_rss_ok": growth < self.rss_bound_mb,
        }  # fmt: skip

    def tracked_bound(self) -> int:
        """The most tags the site can put in the engine at once: every generator reader's
        population, the feeder's pools, and the staging zone's churn (new EPCs a second times
        how long each stays: read, then absent until departed, then until forgotten), + 20 %."""
        populations = self.readers * 200 + 10
        churn = CHURN_PER_S * (CHURN_READ_S + CHURN_DEPARTED_S + CHURN_FORGET_S)
        return int(1.2 * (populations + churn))

    def drained_after(self, outage: tuple[float, float]) -> bool:
        """The outbox fell below DRAINED_BELOW within DRAIN_WITHIN_S of the broker's return."""
        back = outage[1]
        return any(
            s.depth < DRAINED_BELOW for s in self.samples if back <= s.t_s <= back + DRAIN_WITHIN_S
        ) or (self.samples[-1].t_s < back + DRAIN_WITHIN_S)  # judged at the end instead


def zone_profile(**changes: Any) -> dict[str, Any]:
    """The default zone profile as a [profiles.zone] table, with `changes`."""
    zone = dataclasses.replace(DEFAULT_PROFILES["zone"], **changes)
    return {k: v for k, v in dataclasses.asdict(zone).items() if v is not None}


def rss_slope_mb_per_h(samples: list[Sample]) -> float:
    """The least-squares slope of RSS over time, in MB per hour."""
    fit = statistics.linear_regression([s.t_s for s in samples], [s.rss_mb for s in samples])
    return fit.slope * 3600


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=125.0)
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--rate", type=float, default=100.0, help="reads/s per reader")
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--warmup-min", type=float, default=15.0)
    p.add_argument("--rss-bound-mb", type=float, default=20.0)
    p.add_argument("--slope-bound-mb-h", type=float, default=1.0)
    p.add_argument("--fd-bound", type=int, default=5)
    p.add_argument("--thread-bound", type=int, default=2)
    p.add_argument("--outage-every-min", type=float, default=60.0, help="0: no outages")
    p.add_argument("--outage-s", type=float, default=60.0)
    p.add_argument(
        "--decoder-processes",
        type=int,
        default=0,
        help="the daemon's [gateway] decoder_processes (0: LLRP decoded in the daemon)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soak = Soak(
        minutes=args.minutes, readers=args.readers, rate=args.rate, sample_s=args.sample_s,
        warmup_min=args.warmup_min, rss_bound_mb=args.rss_bound_mb,
        slope_bound_mb_h=args.slope_bound_mb_h, fd_bound=args.fd_bound,
        thread_bound=args.thread_bound, outage_every_min=args.outage_every_min,
        outage_s=args.outage_s, decoder_processes=args.decoder_processes,
    )  # fmt: skip
    result = soak.run()
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
