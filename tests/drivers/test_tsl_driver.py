"""The real TSL driver against the simulated handheld, over a real pty (pyserial) and over TCP
(pyserial's socket:// URL): settings, reads, barcodes, trigger, alerts, and every fault."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.tsl import TSLDriver
from gateway.config import DeviceSettings
from simulators.tsl import PtyTransport, SimulatedReader, TagInRange, TcpTransport
from simulators.tsl.scenario import sgtin96
from simulators.tsl.transport import Transport
from tests.support.helpers import RecordingSink, wait_for

ROOT = Path(__file__).resolve().parents[2]
EPCS = [sgtin96("0614141", "812345", n) for n in range(1, 6)]


class Running:
    """A driver served by its own asyncio loop on a thread, as the pipeline would."""

    def __init__(self, driver: TSLDriver) -> None:
        self.driver = driver
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.driver.run())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            self.loop.close()

    def start(self) -> Running:
        self.thread.start()
        return self

    def stop(self) -> None:
        wait_for(lambda: self.task is not None, 5)
        assert self.task is not None
        with contextlib.suppress(RuntimeError):  # loop already closed: run() ended itself
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(15)
        assert not self.thread.is_alive(), "driver did not stop"
        assert self.error is None, self.error


def make_driver(port: str, sink: RecordingSink, **options: object) -> TSLDriver:
    opts = TSLDriver.Options(port=port, **options)  # type: ignore[arg-type]
    return TSLDriver(DeviceSettings("hh-1", "tsl", {}, opts), sink)


@contextlib.contextmanager
def served(
    kind: str, tmp_path: Path, **options: object
) -> Iterator[tuple[SimulatedReader, Transport, TSLDriver, RecordingSink]]:
    reader = SimulatedReader(seed=3)
    transport: Transport
    if kind == "pty":
        link = str(tmp_path / "tsl-link")
        transport = PtyTransport(reader, link)
        transport.start()
        url = link
    else:
        transport = TcpTransport(reader, "127.0.0.1", 0)
        info = transport.start()
        url = f"socket://127.0.0.1:{info['port']}"
    sink = RecordingSink()
    driver = make_driver(url, sink, **options)
    running = Running(driver).start()
    try:
        wait_for(lambda: "up" in sink.state_names(), 15)
        yield reader, transport, driver, sink
    finally:
        running.stop()
        transport.stop()


def settings_sent(reader: SimulatedReader) -> list[str]:
    return [c for c in reader.stats.commands if c.split()[0] in (".iv", ".sa", ".bc")]


def error_count(driver: TSLDriver, kind: str) -> int:
    return driver.health().errors.get(kind, 0)


@pytest.fixture(params=["pty", "tcp"])
def link(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple]:
    with served(request.param, tmp_path) as parts:
        yield parts


# --- normal operation --------------------------------------------------------------------------


def test_settings_are_sent_on_connect(link: tuple) -> None:
    reader, _, driver, _ = link
    assert reader.settings.rssi and reader.settings.pc and reader.settings.async_switch
    assert reader.settings.single_action == "inv" and reader.settings.double_action == "bar"
    assert reader.stats.commands[0] == ".vr"
    assert driver.reader_info["PV"] == "2.5"
    assert driver.health().state == "up"


def test_trigger_inventory_becomes_reads_and_events(link: tuple) -> None:
    reader, _, driver, sink = link
    reader.set_tags([TagInRange(e, -50.0 - i) for i, e in enumerate(EPCS)])
    reader.press_and_hold(0.5)
    wait_for(lambda: [e.data["state"] for e in sink.events][-1:] == ["off"])
    reads = sink.all_reads
    assert {r.epc for r in reads} == set(EPCS)
    assert all(r.reader == "hh-1" and r.antenna == 1 for r in reads)
    assert all(-58.0 <= r.rssi <= -45.0 for r in reads)  # the simulator jitters by 3 dB
    states = [e.data["state"] for e in sink.events if e.kind == "trigger"]
    assert states == ["single", "off"]
    assert sink.events[0].data["pulled"] is True
    assert driver.health().last_data_us is not None


def test_barcode_scan_is_an_event(link: tuple) -> None:
    reader, _, _, sink = link
    reader.double_press("LOC-SHELF-A1")
    wait_for(lambda: len(sink.events) >= 3)  # SW: double, BC:, SW: off
    kinds = [(e.kind, e.data.get("state") or e.data.get("barcode")) for e in sink.events]
    assert kinds == [("trigger", "double"), ("barcode", "LOC-SHELF-A1"), ("trigger", "off")]


def test_no_tags_and_no_barcode_are_not_errors(link: tuple) -> None:
    reader, _, driver, sink = link
    reader.set_tags([])
    reader.press_and_hold(0.3)
    reader.double_press(None)  # aimed at nothing: ER 006
    wait_for(lambda: [e.data.get("state") for e in sink.events].count("off") == 2)
    assert sink.all_reads == []
    assert not [k for k in driver.health().errors if k.startswith("reader_error")]


def test_alerts_reach_the_reader(link: tuple) -> None:
    reader, _, driver, _ = link
    assert driver.alert("ok") and driver.alert("error")
    wait_for(lambda: len(reader.stats.alerts) == 2)
    assert reader.stats.alerts[0].startswith(".al -b on -v off")
    assert "-v on" in reader.stats.alerts[1]
    assert not driver.alert("party")
    assert error_count(driver, "bad_alert_kind") == 1


def test_alerts_from_many_threads(link: tuple) -> None:
    reader, _, driver, _ = link
    threads = [threading.Thread(target=driver.alert, args=("ok",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(reader.stats.alerts) == 8)


# --- faults --------------------------------------------------------------------------------------


def test_noise_bytes_are_filtered_and_counted(link: tuple) -> None:
    reader, _, driver, sink = link
    reader.set_tags([TagInRange(EPCS[0], -50)])
    reader.noise(40)
    reader.press_and_hold(0.3)
    wait_for(lambda: error_count(driver, "noise_bytes") >= 40)
    wait_for(lambda: sink.all_reads)
    assert {r.epc for r in sink.all_reads} == {EPCS[0]}


def test_truncated_epc_is_counted_not_delivered(link: tuple) -> None:
    reader, _, driver, sink = link
    reader.set_tags([TagInRange(EPCS[0], -50)])
    reader.truncate_next_epc()
    reader.press_and_hold(0.4)
    wait_for(lambda: [e.data.get("state") for e in sink.events][-1:] == ["off"])
    errors = driver.health().errors
    assert errors["bad_ep_line"] + errors["epc_length_mismatch"] == 1
    assert {r.epc for r in sink.all_reads} == {EPCS[0]}  # later rounds still read it


def test_garbled_and_cut_lines_are_counted(link: tuple) -> None:
    reader, _, driver, sink = link
    reader.garble()
    reader.cut_line()
    reader.set_tags([TagInRange(EPCS[1], -50)])
    reader.press_and_hold(0.3)
    wait_for(lambda: [e.data.get("state") for e in sink.events][-1:] == ["off"])
    errors = driver.health().errors
    # junk line and non-ASCII line: garbled; "EP: 30ZZ": bad EPC; the cut line glued to the
    # next ("EP: 3034257BF7SW: single"): a partial line, and the line behind it survives
    assert errors["garbled_line"] >= 2
    assert errors["bad_ep_line"] >= 1
    assert errors["partial_line"] == 1
    assert [e.data.get("state") for e in sink.events] == ["single", "off"]
    assert {r.epc for r in sink.all_reads} == {EPCS[1]}
    assert driver.health().state == "up"


def test_reader_error_on_trigger_is_explained(link: tuple) -> None:
    reader, _, driver, sink = link
    reader.set_tags([TagInRange(EPCS[0], -50)])
    reader.fail_next(".iv", 9)
    reader.press_and_hold(0.4)
    wait_for(lambda: error_count(driver, "reader_error_009") == 1)
    health = driver.health()
    assert health.state == "up" and "battery level too low" in (health.detail or "")
    wait_for(lambda: sink.all_reads)  # the next rounds work


def test_refused_setting_is_counted_and_the_session_goes_on(tmp_path: Path) -> None:
    reader = SimulatedReader()
    reader.fail_next(".sa", 2)
    transport = TcpTransport(reader)
    port = transport.start()["port"]
    sink = RecordingSink()
    driver = make_driver(f"socket://127.0.0.1:{port}", sink)
    running = Running(driver).start()
    try:
        wait_for(lambda: "up" in sink.state_names(), 15)
        assert error_count(driver, "command_error_002") == 1
    finally:
        running.stop()
        transport.stop()


@pytest.mark.parametrize("kind", ["pty", "tcp"])
def test_port_vanishes_and_returns_settings_resent(kind: str, tmp_path: Path) -> None:
    with served(kind, tmp_path, reconnect_max_s=0.5) as (reader, transport, driver, sink):
        assert len(settings_sent(reader)) == 3
        transport.vanish(0.6)  # closes, powers the reader up (settings forgotten), reopens
        wait_for(lambda: sink.state_names().count("up") >= 2, 20)
        assert "backoff" in sink.state_names()
        assert sum(driver.health().reconnects.values()) >= 1
        wait_for(lambda: len(settings_sent(reader)) == 6)
        assert reader.settings.rssi and reader.settings.async_switch
        reader.set_tags([TagInRange(EPCS[2], -40)])
        reader.press_and_hold(0.3)
        wait_for(lambda: any(r.epc == EPCS[2] for r in sink.all_reads))
        assert all(r.rssi > -127 for r in sink.all_reads)


def test_power_cycle_without_disconnect_is_detected(tmp_path: Path) -> None:
    """Reads without RSSI mean the reader lost our settings: the driver re-sends them."""
    with served("tcp", tmp_path) as (reader, _, driver, sink):
        reader.power_up()
        reader.set_tags([TagInRange(EPCS[0], -50)])
        reader.press_and_hold(0.3)  # async switch reports are off now: no SW: lines
        wait_for(lambda: error_count(driver, "settings_lost") >= 1)
        wait_for(lambda: len(settings_sent(reader)) >= 6)
        assert reader.settings.rssi


def test_silent_reader_is_probed_then_reconnected(tmp_path: Path) -> None:
    with served("tcp", tmp_path, probe_interval_s=0.3, response_timeout_s=0.5) as parts:
        reader, _, driver, sink = parts
        wait_for(lambda: reader.stats.commands.count(".vr") >= 2)  # a probe after silence
        assert driver.health().state == "up"  # it was answered
        reader.fail_next(".vr", 255)  # answered with ER: still an answer
        reader.emit = lambda data: None  # now the link swallows everything
        wait_for(lambda: driver.health().reconnects.get("no_response", 0) >= 1, 15)


def test_unopenable_port_backs_off(tmp_path: Path) -> None:
    sink = RecordingSink()
    driver = make_driver(str(tmp_path / "no-such-port"), sink, reconnect_max_s=0.2)
    running = Running(driver).start()
    try:
        wait_for(lambda: driver.health().reconnects.get("open_failed", 0) >= 3)
        assert "backoff" in sink.state_names()
    finally:
        running.stop()
    assert sink.state_names()[-1] == "stopped"


def test_loop_url_is_accepted(tmp_path: Path) -> None:
    """loop:// echoes our own commands back: no reader answers, so the driver reconnects."""
    sink = RecordingSink()
    driver = make_driver("loop://", sink, response_timeout_s=0.3, reconnect_max_s=0.2)
    running = Running(driver).start()
    try:
        wait_for(lambda: driver.health().reconnects.get("no_response", 0) >= 1)
        assert driver.health().errors["unknown_line"] == 0
    finally:
        running.stop()


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="returns_location"):
        TSLDriver.Options(port="/dev/rfcomm0", workflow="returns")
    with pytest.raises(ValueError, match="10..29"):
        TSLDriver.Options(port="/dev/rfcomm0", tx_power_dbm=33)


def test_config_checks_location_refs() -> None:
    from gateway.config import ConfigError, from_dict

    raw = {
        "gateway": {"site": "s1", "id": "g1", "state_dir": "/var/lib/x"},
        "mqtt": {"url": "mqtt://127.0.0.1"},
        "locations": {"SHELF-A1": {"barcode": "LOC-SHELF-A1"}},
        "readers": [
            {
                "name": "hh-1",
                "driver": "tsl",
                "port": "/dev/rfcomm0",
                "allowed_locations": ["SHELF-A1", "SHELF-ZZ"],
                "count_window_s": 30,
            }
        ],
    }
    with pytest.raises(ConfigError, match=r"allowed_locations: unknown location 'SHELF-ZZ'"):
        from_dict(raw)
    raw["readers"][0]["allowed_locations"] = ["SHELF-A1"]
    settings = from_dict(raw)
    assert settings.readers[0].options.count_window_s == 30.0


# --- the simulator's command line --------------------------------------------------------------


def run_cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "simulators.tsl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def test_cli_pty_link_first_count(tmp_path: Path) -> None:
    link = tmp_path / "hh"
    # The shipped count scenario, its steps 2 s later: its clock starts at the driver's first
    # command, and its first pull (the only full one holding the 3 misplaced tags) comes 1 s
    # after, while the driver may still be sending its settings on a loaded box (a clean-clone
    # CI run once saw fewer than 39 EPCs so). This test is about the link; the slow test below
    # plays the scenario as shipped.
    raw = json.loads((ROOT / "simulators/scenarios/handheld-count.json").read_text())
    for step in raw["steps"]:
        step["at"] += 2.0
    scenario = tmp_path / "handheld-count-later.json"
    scenario.write_text(json.dumps(raw))
    proc = run_cli("--scenario", str(scenario), "--pty", "--link", str(link))
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["link"] == str(link) and first["pty"].startswith("/dev/")
        assert os.path.realpath(link) == first["pty"]
        sink = RecordingSink()
        running = Running(make_driver(str(link), sink)).start()
        try:
            wait_for(lambda: len({r.epc for r in sink.all_reads}) == 39, 20)
            assert [e.data.get("barcode") for e in sink.events if e.kind == "barcode"] == [
                "LOC-SHELF-A1"
            ]
        finally:
            running.stop()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_cli_count_scenario_over_pty_link(tmp_path: Path) -> None:
    """The whole shipped count scenario, faults and all (about 10 s)."""
    link = tmp_path / "hh"
    scenario = ROOT / "simulators/scenarios/handheld-count.json"
    proc = run_cli("--scenario", str(scenario), "--pty", "--link", str(link))
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["link"] == str(link) and first["pty"].startswith("/dev/")
        sink = RecordingSink()
        driver = make_driver(str(link), sink, reconnect_max_s=0.5)
        running = Running(driver).start()
        try:
            # The whole scenario: first count, faults, vanish at 5 s, later pulls.
            wait_for(lambda: sink.state_names().count("up") >= 2, 30)
            wait_for(
                lambda: [e.data.get("barcode") for e in sink.events].count("LOC-SHELF-A1") == 2, 30
            )
            wait_for(lambda: error_count(driver, "reader_error_009") == 1, 30)
            epcs = {r.epc for r in sink.all_reads}
            assert len(epcs) == 39  # 24 + 12 on the shelf + 3 misplaced
            barcodes = [e.data["barcode"] for e in sink.events if e.kind == "barcode"]
            assert barcodes == ["LOC-SHELF-A1", "LOC-NOWHERE", "LOC-SHELF-A1"]
            errors = driver.health().errors
            assert errors["noise_bytes"] >= 48 and errors["garbled_line"] >= 2
        finally:
            running.stop()
    finally:
        proc.terminate()
        proc.wait(10)


def test_cli_listen_prints_host_and_port(tmp_path: Path) -> None:
    scenario = ROOT / "simulators/scenarios/handheld-returns.json"
    proc = run_cli("--scenario", str(scenario), "--listen", "127.0.0.1:0")
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["host"] == "127.0.0.1" and first["port"] > 0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_cli_rejects_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"steps": [{"at": 1, "do": "dance"}]}))
    proc = run_cli("--scenario", str(bad))
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2 and "steps/0/do" in err
