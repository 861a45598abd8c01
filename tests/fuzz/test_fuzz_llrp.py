"""LLRP frames as they reach the driver: the driver's own framing (drivers/llrp.py
`_Client.raw_data_received`), sllurp's decoder and state machine behind it, and the driver's
tag conversion. Random bytes, valid-looking headers with bad lengths, versions and types,
truncations, and frames from the simulator's encoder and real captures, mutated; all cut
into random recv() chunks and fed in every sllurp client state.

For any input (tools/fuzz_oracle.py decides): an exception from our code fails the example,
whatever decoded before it, also one sllurp catches and only logs (it does for every callback,
the driver's tag conversion included); only sllurp's documented session ends pass
(ReaderConfigurationError, or its state machine failing on a decoded frame: thread_died); a
sllurp decoder exception on an undecoded frame must not escape the driver's framing; every
complete frame is decoded or counted in errors.malformed; a broken header desynchronises the
session (the supervisor reconnects); every tag sllurp decodes becomes a read or is counted in
errors.bad_tag; every read is well-formed; every example ends within the time limit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sllurp.llrp_errors import ReaderConfigurationError

from drivers.llrp import _Session
from simulators.llrp import codec
from tests.support import llrp_harness as h
from tests.support.scale import scaled
from tools.fuzz_oracle import (
    LIMIT_ENV,
    ExampleTimeout,
    FuzzFailure,
    Kind,
    Tally,
    Verdict,
    classify_llrp,
    example,
    sllurp_exceptions,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
SLOW_EXAMPLES = 14_000
states = st.sampled_from(h.STATES)


@pytest.fixture(scope="module")
def harness() -> Iterator[h.Harness]:
    harness = h.Harness()
    yield harness
    harness.close()


def run(harness: h.Harness, chunks: list[bytes], state: int) -> h.Outcome:
    with example("llrp") as verdict:
        outcome = feed(harness, chunks, state, verdict)
        h.check(outcome)
        h.check_reads(harness)
        counted = outcome.malformed or outcome.bad_tags or outcome.desynced
        if counted and verdict.kind is Kind.ACCEPTED:  # a session end is the weightier verdict
            verdict.rejected_counted()
    return outcome


def feed(harness: h.Harness, chunks: Sequence[bytes], state: int, verdict: Verdict) -> h.Outcome:
    """`h.Harness.feed` with the oracle in charge of exceptions: each one out of the driver's
    framing is classified (tools/fuzz_oracle.classify_llrp) instead of being accepted once a
    frame has decoded, and each one sllurp swallowed and logged is looked at too."""
    drv, sink = harness.driver, harness.sink
    before = drv.health().errors
    reads_before = len(sink.all_reads)
    session = _Session(drv)
    client = session.client
    client._socket = harness.ours  # what sllurp sends (KEEPALIVE_ACK, requests) goes here
    client.llrp.state = state
    reported = [0]

    def count_tags(_reader: object, tags: Sequence[object]) -> None:
        reported[0] += len(tags)

    client.add_tag_report_callback(count_tags)
    try:
        with sllurp_exceptions() as swallowed:
            ended = feed_chunks(client, chunks, harness.drain)
    finally:
        client._socket = None  # the socket pair is shared; the session must not close it
    fail_on_swallowed(swallowed.caught, swallowed.ours())
    if ended is not None:
        verdict.rejected_by_parser(session_end(ended))
    after = drv.health().errors
    frames, bad = h.count_frames(b"".join(chunks))
    return h.Outcome(
        frames=frames,
        bad_header=bad,
        decoded=client._decoded,
        malformed=after["malformed"] - before["malformed"],
        tags_reported=reported[0],
        reads=len(sink.all_reads) - reads_before,
        bad_tags=after["bad_tag"] - before["bad_tag"],
        config_errors=int(isinstance(ended, ReaderConfigurationError)),
        thread_died=ended is not None and not isinstance(ended, ReaderConfigurationError),
        desynced=session.desynced,
    )


def feed_chunks(
    client: Any, chunks: Sequence[bytes], drain: Callable[[], None]
) -> Exception | None:
    """Each chunk as sllurp's main loop hands it over; returns the exception that ended the
    session the documented way, if one did. Any other exception fails the example."""
    for chunk in chunks:
        decoded_before = client._decoded
        try:
            client.raw_data_received(chunk)
        except Exception as exc:
            kind = classify_llrp(exc, client._decoded > decoded_before)
            if kind is not Kind.REJECTED_BY_PARSER:
                raise FuzzFailure(kind, f"{type(exc).__name__}: {exc}") from exc
            return exc  # sllurp's main loop ends the session: the rest of the input is moot
        drain()
    return None


def session_end(exc: Exception) -> str:
    """How the documented session end shows at a site, for the report."""
    if isinstance(exc, ReaderConfigurationError):
        return "ReaderConfigurationError (sllurp disconnects)"
    return f"{type(exc).__name__} in sllurp's state machine (thread_died)"


def fail_on_swallowed(caught: list[BaseException], ours: list[BaseException]) -> None:
    """sllurp's bare `except:` around callbacks also catches the oracle's timer: a timeout
    inside a callback is still a timeout."""
    if any(isinstance(exc, ExampleTimeout) for exc in caught):
        raise ExampleTimeout
    if ours:
        exc = ours[0]
        raise FuzzFailure(
            Kind.FAILURE_OUR_CODE, f"sllurp swallowed {type(exc).__name__}: {exc}"
        ) from exc


# --- examples the fuzzers found or must keep finding -------------------------------------------


@pytest.mark.parametrize(
    "hex_frame",
    [
        "041f0000000b00000001e1",  # a TLV header cut after one byte: struct.error in sllurp
        "043e0000001f00000001b5490331aec368a1b9e86c99738a031036988e6720",
        "04350000001000000001c0fd03ec670a",
    ],
)
def test_truncated_parameters_cost_one_frame_not_the_thread(
    harness: h.Harness, hex_frame: str
) -> None:
    """sllurp's decoders raise struct.error (not LLRPError) on these; before the fix the
    exception escaped the driver's framing and killed sllurp's thread (a thread_died
    reconnect). Now the frame is counted and the next one still decodes."""
    keepalive = codec.keepalive(7)
    outcome = run(harness, [bytes.fromhex(hex_frame) + keepalive], h.STATES[-1])
    assert outcome.malformed == 1 and outcome.decoded == 1 and not outcome.desynced


def test_a_good_report_after_garbage_frames_still_arrives(harness: h.Harness) -> None:
    epc = bytes.fromhex("3034257BF7194E4000001A85")
    encoder = codec.ReportEncoder(codec.ALL_FIELDS)
    good = encoder.report(9, [codec.TagRead(epc, 2, -50, 1, 2, 3)])
    # A report cut inside its TagReportData: sllurp decodes what is left (a tag without
    # antenna and RSSI), which the driver counts as a bad tag.
    garbage = h.set_length(good[:25])
    outcome = run(harness, [garbage, good], h.STATES[-1])
    assert outcome.reads == 1 and outcome.bad_tags == 1


# --- the oracle bites: faults injected into our code fail the example ---------------------------
# Fault injection, on purpose: the driver's tag conversion (`LLRPDriver.convert`, which the
# session's tag callback calls on sllurp's thread) is replaced for one test by one that raises or
# hangs. sllurp catches every callback exception and only logs it, after the frame decoded, so
# the exception never reached the old harness (it saw at most the reads that went missing).

GOOD_REPORT = codec.ReportEncoder(codec.ALL_FIELDS).report(
    9, [codec.TagRead(bytes.fromhex("3034257BF7194E4000001A85"), 2, -50, 1, 2, 3)]
)


def raising_convert(*_args: object) -> list[object]:
    raise RuntimeError("injected into the conversion callback")


def hanging_convert(*_args: object) -> list[object]:
    while True:
        time.sleep(0.01)


def test_the_oracle_fails_an_exception_in_the_conversion_callback(
    harness: h.Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.driver, "convert", raising_convert)
    tally = Tally()
    with pytest.raises(FuzzFailure) as caught, example("llrp", tally) as verdict:
        feed(harness, [GOOD_REPORT], h.STATES[-1], verdict)
    assert caught.value.kind is Kind.FAILURE_OUR_CODE
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert tally.as_json()["counts"] == {"llrp": {"failure_our_code": 1}}


def test_the_fuzz_test_fails_when_the_conversion_callback_raises(
    harness: h.Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The property test itself, not only the classifier: Hypothesis finds a report with a tag
    and reports the injected exception as the falsifying example."""
    monkeypatch.setattr(harness.driver, "convert", raising_convert)

    @settings(FAST, max_examples=200, database=None)
    @given(data=h.streams(h.reader_frames()).flatmap(h.chunked), state=states)
    def property_under_fault(data: list[bytes], state: int) -> None:
        run(harness, data, state)

    with pytest.raises(FuzzFailure, match="failure_our_code: sllurp swallowed RuntimeError"):
        property_under_fault()


def test_a_hang_in_the_conversion_callback_is_a_timeout(
    harness: h.Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.driver, "convert", hanging_convert)
    monkeypatch.setenv(LIMIT_ENV, "0.2")
    with pytest.raises(FuzzFailure) as caught, example("llrp", Tally()) as verdict:
        feed(harness, [GOOD_REPORT], h.STATES[-1], verdict)
    assert caught.value.kind is Kind.FAILURE_TIMEOUT


def test_an_exception_raised_by_our_framing_is_ours() -> None:
    def framing() -> None:
        raise ValueError("a bug in our own code, outside sllurp")

    with pytest.raises(ValueError) as caught:
        framing()
    assert classify_llrp(caught.value, decoded=True) is Kind.FAILURE_OUR_CODE


def test_the_documented_outcomes_are_counted(harness: h.Harness) -> None:
    tally = Tally()
    for chunks in ([GOOD_REPORT], [h.set_length(GOOD_REPORT[:25])]):
        with example("llrp", tally) as verdict:
            outcome = feed(harness, chunks, h.STATES[-1], verdict)
            if outcome.malformed or outcome.bad_tags:
                verdict.rejected_counted()
    h.check_reads(harness)
    assert tally.as_json()["counts"] == {"llrp": {"accepted": 1, "rejected_counted": 1}}


# --- fast: in `make test` ---------------------------------------------------------------------


@FAST
@given(data=st.binary(max_size=600), state=states)
def test_random_bytes(harness: h.Harness, data: bytes, state: int) -> None:
    run(harness, [data], state)


@FAST
@given(data=h.streams(h.bad_headers()).flatmap(h.chunked), state=states)
def test_valid_looking_headers_with_bad_lengths_versions_types(
    harness: h.Harness, data: list[bytes], state: int
) -> None:
    run(harness, data, state)


@FAST
@given(data=h.streams(h.reader_frames()).flatmap(h.chunked), state=states)
def test_valid_frames_in_any_chunking_all_decode(
    harness: h.Harness, data: list[bytes], state: int
) -> None:
    outcome = run(harness, data, state)
    assert not outcome.desynced


@FAST
@given(data=h.streams(h.reader_frames().flatmap(h.mutated)).flatmap(h.chunked), state=states)
def test_mutated_and_truncated_frames(harness: h.Harness, data: list[bytes], state: int) -> None:
    run(harness, data, state)


@FAST
@given(data=h.any_stream().flatmap(h.chunked), state=states)
def test_mixed_streams(harness: h.Harness, data: list[bytes], state: int) -> None:
    run(harness, data, state)


# --- slow: in `make test-slow` -----------------------------------------------------------------
# One seed per example (see llrp_harness.generate): 5 kinds x SLOW_EXAMPLES.


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", h.GENERATORS)
def test_llrp_slow(harness: h.Harness, kind: str) -> None:
    @scaled(SLOW_EXAMPLES)
    @given(seed=st.integers(0, 2**64 - 1), state=states)
    def one(seed: int, state: int) -> None:
        run(harness, h.generate(random.Random(seed), kind), state)

    one()
