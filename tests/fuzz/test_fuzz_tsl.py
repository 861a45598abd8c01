"""TSL ASCII 2 lines (drivers/tsl.py `TSLParser`): what tests/drivers/test_tsl_parser.py
does not already fuzz. Its fuzzers feed random bytes and well-formed blocks with random junk
lines; random bytes almost never form a known prefix, so here every line has a known prefix
(EP:, PC:, RI:, ER:, SW:, BC:, ME:, CS:, OK: ...) with a random value, and the link drops
(`reset()`) at random points, as when the handheld walks out of Bluetooth range.

For any input (tools/fuzz_oracle.py decides): no exception (the parser is documented as total:
its only rejection is a counted one), every item well-formed, every example within the time
limit, and in every session every line the protocol rejects is counted (nothing is lost
silently, also not in a session that yielded items): the session is replayed one line at a
time, which pins each count to its line, and must give the same items and counts as the
chunked feed.
"""

from __future__ import annotations

import re
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
from tools.fuzz_oracle import example

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


def counting_parser() -> tuple[TSLParser, Counter[str]]:
    errors: Counter[str] = Counter()

    def count(kind: str, n: int) -> None:
        assert n > 0
        errors[kind] += n

    return TSLParser(count), errors


def feed_chunks(chunks: list[bytes | None]) -> tuple[list[Item], Counter[str]]:
    parser, errors = counting_parser()
    items: list[Item] = []
    for chunk in chunks:
        items += parser.reset() if chunk is None else parser.feed(chunk)
    items += parser.reset()
    return items, errors


def links(chunks: list[bytes | None]) -> list[bytes]:
    """The byte stream of each link session (chunks between resets, glued as the parser sees
    them: a line cut at the end of one chunk runs into the next chunk's first line)."""
    out = [b""]
    for chunk in chunks:
        if chunk is None:
            out.append(b"")
        else:
            out[-1] += chunk
    return out


def check_every_rejected_line_is_counted(chunks: list[bytes | None]) -> tuple[list[Item], int]:
    """Replay line by line; each line the protocol rejects must add a count while it is fed,
    and a partial line at a link drop must be counted by the reset."""
    parser, errors = counting_parser()
    items: list[Item] = []
    for stream in links(chunks):
        *lines, partial = stream.split(b"\n")
        for line in lines:
            counted_before = sum(errors.values())
            items += parser.feed(line + b"\n")
            if must_reject(line.removesuffix(b"\r")):
                assert sum(errors.values()) > counted_before, (line, errors)
        counted_before = errors["partial_line"]
        items += parser.feed(partial) + parser.reset()
        if partial:
            assert errors["partial_line"] > counted_before, (partial, errors)
    return items, sum(errors.values())


# What TSL ASCII 2 rejects, from the protocol (the `XY: value` line form, the known prefixes,
# the SW: states, ER: codes of up to 3 digits, hex EP:/PC:/CR: fields, RI: in -128..0 dBm) rather
# than read off the parser. Only lines that cannot be a cut line glued to a whole one are judged.
LINE_FORM = re.compile(r"^([A-Z]{2}):(?: ?(.*))?$")
EMBEDDED_PREFIX = re.compile(r"(?<=.)[A-Z]{2}:")
HEX = re.compile(r"^[0-9A-Fa-f]*$")
NUMERIC = {"EP", "PC", "RI", "CR", "IX", "OK", "ER", "SW"}


def must_reject(raw: bytes) -> bool:
    if not raw.strip():
        return False  # blank lines end blocks
    if not all(0x20 <= b <= 0x7E for b in raw):
        return True
    text = raw.decode("ascii")
    match = LINE_FORM.match(text)
    if match is None:
        return not EMBEDDED_PREFIX.search(text)
    prefix, value = match.group(1), (match.group(2) or "").strip()
    if prefix in NUMERIC and ":" in value:
        return False  # may be a cut line with a whole one behind it
    return prefix not in KNOWN_PREFIXES or not valid_value(prefix, value)


def valid_value(prefix: str, value: str) -> bool:
    hex_words = bool(value) and bool(HEX.match(value))
    rules = {
        "SW": lambda: value in ("single", "double", "off"),
        "ER": lambda: value.isdigit() and len(value) <= 3,
        "BC": lambda: bool(value),
        "EP": lambda: hex_words and len(value) % 4 == 0 and 4 <= len(value) <= 124,
        "PC": lambda: hex_words and len(value) == 4,
        "CR": lambda: hex_words and len(value) == 4,
        "RI": lambda: bool(re.fullmatch(r"-?[0-9]+", value)) and -128 <= int(value) <= 0,
        "IX": lambda: bool(value),
        "DT": lambda: bool(value),
    }
    rule = rules.get(prefix)
    return rule is None or rule()


def check_items(items: list[Item]) -> None:
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


def run(chunks: list[bytes | None]) -> None:
    with example("tsl") as verdict:
        items, errors = feed_chunks(chunks)
        check_items(items)
        replayed, counted = check_every_rejected_line_is_counted(chunks)
        assert (replayed, counted) == (items, sum(errors.values())), "chunking changed the result"
        if errors:
            verdict.rejected_counted()


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
