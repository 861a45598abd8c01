"""LLRP frames as they reach the driver: the driver's own framing (drivers/llrp.py
`_Client.raw_data_received`), sllurp's decoder and state machine behind it, and the driver's
tag conversion. Random bytes, valid-looking headers with bad lengths, versions and types,
truncations, and frames from the simulator's encoder and real captures, mutated; all cut
into random recv() chunks and fed in every sllurp client state.

For any input: nothing but ReaderConfigurationError (which sllurp's main loop turns into a
disconnect) escapes; every complete frame is decoded or counted in errors.malformed; a broken
header desynchronises the session (the supervisor reconnects); every tag sllurp decodes
becomes a read or is counted in errors.bad_tag; every read is well-formed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.llrp import codec
from tests.support import llrp_harness as h
from tests.support.scale import scaled

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
SLOW_EXAMPLES = 14_000
states = st.sampled_from(h.STATES)


@pytest.fixture(scope="module")
def harness() -> Iterator[h.Harness]:
    harness = h.Harness()
    yield harness
    harness.close()


def run(harness: h.Harness, chunks: list[bytes], state: int) -> h.Outcome:
    outcome = harness.feed(chunks, state)
    h.check(outcome)
    h.check_reads(harness)
    return outcome


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
