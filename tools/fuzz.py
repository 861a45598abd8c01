"""`make fuzz`: the slow fuzz tests of tests/fuzz scaled up to a requested number of examples,
spread over parallel pytest processes, with one JSON report at the end.

    python tools/fuzz.py --examples 1000000 [--jobs 2] [--seed N] [--example-limit-s 5]
                         [--report fuzz-report.json]

Each slow fuzz test runs its base count times FC_FUZZ_SCALE (tests/support/scale.py), so the
request is about --examples. What the report counts is what ran: every test process writes
the outcome counts of tools/fuzz_oracle.py (accepted, rejected_counted, rejected_by_parser,
failure_*) per fuzz target, and `executed` is their sum. A failure prints hypothesis'
falsifying example (and, for the seed-driven LLRP tests, the seed that reproduces it); --seed
reruns the same examples. Record the result in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python tools/fuzz.py` as well as `python -m tools.fuzz`
    sys.path.insert(0, str(ROOT))

from tools.fuzz_oracle import (  # noqa: E402
    DEFAULT_LIMIT_S,
    LIMIT_ENV,
    REPORT_DIR_ENV,
    Tally,
)

# Examples in one `make test-slow` run of tests/fuzz at scale 1 (the sum of every slow test's
# base count): LLRP 5 x 14k (seeded, cheap), Modbus 6k + 1.5k, config 2k + 1k + topic names
# 12k, scenarios 1.5k, TSL lines 6k. main() divides --examples by this to pick FC_FUZZ_SCALE;
# keep it in step with the base counts in tests/fuzz (scaled(...)).
SLOW_TOTAL = 5 * 14_000 + 6_000 + 1_500 + 2_000 + 1_000 + 12_000 + 1_500 + 6_000

# Test files, largest first, dealt round-robin to the jobs.
FILES = [
    "tests/fuzz/test_fuzz_llrp.py",
    "tests/fuzz/test_fuzz_config.py",
    "tests/fuzz/test_fuzz_modbus.py",
    "tests/fuzz/test_fuzz_tsl.py",
    "tests/fuzz/test_fuzz_scenario.py",
]

Job = tuple[subprocess.Popen[bytes], Path, IO[bytes]]  # a pytest process, its log, the log file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1_000_000, help="examples to request (about)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    p.add_argument(
        "--example-limit-s",
        type=float,
        default=DEFAULT_LIMIT_S,
        help="wall-clock limit of one example; over it is a failure (a hang)",
    )
    p.add_argument("--report", type=Path, default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.examples < 1 or args.jobs < 1 or args.example_limit_s <= 0:
        p.error("--examples, --jobs and --example-limit-s must be positive")
    if args.seed is None:
        args.seed = random.randrange(2**32)
    return args


def start_jobs(
    args: argparse.Namespace, logdir: Path
) -> list[tuple[subprocess.Popen[bytes], Path, IO[bytes]]]:
    env = {
        **os.environ,
        "FC_FUZZ_SCALE": f"{args.examples / SLOW_TOTAL:.6f}",
        "PYTHONPATH": str(ROOT),
        REPORT_DIR_ENV: str(logdir),
        LIMIT_ENV: str(args.example_limit_s),
    }
    jobs = [FILES[i :: args.jobs] for i in range(min(args.jobs, len(FILES)))]
    procs: list[Job] = []
    for i, files in enumerate(jobs):
        log = logdir / f"job{i}.log"
        cmd = [sys.executable, "-m", "pytest", "-m", "slow", "-q", "--timeout=0"]
        cmd += [f"--hypothesis-seed={args.seed}", *files]
        out = log.open("wb")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out), log, out))  # noqa: S603 (our own interpreter and test files)
    return procs


def outcomes(logdir: Path) -> Tally:
    """The counts every test process wrote (tests/fuzz/conftest.py, at the end of its session);
    a process that died before writing contributes nothing, and the run fails on its exit code."""
    tally = Tally()
    for path in sorted(logdir.glob("outcomes-*.json")):
        tally.merge(json.loads(path.read_text()))
    return tally


def report(
    args: argparse.Namespace, tally: Tally, codes: list[int], elapsed: float, logs: list[Path]
) -> dict[str, Any]:
    executed = tally.executed()
    return {
        "examples_requested": args.examples,
        "executed": executed,
        "outcomes": tally.by_kind(),
        "targets": tally.as_json()["counts"],
        "reasons": tally.as_json()["reasons"],
        "failures": tally.failures(),
        "seed": args.seed,
        "example_limit_s": args.example_limit_s,
        "scale": round(args.examples / SLOW_TOTAL, 3),
        "jobs": len(codes),
        "seconds": round(elapsed, 1),
        "examples_per_s": round(executed / elapsed) if elapsed else 0,
        "passed": all(c == 0 for c in codes) and tally.failures() == 0 and executed > 0,
        "logs": [str(log) for log in logs],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logdir = Path(tempfile.mkdtemp(prefix="fc-edge-fuzz-"))
    started = time.monotonic()
    procs = start_jobs(args, logdir)
    codes = []
    for proc, log, out in procs:
        codes.append(proc.wait())
        out.close()
        sys.stderr.write(log.read_text(errors="replace")[-3000:])
    elapsed = time.monotonic() - started
    summary = report(args, outcomes(logdir), codes, elapsed, [log for _, log, _ in procs])
    text = json.dumps(summary)
    print(text)
    if args.report is not None:
        args.report.write_text(text + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
