"""Feeding bytes to the LLRP driver exactly as sllurp's reader thread does, without a reader.

`_Client.raw_data_received` is what sllurp's main loop calls with every recv() chunk: the
driver's own framing runs first, then sllurp's decoder and state machine, then the driver's
tag callback (`LLRPDriver.convert`) and the sink. The client gets one end of a real socket
pair so that what sllurp answers (KEEPALIVE_ACK, handshake requests) goes somewhere; the test
drains the other end.

The generators build frames with the simulator's encoder (simulators/llrp/codec.py) and the
real captures in tests/fixtures/llrp-captures, then break them.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st
from sllurp.llrp import LLRPReaderState

from drivers.llrp import MAX_FRAME_BYTES, LLRPDriver, LLRPOptions
from gateway.config import AntennaSettings, DeviceSettings
from simulators.llrp import codec, r420
from tests.support.helpers import RecordingSink

READER = "fuzz-reader"
ANTENNAS = (1, 2)
HEADER = struct.Struct("!HII")
CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llrp-captures"
STATES = [state for _name, state in LLRPReaderState.getStates()]


@dataclass
class Outcome:
    frames: int  # complete frames with a sane header, handed to sllurp one by one
    bad_header: bool  # the stream reached a header the driver must treat as desync
    decoded: int  # frames sllurp decoded
    malformed: int  # errors.malformed counted by the driver
    tags_reported: int  # TagReportData entries sllurp handed to the tag callbacks
    reads: int  # TagReads that reached the sink
    bad_tags: int  # errors.bad_tag counted by the driver
    config_errors: int  # ReaderConfigurationError: sllurp's main loop disconnects on it
    thread_died: bool  # sllurp's state machine raised on a decoded frame: thread_died reconnect
    desynced: bool


class Harness:
    """One driver and sink for many examples; a fresh session (sllurp client) per example."""

    def __init__(self) -> None:
        opts = LLRPOptions(host="127.0.0.1", port=5084, max_clock_skew_s=1e9)
        ants = {n: AntennaSettings(location=f"LOC-{n}") for n in ANTENNAS}
        self.sink = RecordingSink()
        self.driver = LLRPDriver(DeviceSettings(READER, "llrp", ants, opts), self.sink)
        self.ours, self.theirs = socket.socketpair()
        self.theirs.setblocking(False)
        self.examples = 0

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()

    def drain(self) -> None:
        try:
            while self.theirs.recv(1 << 16):
                pass
        except BlockingIOError:
            pass

    def trim_sink(self) -> None:
        sink = self.sink
        with sink.lock:
            sink.batches.clear()
            sink.states.clear()


def count_frames(data: bytes) -> tuple[int, bool]:
    """The test's own reading of the framing rules: complete frames before the first header
    the driver must reject (version != 1, length < 10 or > MAX_FRAME_BYTES)."""
    pos = frames = 0
    while len(data) - pos >= HEADER.size:
        ver_type, length, _ = HEADER.unpack_from(data, pos)
        if (ver_type >> 10) & 7 != 1 or length < HEADER.size or length > MAX_FRAME_BYTES:
            return frames, True
        if len(data) - pos < length:
            break
        frames += 1
        pos += length
    return frames, False


def check(outcome: Outcome) -> None:
    """What must hold for any input."""
    # Every tag sllurp decoded became a read or a counted rejection: nothing silently lost.
    assert outcome.reads + outcome.bad_tags == outcome.tags_reported, outcome
    if outcome.config_errors or outcome.thread_died:
        return  # the connection ends (and is counted): the rest of the input is moot
    # Every complete frame was either decoded or counted as malformed; a frame sllurp
    # decoded but whose handling failed may be counted on top, hence >=.
    assert outcome.decoded + outcome.malformed >= outcome.frames, outcome
    if outcome.bad_header:
        assert outcome.desynced and outcome.malformed >= 1, outcome
    else:
        assert not outcome.desynced, outcome


def check_reads(harness: Harness) -> None:
    for read in harness.sink.all_reads:
        assert read.reader == READER
        assert read.antenna in ANTENNAS
        assert read.epc and read.epc == read.epc.upper()
        int(read.epc, 16)
        assert isinstance(read.time_us, int) and isinstance(read.count, int)
        assert read.rssi == read.rssi  # a number, not NaN
    harness.trim_sink()


# --- strategies --------------------------------------------------------------------------------

KNOWN_TYPES = sorted(codec.MESSAGE_NAMES) + [11, 12, 13, 30, 31, 34, 51]


def _capture_frames() -> list[bytes]:
    frames: list[bytes] = []
    for path in sorted((CAPTURES / "edgex" / "framed").glob("*.llrp")):
        frames.append(path.read_bytes())
    for folder in ("sllurp", "llrp-rs"):
        for path in sorted((CAPTURES / folder).glob("*.bin")):
            data = path.read_bytes()
            while data:
                (length,) = struct.unpack_from("!I", data, 2)
                frames.append(data[:length])
                data = data[length:]
    frames.append(codec.frame(codec.GET_READER_CAPABILITIES_RESPONSE, 1, r420.CAPABILITIES_PAYLOAD))
    frames.append(codec.frame(codec.GET_READER_CONFIG_RESPONSE, 2, r420.READER_CONFIG_PAYLOAD))
    return frames


CAPTURE_FRAMES = _capture_frames()

selectors = st.builds(codec.Selector, *([st.booleans()] * 12))
epcs = st.one_of(
    st.binary(min_size=12, max_size=12),  # EPC-96 (TV)
    st.binary(min_size=0, max_size=40),  # EPCData (TLV), any length, even empty
)
tag_reads = st.builds(
    codec.TagRead,
    epc=epcs,
    antenna=st.integers(0, 0xFFFF),
    rssi=st.integers(-128, 127),
    first_seen_us=st.integers(0, 2**64 - 1),
    last_seen_us=st.integers(0, 2**64 - 1),
    seen_count=st.integers(0, 0xFFFF),
)


@st.composite
def report_frames(draw: st.DrawFn) -> bytes:
    encoder = codec.ReportEncoder(draw(selectors), rospec_id=draw(st.integers(0, 2**32 - 1)))
    reads = draw(st.lists(tag_reads, max_size=6))
    return encoder.report(draw(st.integers(0, 2**32 - 1)), reads)


@st.composite
def reader_frames(draw: st.DrawFn) -> bytes:
    """A well-formed frame a reader (or the simulator) sends."""
    msg_id = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return draw(report_frames())
    if kind == 1:
        return codec.keepalive(msg_id)
    if kind == 2:
        return codec.reader_event(
            msg_id,
            draw(st.integers(0, 2**64 - 1)),
            connection_status=draw(st.none() | st.integers(0, 0xFFFF)),
            connection_closed=draw(st.booleans()),
        )
    if kind == 3:
        msg_type = draw(st.sampled_from([11, 12, 13, 30, 31, 32, 33, 34, 35, 51, 100]))
        return codec.status_response(
            msg_type,
            msg_id,
            draw(st.sampled_from([0, 100, 101, 109, 110, 300, 0xFFFF])),
            draw(st.text(max_size=20)),
            draw(st.none() | st.integers(0, 0xFFFF)),
        )
    if kind == 4:
        return codec.error_message(msg_id, draw(st.integers(0, 0xFFFF)), draw(st.text(max_size=8)))
    return draw(st.sampled_from(CAPTURE_FRAMES))


def set_length(frame: bytes, length: int | None = None) -> bytes:
    """Rewrite the header's length field (default: the frame's real size)."""
    length = len(frame) if length is None else length
    return frame[:2] + struct.pack("!I", length & 0xFFFFFFFF) + frame[6:]


@st.composite
def mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    """Byte flips, insertions, deletions, a broken TLV length, or a truncation; the header
    length is then usually fixed up so the broken body reaches sllurp's decoder."""
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "tlv_length", "truncate", "byte"]))
        if len(data) <= 10 and op in ("flip", "delete", "tlv_length", "byte"):
            op = "insert"
        if op == "flip":
            i = draw(st.integers(10, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            i = draw(st.integers(10, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            i = draw(st.integers(10, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            i = draw(st.integers(10, len(data) - 1))
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "tlv_length":
            # overwrite a u16 in the body, often a parameter length field
            i = draw(st.integers(10, max(10, len(data) - 2)))
            data[i : i + 2] = struct.pack("!H", draw(st.sampled_from([0, 1, 3, 4, 5, 0xFFFF])))
        else:
            del data[draw(st.integers(10, len(data))) :]
    out = bytes(data)
    if draw(st.integers(0, 9)) < 8:
        out = set_length(out)
    return out


@st.composite
def bad_headers(draw: st.DrawFn) -> bytes:
    """Valid-looking headers with bad versions, unknown types and wrong lengths."""
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 7]))
    msg_type = draw(st.sampled_from(KNOWN_TYPES) | st.integers(0, 1023))
    body = draw(st.binary(max_size=64))
    length = draw(
        st.sampled_from(["exact", "short", "long", "tiny", "huge"]).map(
            lambda k: {
                "exact": 10 + len(body),
                "short": 10 + len(body) // 2,
                "long": 10 + len(body) + 7,
                "tiny": len(body) % 10,
                "huge": MAX_FRAME_BYTES + 1 + len(body),
            }[k]
        )
    )
    reserved = draw(st.integers(0, 7)) << 13 if draw(st.booleans()) else 0
    header = HEADER.pack(reserved | version << 10 | msg_type, length, draw(st.integers(0, 99)))
    return header + body


def streams(frame_strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.lists(frame_strategy, min_size=1, max_size=4).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Cut a byte stream into recv() chunks at random places (as TCP may)."""
    if not data or draw(st.booleans()):
        return [data]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def any_stream() -> st.SearchStrategy[bytes]:
    good = reader_frames()
    broken = good.flatmap(mutated)
    return streams(st.one_of(good, broken, bad_headers(), st.binary(max_size=40)))


# --- seed-driven generators (the slow runs and `make fuzz`) --------------------------------------
# The same shapes as the strategies above, drawn from one random.Random: hypothesis then draws
# a single seed per example, which makes 100k+ examples affordable. A failure reports its
# seed; `generate(random.Random(seed))` reproduces it.


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def gen_report(rng: random.Random) -> bytes:
    selector = codec.Selector(*(rng.random() < 0.5 for _ in range(12)))
    encoder = codec.ReportEncoder(selector, rospec_id=rng.getrandbits(32))
    reads = []
    for _ in range(rng.randrange(7)):
        epc = rng.randbytes(12) if rng.random() < 0.7 else rng.randbytes(rng.randrange(41))
        reads.append(
            codec.TagRead(
                epc,
                rng.choice([1, 2, 2, 3, 0, rng.getrandbits(16)]),
                rng.randrange(-128, 128),
                rng.getrandbits(64),
                rng.getrandbits(64),
                rng.getrandbits(16),
            )
        )
    return encoder.report(rng.getrandbits(32), reads)


def gen_reader_frame(rng: random.Random) -> bytes:
    msg_id = rng.getrandbits(32)
    kind = rng.randrange(6)
    if kind == 0:
        return gen_report(rng)
    if kind == 1:
        return codec.keepalive(msg_id)
    if kind == 2:
        status = rng.choice([None, 0, 1, 4, rng.getrandbits(16)])
        return codec.reader_event(
            msg_id,
            rng.getrandbits(64),
            connection_status=status,
            connection_closed=rng.random() < 0.3,
        )
    if kind == 3:
        return codec.status_response(
            rng.choice([11, 12, 13, 30, 31, 32, 33, 34, 35, 51, 100]),
            msg_id,
            rng.choice([0, 100, 101, 109, 110, 300, 0xFFFF]),
            "x" * rng.randrange(20),
            rng.choice([None, rng.getrandbits(16)]),
        )
    if kind == 4:
        return codec.error_message(msg_id, rng.getrandbits(16), "e" * rng.randrange(8))
    return rng.choice(CAPTURE_FRAMES)


def gen_mutated(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["flip", "insert", "delete", "tlv_length", "truncate", "byte"])
        if len(data) <= 10 and op in ("flip", "delete", "tlv_length", "byte"):
            op = "insert"
        if op == "flip":
            data[rng.randrange(10, len(data))] ^= 1 << rng.randrange(8)
        elif op == "byte":
            data[rng.randrange(10, len(data))] = rng.randrange(256)
        elif op == "insert":
            i = rng.randint(10, len(data))
            data[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == "delete":
            i = rng.randrange(10, len(data))
            del data[i : i + rng.randint(1, 8)]
        elif op == "tlv_length":
            i = rng.randint(10, max(10, len(data) - 2))
            data[i : i + 2] = struct.pack("!H", rng.choice([0, 1, 3, 4, 5, 0xFFFF]))
        else:
            del data[rng.randint(10, len(data)) :]
    out = bytes(data)
    return set_length(out) if rng.random() < 0.8 else out


def gen_bad_header(rng: random.Random) -> bytes:
    version = rng.choice([1, 1, 1, 0, 2, 7])
    msg_type = rng.choice(KNOWN_TYPES) if rng.random() < 0.5 else rng.randrange(1024)
    body = rng.randbytes(rng.randrange(65))
    length = rng.choice(
        [10 + len(body), 10 + len(body) // 2, 10 + len(body) + 7, len(body) % 10,
         MAX_FRAME_BYTES + 1 + len(body)]
    )  # fmt: skip
    reserved = rng.randrange(8) << 13 if rng.random() < 0.5 else 0
    return HEADER.pack(reserved | version << 10 | msg_type, length, rng.randrange(100)) + body


def gen_chunks(rng: random.Random, data: bytes) -> list[bytes]:
    if not data or rng.random() < 0.5:
        return [data]
    cuts = sorted(rng.randint(0, len(data)) for _ in range(rng.randrange(7)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


GENERATORS = ("random", "bad_headers", "valid", "mutated", "mixed")


def generate(rng: random.Random, kind: str) -> list[bytes]:
    """One example of `kind` (one of GENERATORS): recv() chunks."""
    if kind == "random":
        return [rng.randbytes(rng.randrange(601))]
    pick = {
        "bad_headers": gen_bad_header,
        "valid": gen_reader_frame,
        "mutated": lambda r: gen_mutated(r, gen_reader_frame(r)),
        "mixed": lambda r: rng.choice(
            [
                gen_reader_frame,
                gen_bad_header,
                lambda r2: gen_mutated(r2, gen_reader_frame(r2)),
                lambda r2: r2.randbytes(r2.randrange(41)),
            ]
        )(r),  # fmt: skip
    }[kind]
    return gen_chunks(rng, b"".join(pick(rng) for _ in range(rng.randint(1, 4))))
