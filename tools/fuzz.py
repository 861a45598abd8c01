"""`make fuzz`: the slow fuzz tests of tests/fuzz scaled up to a total number of examples,
spread over parallel pytest processes, with one JSON summary at the end.

    python tools/fuzz.py --examples 1000000 [--jobs 2]

Each slow fuzz test runs its base count times FC_FUZZ_SCALE (tests/support/scale.py), so the
total is about --examples. A failure prints hypothesis' falsifying example (and, for the
seed-driven LLRP tests, the seed that reproduces it). Record the result in
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=1_000_000, help="total examples (about)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    if args.examples < 1 or args.jobs < 1:
        p.error("--examples and --jobs must be positive")
    scale = args.examples / SLOW_TOTAL
    env = {**os.environ, "FC_FUZZ_SCALE": f"{scale:.6f}", "PYTHONPATH": str(ROOT)}
    jobs = [FILES[i :: args.jobs] for i in range(min(args.jobs, len(FILES)))]
    logdir = Path(tempfile.mkdtemp(prefix="fc-edge-fuzz-"))
    started = time.monotonic()
    procs = []
    for i, files in enumerate(jobs):
        log = logdir / f"job{i}.log"
        cmd = [sys.executable, "-m", "pytest", "-m", "slow", "-q", "--timeout=0", *files]
        out = log.open("wb")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out), log, out))  # noqa: S603 (our own interpreter and test files)
    codes = []
    for proc, log, out in procs:
        codes.append(proc.wait())
        out.close()
        sys.stderr.write(log.read_text(errors="replace")[-3000:])
    elapsed = time.monotonic() - started
    summary = {
        "examples": round(SLOW_TOTAL * scale),
        "scale": round(scale, 3),
        "jobs": len(jobs),
        "seconds": round(elapsed, 1),
        "examples_per_s": round(SLOW_TOTAL * scale / elapsed),
        "passed": all(c == 0 for c in codes),
        "logs": [str(log) for _, log, _ in procs],
    }
    print(json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
