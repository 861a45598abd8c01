"""The LLRP reader simulator: its encoder checked by sllurp's decoders, its protocol over real
loopback TCP, sllurp's real LLRPReaderClient against it, and for each fault a control test
showing that a bare sllurp client really breaks on it."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sllurp.llrp import LLRPMessage, LLRPReaderClient, LLRPReaderConfig, LLRPReaderState

from simulators.llrp import FaultError, Generator, ReaderSpec, SimServer, codec
from simulators.llrp.cli import serve, truth_lines
from tests.support.helpers import wait_for

EPC96 = "3034257bf400b7800004cb2f"
EPC128 = "e2801160600002084f6a3c3d00112233"
ALL_TAG_FIELDS = {
    "EnableAntennaID": True,
    "EnablePeakRSSI": True,
    "EnableFirstSeenTimestamp": True,
    "EnableLastSeenTimestamp": True,
    "EnableTagSeenCount": True,
}

logging.getLogger("sllurp").setLevel(logging.CRITICAL)  # "Too few bytes", expected errors


def decode(frame: bytes) -> dict[str, Any]:
    return LLRPMessage(msgbytes=frame).msgdict


# --- encoder vs sllurp's decoders ----------------------------------------------------------------


@pytest.mark.parametrize("epc_hex", [EPC96, EPC128])
def test_every_selector_combination_decodes_in_sllurp(epc_hex: str) -> None:
    epc = bytes.fromhex(epc_hex)
    read = codec.TagRead(epc, 3, -61, 1_700_000_000_123_456, 1_700_000_000_223_456, 7)
    names = ("EnableROSpecID EnableSpecIndex EnableInventoryParameterSpecID EnableAntennaID "
             "EnableChannelIndex EnablePeakRSSI EnableFirstSeenTimestamp EnableLastSeenTimestamp "
             "EnableTagSeenCount EnableAccessSpecID EnableCRC EnablePCBits").split()  # fmt: skip
    keys = ("ROSpecID SpecIndex InventoryParameterSpecID AntennaID ChannelIndex PeakRSSI "
            "FirstSeenTimestampUTC LastSeenTimestampUTC TagSeenCount AccessSpecID C1G2CRC "
            "C1G2PC").split()  # fmt: skip
    for bits in itertools.product((False, True), repeat=12):
        selector = codec.Selector(*bits)
        report = codec.ReportEncoder(selector, rospec_id=9).report(42, [read, read])
        msg = decode(report)["RO_ACCESS_REPORT"]
        assert msg["ID"] == 42
        tags = msg["TagReportData"]
        assert len(tags) == 2
        tag = tags[0]
        assert tag["EPC"] == epc_hex.encode()
        assert ("EPC-96" in tag) == (len(epc) == 12)
        wanted = {key for key, on in zip(keys, bits, strict=True) if on}
        assert wanted <= set(tag), (names, bits)
        assert not (set(keys) - wanted) & set(tag)
        expected = {
            "ROSpecID": 9,
            "AntennaID": 3,
            "PeakRSSI": -61,
            "FirstSeenTimestampUTC": read.first_seen_us,
            "LastSeenTimestampUTC": read.last_seen_us,
            "TagSeenCount": 7,
            "C1G2PC": len(epc) // 2 << 11,
        }
        for key in wanted & set(expected):
            assert tag[key] == expected[key], key


def test_keepalive_event_and_responses_decode_in_sllurp() -> None:
    assert decode(codec.keepalive(5)) == {"KEEPALIVE": {"Ver": 1, "Type": 62, "ID": 5}}
    ok = decode(codec.reader_event(6, 123, connection_status=codec.CONN_SUCCESS))
    data = ok["READER_EVENT_NOTIFICATION"]["ReaderEventNotificationData"]
    assert data["UTCTimestamp"] == {"Microseconds": 123}
    assert data["ConnectionAttemptEvent"] == {"Status": "Success"}
    busy = decode(
        codec.reader_event(7, 9, connection_status=codec.CONN_FAILED_CLIENT_CONNECTION_EXISTS)
    )["READER_EVENT_NOTIFICATION"]["ReaderEventNotificationData"]
    assert busy["ConnectionAttemptEvent"]["Status"].startswith("Failed (a Client initiated")
    closed = decode(codec.reader_event(8, 9, connection_closed=True))
    assert (
        "ConnectionCloseEvent" in closed["READER_EVENT_NOTIFICATION"]["ReaderEventNotificationData"]
    )
    for request, name in [(3, "SET_READER_CONFIG"), (20, "ADD_ROSPEC"), (24, "ENABLE_ROSPEC"),
                          (21, "DELETE_ROSPEC"), (41, "DELETE_ACCESSSPEC"), (25, "DISABLE_ROSPEC"),
                          (22, "START_ROSPEC"), (23, "STOP_ROSPEC")]:  # fmt: skip
        msg = decode(codec.status_response(request + 10, 11))[f"{name}_RESPONSE"]
        assert msg["LLRPStatus"]["StatusCode"] == "Success" and msg["ID"] == 11
    closing = decode(codec.status_response(codec.CLOSE_CONNECTION_RESPONSE, 3))
    assert closing["CLOSE_CONNECTION_RESPONSE"]["LLRPStatus"]["StatusCode"] == "Success"
    error = decode(codec.status_response(30, 4, codec.STATUS_FIELD_ERROR, "ROSpecID 1 exists", 0))
    status = error["ADD_ROSPEC_RESPONSE"]["LLRPStatus"]
    assert status["StatusCode"] == "FieldError"
    assert status["ErrorDescription"] == b"ROSpecID 1 exists"
    assert status["FieldError"] == {"FieldNum": 0, "ErrorCode": "A_Invalid"}
    unsupported = decode(codec.error_message(5, codec.STATUS_UNSUPPORTED_MESSAGE, "no"))
    assert unsupported["ERROR_MESSAGE"]["LLRPStatus"]["StatusCode"] == "UnsupportedMessage"


def test_decoders_read_what_sllurp_encodes() -> None:
    """The simulator's decoder against sllurp's encoder (the client side of the wire)."""
    from sllurp.llrp_proto import LLRPROSpec

    rospec = LLRPROSpec(None, 7, antennas=[1, 2], tag_content_selector=ALL_TAG_FIELDS,
                        duration_sec=2.5)  # fmt: skip
    frame = LLRPMessage(msgdict={"ADD_ROSPEC": {"ID": 1, "ROSpecID": 7, "ROSpec": rospec}}).msgbytes
    (fr,) = codec.split_frames(frame)
    info = codec.decode_add_rospec(fr.body)
    assert (info.rospec_id, info.current_state) == (7, codec.ROSPEC_DISABLED)
    assert info.start_trigger == codec.START_TRIGGER_IMMEDIATE
    assert (info.stop_trigger, info.stop_duration_ms) == (codec.STOP_TRIGGER_DURATION, 2500)
    assert info.selector == codec.Selector(
        rospec_id=True, antenna_id=True, peak_rssi=True, first_seen=True, last_seen=True,
        tag_seen_count=True,
    )  # fmt: skip
    config = {"SET_READER_CONFIG": {"ID": 2, "ResetToFactoryDefaults": False,
              "KeepaliveSpec": {"KeepaliveTriggerType": 1, "TimeInterval": 750}}}  # fmt: skip
    (fr,) = codec.split_frames(LLRPMessage(msgdict=config).msgbytes)
    assert codec.decode_set_reader_config(fr.body) == codec.ReaderConfigChange(False, 750)


def test_bad_input_is_a_clear_codec_error() -> None:
    with pytest.raises(codec.CodecError, match="length 4"):
        codec.FrameSplitter().feed(codec.HEADER.pack(1 << 10 | 1, 4, 0))
    with pytest.raises(codec.CodecError, match="truncated"):
        list(codec.iter_params(b"\x81\x00"))
    with pytest.raises(codec.CodecError, match="no ROSpec"):
        codec.decode_add_rospec(b"")
    with pytest.raises(codec.CodecError, match="even"):
        codec.epc_bytes("abc")


# --- helpers: a raw LLRP client and sllurp's real client -----------------------------------------


class RawClient:
    """A bare TCP client: sllurp encodes the requests, sllurp decodes the answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.splitter = codec.FrameSplitter(max_frame=1 << 31)
        self.backlog: list[codec.Frame] = []
        self.next_id = 100

    def send(self, name: str, **fields: Any) -> int:
        self.next_id += 1
        self.sock.sendall(LLRPMessage(msgdict={name: {"ID": self.next_id, **fields}}).msgbytes)
        return self.next_id

    def recv_frame(self, timeout: float = 5.0) -> codec.Frame:
        deadline = time.monotonic() + timeout
        while not self.backlog:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the simulator")
            self.backlog += self.splitter.feed(data)
        return self.backlog.pop(0)

    def recv(self, skip: tuple[str, ...] = ("KEEPALIVE",)) -> tuple[str, dict[str, Any], bytes]:
        while True:
            fr = self.recv_frame()
            raw = codec.frame(fr.msg_type, fr.msg_id, fr.body)
            if fr.msg_type == codec.GET_ROSPECS_RESPONSE:  # sllurp has no decoder for it
                return "GET_ROSPECS_RESPONSE", {"ID": fr.msg_id, "body": fr.body}, raw
            ((name, body),) = decode(raw).items()
            if name not in skip:
                return name, body, raw

    def request(self, name: str, **fields: Any) -> dict[str, Any]:
        msg_id = self.send(name, **fields)
        reply, body, _ = self.recv(skip=("KEEPALIVE", "RO_ACCESS_REPORT"))
        assert reply in (f"{name}_RESPONSE", "ERROR_MESSAGE"), reply
        assert body["ID"] == msg_id
        return body

    def close(self) -> None:
        self.sock.close()


class Sllurp:
    """sllurp's real LLRPReaderClient with recording callbacks (they run on its thread)."""

    def __init__(self, port: int, **config: Any) -> None:
        settings: dict[str, Any] = {
            "antennas": [1, 2, 3, 4],
            "tag_content_selector": ALL_TAG_FIELDS,
            "keepalive_interval": 0,
        }
        settings.update(config)
        self.client = LLRPReaderClient("127.0.0.1", port, LLRPReaderConfig(settings), timeout=2)
        self.lock = threading.Lock()
        self.tags: list[dict[str, Any]] = []
        self.messages: Counter[str] = Counter()
        self.events: list[dict[str, Any]] = []
        self.disconnected = threading.Event()
        self.client.add_tag_report_callback(self._on_tags)
        self.client.add_event_callback(lambda _, ev: self.events.append(ev))
        self.client.add_disconnected_callback(lambda _: self.disconnected.set())
        for name in ("KEEPALIVE", "READER_EVENT_NOTIFICATION", "RO_ACCESS_REPORT"):
            self.client.add_message_callback(name, self._on_message)

    def _on_tags(self, _: Any, tags: list[dict[str, Any]]) -> None:
        with self.lock:
            self.tags.extend(tags)

    def _on_message(self, _: Any, msg: LLRPMessage) -> None:
        with self.lock:
            self.messages[msg.getName()] += 1

    def epcs(self) -> list[str]:
        with self.lock:
            return [t["EPC"].decode() for t in self.tags]

    @property
    def inventorying(self) -> bool:
        return bool(self.client.llrp.state == LLRPReaderState.STATE_INVENTORYING)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.hard_disconnect()
        self.client.join(3)


@contextlib.contextmanager
def running(*specs: ReaderSpec, speed: float = 1.0, control: bool = False) -> Iterator[SimServer]:
    sim = SimServer(list(specs) or [ReaderSpec("r1")], speed=speed,
                    control_port=0 if control else None)  # fmt: skip
    with sim.running():
        yield sim


@contextlib.contextmanager
def inventorying(sim: SimServer, name: str = "r1", **config: Any) -> Iterator[Sllurp]:
    client = Sllurp(sim.reader(name).port, **config)
    client.client.connect()
    try:
        wait_for(lambda: client.inventorying and sim.reader(name).active, timeout=15)
        yield client
    finally:
        client.close()


# --- protocol over loopback TCP ------------------------------------------------------------------


def test_capabilities_served_byte_identical_after_the_header() -> None:
    from simulators.llrp import r420

    with running() as sim:
        raw = RawClient(sim.reader("r1").port)
        name, _, _ = raw.recv()
        assert name == "READER_EVENT_NOTIFICATION"
        msg_id = raw.send("GET_READER_CAPABILITIES", RequestedData=0)
        _, body, frame = raw.recv()
        assert frame[:10] == codec.HEADER.pack(
            1 << 10 | 11, 10 + len(r420.CAPABILITIES_PAYLOAD), msg_id
        )
        assert frame[10:] == r420.CAPABILITIES_PAYLOAD
        assert body["GeneralDeviceCapabilities"]["MaxNumberOfAntennaSupported"] == 4
        config = raw.request("GET_READER_CONFIG", RequestedData=0)
        assert config["LLRPStatus"]["StatusCode"] == "Success"
        raw.close()


def test_rospec_lifecycle_errors_and_survival_across_reconnect() -> None:
    from sllurp.llrp_proto import LLRPROSpec

    with running() as sim:
        reader = sim.reader("r1")
        raw = RawClient(reader.port)
        raw.recv()
        selector = {"EnableAntennaID": True, "EnablePeakRSSI": False}
        rospec = LLRPROSpec(None, 5, antennas=[1], tag_content_selector=selector)
        # A Null start trigger: the ROSpec waits for START_ROSPEC once enabled.
        rospec["ROBoundarySpec"]["ROSpecStartTrigger"]["ROSpecStartTriggerType"] = "Null"
        add = raw.request("ADD_ROSPEC", ROSpecID=5, ROSpec=rospec)
        assert add["LLRPStatus"]["StatusCode"] == "Success"
        again = raw.request("ADD_ROSPEC", ROSpecID=5, ROSpec=rospec)
        assert again["LLRPStatus"]["StatusCode"] == "FieldError"
        assert again["LLRPStatus"]["FieldError"]["ErrorCode"] == "A_Invalid"
        start = raw.request("START_ROSPEC", ROSpecID=5)
        assert start["LLRPStatus"]["StatusCode"] == "FieldError"  # disabled
        assert raw.request("ENABLE_ROSPEC", ROSpecID=5)["LLRPStatus"]["StatusCode"] == "Success"
        assert not reader.active
        reader.add_reads_in(0.0, [(1, EPC96, -50)])
        wait_for(lambda: reader.stats["reads_dropped_no_rospec_active"] == 1)
        assert raw.request("START_ROSPEC", ROSpecID=5)["LLRPStatus"]["StatusCode"] == "Success"
        assert reader.active
        reader.add_reads_in(0.0, [(2, EPC128, -50)])
        name, report, _ = raw.recv()
        assert name == "RO_ACCESS_REPORT"
        assert report["TagReportData"][0]["AntennaID"] == 2
        assert "PeakRSSI" not in report["TagReportData"][0]
        assert raw.request("STOP_ROSPEC", ROSpecID=5)["LLRPStatus"]["StatusCode"] == "Success"
        missing = raw.request("DELETE_ROSPEC", ROSpecID=6)
        assert missing["LLRPStatus"]["StatusCode"] == "FieldError"
        access = raw.request("DELETE_ACCESSSPEC", AccessSpecID=3)
        assert access["LLRPStatus"]["ErrorDescription"] == b"AccessSpecID 3 : invalid"
        assert (
            raw.request("DELETE_ACCESSSPEC", AccessSpecID=0)["LLRPStatus"]["StatusCode"]
            == "Success"
        )
        raw.close()
        wait_for(lambda: not reader.connected)

        raw = RawClient(reader.port)
        raw.recv()
        raw.sock.sendall(codec.frame(codec.GET_ROSPECS, 500))  # sllurp cannot encode this one
        _, listing, _ = raw.recv()
        (status, spec) = codec.iter_params(listing["body"])
        assert spec.type == codec.P_ROSPEC and spec.value[:5] == b"\0\0\0\x05\0"
        assert (
            spec.value[5] == codec.ROSPEC_INACTIVE
        )  # enabled, stopped: as the last client left it
        assert raw.request("DELETE_ROSPEC", ROSpecID=0)["LLRPStatus"]["StatusCode"] == "Success"
        assert reader.rospecs == {}
        closing = raw.request("CLOSE_CONNECTION")
        assert closing["LLRPStatus"]["StatusCode"] == "Success"
        with pytest.raises((ConnectionError, OSError)):
            raw.recv_frame(timeout=2)


def test_unsupported_and_malformed_client_messages_are_answered_not_fatal() -> None:
    with running() as sim:
        reader = sim.reader("r1")
        raw = RawClient(reader.port)
        raw.recv()
        raw.sock.sendall(codec.frame(codec.GET_REPORT + 500, 77))  # type 560: no such message
        name, body, _ = raw.recv()
        assert name == "ERROR_MESSAGE" and body["ID"] == 77
        assert body["LLRPStatus"]["StatusCode"] == "UnsupportedMessage"
        raw.sock.sendall(codec.frame(codec.ADD_ROSPEC, 78, b"\x00\xb1\x00\x40"))  # truncated TLV
        name, body, _ = raw.recv()
        assert name == "ADD_ROSPEC_RESPONSE"
        assert body["LLRPStatus"]["StatusCode"] == "ParameterError"
        raw.sock.sendall(codec.HEADER.pack(1 << 10 | 1, 3, 79))  # length below the header
        name, body, _ = raw.recv()
        assert name == "ERROR_MESSAGE"
        with pytest.raises((ConnectionError, OSError)):
            raw.recv_frame(timeout=2)
        assert reader.stats["client_frames_rejected"] == 2
        assert reader.stats["client_frames_unsupported"] == 1
        raw.close()


def test_invalid_reads_are_counted_not_crashing() -> None:
    with running() as sim:
        reader = sim.reader("r1")
        bad = [
            (1.0, 0, EPC96, -50),
            (1.0, 1, "xyz", -50),
            (-1.0, 1, EPC96, -50),
            ("a", 1, EPC96, 0),
        ]
        accepted = reader.add_reads([*bad, (1.0, 1, EPC96, -300.0)])  # type: ignore[list-item]
        assert accepted == 1
        assert reader.stats["reads_rejected"] == 4
        assert reader.stats["rssi_clamped"] == 1
        with pytest.raises(FaultError):
            reader.set_fault("explode")
        with pytest.raises(FaultError):
            reader.set_fault("drop", kind="length")


# --- sllurp's real client ------------------------------------------------------------------------


def test_sllurp_client_receives_scripted_tags_with_their_fields() -> None:
    with running(ReaderSpec("dock-07"), ReaderSpec("staging"), speed=4.0) as sim:
        reader = sim.reader("dock-07")
        assert reader.port != sim.reader("staging").port
        with inventorying(sim, "dock-07", keepalive_interval=300) as client:
            t0 = sim.elapsed() + 0.4  # scenario seconds
            reader.add_reads(
                [(t0, 2, EPC96, -52), (t0, 4, EPC128, -70.6), (t0 + 0.8, 1, EPC96, -48)]
            )
            wait_for(lambda: len(client.tags) == 3)
            first, second, third = client.tags
            assert (first["EPC-96"], first["AntennaID"], first["PeakRSSI"]) == (
                EPC96.encode(),
                2,
                -52,
            )
            assert (second["EPC"], second["AntennaID"], second["PeakRSSI"]) == (
                EPC128.encode(),
                4,
                -71,
            )
            assert third["AntennaID"] == 1
            expected_us = sim.start_epoch_us + round(t0 * 1e6 / 4.0)
            assert first["FirstSeenTimestampUTC"] == expected_us == first["LastSeenTimestampUTC"]
            assert third["FirstSeenTimestampUTC"] == sim.start_epoch_us + round(
                (t0 + 0.8) * 1e6 / 4.0
            )
            assert first["TagSeenCount"] == 1
            assert reader.stats["reports_sent"] == 2  # the two reads due together share a report
            assert reader.keepalive_ms == 300
            wait_for(lambda: client.messages["KEEPALIVE"] >= 2, timeout=5)
            assert reader.stats["rx_KEEPALIVE_ACK"] >= 1


def test_second_client_is_refused_like_a_real_reader() -> None:
    with running() as sim, inventorying(sim) as first:
        raw = RawClient(sim.reader("r1").port)
        name, body, _ = raw.recv()
        assert name == "READER_EVENT_NOTIFICATION"
        status = body["ReaderEventNotificationData"]["ConnectionAttemptEvent"]["Status"]
        assert status == "Failed (a Client initiated connection already exists)"
        with pytest.raises((ConnectionError, OSError)):
            raw.recv_frame(timeout=2)
        second = Sllurp(sim.reader("r1").port)
        second.client.connect()
        assert second.disconnected.wait(5)  # refused, then closed
        assert not second.inventorying
        second.close()
        assert sim.reader("r1").stats["connections_refused_busy"] == 2
        wait_for(lambda: first.messages["READER_EVENT_NOTIFICATION"] >= 3)  # "another attempted"
        sim.reader("r1").add_reads_in(0.0, [(1, EPC96, -50)])
        wait_for(lambda: first.epcs() == [EPC96])


def test_rospecs_survive_a_reconnect_and_reads_while_inactive_are_dropped() -> None:
    with running() as sim:
        reader = sim.reader("r1")
        raw = RawClient(reader.port)
        raw.recv()
        assert raw.request("ADD_ROSPEC", ROSpecID=3, ROSpec=_immediate_rospec(3))
        raw.request("ENABLE_ROSPEC", ROSpecID=3)
        raw.close()
        wait_for(lambda: not reader.connected)
        reader.add_reads_in(0.0, [(1, EPC96, -50)] * 3)
        wait_for(lambda: reader.stats["reads_dropped_no_client"] == 3)
        raw = RawClient(reader.port)
        raw.recv()
        wait_for(lambda: reader.active)  # the ROSpec of the previous connection is still active
        reader.add_reads_in(0.0, [(1, EPC96, -50)])
        name, report, _ = raw.recv()
        assert name == "RO_ACCESS_REPORT" and report["TagReportData"][0]["ROSpecID"] == 3
        raw.close()


def _immediate_rospec(rospec_id: int) -> Any:
    from sllurp.llrp_proto import LLRPROSpec

    return LLRPROSpec(None, rospec_id, antennas=[1], tag_content_selector=ALL_TAG_FIELDS)


def test_generator_pushes_distinct_tags_through_sllurp() -> None:
    gen = Generator(tags=50, rate=5000, tags_per_report=25, antennas=(1, 2))
    with running(ReaderSpec("bench", generator=gen)) as sim, inventorying(sim, "bench") as client:
        wait_for(lambda: len(client.tags) >= 500)
        epcs = client.epcs()
        assert len(set(epcs)) == 50
        assert {t["AntennaID"] for t in client.tags} == {1, 2}
        assert all(len(e) == 24 for e in epcs)


def test_http_control_channel() -> None:
    with running(ReaderSpec("dock-07"), control=True) as sim:
        assert sim.control_address is not None
        base = "http://{}:{}".format(*sim.control_address)

        def call(path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            method = "POST" if data else "GET"
            request = urllib.request.Request(base + path, data=data, method=method)  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, readers = call("/readers")
        assert status == 200 and readers["dock-07"]["port"] == sim.reader("dock-07").port
        status, state = call("/readers/dock-07/fault", {"fault": "refuse", "seconds": 30})
        assert status == 200 and state["faults"]["refuse_s"] > 20
        status, state = call("/readers/dock-07/fault", {"fault": "drop_mid_frame"})
        assert state["faults"]["armed"] == ["drop_mid_frame"]
        status, state = call("/readers/dock-07/fault", {"fault": "clear"})
        assert state["faults"] == {
            "silent": False,
            "no_mode_table": False,
            "refuse_s": 0.0,
            "armed": [],
        }
        status, state = call(
            "/readers/dock-07/reads", {"in_s": 60, "reads": [[1, EPC96, -50], [0, "x", 1]]}
        )
        assert (status, state) == (200, {"accepted": 1, "rejected": 1})
        assert call("/readers/nope")[0] == 404
        assert call("/readers/dock-07/fault", {"fault": "explode"})[0] == 400
        assert call("/readers/dock-07/fault", {"fault": "silent", "seconds": -1})[0] == 400


# --- fault control tests: a bare sllurp client really breaks ---------------------------------


def test_fault_drop_disconnects_a_bare_client() -> None:
    with running() as sim, inventorying(sim) as client:
        sim.reader("r1").set_fault("drop")
        assert client.disconnected.wait(5)  # reconnect is off by default: sllurp just gives up
        wait_for(lambda: not sim.reader("r1").connected)
        sim.reader("r1").add_reads_in(0.0, [(1, EPC96, -50)])
        wait_for(lambda: sim.reader("r1").stats["reads_dropped_no_client"] == 1)
        assert client.tags == []


def test_fault_drop_mid_frame_wedges_sllurps_own_reconnect() -> None:
    """sllurp keeps the half frame across its own reconnect: the new connection's event is
    swallowed, the handshake never restarts, and reports keep arriving but are never delivered."""
    with running() as sim, inventorying(sim, reconnect=True) as client:
        reader = sim.reader("r1")
        reader.add_reads_in(0.0, [(1, EPC96, -50)])
        wait_for(lambda: len(client.tags) == 1)
        reader.set_fault("drop_mid_frame")
        reader.add_reads_in(0.0, [(1, EPC96, -50), (2, EPC96, -50)])
        wait_for(lambda: reader.stats["drops_mid_frame"] == 1)
        wait_for(lambda: reader.stats["connections"] == 2 and reader.connected)  # sllurp came back
        # The ROSpec survived, so the simulator reports on the new connection...
        reader.add_reads_in(0.0, [(3, EPC96, -50)])
        wait_for(lambda: reader.stats["tags_sent"] == 2)
        time.sleep(1.0)
        # ...but the client never gets it, nor asks for capabilities again: it is wedged.
        assert len(client.tags) == 1
        assert reader.stats["rx_GET_READER_CAPABILITIES"] == 1
        assert not client.inventorying


def test_fault_silent_leaves_a_bare_client_waiting() -> None:
    with running() as sim, inventorying(sim, keepalive_interval=200) as client:
        reader = sim.reader("r1")
        reader.set_fault("silent")
        keepalives = client.messages["KEEPALIVE"]
        reader.add_reads_in(0.0, [(1, EPC96, -50)])
        wait_for(lambda: reader.stats["reads_dropped_silent"] == 1)
        time.sleep(0.8)
        # No tags, no keepalives, no error: the client sits in INVENTORYING on a dead session.
        assert client.tags == [] and client.messages["KEEPALIVE"] <= keepalives + 1
        assert client.inventorying and client.client.is_alive()
        assert not client.disconnected.is_set()
        reader.set_fault("clear")
        reader.add_reads_in(0.0, [(1, EPC96, -50)])
        wait_for(lambda: len(client.tags) == 1)


def test_fault_silent_on_connect_stalls_the_handshake() -> None:
    with running() as sim:
        sim.reader("r1").set_fault("silent")
        client = Sllurp(sim.reader("r1").port)
        client.client.connect()
        try:
            time.sleep(0.8)
            assert client.client.llrp.state == LLRPReaderState.STATE_DISCONNECTED
            assert client.client.is_alive() and not client.disconnected.is_set()
            sim.reader("r1").set_fault("clear")  # the connection event goes out now
            wait_for(lambda: client.inventorying, timeout=10)
        finally:
            client.close()


@pytest.mark.parametrize("kind", ["length", "short"])
def test_fault_malformed_frame_breaks_a_bare_client(kind: str) -> None:
    with running() as sim, inventorying(sim, keepalive_interval=200) as client:
        reader = sim.reader("r1")
        reader.set_fault("malformed", kind=kind)
        reader.add_reads_in(0.2, [(1, EPC96, -50)])
        wait_for(lambda: reader.stats["tags_sent"] == 1)
        time.sleep(0.6)
        assert client.tags == []
        assert reader.connected  # the simulator keeps the socket open
        if kind == "length":
            # sllurp waits for 2 GB that never come: alive, connected, deaf, even to keepalives.
            before = client.messages["KEEPALIVE"]
            time.sleep(0.6)
            assert client.client.is_alive() and client.messages["KEEPALIVE"] == before
        else:
            # a length below the header kills the client's thread, the socket stays open
            wait_for(lambda: not client.client.is_alive())
            assert not client.disconnected.is_set()


def test_fault_refuse_turns_a_bare_client_away() -> None:
    with running() as sim:
        reader = sim.reader("r1")
        reader.set_fault("refuse", seconds=30)
        client = Sllurp(reader.port)
        client.client.connect()  # TCP accepts...
        try:
            assert client.disconnected.wait(5)  # ...and the reader hangs up at once
            assert not client.inventorying
        finally:
            client.close()
        assert reader.stats["connections_refused_fault"] == 1
        reader.set_fault("clear")
        with inventorying(sim):
            pass


def test_fault_refuse_expires_by_itself() -> None:
    with running() as sim:
        reader = sim.reader("r1")
        reader.set_fault("refuse", seconds=0.3)
        assert reader.status()["faults"]["refuse_s"] > 0
        time.sleep(0.4)
        with inventorying(sim):
            assert reader.stats["connections_refused_fault"] == 0


def test_fault_no_mode_table_kills_a_bare_clients_thread() -> None:
    with running() as sim:
        reader = sim.reader("r1")
        reader.set_fault("no_mode_table")
        client = Sllurp(reader.port)
        client.client.connect()
        try:
            wait_for(lambda: reader.stats["rx_GET_READER_CAPABILITIES"] == 1)
            wait_for(lambda: not client.client.is_alive())  # KeyError inside sllurp's thread
            assert reader.connected  # the socket stays open, and no disconnect callback fires
            assert not client.disconnected.is_set()
            assert reader.stats["rx_GET_READER_CONFIG"] == 0
        finally:
            client.close()
        wait_for(lambda: not reader.connected)
        reader.set_fault("clear")
        with inventorying(sim):
            pass


# --- CLI core ------------------------------------------------------------------------------


def test_serve_prints_addresses_writes_truth_and_stops_after_the_duration(tmp_path: Any) -> None:
    import asyncio
    import io

    out = io.StringIO()
    truth_path = tmp_path / "truth.jsonl"
    ports: dict[str, int] = {}
    reads = {"dock-07": [(0.5, 1, EPC96, -52)], "staging": []}
    truth = [{"epc": EPC96, "type": "arrival", "from": "YARD", "to": "DOCK-07", "t_s": 8.0}]
    result = asyncio.run(
        serve(
            reads,
            speed=20.0,
            duration_s=10.0,
            grace_s=0.1,
            truth=truth,
            truth_path=truth_path,
            write_config=ports.update,
            out=out,
        )  # fmt: skip
    )
    first, last = out.getvalue().splitlines()
    addresses = json.loads(first)
    assert set(addresses["readers"]) == {"dock-07", "staging"}
    assert addresses["readers"]["dock-07"]["port"] == ports["dock-07"]
    assert addresses["control"]["host"] == "127.0.0.1"
    assert result["stopped"] == "duration"
    assert result["stats"]["dock-07"]["reads_dropped_no_client"] == 1
    assert json.loads(last) == result
    (line,) = truth_path.read_text().splitlines()
    record = json.loads(line)
    assert set(record) == {"epc", "type", "from", "to", "time"}
    assert record["time"].endswith("Z")


def test_truth_times_follow_the_speed() -> None:
    (line,) = truth_lines([{"epc": "x", "t_s": 10.0}], 1_700_000_000_000_000, 4.0)
    assert json.loads(line) == {"epc": "x", "time": "2023-11-14T22:13:22.500Z"}


def test_cli_serves_a_bundled_scenario_to_sllurp_until_sigterm(tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    truth, config = tmp_path / "truth.jsonl", tmp_path / "gateway.toml"
    command = [sys.executable, "-m", "simulators.llrp.cli", "--scenario", "dock-receive",
               "--speed", "10", "--start-delay-s", "1.5", "--truth", str(truth),
               "--gateway-config", str(config), "--state-dir", str(tmp_path / "state")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        port = first["readers"]["dock-07"]["port"]
        assert f"port = {port}" in config.read_text()
        assert truth.read_text().count("\n") >= 200
        client = Sllurp(port)
        client.client.connect()
        try:
            wait_for(lambda: len(client.tags) >= 20, timeout=20)
            antennas = {t["AntennaID"] for t in client.tags}
            assert antennas <= {1, 2}
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        last = json.loads(out.splitlines()[-1])
        assert last["stopped"] == "signal"
        assert last["stats"]["dock-07"]["tags_sent"] >= 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_a_bad_scenario_with_a_clear_message(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    bad = tmp_path / "bad.json"
    bad.write_text('{"site": 3}')
    done = subprocess.run(
        [sys.executable, "-m", "simulators.llrp.cli", "--scenario", str(bad)],
        cwd=root, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 65
    assert "bad.json" in done.stderr
    assert done.stdout == ""
