"""TSL ASCII 2 lines (drivers/tsl.py `TSLParser`): what tests/drivers/test_tsl_parser.py
does not already fuzz. Its fuzzers feed random bytes and well-formed blocks with random junk
lines; random bytes almost never form a known prefix, so here every line has a known prefix
(EP:, PC:, RI:, ER:, SW:, BC:, ME:, CS:, OK: ...) with a random value, and the link drops
(`reset()`) at random points, as when the handheld walks out of Bluetooth range.

For any input: no exception, every item well-formed, and when nothing came out of a non-blank
input, at least one rejection was counted (nothing is lost silently).
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.tsl import (
    KNOWN_PREFIXES,
    BarcodeScanned,
    BlockDone,
    Item,
    SwitchChanged,
    TagSeen,
    TSLParser,
)
from tests.support.scale import scaled

FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
PREFIXES = sorted(KNOWN_PREFIXES) + ["XX", "ep", "E"]
values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    st.integers(-300, 300).map(str),
    st.binary(min_size=1, max_size=16).map(lambda b: b.hex().upper()),
    st.sampled_from(["", " ", "single", "double", "off", "005", "1_0", "-0", "٣", "3000", ":"]),
)
lines = st.builds(
    lambda prefix, sep, value: f"{prefix}{sep}{value}",
    st.sampled_from(PREFIXES),
    st.sampled_from([": ", ":", " : "]),
    values,
)


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes | None]:
    """Chunks of CR LF lines; None is a link drop (reset)."""
    out: list[bytes | None] = []
    for _ in range(draw(st.integers(1, 5))):
        text = "".join(line + "\r\n" for line in draw(st.lists(lines, max_size=12)))
        data = text.encode("utf-8")
        if draw(st.booleans()) and data:
            data = data[: draw(st.integers(0, len(data)))]  # cut mid-line
        out.append(data)
        if draw(st.booleans()):
            out.append(None)
    return out


def run(chunks: list[bytes | None]) -> None:
    errors: Counter[str] = Counter()

    def count(kind: str, n: int) -> None:
        assert n > 0
        errors[kind] += n

    parser = TSLParser(count)
    items: list[Item] = []
    for chunk in chunks:
        items += parser.reset() if chunk is None else parser.feed(chunk)
    items += parser.reset()
    for item in items:
        if isinstance(item, TagSeen):
            assert item.epc == item.epc.upper() and len(item.epc) % 4 == 0
            int(item.epc, 16)
            assert item.rssi is None or -128 <= item.rssi <= 0
        elif isinstance(item, BlockDone):
            assert item.error is None or 0 <= item.error <= 999
        elif isinstance(item, SwitchChanged):
            assert item.state in ("single", "double", "off")
        else:
            assert isinstance(item, BarcodeScanned) and item.data
    sent = b"".join(c for c in chunks if c)
    if sent.strip() and not items:
        assert errors, sent


@FAST
@given(chunks=sessions())
def test_known_prefixes_with_random_values_and_link_drops(chunks: list[bytes | None]) -> None:
    run(chunks)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tsl_lines_slow() -> None:
    @scaled(6_000)
    @given(chunks=sessions())
    def one(chunks: list[bytes | None]) -> None:
        run(chunks)

    one()
