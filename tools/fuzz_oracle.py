"""The fuzz oracle: what counts as a pass, a documented rejection or a failure, for every fuzz
test in tests/fuzz and for `tools/fuzz.py`, which adds up the counts the test processes write.

Each example ends in exactly one outcome kind:

* `accepted`: the input went through (decoded, converted) and nothing was rejected.
* `rejected_counted`: the input was rejected the way the code documents for bad input that
  raises nothing: counted in the driver's `errors` counters (LLRP `malformed`/`bad_tag`, a
  desynchronised stream; the TSL parser's `on_error`).
* `rejected_by_parser`: the parser raised its own documented error type: `DecodeError` and
  `MapError` (drivers/modbus_map.py), `ConfigError` (gateway/config.py), `ScenarioError`
  (simulators/scenario.py), `ValueError` from `check_topic_name` (gateway/confschema.py), and
  for LLRP the two exceptions sllurp's own code raises that drivers/llrp.py documents as a
  session end: `ReaderConfigurationError` (sllurp's main loop disconnects) and an exception
  from sllurp's state machine on a frame that decoded (`thread_died`, the module docstring).
* failures, each of which fails the example: `failure_our_code` (an exception our code raised:
  a driver callback, the conversion, the framing, a parser of ours; also one that sllurp caught
  and only logged, as it does for every callback), `failure_escaped` (a sllurp
  decoder exception on a frame that did not decode escaped the driver's framing, which must
  count it instead), `failure_timeout` (the example ran past the per-example time limit: a
  hang or a pathologically slow input), `failure_check` (an invariant of the test failed).

The per-example limit is a real-time timer (SIGALRM), not Hypothesis' `deadline`: a deadline
is only checked after the example returns, so it cannot stop a hang.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from types import FrameType, TracebackType

ROOT = Path(__file__).resolve().parent.parent
OUR_PACKAGES = tuple(str(ROOT / name) + os.sep for name in ("drivers", "gateway", "simulators"))
# Test and tool code is ours too: a harness callback that raises is a bug, not a rejection.
OUR_CODE = (*OUR_PACKAGES, str(ROOT / "tests") + os.sep, str(ROOT / "tools") + os.sep)
SLLURP = os.sep + "sllurp" + os.sep

# Per-example wall-clock limit in seconds: ~100x the slowest example measured under load
# (config documents, ~40 ms), so only a hang or a pathological input reaches it.
DEFAULT_LIMIT_S = 5.0
LIMIT_ENV = "FC_FUZZ_EXAMPLE_LIMIT_S"
# Where each test process writes its counts (set by tools/fuzz.py).
REPORT_DIR_ENV = "FC_FUZZ_REPORT_DIR"


class Kind(StrEnum):
    ACCEPTED = "accepted"
    REJECTED_COUNTED = "rejected_counted"
    REJECTED_BY_PARSER = "rejected_by_parser"
    FAILURE_OUR_CODE = "failure_our_code"
    FAILURE_ESCAPED = "failure_escaped"
    FAILURE_TIMEOUT = "failure_timeout"
    FAILURE_CHECK = "failure_check"


FAILURES = frozenset(k for k in Kind if k.startswith("failure_"))


class FuzzFailure(AssertionError):
    """The oracle's verdict that an example failed (an AssertionError, so pytest and Hypothesis
    report it like any failed check, with the falsifying example)."""

    def __init__(self, kind: Kind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class ExampleTimeout(BaseException):
    """Raised by the timer inside the running example. A BaseException so that the code under
    test cannot swallow it in an `except Exception` (the driver's framing has one)."""


# --- where an exception came from ----------------------------------------------------------------


def _files(tb: TracebackType | None) -> list[str]:
    return [frame.filename for frame in traceback.extract_tb(tb)]


def is_ours(filename: str) -> bool:
    return filename.startswith(OUR_CODE)


def raised_by_sllurp(tb: TracebackType | None) -> bool:
    """True when sllurp's code raised the exception: of the frames that are ours or sllurp's
    (the standard library's do not count: `int()` or `re` fail on behalf of their caller), the
    innermost is sllurp's. A callback of ours that raises is ours, whatever sllurp frames are
    above it; an override of ours that only passes through to sllurp's method (`super()`) is
    not what failed."""
    for name in reversed(_files(tb)):
        if SLLURP in name:
            return True
        if is_ours(name):
            return False
    return False  # no frame of either: count it against us


def classify_llrp(exc: BaseException, decoded: bool) -> Kind:
    """An exception out of `_Client.raw_data_received` for one recv() chunk; `decoded` is
    whether a frame of that chunk decoded before it was raised. ReaderConfigurationError is the
    documented abort (sllurp's main loop disconnects; drivers/llrp.py re-raises it) whoever
    raised it; any other exception must be sllurp's own, on a frame that decoded (thread_died)."""
    from sllurp.llrp_errors import ReaderConfigurationError  # only the LLRP fuzz needs sllurp

    if isinstance(exc, ReaderConfigurationError):
        return Kind.REJECTED_BY_PARSER
    if not raised_by_sllurp(exc.__traceback__):
        return Kind.FAILURE_OUR_CODE
    return Kind.REJECTED_BY_PARSER if decoded else Kind.FAILURE_ESCAPED


class SwallowedExceptions(logging.Handler):
    """sllurp wraps every user callback in a bare `except:` and only logs the exception
    ("Error during ... callback. Continuing anyway..."): attached to sllurp's logger, this keeps
    those exceptions so that one from our callback still fails the example. sllurp's own
    decoder failures are logged the same way; `ours()` leaves them out."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.caught: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.caught.append(record.exc_info[1])

    def ours(self) -> list[BaseException]:
        return [exc for exc in self.caught if not raised_by_sllurp(exc.__traceback__)]


@contextmanager
def sllurp_exceptions() -> Iterator[SwallowedExceptions]:
    """Collect what sllurp logs with a traceback, without formatting or printing any of it
    (the fuzz feeds garbage on purpose: a traceback per frame would be slow and unreadable)."""
    logger = logging.getLogger("sllurp")
    handler = SwallowedExceptions()
    saved = logger.level, logger.propagate
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# --- the per-example time limit ----------------------------------------------------------------


def example_limit_s() -> float:
    try:
        return max(0.01, float(os.environ.get(LIMIT_ENV, DEFAULT_LIMIT_S)))
    except ValueError:
        return DEFAULT_LIMIT_S


# Set when the timer fires: the ExampleTimeout it raises can be swallowed (sllurp's bare
# `except:` around callbacks; a gc callback, where Python only prints it as "ignored" — seen in
# the first 1M run), so the time limit also checks this flag when the example ends.
_fired = threading.Event()


def _on_alarm(_signum: int, _frame: FrameType | None) -> None:
    _fired.set()
    raise ExampleTimeout


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ExampleTimeout in the running code after `seconds`. pytest-timeout may have its own
    SIGALRM timer running (the per-test timeout): it is put back afterwards, less the time this
    example took. Off the main thread (no signals there) the limit is not enforced."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    started = time.monotonic()
    _fired.clear()
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(0.001, old_delay - (time.monotonic() - started))
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)
    if _fired.is_set():  # the block ended normally, but its ExampleTimeout was swallowed
        raise ExampleTimeout


# --- counting ----------------------------------------------------------------------------------


class Tally:
    """Outcome counts per fuzz target ("llrp", "tsl", "modbus.decode" ...), and under `reasons`
    what a documented rejection was (e.g. which exception sllurp raised)."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter[str]] = {}
        self.reasons: dict[str, Counter[str]] = {}

    def add(self, target: str, kind: Kind, reason: str | None = None) -> None:
        self.counts.setdefault(target, Counter())[kind.value] += 1
        if reason:
            self.reasons.setdefault(target, Counter())[f"{kind.value}: {reason}"] += 1

    def merge(self, written: dict[str, dict[str, dict[str, int]]]) -> None:
        """Add what another process wrote (`as_json`)."""
        for mine, theirs in ((self.counts, written["counts"]), (self.reasons, written["reasons"])):
            for target, kinds in theirs.items():
                mine.setdefault(target, Counter()).update(kinds)

    def executed(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.counts.values())

    def failures(self) -> int:
        return sum(n for kinds in self.counts.values() for k, n in kinds.items() if k in FAILURES)

    def by_kind(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for kinds in self.counts.values():
            total.update(kinds)
        return dict(sorted(total.items()))

    def as_json(self) -> dict[str, dict[str, dict[str, int]]]:
        return {
            "counts": {t: dict(sorted(k.items())) for t, k in sorted(self.counts.items())},
            "reasons": {t: dict(sorted(k.items())) for t, k in sorted(self.reasons.items())},
        }

    def write(self, directory: Path) -> Path:
        path = directory / f"outcomes-{os.getpid()}.json"
        path.write_text(json.dumps(self.as_json()))
        return path


TALLY = Tally()


class Verdict:
    """What the code under test did with one example; the test sets it, the oracle counts it."""

    def __init__(self) -> None:
        self.kind = Kind.ACCEPTED
        self.reason: str | None = None

    def rejected_counted(self) -> None:
        self.kind = Kind.REJECTED_COUNTED

    def rejected_by_parser(self, reason: str | None = None) -> None:
        self.kind = Kind.REJECTED_BY_PARSER
        self.reason = reason


def _failure_kind(exc: BaseException) -> Kind:
    if isinstance(exc, FuzzFailure):
        return exc.kind
    if isinstance(exc, AssertionError):
        return Kind.FAILURE_CHECK
    return Kind.FAILURE_OUR_CODE


@contextmanager
def example(target: str, tally: Tally = TALLY) -> Iterator[Verdict]:
    """One fuzz example of `target`, under the time limit. Any exception out of the block is a
    failure (the block catches the parser's documented error type itself and calls
    `verdict.rejected_by_parser()`); it is counted and re-raised for Hypothesis to shrink.
    Hypothesis' own control flow (BaseException: an example it abandons) is not counted."""
    verdict = Verdict()
    started = time.monotonic()
    try:
        with time_limit(example_limit_s()):
            yield verdict
    except ExampleTimeout:
        tally.add(target, Kind.FAILURE_TIMEOUT)
        took = time.monotonic() - started
        raise FuzzFailure(
            Kind.FAILURE_TIMEOUT, f"over {example_limit_s()} s (took {took:.1f} s)"
        ) from None
    except Exception as exc:
        kind = _failure_kind(exc)
        tally.add(target, kind)
        if not isinstance(exc, AssertionError):
            raise FuzzFailure(kind, f"{type(exc).__name__}: {exc}") from exc
        raise
    tally.add(target, verdict.kind, verdict.reason)
