"""The LLRP simulator's own binary codec (LLRP 1.0.1), written from the standard.

It encodes what a reader sends (responses, RO_ACCESS_REPORT, KEEPALIVE, READER_EVENT_NOTIFICATION)
and decodes what a client sends (ADD_ROSPEC, SET_READER_CONFIG, the ROSpec/AccessSpec id commands).
It shares nothing with drivers/ nor with sllurp: the tests check it against sllurp's decoders
and the real captures, so a bug cannot cancel itself out.

Wire format: a message is a 10-byte header `!HII` (3 reserved bits, 3-bit version, 10-bit type;
total length; message id) and a body of fields then parameters. A parameter is TLV (`!HH` type,
length incl. the 4-byte header) or, for types below 128, TV (`0x80|type` then a fixed-size value).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

# --- message types (LLRP 1.0.1 §16) ------------------------------------------------------------
GET_READER_CAPABILITIES = 1
GET_READER_CONFIG = 2
SET_READER_CONFIG = 3
CLOSE_CONNECTION_RESPONSE = 4
GET_READER_CAPABILITIES_RESPONSE = 11
GET_READER_CONFIG_RESPONSE = 12
SET_READER_CONFIG_RESPONSE = 13
CLOSE_CONNECTION = 14
ADD_ROSPEC = 20
DELETE_ROSPEC = 21
START_ROSPEC = 22
STOP_ROSPEC = 23
ENABLE_ROSPEC = 24
DISABLE_ROSPEC = 25
GET_ROSPECS = 26
ADD_ROSPEC_RESPONSE = 30
DELETE_ROSPEC_RESPONSE = 31
START_ROSPEC_RESPONSE = 32
STOP_ROSPEC_RESPONSE = 33
ENABLE_ROSPEC_RESPONSE = 34
DISABLE_ROSPEC_RESPONSE = 35
GET_ROSPECS_RESPONSE = 36
ADD_ACCESSSPEC = 40
DELETE_ACCESSSPEC = 41
DELETE_ACCESSSPEC_RESPONSE = 51
GET_ACCESSSPECS = 44
GET_ACCESSSPECS_RESPONSE = 54
GET_REPORT = 60
RO_ACCESS_REPORT = 61
KEEPALIVE = 62
READER_EVENT_NOTIFICATION = 63
ENABLE_EVENTS_AND_REPORTS = 64
KEEPALIVE_ACK = 72
ERROR_MESSAGE = 100
CUSTOM_MESSAGE = 1023

MESSAGE_NAMES = {
    value: name
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, int) and not name.startswith("_")
}

# --- parameter types ---------------------------------------------------------------------------
P_UTC_TIMESTAMP = 128
P_GENERAL_DEVICE_CAPABILITIES = 137
P_REGULATORY_CAPABILITIES = 143
P_UHF_BAND_CAPABILITIES = 144
P_ROSPEC = 177
P_RO_BOUNDARY_SPEC = 178
P_ROSPEC_START_TRIGGER = 179
P_ROSPEC_STOP_TRIGGER = 182
P_KEEPALIVE_SPEC = 220
P_RO_REPORT_SPEC = 237
P_TAG_REPORT_CONTENT_SELECTOR = 238
P_TAG_REPORT_DATA = 240
P_EPC_DATA = 241
P_READER_EVENT_NOTIFICATION_DATA = 246
P_CONNECTION_ATTEMPT_EVENT = 256
P_CONNECTION_CLOSE_EVENT = 257
P_LLRP_STATUS = 287
P_FIELD_ERROR = 288
P_UHF_C1G2_RF_MODE_TABLE = 328
P_UHF_C1G2_RF_MODE_TABLE_ENTRY = 329
P_C1G2_EPC_MEMORY_SELECTOR = 348

# TV parameter types and their value sizes (LLRP 1.0.1 §16.2.7.3 and §15.2.1.5).
TV_ANTENNA_ID = 1
TV_FIRST_SEEN_UTC = 2
TV_FIRST_SEEN_UPTIME = 3
TV_LAST_SEEN_UTC = 4
TV_LAST_SEEN_UPTIME = 5
TV_PEAK_RSSI = 6
TV_CHANNEL_INDEX = 7
TV_TAG_SEEN_COUNT = 8
TV_ROSPEC_ID = 9
TV_INVENTORY_PARAMETER_SPEC_ID = 10
TV_C1G2_CRC = 11
TV_C1G2_PC = 12
TV_EPC_96 = 13
TV_SPEC_INDEX = 14
TV_CLIENT_REQUEST_OPSPEC_RESULT = 15
TV_ACCESS_SPEC_ID = 16
TV_OPSPEC_ID = 17
TV_C1G2_SINGULATION_DETAILS = 18
TV_SIZES = {1: 2, 2: 8, 3: 8, 4: 8, 5: 8, 6: 1, 7: 2, 8: 2, 9: 4, 10: 2, 11: 2, 12: 2, 13: 12,
            14: 2, 15: 2, 16: 4, 17: 2, 18: 4}  # fmt: skip

# --- status codes (§14.1.1) and connection attempt statuses (§16.2.7.6.10) -----------------------
STATUS_SUCCESS = 0
STATUS_PARAMETER_ERROR = 100
STATUS_FIELD_ERROR = 101
STATUS_UNSUPPORTED_MESSAGE = 109
STATUS_UNSUPPORTED_VERSION = 110
STATUS_UNSUPPORTED_PARAMETER = 111
STATUS_A_INVALID = 300
CONN_SUCCESS = 0
CONN_FAILED_READER_CONNECTION_EXISTS = 1
CONN_FAILED_CLIENT_CONNECTION_EXISTS = 2
CONN_FAILED_OTHER = 3
CONN_ANOTHER_CONNECTION_ATTEMPTED = 4

# ROSpec states (§16.2.4.1) and start trigger types (§16.2.4.1.1.1).
ROSPEC_DISABLED = 0
ROSPEC_INACTIVE = 1
ROSPEC_ACTIVE = 2
START_TRIGGER_NULL = 0
START_TRIGGER_IMMEDIATE = 1
STOP_TRIGGER_DURATION = 1

HEADER = struct.Struct("!HII")
HEADER_LEN = HEADER.size
TLV_HEADER = struct.Struct("!HH")
LLRP_VERSION = 1
# A client message larger than this is treated as a framing error, not buffered.
MAX_CLIENT_FRAME = 1 << 20


class CodecError(ValueError):
    """Bytes that do not follow LLRP 1.0.1; the message says what and where."""


# --- framing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    version: int
    msg_type: int
    msg_id: int
    body: bytes


def frame(msg_type: int, msg_id: int, body: bytes = b"") -> bytes:
    """One LLRP message: header + body."""
    return HEADER.pack((LLRP_VERSION << 10) | msg_type, HEADER_LEN + len(body), msg_id) + body


class FrameSplitter:
    """Cuts a TCP byte stream into frames. A length field below the header size or above
    MAX_CLIENT_FRAME raises CodecError: the stream cannot be resynchronised after that."""

    def __init__(self, max_frame: int = MAX_CLIENT_FRAME) -> None:
        self._buffer = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER_LEN:
            ver_type, length, msg_id = HEADER.unpack_from(self._buffer, 0)
            if length < HEADER_LEN or length > self._max:
                raise CodecError(f"frame length {length} outside [{HEADER_LEN}, {self._max}]")
            if len(self._buffer) < length:
                break
            body = bytes(self._buffer[HEADER_LEN:length])
            del self._buffer[:length]
            frames.append(Frame((ver_type >> 10) & 0x7, ver_type & 0x3FF, msg_id, body))
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)


def split_frames(data: bytes) -> list[Frame]:
    """All complete frames of a byte string (a captured stream); trailing bytes are an error."""
    splitter = FrameSplitter(max_frame=1 << 31)
    frames = splitter.feed(data)
    if splitter.pending:
        raise CodecError(f"{splitter.pending} trailing bytes after the last complete frame")
    return frames


# --- parameter walking -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    type: int
    tv: bool
    value: bytes  # TLV: the bytes after the 4-byte header; TV: the fixed-size value
    raw: bytes  # the whole parameter as on the wire


def iter_params(data: bytes | memoryview, where: str = "body") -> Iterator[Param]:
    """Walk a run of TV/TLV parameters. Raises CodecError on truncation or an unknown TV type."""
    buf = bytes(data)
    pos = 0
    while pos < len(buf):
        first = buf[pos]
        if first & 0x80:
            ptype = first & 0x7F
            size = TV_SIZES.get(ptype)
            if size is None:
                raise CodecError(f"{where}: unknown TV parameter type {ptype} at offset {pos}")
            end = pos + 1 + size
            if end > len(buf):
                raise CodecError(f"{where}: TV parameter {ptype} truncated at offset {pos}")
            yield Param(ptype, True, buf[pos + 1 : end], buf[pos:end])
        else:
            if pos + 4 > len(buf):
                raise CodecError(f"{where}: {len(buf) - pos} stray bytes at offset {pos}")
            ptype, length = TLV_HEADER.unpack_from(buf, pos)
            ptype &= 0x3FF
            end = pos + length
            if length < 4 or end > len(buf):
                raise CodecError(f"{where}: TLV parameter {ptype} length {length} at offset {pos}")
            yield Param(ptype, False, buf[pos + 4 : end], buf[pos:end])
        pos = end


def find_param(data: bytes, ptype: int, where: str = "body") -> Param | None:
    return next((p for p in iter_params(data, where) if p.type == ptype), None)


def tlv(ptype: int, value: bytes) -> bytes:
    return TLV_HEADER.pack(ptype, 4 + len(value)) + value


# Fixed fields that precede the sub-parameters of the capability parameters we descend into.
_CAPABILITY_FIXED_FIELDS = {P_REGULATORY_CAPABILITIES: 4, P_UHF_BAND_CAPABILITIES: 0}


def strip_param(payload: bytes, remove: int, descend: dict[int, int] | None = None) -> bytes:
    """Return `payload` (a run of parameters) without every parameter of type `remove`, looking
    inside the parameters named in `descend` (type -> size of its fixed fields) and fixing the
    length of each enclosing TLV. Used to serve capabilities without UHFC1G2RFModeTable."""
    return filter_params(payload, lambda p: p.type == remove, descend)


def filter_params(
    payload: bytes, drop: Callable[[Param], bool], descend: dict[int, int] | None = None
) -> bytes:
    """`payload` without every TLV parameter `drop` selects, looking inside the parameters named
    in `descend` (type -> size of its fixed fields; default: RegulatoryCapabilities and
    UHFBandCapabilities) and fixing the length of each enclosing TLV."""
    descend = _CAPABILITY_FIXED_FIELDS if descend is None else descend
    out = bytearray()
    for param in iter_params(payload):
        if not param.tv and drop(param):
            continue
        if not param.tv and param.type in descend:
            fixed = descend[param.type]
            inner = param.value[:fixed] + filter_params(param.value[fixed:], drop, descend)
            out += tlv(param.type, inner)
        else:
            out += param.raw
    return bytes(out)


def contains_param(payload: bytes, ptype: int, descend: dict[int, int] | None = None) -> bool:
    descend = _CAPABILITY_FIXED_FIELDS if descend is None else descend
    for param in iter_params(payload):
        if param.type == ptype and not param.tv:
            return True
        if not param.tv and param.type in descend:
            if contains_param(param.value[descend[param.type] :], ptype, descend):
                return True
    return False


# --- client message decoding -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selector:
    """TagReportContentSelector flags (§16.2.7.1) plus the C1G2EPCMemorySelector bits."""

    rospec_id: bool = False
    spec_index: bool = False
    inventory_parameter_spec_id: bool = False
    antenna_id: bool = False
    channel_index: bool = False
    peak_rssi: bool = False
    first_seen: bool = False
    last_seen: bool = False
    tag_seen_count: bool = False
    access_spec_id: bool = False
    crc: bool = False
    pc_bits: bool = False

    # The order of the flag bits, from bit 15 down.
    FLAG_ORDER = (
        "rospec_id",
        "spec_index",
        "inventory_parameter_spec_id",
        "antenna_id",
        "channel_index",
        "peak_rssi",
        "first_seen",
        "last_seen",
        "tag_seen_count",
        "access_spec_id",
    )

    @classmethod
    def from_flags(cls, flags: int, memory_bits: int = 0) -> Selector:
        values = {name: bool(flags & (1 << (15 - i))) for i, name in enumerate(cls.FLAG_ORDER)}
        return cls(**values, crc=bool(memory_bits & 0x80), pc_bits=bool(memory_bits & 0x40))

    def to_flags(self) -> int:
        return sum(1 << (15 - i) for i, n in enumerate(self.FLAG_ORDER) if getattr(self, n))


ALL_FIELDS = Selector(*([True] * 12))


@dataclass(frozen=True, slots=True)
class ROSpecInfo:
    rospec_id: int
    priority: int
    current_state: int
    start_trigger: int
    stop_trigger: int
    stop_duration_ms: int
    selector: Selector | None  # None: the ROSpec carries no ROReportSpec (reader default)
    raw: bytes  # the ROSpec parameter as received, for GET_ROSPECS


_U32 = struct.Struct("!I")
_ROSPEC_FIXED = struct.Struct("!IBB")


def decode_add_rospec(body: bytes) -> ROSpecInfo:
    rospec = find_param(body, P_ROSPEC, "ADD_ROSPEC")
    if rospec is None:
        raise CodecError("ADD_ROSPEC: no ROSpec parameter")
    if len(rospec.value) < _ROSPEC_FIXED.size:
        raise CodecError("ADD_ROSPEC: ROSpec shorter than its fixed fields")
    rospec_id, priority, state = _ROSPEC_FIXED.unpack_from(rospec.value, 0)
    start_trigger, stop_trigger, stop_ms = START_TRIGGER_NULL, 0, 0
    selector: Selector | None = None
    for param in iter_params(rospec.value[_ROSPEC_FIXED.size :], "ROSpec"):
        if param.type == P_RO_BOUNDARY_SPEC:
            start_trigger, stop_trigger, stop_ms = _decode_boundary(param.value)
        elif param.type == P_RO_REPORT_SPEC:
            selector = _decode_report_spec(param.value)
    return ROSpecInfo(
        rospec_id, priority, state, start_trigger, stop_trigger, stop_ms, selector, rospec.raw
    )


def _decode_boundary(value: bytes) -> tuple[int, int, int]:
    start, stop, stop_ms = START_TRIGGER_NULL, 0, 0
    for param in iter_params(value, "ROBoundarySpec"):
        if param.type == P_ROSPEC_START_TRIGGER and param.value:
            start = param.value[0]
        elif param.type == P_ROSPEC_STOP_TRIGGER and len(param.value) >= 5:
            stop, stop_ms = param.value[0], _U32.unpack_from(param.value, 1)[0]
    return start, stop, stop_ms


def _decode_report_spec(value: bytes) -> Selector | None:
    if len(value) < 3:
        raise CodecError("ROReportSpec shorter than its fixed fields")
    content = find_param(value[3:], P_TAG_REPORT_CONTENT_SELECTOR, "ROReportSpec")
    if content is None:
        return None
    if len(content.value) < 2:
        raise CodecError("TagReportContentSelector shorter than its flags")
    flags = struct.unpack_from("!H", content.value, 0)[0]
    memory = find_param(content.value[2:], P_C1G2_EPC_MEMORY_SELECTOR, "TagReportContentSelector")
    memory_bits = memory.value[0] if memory is not None and memory.value else 0
    return Selector.from_flags(flags, memory_bits)


def decode_u32_field(body: bytes, what: str) -> int:
    """ROSpecID / AccessSpecID: the one u32 field of the id commands."""
    if len(body) < 4:
        raise CodecError(f"{what}: body of {len(body)} bytes, expected a u32 id")
    return int(_U32.unpack_from(body, 0)[0])


@dataclass(frozen=True, slots=True)
class ReaderConfigChange:
    reset_to_factory_defaults: bool
    keepalive_ms: int | None  # None: no KeepaliveSpec in the message; 0: keepalives off


def decode_set_reader_config(body: bytes) -> ReaderConfigChange:
    if not body:
        raise CodecError("SET_READER_CONFIG: empty body")
    reset = bool(body[0] & 0x80)
    keepalive: int | None = None
    spec = find_param(body[1:], P_KEEPALIVE_SPEC, "SET_READER_CONFIG")
    if spec is not None:
        if len(spec.value) < 5:
            raise CodecError("KeepaliveSpec shorter than its fields")
        trigger, interval = spec.value[0], _U32.unpack_from(spec.value, 1)[0]
        keepalive = int(interval) if trigger == 1 else 0
    return ReaderConfigChange(reset, keepalive)


# --- reader message encoding -------------------------------------------------------------------

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


def llrp_status(code: int = STATUS_SUCCESS, description: str = "", field: int | None = None,
                field_error: int = STATUS_A_INVALID) -> bytes:  # fmt: skip
    """LLRPStatus (§16.2.8.1), optionally with a FieldError naming the bad field."""
    text = description.encode("utf-8")
    value = struct.pack("!HH", code, len(text)) + text
    if field is not None:
        value += tlv(P_FIELD_ERROR, struct.pack("!HH", field, field_error))
    return tlv(P_LLRP_STATUS, value)


def status_response(msg_type: int, msg_id: int, code: int = STATUS_SUCCESS,
                    description: str = "", field: int | None = None) -> bytes:  # fmt: skip
    return frame(msg_type, msg_id, llrp_status(code, description, field))


def keepalive(msg_id: int) -> bytes:
    return frame(KEEPALIVE, msg_id)


def reader_event(msg_id: int, time_us: int, *, connection_status: int | None = None,
                 connection_closed: bool = False) -> bytes:  # fmt: skip
    """READER_EVENT_NOTIFICATION with a UTCTimestamp and a ConnectionAttemptEvent and/or a
    ConnectionCloseEvent."""
    data = tlv(P_UTC_TIMESTAMP, _U64.pack(time_us))
    if connection_status is not None:
        data += tlv(P_CONNECTION_ATTEMPT_EVENT, _U16.pack(connection_status))
    if connection_closed:
        data += tlv(P_CONNECTION_CLOSE_EVENT, b"")
    return frame(READER_EVENT_NOTIFICATION, msg_id, tlv(P_READER_EVENT_NOTIFICATION_DATA, data))


def error_message(msg_id: int, code: int, description: str) -> bytes:
    return frame(ERROR_MESSAGE, msg_id, llrp_status(code, description))


def epc_bytes(epc_hex: str) -> bytes:
    """Validated EPC bytes from hex; raises CodecError for odd length, non-hex or empty."""
    if not epc_hex or len(epc_hex) % 2:
        raise CodecError(f"EPC {epc_hex!r}: need an even, non-zero number of hex digits")
    try:
        return bytes.fromhex(epc_hex)
    except ValueError as exc:
        raise CodecError(f"EPC {epc_hex!r}: not hex") from exc


def epc_param(epc: bytes) -> bytes:
    """EPC-96 TV for 96-bit EPCs (what real readers send), EPCData TLV otherwise."""
    if len(epc) == 12:
        return bytes((0x80 | TV_EPC_96,)) + epc
    return tlv(P_EPC_DATA, _U16.pack(len(epc) * 8) + epc)


def c1g2_pc(epc: bytes) -> int:
    """The Gen2 PC word of an EPC: its length in 16-bit words in the top 5 bits."""
    return ((len(epc) + 1) // 2) << 11


def c1g2_crc(pc: int, epc: bytes) -> int:
    """Gen2 StoredCRC: CRC-16/GENIBUS (poly 0x1021, init 0xFFFF, output inverted) over PC+EPC."""
    crc = 0xFFFF
    for byte in _U16.pack(pc) + epc:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc ^ 0xFFFF


@dataclass(frozen=True, slots=True)
class TagRead:
    """One tag observation to report."""

    epc: bytes
    antenna: int
    rssi: int
    first_seen_us: int
    last_seen_us: int
    seen_count: int = 1


class ReportEncoder:
    """Encodes TagReportData for one selector. The fields before the timestamps are fixed per
    (EPC, antenna, RSSI) and cached, so a report is a join of cached prefixes and packed tails;
    `rospec_id` is the ROSpec that produced the reads."""

    def __init__(self, selector: Selector, rospec_id: int = 1) -> None:
        self.selector = selector
        self.rospec_id = rospec_id
        self._prefix_cache: dict[tuple[bytes, int, int], bytes] = {}
        self._tail = self._tail_struct(selector)

    @staticmethod
    def _tail_struct(sel: Selector) -> struct.Struct:
        fmt = "!"
        if sel.first_seen:
            fmt += "BQ"
        if sel.last_seen:
            fmt += "BQ"
        if sel.tag_seen_count:
            fmt += "BH"
        return struct.Struct(fmt)

    def prefix(self, epc: bytes, antenna: int, rssi: int) -> bytes:
        """TagReportData fields before FirstSeenTimestampUTC, in §16.2.7.3 order."""
        key = (epc, antenna, rssi)
        cached = self._prefix_cache.get(key)
        if cached is not None:
            return cached
        sel = self.selector
        out = bytearray(epc_param(epc))
        if sel.rospec_id:
            out += struct.pack("!BI", 0x80 | TV_ROSPEC_ID, self.rospec_id)
        if sel.spec_index:
            out += struct.pack("!BH", 0x80 | TV_SPEC_INDEX, 1)
        if sel.inventory_parameter_spec_id:
            out += struct.pack("!BH", 0x80 | TV_INVENTORY_PARAMETER_SPEC_ID, 1)
        if sel.antenna_id:
            out += struct.pack("!BH", 0x80 | TV_ANTENNA_ID, antenna)
        if sel.peak_rssi:
            out += struct.pack("!Bb", 0x80 | TV_PEAK_RSSI, rssi)
        if sel.channel_index:
            out += struct.pack("!BH", 0x80 | TV_CHANNEL_INDEX, 1)
        prefix = bytes(out)
        if len(self._prefix_cache) < 1_000_000:  # bounded: a long run must not grow forever
            self._prefix_cache[key] = prefix
        return prefix

    def suffix(self, epc: bytes) -> bytes:
        """AirProtocolTagData (PC, CRC) and AccessSpecID, which follow TagSeenCount."""
        sel = self.selector
        out = b""
        if sel.pc_bits or sel.crc:
            pc = c1g2_pc(epc)
            if sel.pc_bits:
                out += struct.pack("!BH", 0x80 | TV_C1G2_PC, pc)
            if sel.crc:
                out += struct.pack("!BH", 0x80 | TV_C1G2_CRC, c1g2_crc(pc, epc))
        if sel.access_spec_id:
            out += struct.pack("!BI", 0x80 | TV_ACCESS_SPEC_ID, 0)
        return out

    def tail(self, first_seen_us: int, last_seen_us: int, seen_count: int) -> bytes:
        sel = self.selector
        args: list[int] = []
        if sel.first_seen:
            args += [0x80 | TV_FIRST_SEEN_UTC, first_seen_us]
        if sel.last_seen:
            args += [0x80 | TV_LAST_SEEN_UTC, last_seen_us]
        if sel.tag_seen_count:
            args += [0x80 | TV_TAG_SEEN_COUNT, seen_count]
        return self._tail.pack(*args)

    def tag_report_data(self, read: TagRead) -> bytes:
        inner = (
            self.prefix(read.epc, read.antenna, read.rssi)
            + self.tail(read.first_seen_us, read.last_seen_us, read.seen_count)
            + self.suffix(read.epc)
        )
        return TLV_HEADER.pack(P_TAG_REPORT_DATA, 4 + len(inner)) + inner

    def report(self, msg_id: int, reads: Sequence[TagRead]) -> bytes:
        return frame(RO_ACCESS_REPORT, msg_id, b"".join(map(self.tag_report_data, reads)))

    def precompute(self, epc: bytes, antenna: int, rssi: int) -> tuple[bytes, bytes]:
        """(TLV header + prefix, suffix) for a tag whose tail has the fixed size of this selector:
        a benchmark joins `head + tail + suffix` without re-encoding anything per tag."""
        prefix, suffix = self.prefix(epc, antenna, rssi), self.suffix(epc)
        length = 4 + len(prefix) + self._tail.size + len(suffix)
        return TLV_HEADER.pack(P_TAG_REPORT_DATA, length) + prefix, suffix
