"""Readers that are not Impinj (issue #16 item 4): the LLRP driver (real sllurp over loopback
TCP) against the simulator's Zebra FX profile, and against a reader a stale client still holds.

What is proved here: the driver tells the vendor from the capabilities and inventories a Zebra;
it sends the Zebra nothing Impinj-specific (the simulator would answer with an error, and the
simulator's own test below shows it does); empty RO_ACCESS_REPORTs are neither errors nor
reconnects; a reader held by a stale client refuses us with "a Client initiated connection
already exists", counted as `connection_exists` and logged once, and we get in once the
reader drops that session; the backoff starts over after the session that followed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sllurp.llrp import LLRPReaderConfig

from drivers.llrp import VENDOR_IMPINJ, drop_impinj_settings
from simulators.llrp import ReaderSpec, SimServer, codec
from simulators.llrp.profiles import VENDOR_ZEBRA_FX, ZEBRA
from tests.support.helpers import wait_for
from tests.support.llrp_driving import READER, driving, reads_flow, reconnects

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def zebra(**spec: Any) -> Iterator[SimServer]:
    reader = ReaderSpec(READER, profile="zebra", empty_report_interval_s=0.2, **spec)
    with SimServer([reader]).running() as sim:
        yield sim


def impinj_custom_parameter() -> bytes:
    """ImpinjInventorySearchMode (Impinj subtype 23) = 2 (dual target), as sllurp sends it."""
    return struct.pack("!HHIIH", 1023, 14, VENDOR_IMPINJ, 23, 2)


def request(port: int, msg_type: int, body: bytes) -> tuple[int, bytes]:
    """Send one message on a fresh connection (after its connection event); the first
    response: (message type, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        splitter = codec.FrameSplitter()

        def next_frame() -> codec.Frame:
            while True:
                frames = splitter.feed(sock.recv(65536))
                if frames:
                    return frames[0]

        next_frame()  # READER_EVENT_NOTIFICATION
        sock.sendall(codec.frame(msg_type, 7, body))
        reply = next_frame()
        return reply.msg_type, reply.body


def status_code(body: bytes) -> int:
    status = codec.find_param(body, codec.P_LLRP_STATUS)
    assert status is not None
    return int(struct.unpack_from("!H", status.value, 0)[0])


# --- the simulator's Zebra profile -----------------------------------------------------------


def test_zebra_profile_rejects_impinj_custom_parameters_and_takes_plain_ones() -> None:
    with zebra() as sim:
        port = sim.reader(READER).port
        plain = b"\x00"  # SET_READER_CONFIG: ResetToFactoryDefault off, no parameters
        assert request(port, codec.SET_READER_CONFIG, plain)[0] == (
            codec.SET_READER_CONFIG_RESPONSE
        )
        msg_type, body = request(port, codec.SET_READER_CONFIG, plain + impinj_custom_parameter())
        assert msg_type == codec.SET_READER_CONFIG_RESPONSE
        assert status_code(body) == codec.STATUS_UNSUPPORTED_PARAMETER
        assert sim.reader(READER).status()["stats"]["custom_parameters_rejected"] == 1
        msg_type, body = request(port, codec.CUSTOM_MESSAGE, struct.pack("!IB", VENDOR_IMPINJ, 21))
        assert msg_type == codec.ERROR_MESSAGE  # IMPINJ_ENABLE_EXTENSIONS: not a Zebra message
        assert status_code(body) == codec.STATUS_UNSUPPORTED_MESSAGE


def test_zebra_profile_says_it_is_a_zebra() -> None:
    with zebra() as sim:
        msg_type, body = request(sim.reader(READER).port, codec.GET_READER_CAPABILITIES, b"\0")
    assert msg_type == codec.GET_READER_CAPABILITIES_RESPONSE
    assert body == ZEBRA.capabilities
    gdc = codec.find_param(body, codec.P_GENERAL_DEVICE_CAPABILITIES)
    assert gdc is not None
    antennas, flags, vendor, model, fw_len = struct.unpack_from("!HHIIH", gdc.value, 0)
    assert (antennas, vendor, model, flags & 0x4000) == (4, VENDOR_ZEBRA_FX, 9500, 0x4000)
    assert gdc.value[14 : 14 + fw_len] == b"1.6.5.160010"


# --- the driver against it -------------------------------------------------------------------


def test_driver_inventories_a_zebra_and_sends_it_nothing_impinj() -> None:
    with zebra() as sim, driving(sim.reader(READER).port) as (drv, sink, _):
        reads_flow(sim, sink)
        identity = drv.identity
        assert identity is not None and identity.vendor == "Zebra" and identity.model == 9500
        assert not identity.is_impinj
        reader = sim.reader(READER)
        wait_for(lambda: reader.status()["stats"].get("empty_reports_sent", 0) >= 3, timeout=5)
        reads_flow(sim, sink)  # still inventorying after the empty reports
        health = drv.health()
        stats = reader.status()["stats"]
    assert health.state == "up"
    assert not health.errors and not health.reconnects  # empty reports are no fault
    assert sink.progressed  # an empty report says the reader has sent all it read
    # The reader got nothing it would reject: no custom message, no custom parameter.
    assert stats.get("custom_parameters_rejected", 0) == 0
    assert stats.get("client_frames_unsupported", 0) == 0
    assert stats.get("rx_CUSTOM_MESSAGE", 0) == 0


def test_an_impinj_only_rf_mode_is_left_out_for_a_zebra(caplog: pytest.LogCaptureFixture) -> None:
    # 1002 (Impinj Autoset Dense Reader) is in the R420's mode table, not in the Zebra's: sllurp
    # alone would stop every handshake ("Invalid mode_identifier") and reconnect for ever.
    caplog.set_level(logging.WARNING, logger="drivers.llrp")
    with zebra() as sim, driving(sim.reader(READER).port, mode=1002) as (drv, sink, _):
        reads_flow(sim, sink)
        wait_for(lambda: drv.health().state == "up", timeout=5)
        assert drv.health().errors["unsupported_setting"] == 1
        assert not drv.health().reconnects
    (warning,) = [r for r in caplog.records if "does not support mode 1002" in r.getMessage()]
    assert "Zebra" in warning.getMessage() and "0, 1, 2, 3, 4" in warning.getMessage()


def test_the_same_rf_mode_goes_to_an_impinj() -> None:
    with SimServer([ReaderSpec(READER)]).running() as sim:
        with driving(sim.reader(READER).port, mode=1002) as (drv, sink, _):
            reads_flow(sim, sink)
            identity = drv.identity
            assert identity is not None and identity.is_impinj and identity.model == 2001002
            assert not drv.health().errors


def test_impinj_settings_are_dropped_for_another_vendor() -> None:
    config = LLRPReaderConfig({"impinj_search_mode": "2", "antennas": [1]})
    config.frequencies = {"HopTableId": 1, "ChannelIndex": 1, "Automatic": True}
    assert drop_impinj_settings(config) == ["impinj_search_mode", "frequencies.Automatic"]
    assert config.impinj_search_mode is None and config.frequencies["Automatic"] is False
    assert drop_impinj_settings(config) == []


def test_a_reader_held_by_a_stale_client_is_taken_over(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="drivers.llrp")
    with (
        zebra(stale_session_s=2.0) as sim,
        driving(sim.reader(READER).port, reconnect_max_s=0.5) as (drv, sink, _),
    ):
        wait_for(lambda: reconnects(drv, "connection_exists") >= 2, timeout=5)
        assert drv.health().state != "up"
        # In once the reader's keepalive timeout dropped the stale session.
        reads_flow(sim, sink, timeout=10)
        stats = sim.reader(READER).status()["stats"]
        assert stats["connections_refused_stale"] == reconnects(drv, "connection_exists")
        refusals = [r for r in caplog.records if "another client holds it" in r.getMessage()]
        assert len(refusals) == 1  # logged once, counted every time
        assert drv.backoff.attempt >= 2  # still the count of the refused attempts
        # A healthy session ended: the next wait is the first step of the backoff again.
        wait_for(lambda: drv.health().state == "up", timeout=5)
        sim.reader(READER).set_fault("drop")
        wait_for(lambda: reconnects(drv, "connection_lost") >= 1, timeout=10)
        reads_flow(sim, sink)
        assert drv.backoff.attempt == 1
        assert not drv.health().errors


def hold_half_open(port: int, keepalive_ms: int) -> socket.socket:
    """A client that asks for KEEPALIVEs and then never answers again, as a gateway that froze
    or lost its network does: the reader still counts it as its client."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    splitter = codec.FrameSplitter()
    while not splitter.feed(sock.recv(65536)):
        pass  # the connection event
    keepalive_spec = codec.tlv(codec.P_KEEPALIVE_SPEC, struct.pack("!BI", 1, keepalive_ms))
    sock.sendall(codec.frame(codec.SET_READER_CONFIG, 1, b"\x00" + keepalive_spec))
    return sock


def test_a_half_open_client_is_dropped_by_the_reader_and_the_driver_gets_in() -> None:
    with zebra(keepalive_ack_limit=3) as sim:
        reader = sim.reader(READER)
        stale = hold_half_open(reader.port, keepalive_ms=300)
        try:
            with driving(reader.port, reconnect_max_s=0.5) as (drv, sink, _):
                wait_for(lambda: reconnects(drv, "connection_exists") >= 1, timeout=5)
                reads_flow(sim, sink, timeout=10)
                stats = reader.status()["stats"]
                assert stats["sessions_dropped_unacked_keepalives"] == 1
                assert stats["connections_refused_busy"] == reconnects(drv, "connection_exists")
                # The driver acknowledges every KEEPALIVE: its own session is never dropped.
                time.sleep(1.5)  # five keepalive periods of the driver's 0.3 s
                assert reader.status()["stats"]["sessions_dropped_unacked_keepalives"] == 1
                assert drv.health().state == "up"
        finally:
            stale.close()


# --- `fc-edge simulate llrp --profile zebra` -------------------------------------------------


def test_cli_zebra_with_a_stale_session_and_the_driver_gets_in(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "gateway.cli", "simulate", "llrp", "--scenario",
               "dock-receive", "--speed", "5", "--profile", "zebra", "--stale-session-s", "1",
               "--start-delay-s", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["readers"][READER]["port"]
        with driving(port, reconnect_max_s=0.5) as (drv, sink, _):
            wait_for(lambda: len(sink.all_reads) >= 5, timeout=20)
            assert reconnects(drv, "connection_exists") >= 1
            assert drv.identity is not None and drv.identity.vendor == "Zebra"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        stats = json.loads(out.splitlines()[-1])["stats"][READER]
        assert stats["connections_refused_stale"] >= 1
        assert stats.get("custom_parameters_rejected", 0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
