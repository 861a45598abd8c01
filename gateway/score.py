"""Score published movements against a scenario's truth: precision, recall, F1, latency.

    fc-edge score --truth truth.jsonl --got listen.jsonl [--time-tolerance-s 2] [--json]

A truth line {"epc", "type", "from", "to", "time"} matches a published movement with the same
(epc, type, from, to) whose `time` lies within the tolerance, one to one. Latency is measured
from the truth time to the movement's `received_at` (when `fc-edge listen` stamped it), else
to its own `time`. Lines of `got` that are not movements (status, counts, ...) are ignored;
lines that are not JSON at all are counted as rejected and reported, never fatal.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MOVEMENT_TYPES = ("arrived", "moved", "departed")
EX_NOINPUT = 66  # sysexits.h


def parse_time(value: Any) -> float:
    """ISO-8601 (with Z or an offset) -> seconds since the epoch. ValueError when it is not."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 time, got {value!r}")
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError(f"time without a zone: {value!r}")
    return dt.timestamp()


@dataclass(slots=True)
class _Line:
    key: tuple[Any, ...]  # (epc, type, from, to)
    time_s: float
    latency_ref_s: float  # received_at, else time
    raw: dict[str, Any]


def _key(obj: dict[str, Any]) -> tuple[Any, ...]:
    epc = obj.get("epc")
    epc = epc.upper() if isinstance(epc, str) else epc
    return (epc, obj.get("type"), obj.get("from"), obj.get("to"))


def _truth_line(obj: dict[str, Any]) -> _Line:
    if obj.get("type") not in MOVEMENT_TYPES:
        raise ValueError(f"type must be one of {', '.join(MOVEMENT_TYPES)}")
    if not isinstance(obj.get("epc"), str):
        raise ValueError("epc missing")
    t = parse_time(obj.get("time"))
    return _Line(_key(obj), t, t, obj)


def is_movement(obj: Any) -> bool:
    """A published movement: a type of movement and an EPC (non-RFID objects are not scored)."""
    if not isinstance(obj, dict) or obj.get("type") not in MOVEMENT_TYPES:
        return False
    schema = obj.get("schema")
    if isinstance(schema, str) and not schema.startswith("fc-edge/movement/"):
        return False
    return isinstance(obj.get("epc"), str)


def _got_line(obj: dict[str, Any]) -> _Line:
    t = parse_time(obj.get("time"))
    received = obj.get("received_at")
    return _Line(_key(obj), t, parse_time(received) if received is not None else t, obj)


def _summary_of_got(obj: dict[str, Any]) -> dict[str, Any]:
    keep = ("id", "seq", "epc", "type", "from", "to", "via", "time", "received_at")
    return {k: obj[k] for k in keep if k in obj}


def _match(truth: list[_Line], got: list[_Line], tol: float) -> list[tuple[_Line, _Line]]:
    """Maximum one-to-one matching per key within the tolerance.

    Per key both lists are sorted by time; matching each truth line, in order, to the earliest
    unused movement not too early for it is optimal for intervals on a line (a movement too
    early for this truth line is too early for every later one too)."""
    truth_by: dict[tuple[Any, ...], list[_Line]] = defaultdict(list)
    got_by: dict[tuple[Any, ...], list[_Line]] = defaultdict(list)
    for line in truth:
        truth_by[line.key].append(line)
    for line in got:
        got_by[line.key].append(line)
    pairs = []
    for key, t_lines in truth_by.items():
        g_lines = sorted(got_by.get(key, []), key=lambda g: g.time_s)
        j = 0
        for t_line in sorted(t_lines, key=lambda t: t.time_s):
            while j < len(g_lines) and g_lines[j].time_s < t_line.time_s - tol:
                j += 1
            if j < len(g_lines) and g_lines[j].time_s <= t_line.time_s + tol:
                pairs.append((t_line, g_lines[j]))
                j += 1
    return pairs


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100): an actual observed value, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _lines(
    truth: list[dict[str, Any]], got: list[dict[str, Any]]
) -> tuple[list[_Line], list[_Line], dict[str, int]]:
    """The readable truth lines and published movements, and how many of each were not."""
    rejected = {"truth": 0, "got": 0}
    truth_lines: list[_Line] = []
    for obj in truth:
        try:
            truth_lines.append(_truth_line(obj))
        except (ValueError, AttributeError, TypeError):
            rejected["truth"] += 1
    got_lines: list[_Line] = []
    for obj in got:
        if not is_movement(obj):
            continue
        try:
            got_lines.append(_got_line(obj))
        except (ValueError, TypeError):
            rejected["got"] += 1
    return truth_lines, got_lines, rejected


def matched_pairs(
    truth: list[dict[str, Any]], got: list[dict[str, Any]], time_tolerance_s: float = 2.0
) -> list[tuple[dict[str, Any], dict[str, Any], float]]:
    """(truth line, published movement, latency in s) of every match `score` counts."""
    truth_lines, got_lines, _ = _lines(truth, got)
    return [
        (t.raw, g.raw, g.latency_ref_s - t.time_s)
        for t, g in _match(truth_lines, got_lines, time_tolerance_s)
    ]


def score(
    truth: list[dict[str, Any]], got: list[dict[str, Any]], time_tolerance_s: float = 2.0
) -> dict[str, Any]:
    """Match truth lines to published movements; see the module doc. `got` may hold other
    messages (ignored). Lines that cannot be read (no time, bad type) are counted in
    `rejected` and otherwise left out. An empty side scores 1.0 (nothing was wrong there)."""
    truth_lines, got_lines, rejected = _lines(truth, got)
    pairs = _match(truth_lines, got_lines, time_tolerance_s)
    matched_truth = {id(t) for t, _ in pairs}
    matched_got = {id(g) for _, g in pairs}
    n_match = len(pairs)
    precision = n_match / len(got_lines) if got_lines else 1.0
    recall = n_match / len(truth_lines) if truth_lines else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    latencies = [g.latency_ref_s - t.time_s for t, g in pairs]
    by_type = {
        kind: {
            "truth": sum(1 for t in truth_lines if t.key[1] == kind),
            "got": sum(1 for g in got_lines if g.key[1] == kind),
            "matched": sum(1 for t, _ in pairs if t.key[1] == kind),
        }
        for kind in MOVEMENT_TYPES
    }
    return {
        "truth": len(truth_lines),
        "got": len(got_lines),
        "matched": n_match,
        "precision": round(precision, 6),
        "recall": round(recall, 6),
        "f1": round(f1, 6),
        "time_tolerance_s": time_tolerance_s,
        "latency_s": {
            "p50": _round(percentile(latencies, 50)),
            "p99": _round(percentile(latencies, 99)),
            "max": _round(max(latencies) if latencies else None),
        },
        "by_type": by_type,
        "rejected": rejected,
        "unmatched_truth": [t.raw for t in truth_lines if id(t) not in matched_truth],
        "unmatched_got": [_summary_of_got(g.raw) for g in got_lines if id(g) not in matched_got],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- files and command line --------------------------------------------------------------------


def read_jsonl(path: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Objects of a JSON Lines file, and a message for each line that is not a JSON object."""
    objects: list[dict[str, Any]] = []
    problems: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path}:{number}: not a JSON object")
                continue
            objects.append(obj)
    return objects, problems


def format_table(result: dict[str, Any], limit: int = 10) -> str:
    lat = result["latency_s"]

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f} s"

    lines = [
        f"truth {result['truth']}  got {result['got']}  matched {result['matched']}"
        f"  (time tolerance {result['time_tolerance_s']:g} s)",
        f"precision {result['precision']:.3f}  recall {result['recall']:.3f}"
        f"  F1 {result['f1']:.3f}",
        f"latency p50 {secs(lat['p50'])}  p99 {secs(lat['p99'])}  max {secs(lat['max'])}",
        "",
        f"{'type':<10}{'truth':>8}{'got':>8}{'matched':>9}",
    ]
    for kind, row in result["by_type"].items():
        lines.append(f"{kind:<10}{row['truth']:>8}{row['got']:>8}{row['matched']:>9}")
    rejected = result["rejected"]
    if rejected["truth"] or rejected["got"]:
        lines.append(f"rejected lines: truth {rejected['truth']}  got {rejected['got']}")
    for side in ("unmatched_truth", "unmatched_got"):
        items = result[side]
        if not items:
            continue
        more = f", first {limit}" if len(items) > limit else ""
        lines.append(f"\n{side.replace('_', ' ')} ({len(items)}{more}):")
        for obj in items[:limit]:
            lines.append(
                f"  {obj.get('type')} {obj.get('epc')} {obj.get('from')} -> {obj.get('to')}"
                f" at {obj.get('time')}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fc-edge score",
        description="Score published movements (fc-edge listen output) against a truth file.",
    )
    parser.add_argument("--truth", required=True, help="truth, JSON Lines")
    parser.add_argument("--got", required=True, help="fc-edge listen output, JSON Lines")
    parser.add_argument("--time-tolerance-s", type=float, default=2.0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.time_tolerance_s < 0:
        parser.error("--time-tolerance-s must not be negative")
    files: dict[str, list[dict[str, Any]]] = {}
    unreadable: dict[str, int] = {}
    for side in ("truth", "got"):
        path = getattr(args, side)
        try:
            files[side], problems = read_jsonl(path)
        except OSError as exc:
            print(f"fc-edge score: cannot read {path}: {exc.strerror}", file=sys.stderr)
            return EX_NOINPUT
        unreadable[side] = len(problems)
        _report(problems)
    result = score(files["truth"], files["got"], args.time_tolerance_s)
    for side, count in unreadable.items():  # lines that were not even JSON count as rejected
        result["rejected"][side] += count
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0


def _report(problems: Iterable[str]) -> None:
    problems = list(problems)
    for line in problems[:5]:
        print(f"fc-edge score: skipped {line}", file=sys.stderr)
    if len(problems) > 5:
        print(f"fc-edge score: skipped {len(problems) - 5} more bad lines", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
