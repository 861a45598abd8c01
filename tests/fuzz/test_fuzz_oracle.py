"""The fuzz oracle (tools/fuzz_oracle.py) and the report of tools/fuzz.py: each outcome kind
is counted, anything unexpected fails, a hang is stopped, and the report adds up what the test
processes counted (the examples that ran, not the ones requested)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import struct
import time
from pathlib import Path

import pytest
from sllurp.llrp import LLRPMessage

from tools import fuzz
from tools.fuzz_oracle import (
    LIMIT_ENV,
    FuzzFailure,
    Kind,
    Tally,
    classify_llrp,
    example,
    sllurp_exceptions,
)


class DocumentedError(Exception):
    """Stands for a parser's own error type (DecodeError, ConfigError ...)."""


def parse(text: str) -> int:
    if text == "bug":
        raise KeyError(text)  # not the documented error: a bug
    if not text.isdigit():
        raise DocumentedError(text)
    return int(text)


def judged(text: str, tally: Tally) -> None:
    with example("toy", tally) as verdict:
        try:
            assert parse(text) >= 0
        except DocumentedError:
            verdict.rejected_by_parser("not a number")


def test_each_outcome_kind_is_counted() -> None:
    tally = Tally()
    judged("12", tally)
    judged("x", tally)
    with example("toy", tally) as verdict:
        verdict.rejected_counted()
    with pytest.raises(FuzzFailure) as caught:
        judged("bug", tally)
    assert caught.value.kind is Kind.FAILURE_OUR_CODE
    assert isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(AssertionError), example("toy", tally):
        raise AssertionError("an invariant of the test")
    assert tally.as_json() == {
        "counts": {
            "toy": {
                "accepted": 1,
                "failure_check": 1,
                "failure_our_code": 1,
                "rejected_by_parser": 1,
                "rejected_counted": 1,
            }
        },
        "reasons": {"toy": {"rejected_by_parser: not a number": 1}},
    }
    assert tally.executed() == 5 and tally.failures() == 2


def test_a_hang_is_a_timeout_and_the_outer_timer_survives(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest-timeout runs its own SIGALRM timer around each test: the per-example timer must
    hand it back (less the time spent), or the per-test timeout would be lost."""
    monkeypatch.setenv(LIMIT_ENV, "0.1")
    outer_delay, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    tally = Tally()
    with pytest.raises(FuzzFailure) as caught, example("toy", tally):
        while True:
            time.sleep(0.01)
    assert caught.value.kind is Kind.FAILURE_TIMEOUT
    assert tally.as_json()["counts"] == {"toy": {"failure_timeout": 1}}
    if outer_delay:
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= outer_delay


def test_a_swallowed_timeout_is_still_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1M run of 2026-12-07 had the timer's exception land in a gc callback, where Python
    only prints it: the example must fail anyway."""
    monkeypatch.setenv(LIMIT_ENV, "0.1")
    tally = Tally()
    with pytest.raises(FuzzFailure) as caught, example("toy", tally):
        try:
            while True:
                time.sleep(0.01)
        except BaseException:  # noqa: S110 (the swallowing under test)
            pass
    assert caught.value.kind is Kind.FAILURE_TIMEOUT
    assert tally.as_json()["counts"] == {"toy": {"failure_timeout": 1}}


def test_an_exception_sllurp_only_logs_is_kept_when_it_is_ours() -> None:
    def callback_of_ours() -> None:
        raise RuntimeError("raised in a callback of ours")

    with sllurp_exceptions() as swallowed:
        try:
            callback_of_ours()
        except RuntimeError:
            logging.getLogger("sllurp").exception("Error during callback. Continuing anyway...")
    assert [type(exc) for exc in swallowed.ours()] == [RuntimeError]


def decode_through_an_override_of_ours(frame: bytes) -> object:
    """Like the driver's `_ProtocolClient` overrides: ours on the stack, sllurp doing the work."""
    return LLRPMessage(msgbytes=frame)


def test_sllurps_own_exception_through_a_pass_through_override_is_sllurps() -> None:
    with pytest.raises(struct.error) as caught:
        decode_through_an_override_of_ours(bytes.fromhex("043d0000000b00000001e1"))
    assert classify_llrp(caught.value, decoded=True) is Kind.REJECTED_BY_PARSER
    assert classify_llrp(caught.value, decoded=False) is Kind.FAILURE_ESCAPED


def test_the_report_counts_what_ran(tmp_path: Path) -> None:
    for target, kinds in (
        ("llrp", {"accepted": 3, "rejected_counted": 4}),
        ("tsl", {"accepted": 2}),
    ):
        tally = Tally()
        for kind, n in kinds.items():
            for _ in range(n):
                tally.add(target, Kind(kind))
        (tmp_path / f"outcomes-{target}.json").write_text(json.dumps(tally.as_json()))
    args = argparse.Namespace(examples=1000, seed=7, example_limit_s=5.0)
    report = fuzz.report(args, fuzz.outcomes(tmp_path), [0, 0], 2.0, [])
    assert report["executed"] == 9 and report["examples_requested"] == 1000
    assert report["outcomes"] == {"accepted": 5, "rejected_counted": 4}
    assert report["seed"] == 7 and report["passed"] is True


def test_a_counted_failure_fails_the_report(tmp_path: Path) -> None:
    tally = Tally()
    tally.add("llrp", Kind.FAILURE_OUR_CODE)
    tally.write(tmp_path)
    args = argparse.Namespace(examples=10, seed=1, example_limit_s=5.0)
    assert fuzz.report(args, fuzz.outcomes(tmp_path), [0], 1.0, [])["passed"] is False
