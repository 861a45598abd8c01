"""The simulator's own LLRP codec against real reader captures (tests/fixtures/llrp-captures)."""

from __future__ import annotations

import struct
from pathlib import Path

from sllurp.llrp import LLRPMessage

from simulators.llrp import codec, r420

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "llrp-captures"
EDGEX = CAPTURES / "edgex"


def _children(param: codec.Param, fixed: int = 0) -> list[codec.Param]:
    return list(codec.iter_params(param.value[fixed:]))


def test_embedded_r420_payloads_are_the_captures_byte_for_byte() -> None:
    assert (
        r420.CAPABILITIES_PAYLOAD
        == (EDGEX / "GetReaderCapabilitiesResponse-000.bytes").read_bytes()
    )
    assert r420.READER_CONFIG_PAYLOAD == (EDGEX / "GetReaderConfigResponse-000.bytes").read_bytes()


def test_capabilities_tlv_walk_matches_the_r420() -> None:
    params = list(codec.iter_params(r420.CAPABILITIES_PAYLOAD))
    assert [p.type for p in params] == [287, 137, 142, 143, 327]
    assert sum(len(p.raw) for p in params) == len(r420.CAPABILITIES_PAYLOAD)
    general = params[1]
    max_antennas, _, _, model = struct.unpack_from("!HHII", general.value)
    assert (max_antennas, model) == (4, 2001002)  # 2001002 = SpeedwayR420
    regulatory = params[3]
    band = [p for p in _children(regulatory, 4) if p.type == codec.P_UHF_BAND_CAPABILITIES]
    band_params = _children(band[0])
    assert sum(p.type == 145 for p in band_params) == 81  # TransmitPowerLevelTableEntry
    (mode_table,) = [p for p in band_params if p.type == codec.P_UHF_C1G2_RF_MODE_TABLE]
    assert sum(p.type == 329 for p in _children(mode_table)) == 10  # UHFC1G2RFModeTableEntry


def test_stripping_the_mode_table_keeps_everything_else() -> None:
    stripped = codec.strip_param(r420.CAPABILITIES_PAYLOAD, codec.P_UHF_C1G2_RF_MODE_TABLE)
    assert codec.contains_param(r420.CAPABILITIES_PAYLOAD, codec.P_UHF_C1G2_RF_MODE_TABLE)
    assert not codec.contains_param(stripped, codec.P_UHF_C1G2_RF_MODE_TABLE)
    full = LLRPMessage(msgbytes=codec.frame(11, 1, r420.CAPABILITIES_PAYLOAD)).msgdict
    less = LLRPMessage(msgbytes=codec.frame(11, 1, stripped)).msgdict
    full_band = full["GET_READER_CAPABILITIES_RESPONSE"]["RegulatoryCapabilities"]
    less_band = less["GET_READER_CAPABILITIES_RESPONSE"]["RegulatoryCapabilities"]
    assert "UHFC1G2RFModeTable" in full_band["UHFBandCapabilities"]
    assert "UHFC1G2RFModeTable" not in less_band["UHFBandCapabilities"]
    full_band["UHFBandCapabilities"].pop("UHFC1G2RFModeTable")
    assert full == less


def test_every_capture_frame_splits_and_walks() -> None:
    frames = []
    for path in sorted(CAPTURES.glob("*/*.bin")) + sorted((EDGEX / "framed").glob("*.llrp")):
        frames += codec.split_frames(path.read_bytes())
    assert len(frames) == 45 + 2 + 1 + 1 + 15
    for fr in frames:
        assert fr.version == 1
        list(
            codec.iter_params(
                fr.body[_fixed_fields(fr.msg_type) :], codec.MESSAGE_NAMES[fr.msg_type]
            )
        )


def _fixed_fields(msg_type: int) -> int:
    return 1 if msg_type == codec.SET_READER_CONFIG else 0


def _decode_tag_report_data(param: codec.Param) -> tuple[codec.Selector, codec.TagRead, bytes]:
    """Our own reading of a captured TagReportData: which fields it has, and their values."""
    fields: dict[int, bytes] = {}
    epc = b""
    for p in codec.iter_params(param.value):
        if p.type == codec.TV_EPC_96 and p.tv:
            epc = p.value
        elif p.type == codec.P_EPC_DATA and not p.tv:
            bits = struct.unpack_from("!H", p.value)[0]
            epc = p.value[2:]
            assert bits == len(epc) * 8
        else:
            fields[p.type] = p.value
    selector = codec.Selector(
        antenna_id=codec.TV_ANTENNA_ID in fields,
        peak_rssi=codec.TV_PEAK_RSSI in fields,
        first_seen=codec.TV_FIRST_SEEN_UTC in fields,
        last_seen=codec.TV_LAST_SEEN_UTC in fields,
        tag_seen_count=codec.TV_TAG_SEEN_COUNT in fields,
    )

    def num(tv: int, fmt: str) -> int:
        return int(struct.unpack(fmt, fields[tv])[0]) if tv in fields else 0

    read = codec.TagRead(
        epc,
        num(codec.TV_ANTENNA_ID, "!H"),
        num(codec.TV_PEAK_RSSI, "!b"),
        num(codec.TV_FIRST_SEEN_UTC, "!Q"),
        num(codec.TV_LAST_SEEN_UTC, "!Q"),
        num(codec.TV_TAG_SEEN_COUNT, "!H"),
    )
    return selector, read, param.raw


def _real_reports() -> list[codec.Frame]:
    stream = (CAPTURES / "sllurp" / "RO_ACCESS_REPORT-stream-1991B.bin").read_bytes()
    framed = sorted((EDGEX / "framed").glob("ROAccessReport-*.llrp"))
    return codec.split_frames(stream) + [codec.split_frames(p.read_bytes())[0] for p in framed]


def test_real_ro_access_reports_are_re_encoded_byte_for_byte() -> None:
    """Our encoder, given what a real reader reported, produces the reader's exact bytes:
    EPC-96 TV for 96-bit EPCs, EPCData for the 144-bit one, TV fields in the standard order."""
    frames = _real_reports()
    assert len(frames) == 54
    epc_lengths = set()
    for fr in frames:
        assert fr.msg_type == codec.RO_ACCESS_REPORT
        (param,) = codec.iter_params(fr.body)
        selector, read, raw = _decode_tag_report_data(param)
        epc_lengths.add(len(read.epc) * 8)
        encoder = codec.ReportEncoder(selector)
        assert encoder.tag_report_data(read) == raw
        assert encoder.report(fr.msg_id, [read]) == codec.frame(61, fr.msg_id, fr.body)
    assert epc_lengths == {96, 144}


def test_our_reader_event_has_the_shape_of_the_real_one() -> None:
    real = (CAPTURES / "sllurp" / "READER_EVENT_NOTIFICATION-connection-attempt.bin").read_bytes()
    (fr,) = codec.split_frames(real)
    (data,) = codec.iter_params(fr.body)
    timestamp = struct.unpack("!Q", list(codec.iter_params(data.value))[0].value)[0]
    ours = codec.reader_event(fr.msg_id, timestamp, connection_status=codec.CONN_SUCCESS)
    assert ours == real


def test_our_field_error_has_the_shape_of_the_real_one() -> None:
    real = (CAPTURES / "llrp-rs" / "DELETE_ACCESSSPEC_RESPONSE-field-error.bin").read_bytes()
    (fr,) = codec.split_frames(real)
    text = "LLRP [409] : //AccessSpecID : invalid"
    ours = codec.status_response(51, fr.msg_id, codec.STATUS_FIELD_ERROR, text, field=1)
    assert ours == real


def test_real_close_connection_response_is_our_success_status() -> None:
    real = (EDGEX / "framed" / "CloseConnectionResponse-000.llrp").read_bytes()
    assert codec.status_response(codec.CLOSE_CONNECTION_RESPONSE, 0) == real
