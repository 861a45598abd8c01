"""`fc-edge demo`: its pieces (plan, merged config, handheld script) checked fast, then the whole
demo as a real subprocess — mosquitto, LLRP/Modbus/OPC UA/TSL/VDA 5050 simulators, gateway,
listen, a broker outage — ending with every movement counted and nothing lost; and Ctrl-C leaving
no child behind.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway import config as config_mod
from gateway import demo
from simulators import scenario as scenarios
from simulators.tsl.scenario import load as load_tsl_scenario
from tests.support.gateway import ROOT
from tests.support.helpers import wait_for

# --- the pieces, fast ----------------------------------------------------------------------------


def test_plan_scales_the_outage_and_the_scenario_to_the_duration() -> None:
    long = demo.Plan.for_duration(90, 72)
    assert long.outage_s == 20 and long.speed == 1.0
    assert 0 < long.outage_at_s and long.outage_end_s < 90
    short = demo.Plan.for_duration(30, 72)
    assert 3 <= short.outage_s < 20
    assert short.outage_end_s < 30 - 5, "time must be left to see the outbox drain"
    assert 72 / short.speed <= 0.8 * 30 + 1e-9, "the scenario plays within the run"


def merged(tmp_path: Path, handheld_port: int | None = 4001) -> dict[str, Any]:
    site = scenarios.load_scenario(demo.SITE_SCENARIO)
    ports = {name: 5000 + i for i, name in enumerate(site.readers)}
    base = scenarios.gateway_config_text(
        site, ports, "127.0.0.1", state_dir=str(tmp_path / "state"), mqtt_url="mqtt://127.0.0.1:1"
    )
    return demo.merge_config(
        tomllib.loads(base),
        metrics_port=9999,
        equipment_ports={"conveyor-plc": 6001, "robot-cell": 6002},
        handheld_port=handheld_port,
        ua_robot_port=6003,
    )


def test_merged_config_is_one_valid_gateway_config_with_every_device(tmp_path: Path) -> None:
    path = tmp_path / "demo.toml"
    demo.write_config(merged(tmp_path), path)
    settings = config_mod.load(path)  # what `fc-edge run` will load
    drivers = {d.name: d.driver for d in settings.devices}
    assert {n for n, d in drivers.items() if d == "llrp"} == {
        "dock-01", "dock-02", "staging", "conv-1", "store", "returns",
    }  # fmt: skip
    assert drivers["conveyor-plc"] == drivers["robot-cell"] == "modbus"
    assert drivers[demo.HANDHELD] == "tsl"
    assert set(settings.portals) == {"dock-01", "dock-02"}
    assert settings.locations[demo.COUNTED_LOCATION].barcode == demo.COUNTED_BARCODE
    assert settings.locations["RETURNS-COUNTER"].disposition == "returned"
    assert settings.mqtt.reconnect_max_s <= 2
    robot = next(d for d in settings.equipment if d.name == "robot-cell")
    assert set(robot.options.stations.values()) <= set(settings.locations)


def test_merged_config_has_the_opc_ua_robot_cell_beside_the_modbus_one(tmp_path: Path) -> None:
    path = tmp_path / "demo.toml"
    demo.write_config(merged(tmp_path), path)
    settings = config_mod.load(path)
    equipment = {d.name: d for d in settings.equipment}
    ua, modbus = equipment[demo.UA_ROBOT], equipment["robot-cell"]
    assert (ua.driver, modbus.driver) == ("opcua", "modbus")
    assert ua.options.url == "opc.tcp://127.0.0.1:6003"
    assert Path(ua.options.map) == demo.EQUIPMENT_MAPS / "opcua" / "robot.toml"
    # Same station numbers, locations of its own: the two cells' moves never mix.
    assert set(ua.options.stations) == set(modbus.options.stations) == {"1", "2", "3", "4"}
    ua_locations = set(ua.options.stations.values())
    assert ua_locations <= set(settings.locations)
    assert not ua_locations & set(modbus.options.stations.values())


def test_merged_config_without_the_opc_ua_robot_has_no_opc_ua_entry(tmp_path: Path) -> None:
    raw = merged(tmp_path)
    site = scenarios.load_scenario(demo.SITE_SCENARIO)
    base = scenarios.gateway_config_text(
        site, {n: 5000 for n in site.readers}, "127.0.0.1", state_dir=str(tmp_path / "s"),
        mqtt_url="mqtt://127.0.0.1:1",
    )  # fmt: skip
    without = demo.merge_config(
        tomllib.loads(base), metrics_port=9999, equipment_ports={}, handheld_port=None
    )
    assert demo.UA_ROBOT in {e["name"] for e in raw["equipment"]}
    assert all(e["driver"] != "opcua" for e in without["equipment"])
    assert not set(demo.UA_ROBOT_STATIONS.values()) & set(without["locations"])


def test_merged_config_without_the_handheld_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "demo.toml"
    demo.write_config(merged(tmp_path, handheld_port=None), path)
    assert all(d.driver != "tsl" for d in config_mod.load(path).devices)


def test_a_bad_merge_is_refused_with_the_loader_s_words(tmp_path: Path) -> None:
    raw = merged(tmp_path)
    raw["equipment"][1]["stations"] = {"1": "NOWHERE"}
    with pytest.raises(demo.DemoError, match="NOWHERE"):
        demo.write_config(raw, tmp_path / "bad.toml")


def test_handheld_script_is_a_valid_tsl_scenario_counting_the_shelf(tmp_path: Path) -> None:
    plan = demo.Plan.for_duration(30, 72)
    script = demo.handheld_scenario(plan, start_delay_s=6)
    path = tmp_path / "hh.json"
    path.write_text(json.dumps(script))
    load_tsl_scenario(path)  # raises on anything the TSL simulator would refuse
    scans = [s for s in script["steps"] if s["do"] == "scan"]
    assert [s["barcode"] for s in scans] == [demo.COUNTED_BARCODE] * 2
    # The second count happens during the outage (its counts message waits in the outbox).
    lead = 6 - 3
    assert plan.outage_at_s < scans[1]["at"] - lead < plan.outage_end_s
    site = json.loads(demo.SITE_SCENARIO.read_text())
    assert len(script["groups"]["shelf"]) == site["tags"]["shelf"]["sgtin"]["count"]


def test_watch_reads_the_ims_output_and_the_live_view_renders(tmp_path: Path) -> None:
    from rich.console import Console

    def movement(seq: int, kind: str, to: str | None, **kw: Any) -> dict[str, Any]:
        return {"schema": "fc-edge/movement/1", "seq": seq, "type": kind, "to": to, **kw}

    out, err = tmp_path / "listen.out", tmp_path / "listen.err"
    lines = [
        movement(1, "arrived", "SHIP-DOCK", epc="3034257BF7194E40000003E8",
                 item={"gtin": "80614141123458", "serial": "1000"}),
        movement(3, "moved", "UA-CELL-OUT", object_id="TOTE-000001", source=demo.UA_ROBOT),
        movement(2, "departed", None, epc="3034257BF7194E40000003E8"),
        {"schema": "fc-edge/equipment/1", "seq": 1, "device": "robot-cell", "event": "state"},
    ]  # fmt: skip
    out.write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"half a li')
    gap = {"event": "seq_gap", "gateway": "gw-demo", "stream": "movements", "from_seq": 2}
    err.write_text(json.dumps({**gap, "to_seq": 2}) + "\n")
    site = demo.Site(tmp_path / "demo.toml", "http://127.0.0.1:1", [], [demo.UA_ROBOT], None)
    watch = demo.Watch(site, demo.TailFile(out), demo.TailFile(err))
    watch.poll()  # nothing listens on port 1: the scrape just finds nothing
    assert watch.by_type == {"arrived": 1, "moved": 1, "departed": 1}
    assert watch.stock == {"TOTE-000001": "UA-CELL-OUT"}  # the departed EPC left the stock
    assert watch.equipment_bookings() == {demo.UA_ROBOT: 1}
    assert watch.seqs == {"movements": {1, 2, 3}, "equipment": {1}}
    assert len(watch.gaps) == 1 and watch.equipment_events == {"robot-cell:state": 1}

    args = argparse.Namespace(duration_s=30.0, broker="mqtt://127.0.0.1:1", no_tty=True)
    d = demo.Demo(args)
    d.site, d.watch, d.t0 = site, watch, time.monotonic() - 12
    site.config_path.write_text('[gateway]\nsite = "DEMO-FC"\n')
    watch.ready = {
        "broker": "disconnected",
        "outbox": {"depth": 42},
        "devices": {"dock-01": {"state": "up"}, demo.UA_ROBOT: {"state": "unreachable"}},
    }
    assert watch.devices_up() == (1, 2)
    watch.depth_history.extend([0, 5, 42])
    console = Console(width=140, height=40, record=True, file=io.StringIO())
    console.print(demo.render_live(d))
    screen = console.export_text()
    for text in (
        "DEMO-FC",
        "80614141123458 #1000",
        "TOTE-000001",
        "UA-CELL-OUT",
        "outbox depth",
        "dock-01",
    ):
        assert text in screen, text
    figures = d.figures({"depth": 0, "last_seq": {"movements": 3, "equipment": 1}}, 0)
    assert figures["lost"] == {} and figures["gaps"] == 1 and figures["gaps_filled_later"] == 1
    assert figures["ok"] is False  # a reordering fails the check, as a loss would
    assert figures["equipment_bookings"] == {demo.UA_ROBOT: 1}
    assert figures["devices_up"] == {"up": 1, "of": 2}
    shutil.rmtree(d.workdir)


# Runs `fc-edge demo ARGS` in a fresh interpreter where rich cannot be imported (as after a plain
# `pip install fc-edge`, without the demo extra): a finder first on sys.meta_path refuses it.
WITHOUT_RICH = """
import sys

class NoRich:
    def find_spec(self, name, path=None, target=None):
        if name == "rich" or name.startswith("rich."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoRich())
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_demo_without_rich_says_how_to_install_it_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_RICH, "demo", "--no-tty", "--duration-s", "15"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "fc-edge demo: needs rich, the demo's optional extra: pip install 'fc-edge[demo]'"
    ]
    assert not list(tmp_path.iterdir()), "nothing started, nothing written"


def test_demo_help_works_without_rich() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_RICH, "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: fc-edge demo" in done.stdout


def test_the_files_the_demo_reads_are_package_data() -> None:
    """What `fc-edge demo` reads from beside its code must ship in the wheel (pyproject.toml's
    package-data): the LLRP site scenario, the Modbus maps of its conveyor and robot and the
    OPC UA map of its second robot."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = setuptools["package-data"]
    for path in (demo.SITE_SCENARIO, demo.EQUIPMENT_MAPS / "conveyor.toml",
                 demo.EQUIPMENT_MAPS / "robot.toml", demo.UA_ROBOT_MAP):  # fmt: skip
        assert path.is_file(), path
        package, rel = path.relative_to(ROOT).parts[0], path.relative_to(ROOT).parts[1:]
        assert any(Path(*rel).match(glob) for glob in data.get(package, [])), path


# --- the whole demo, real processes ------------------------------------------------------------


def run_demo(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_30s_counts_every_movement_through_a_broker_outage() -> None:
    proc = run_demo("--duration-s", "30", "--no-tty")
    out, _ = proc.communicate(timeout=150)
    summaries = [json.loads(line) for line in out.splitlines() if line.startswith('{"demo"')]
    assert len(summaries) == 1, out[-4000:]
    s = summaries[0]
    movements = s["movements"]
    # The site's scenario: arrivals at both docks, the conveyor, the store; moves to staging,
    # along the conveyor, off the returns counter; departures into the trailer and packing.
    assert movements.get("arrived", 0) > 0 and movements.get("moved", 0) > 0, s
    assert movements.get("departed", 0) > 0, s
    assert s["movements_total"] == sum(movements.values()) > 50
    assert s["equipment_events"] > 0, "the conveyor PLC and the robot cell report"
    assert s["outage"]["observed"] and s["outage"]["max_outbox_depth"] > 0, s["outage"]
    assert s["drained"] is True and s["outbox_depth_at_end"] == 0, (s, out[-3000:])
    assert s["lost"] == {}, "messages the outbox handed out never reached the IMS"
    assert s["gaps"] == 0, (
        f"listen saw {s['gaps']} seq gaps, {s['gaps_filled_later']} of them filled later: "
        "messages of one stream arrived out of order (see gateway/publisher.py)"
    )
    # Every message the gateway ever put in its outbox reached the IMS, stream by stream.
    assert s["outbox_last_seq"]["movements"] == s["received"]["movements"] == s["movements_total"]
    assert s["handheld"] is True and s["counts"]["messages"] >= 1, "the handheld's count"
    # Both robot cells, Modbus and OPC UA, booked moves; every device was up at the end.
    booked = s["equipment_bookings"]
    assert booked["robot-cell"] > 0 and booked[demo.UA_ROBOT] > 0, booked
    assert s["devices_up"] == {"up": 12, "of": 12}, s["devices_up"]
    assert f"{demo.UA_ROBOT} {booked[demo.UA_ROBOT]}" in out and "devices up 12/12" in out
    assert "where to look next" in out and "demo.toml" in out
    assert s["gateway_exit"] == 0 and s["ok"] is True and proc.returncode == 0, out[-4000:]


def children_of(pid: int) -> set[int]:
    kids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.add(int(entry.name))
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _sigint_as_on_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_stops_every_child_process() -> None:
    # A user's Ctrl-C reaches a demo in the foreground. A suite started in the background by a
    # non-interactive shell (`make test-slow &`) hands SIGINT down as ignored, and Python then
    # keeps ignoring it: restore the default, as a terminal's foreground process has it.
    proc = run_demo("--duration-s", "60", "--no-tty", preexec_fn=_sigint_as_on_a_terminal)
    # The two brokers, 6 simulators, listen and the gateway: 10 children once the site is up.
    kids: set[int] = wait_for(
        lambda: (lambda k: k if len(k) >= 10 else None)(children_of(proc.pid)), 60
    )
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out
    wait_for(lambda: not any(alive(pid) for pid in kids), timeout=10)
