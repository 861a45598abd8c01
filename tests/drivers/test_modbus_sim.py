"""The Modbus simulator on its own: the CLI's first line and stdin control, the register
layout seen through a plain pymodbus client (no driver code), and each fault."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from simulators.modbus import PackMLMachine, RobotCell, SimulatorServer, SimulatorThread
from simulators.modbus.cli import main, parse_listen
from tests.support.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


class CliSim:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from simulators.modbus.cli import main; "
             "sys.exit(main(sys.argv[1:]))", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.first = json.loads(self.proc.stdout.readline())

    def command(self, obj: dict[str, Any] | str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        line = obj if isinstance(obj, str) else json.dumps(obj)
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return reply

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def cli_robot() -> Iterator[CliSim]:
    sim = CliSim("--device", "robot", "--listen", f"127.0.0.1:{free_port()}", "--no-script")
    yield sim
    sim.close()


def test_cli_prints_host_port_first_and_obeys_stdin(cli_robot: CliSim) -> None:
    assert set(cli_robot.first) == {"host", "port"}
    assert cli_robot.first["host"] == "127.0.0.1"
    client = ModbusTcpClient("127.0.0.1", port=cli_robot.first["port"], timeout=2, retries=0)
    assert client.connect()
    try:
        state = client.read_holding_registers(0, count=1, device_id=1)
        assert not state.isError() and state.registers == [1]  # robot cell Idle
        reply = cli_robot.command({"fault": "exception", "code": 4})
        assert reply == {
            "ok": True,
            "faults": {"exception": 4, "no_answer": False, "garbage": False, "freeze": False},
        }
        answer = client.read_holding_registers(0, count=1, device_id=1)
        assert answer.isError() and answer.exception_code == 4
        assert cli_robot.command({"fault": "none"})["faults"]["exception"] is None
        assert not client.read_holding_registers(0, count=1, device_id=1).isError()
        assert cli_robot.command("not json")["ok"] is False
        assert cli_robot.command({"fault": "exception", "code": 99})["ok"] is False
        status = cli_robot.command({"status": True})["status"]
        assert status["device"] == "robot" and status["requests"] >= 3
    finally:
        client.close()


def test_parse_listen() -> None:
    assert parse_listen("0.0.0.0:5020") == ("0.0.0.0", 5020)
    assert parse_listen(":5020") == ("127.0.0.1", 5020)
    with pytest.raises(Exception, match="HOST:PORT"):
        parse_listen("5020")


def test_main_rejects_unknown_device() -> None:
    with pytest.raises(SystemExit):
        main(["--device", "toaster"])


def test_layout_through_a_plain_client() -> None:
    """What the simulator serves, read with nothing but pymodbus: addresses are exact (the
    new simulator data model has no off-by-one), 32-bit values high word first."""
    machine = PackMLMachine(script=False)
    with SimulatorThread(SimulatorServer(machine)) as sim:
        sim.call(lambda: (machine.set_state(6), machine.set_counters(70000, 2)))
        client = ModbusTcpClient("127.0.0.1", port=sim.server.port, timeout=2, retries=0)
        assert client.connect()
        try:
            regs = client.read_holding_registers(0, count=6, device_id=1).registers
            assert regs[0] == 6
            assert regs[2] << 16 | regs[3] == 70000
            assert regs[4:6] == [0, 2]
        finally:
            client.close()


def test_robot_waits_for_the_ack_and_ignores_a_wrong_one() -> None:
    robot = RobotCell(move_every_s=None, script=False)
    with SimulatorThread(SimulatorServer(robot)) as sim:
        sim.call(lambda: robot.queue_move(1, 2, tote="T-1"))
        client = ModbusTcpClient("127.0.0.1", port=sim.server.port, timeout=2, retries=0)
        assert client.connect()
        try:
            record = wait_for(lambda: client.read_holding_registers(100, count=5).registers[0], 5)
            assert record == 1
            regs = client.read_holding_registers(100, count=5).registers
            assert regs[1] << 16 | regs[2] == 1 and regs[3:5] == [1, 2]
            tote = client.read_holding_registers(105, count=2).registers
            assert tote == [ord("T") << 8 | ord("-"), ord("1") << 8]
            client.write_registers(131, [0, 7])  # not this record's seq
            assert sim.call(lambda: robot.acked) == []
            client.write_registers(131, [0, 1])
            assert sim.call(lambda: robot.acked) == [1]
            assert client.read_holding_registers(100, count=1).registers == [0]
        finally:
            client.close()


def test_no_answer_and_disconnect_faults() -> None:
    with SimulatorThread(SimulatorServer(PackMLMachine(script=False))) as sim:
        client = ModbusTcpClient("127.0.0.1", port=sim.server.port, timeout=0.3, retries=0)
        assert client.connect()
        try:
            sim.control({"fault": "no_answer"})
            with pytest.raises(Exception, match="No response"):
                client.read_holding_registers(0, count=1)
            sim.control({"fault": "none"})
            client.close()
            assert client.connect()
            assert not client.read_holding_registers(0, count=1).isError()
            assert sim.control({"fault": "disconnect"})["closed"] == 1
        finally:
            client.close()
