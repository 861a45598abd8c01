"""The TSL ASCII 2 line parser on its own: hand-written blocks, every rejection kind, and
hypothesis fuzzing (random bytes, random valid-looking blocks): no exception escapes, every
bad line is counted, every good transponder is delivered."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.tsl import (
    ERROR_MESSAGES,
    BarcodeScanned,
    BlockDone,
    Item,
    SwitchChanged,
    TagSeen,
    TSLParser,
    error_text,
)

EPC = "3034257BF7194E4000001A85"


def parse(data: bytes, chunk: int | None = None) -> tuple[list[Item], Counter[str]]:
    errors: Counter[str] = Counter()

    def count(kind: str, n: int) -> None:
        errors[kind] += n

    parser = TSLParser(count)
    items: list[Item] = []
    if chunk is None:
        items += parser.feed(data)
    else:
        for i in range(0, len(data), chunk):
            items += parser.feed(data[i : i + chunk])
    items += parser.reset()  # the stream ends: what complete lines said is delivered
    return items, errors


def block(*lines: str) -> bytes:
    return b"".join(line.encode() + b"\r\n" for line in lines)


def test_inventory_block() -> None:
    data = block("CS: .iv", "PC: 3000", f"EP: {EPC}", "RI: -55", "PC: 3000", "EP: " + "A" * 24)
    data += block("RI: -61", "OK:", "")
    items, errors = parse(data)
    assert items == [
        TagSeen(EPC, -55.0, 0x3000),
        TagSeen("A" * 24, -61.0, 0x3000),
        BlockDone(".iv"),
    ]
    assert not errors


def test_lowercase_epc_is_normalised_and_rssi_optional() -> None:
    items, errors = parse(block("CS: .iv", f"EP: {EPC.lower()}", "OK:", ""))
    assert items == [TagSeen(EPC, None, None), BlockDone(".iv")]
    assert not errors


def test_split_anywhere_gives_the_same_items() -> None:
    data = block("SW: single", "CS: .iv", f"EP: {EPC}", "RI: -40", "OK:", "", "SW: off")
    whole, _ = parse(data)
    for size in (1, 2, 3, 7, 13):
        assert parse(data, size)[0] == whole


def test_barcode_switch_and_version_blocks() -> None:
    data = block("SW: double", "CS: .bc", "BC: LOC-SHELF-A1", "OK:", "", "SW: off")
    data += block("CS: .vr", "MF: TSL", "PV: 2.5", "OK:", "")
    items, errors = parse(data)
    assert items == [
        SwitchChanged("double"),
        BarcodeScanned("LOC-SHELF-A1"),
        BlockDone(".bc"),
        SwitchChanged("off"),
        BlockDone(".vr", None, None, (("MF", "TSL"), ("PV", "2.5"))),
    ]
    assert not errors


def test_error_block_with_message() -> None:
    items, errors = parse(block("CS: .iv -o 40", "ME: power out of range", "ER: 007", ""))
    assert items == [BlockDone(".iv -o 40", 7, "power out of range")]
    assert not errors


def test_every_documented_error_code_has_a_message() -> None:
    assert sorted(ERROR_MESSAGES) == [*range(1, 19), 255]
    for code in ERROR_MESSAGES:
        items, _ = parse(block("CS: .iv", f"ER: {code:03d}", ""))
        assert items == [BlockDone(".iv", code)]
        assert error_text(code) and "undocumented" not in error_text(code)
    assert "undocumented error code 42" == error_text(42)


def test_noise_bytes_are_dropped_anywhere() -> None:
    data = b"\x00\xff" + block("CS: .iv")
    data += b"EP: 3034\x00257BF7194E40\xff00001A85\r\n" + block("OK:", "")
    items, errors = parse(data)
    assert items == [TagSeen(EPC, None), BlockDone(".iv")]
    assert errors == Counter({"noise_bytes": 4})


@pytest.mark.parametrize(
    ("lines", "kind"),
    [
        (["EP: 3034257BF7194E40000"], "bad_ep_line"),  # odd length
        (["EP: 3034257BF7194E4000001A"], "bad_ep_line"),  # not whole 16-bit words
        (["EP: 3034257BF7194E40000ZZZ"], "bad_ep_line"),
        (["RI: loud", f"EP: {EPC}"], "bad_ri_line"),
        (["RI: 12", f"EP: {EPC}"], "bad_ri_line"),  # RSSI is never positive
        (["PC: 30", f"EP: {EPC}"], "bad_pc_line"),
        (["PC: 4000", f"EP: {EPC}"], "epc_length_mismatch"),  # PC says 8 words
        (["RI: -50"], "transponder_without_epc"),
        (["ZZ: what"], "unknown_line"),
        (["ep: lower-case prefix"], "garbled_line"),
        (["EP 3034"], "garbled_line"),
        (["SW: triple"], "bad_switch_line"),
        (["BC:"], "bad_barcode_line"),
    ],
)
def test_bad_lines_are_counted(lines: list[str], kind: str) -> None:
    items, errors = parse(block("CS: .iv", *lines, "OK:", ""))
    assert errors[kind] == 1
    assert not [i for i in items if isinstance(i, TagSeen)]
    assert items[-1] == BlockDone(".iv")


def test_bad_error_line_still_closes_the_block() -> None:
    items, errors = parse(block("CS: .iv", "ER: boom", ""))
    assert items == [BlockDone(".iv", 255)]
    assert errors["bad_error_line"] == 1


def test_non_ascii_and_control_characters_are_garbled() -> None:
    items, errors = parse(b"CS: .iv\r\nEP: \xc3\xa9\r\nRI: -5\x07\r\nOK:\r\n")
    assert errors["garbled_line"] == 2
    assert items == [BlockDone(".iv")]


def test_cut_line_glued_to_the_next_keeps_the_next() -> None:
    items, errors = parse(b"EP: 3034257BSW: off\r\n" + block("CS: .iv", f"EP: {EPC}", "OK:"))
    assert items == [SwitchChanged("off"), TagSeen(EPC, None), BlockDone(".iv")]
    assert errors == Counter({"partial_line": 1})


def test_block_without_ending_is_closed_by_the_next() -> None:
    items, errors = parse(block("CS: .iv", f"EP: {EPC}", "CS: .iv", "OK:", ""))
    assert items == [TagSeen(EPC, None), BlockDone(".iv")]
    assert errors["incomplete_block"] == 1


def test_overlong_garbage_is_dropped() -> None:
    items, errors = parse(b"A" * 5000 + b"\r\n" + block("SW: off"), chunk=100)
    assert errors["overlong_line"] >= 1
    assert items[-1] == SwitchChanged("off")


def test_reset_keeps_complete_lines_and_counts_the_rest() -> None:
    errors: Counter[str] = Counter()
    parser = TSLParser(lambda kind, n: errors.update({kind: n}))
    assert parser.feed(block("CS: .iv", f"EP: {EPC}", "RI: -50") + b"EP: 30") == []
    assert parser.reset() == [TagSeen(EPC, -50.0)]
    assert errors == Counter({"partial_line": 1, "incomplete_block": 1})
    assert parser.feed(block("SW: off")) == [SwitchChanged("off")]


# --- fuzzing -------------------------------------------------------------------------------------

hex_words = st.integers(1, 8).flatmap(
    lambda words: st.binary(min_size=2 * words, max_size=2 * words).map(lambda b: b.hex().upper())
)
good_tag = st.tuples(hex_words, st.integers(-128, 0))
junk_line = st.binary(max_size=60).filter(lambda b: b"\n" not in b)


@st.composite
def valid_looking_stream(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """Blocks of good transponders mixed with junk lines; returns the bytes, the number of
    good transponders, and the number of junk lines."""
    out = bytearray()
    good = junk = 0
    for _ in range(draw(st.integers(0, 6))):
        out += b"CS: .iv\r\n"
        for epc, rssi in draw(st.lists(good_tag, max_size=6)):
            pc = (len(epc) // 4) << 11
            out += f"PC: {pc:04X}\r\nEP: {epc}\r\nRI: {rssi}\r\n".encode()
            good += 1
        if draw(st.booleans()):
            out += draw(st.sampled_from([b"SW: single\r\n", b"SW: off\r\n"]))
        out += b"OK:\r\n\r\n"
        if draw(st.booleans()):
            # a junk line between blocks, where it cannot spoil a transponder
            line = draw(junk_line).replace(b"\r", b"")
            if line.strip(b"\x00\xff \t\x0b\x0c\x1c\x1d\x1e\x85\xa0"):
                out += line + b"\r\n"
                junk += 1
    return bytes(out), good, junk


FAST = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST_BLOCKS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# Sized for `make test-slow`'s 40-minute budget on 2 cores (a valid-looking stream costs ~30 ms
# to generate); tools/fuzz.py runs far more by hand (docs/reliability.md).
SLOW_BYTES = settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
SLOW_BLOCKS = settings(max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck))


def check_random_bytes(data: bytes, chunk: int) -> None:
    items, errors = parse(data, chunk)  # must not raise
    assert all(n > 0 for n in errors.values())
    for item in items:
        if isinstance(item, TagSeen):
            assert item.epc == item.epc.upper() and len(item.epc) % 4 == 0


def check_valid_looking(stream: tuple[bytes, int, int], chunk: int) -> None:
    data, good, junk = stream
    items, errors = parse(data, chunk)
    tags = [i for i in items if isinstance(i, TagSeen)]
    # Every good transponder is delivered; a junk line that happens to be a valid EP: line
    # between blocks is a (bogus but well-formed) read of its own.
    assert good <= len(tags) <= good + junk
    # A junk line costs at most two counted rejections: itself, and the block it leaves open.
    rejected = sum(n for kind, n in errors.items() if kind != "noise_bytes")
    assert rejected <= 2 * junk
    blocks = [i for i in items if isinstance(i, BlockDone)]
    assert len(blocks) >= data.count(b"OK:\r\n") - junk


@FAST
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_fuzz_random_bytes(data: bytes, chunk: int) -> None:
    check_random_bytes(data, chunk)


@FAST_BLOCKS
@given(valid_looking_stream(), st.integers(1, 64))
def test_fuzz_valid_looking_blocks(stream: tuple[bytes, int, int], chunk: int) -> None:
    check_valid_looking(stream, chunk)


@FAST_BLOCKS
@given(valid_looking_stream(), st.data())
def test_fuzz_every_bad_line_is_counted(
    stream: tuple[bytes, int, int], data: st.DataObject
) -> None:
    """Corrupt one line of a good stream: the line is counted (or still valid), never lost
    silently, and nothing escapes."""
    raw, good, _ = stream
    lines = raw.split(b"\r\n")
    if not lines:
        return
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(junk_line).replace(b"\r", b"")
    items, errors = parse(b"\r\n".join(lines))
    tags = sum(isinstance(x, TagSeen) for x in items)
    lost = good - tags
    counted = sum(n for kind, n in errors.items() if kind != "noise_bytes")
    # A lost transponder is always accounted for by a counted error: the corrupted line
    # itself, or (when the block's first line is hit and transponders regroup) a PC/EPC
    # length mismatch per transponder dropped.
    assert lost <= counted + 1
    if lost > 0:
        assert counted >= 1


@pytest.mark.slow
@pytest.mark.timeout(1800)
@SLOW_BYTES
@given(st.binary(max_size=2000), st.integers(1, 64))
def test_fuzz_random_bytes_many(data: bytes, chunk: int) -> None:
    check_random_bytes(data, chunk)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@SLOW_BLOCKS
@given(valid_looking_stream(), st.integers(1, 64))
def test_fuzz_valid_looking_blocks_many(stream: tuple[bytes, int, int], chunk: int) -> None:
    check_valid_looking(stream, chunk)


def test_lost_first_field_regroups_and_counts() -> None:
    """PC: lost from the block's first transponder: the others still come out right."""
    lines = ["CS: .iv", f"EP: {EPC}", "RI: -50"]
    for epc in ("B" * 24, "C" * 24):
        lines += ["PC: 3000", f"EP: {epc}", "RI: -51"]
    items, errors = parse(block(*lines, "OK:", ""))
    tags = [i for i in items if isinstance(i, TagSeen)]
    assert [t.epc for t in tags] == [EPC, "B" * 24, "C" * 24]
    assert not errors
