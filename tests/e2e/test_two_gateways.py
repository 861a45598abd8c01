"""A site bigger than one box, every part real: one `fc-edge simulate llrp` serving two readers,
two `fc-edge run` (gw-a owns reader rd-a and ZONE-A, gw-b owns rd-b and ZONE-B) publishing to
one mosquitto, and `fc-edge listen --site S1` as the IMS.

Tags carried from ZONE-A to ZONE-B reach the IMS as gw-a's `departed` (to = null, after
ZONE-A's departed_after_s) and gw-b's `arrived` (from = null), unrelated on two streams:
- "fast" tags reach ZONE-B within a second, so gw-b's arrival is published seconds BEFORE gw-a
  gives them up (a consumer that lets every departure delete the tag loses them all);
- "slow" tags are in transit longer than departed_after_s: gw-a's departure comes first.
Other tags stay in each zone. listen's stock by location must end exactly right, each carried
tag reported once as a cross-gateway move, and each gateway's seqs arrive 1..N exactly once.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker
from tests.support.gateway import ListenProcess, fc_edge, gateway_head
from tests.support.helpers import wait_for

pytestmark = pytest.mark.slow

DEPARTED_AFTER_S = 5.0  # ZONE-A and ZONE-B give an unread tag up after this long
TICK_S = 1.0  # every tag in a field is read once a tick
END_S = 150.0  # reads of the tags that stay go on this long: well past the test's end
GROUPS = {  # name: (count, ticks read by rd-a, ticks read by rd-b), in seconds from the start
    "stay-a": (20, (0.0, END_S), None),
    "stay-b": (20, None, (0.0, END_S)),
    "fast": (20, (0.0, 6.0), (7.0, END_S)),  # b arrives at ~8 s, a departs at ~10 s
    "slow": (10, (0.0, 6.0), (17.0, END_S)),  # a departs at ~10 s, b arrives at ~18 s
}
SCENARIO = {  # the two readers; their reads come over the control channel (below)
    "site": "S1",
    "seed": 1,
    "duration": 3600,
    "readers": {
        "rd-a": {"antennas": {"1": {"location": "ZONE-A"}}},
        "rd-b": {"antennas": {"1": {"location": "ZONE-B"}}},
    },
    "radio": {"round_ms": 200, "read_rate": 1.0, "rssi_near": -50, "rssi_sigma": 0},
    "tags": {
        "none": {"sgtin": {"company": "4912345", "item": "067890", "serial_from": 1, "count": 1}}
    },
    "timeline": [],
}


def epcs(group: str) -> list[str]:
    g = list(GROUPS).index(group)
    return [f"30342D5A{g:04X}{k:012X}" for k in range(GROUPS[group][0])]


def schedule(reader: int) -> dict[float, list[str]]:
    """The EPCs reader 0 (rd-a) or 1 (rd-b) reads at each tick."""
    ticks: dict[float, list[str]] = {}
    for group, (_, *spans) in GROUPS.items():
        span = spans[reader]
        if span is None:
            continue
        t = span[0]
        while t < span[1]:
            ticks.setdefault(t, []).extend(epcs(group))
            t += TICK_S
    return ticks


def control(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", data, timeout=30) as resp:
        return json.loads(resp.read())


def play(port: int) -> None:
    """Hand both readers their reads for the whole run, each at its time from now (each POST
    is timed from its own arrival, so the delay is corrected by the time spent posting)."""
    plans = {name: schedule(n) for n, name in enumerate(("rd-a", "rd-b"))}
    start = time.monotonic() + 1.0
    for t in sorted({t for plan in plans.values() for t in plan}):
        for name, plan in plans.items():
            if t in plan:
                reads = [[1, epc, -50] for epc in plan[t]]
                in_s = max(0.0, start + t - time.monotonic())
                control(port, f"/readers/{name}/reads", {"in_s": in_s, "reads": reads})


def gateway_config(tmp_path: Path, broker: Broker, gw: str, reader: str, port: int) -> Path:
    zone = f"ZONE-{gw[-1].upper()}"
    text = (
        gateway_head(tmp_path / f"state-{gw}", broker.url, gw=gw)
        + f"""
[profiles.fast]
departed_after_s = {DEPARTED_AFTER_S}
[locations.{zone}]
biz_step = "storing"
profile = "fast"
[[readers]]
name = "{reader}"
driver = "llrp"
host = "127.0.0.1"
port = {port}
[readers.antennas]
1 = {{ location = "{zone}" }}
"""
    )
    path = tmp_path / f"{gw}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def expected() -> Counter[tuple[str, str, str, str | None]]:
    """(gateway, type, epc, to) of every movement the IMS must get, once each."""
    want: Counter[tuple[str, str, str, str | None]] = Counter()
    for group, (_, at_a, at_b) in GROUPS.items():
        for epc in epcs(group):
            if at_a:
                want["gw-a", "arrived", epc, "ZONE-A"] += 1
            if at_a and at_b:
                want["gw-a", "departed", epc, None] += 1
            if at_b:
                want["gw-b", "arrived", epc, "ZONE-B"] += 1
    return want


def received_order(lines: list[dict[str, Any]], epc: str) -> list[tuple[str, str]]:
    return [(m["gateway"], m["type"]) for m in lines if m["epc"] == epc]


def test_a_tag_carried_between_two_gateways_ends_where_it_is(
    tmp_path: Path, broker: Broker
) -> None:
    scenario = tmp_path / "site.json"
    scenario.write_text(json.dumps(SCENARIO))
    sim_err = open(tmp_path / "sim.err", "wb")  # noqa: SIM115
    sim = fc_edge("simulate", "llrp", "--scenario", str(scenario), "--grace-s", "0",
                  stdout=subprocess.PIPE, stderr=sim_err)  # fmt: skip
    gateways: list[subprocess.Popen[bytes]] = []
    logs = []
    listen = None
    try:
        assert sim.stdout is not None
        where = json.loads(sim.stdout.readline())
        ports = {name: r["port"] for name, r in where["readers"].items()}
        listen = ListenProcess(tmp_path, broker.url, "S1", "--streams", "movements")
        for gw, reader in (("gw-a", "rd-a"), ("gw-b", "rd-b")):
            conf = gateway_config(tmp_path, broker, gw, reader, ports[reader])
            logs.append(open(tmp_path / f"{gw}.log", "wb"))  # noqa: SIM115
            gateways.append(fc_edge("run", "-c", str(conf), stdout=logs[-1], stderr=logs[-1]))
        cport = where["control"]["port"]
        # Reads due before a gateway inventories its reader would be dropped: wait for both.
        wait_for(lambda: all(r["active"] for r in control(cport, "/readers").values()), 90, 0.2)
        play(cport)
        total = sum(expected().values())
        with contextlib.suppress(AssertionError):  # what is missing or extra is reported below
            wait_for(lambda: len(listen.lines()) >= total, 120, 0.2)
    finally:
        for gw_proc in gateways:
            gw_proc.terminate()
        codes = [gw_proc.wait(60) for gw_proc in gateways]
        for log in logs:
            log.close()
        summary = listen.stop() if listen else {}
        sim.terminate()
        sim.wait(30)
        sim_err.close()
    assert codes == [0, 0]
    lines = listen.lines()
    got = Counter((m["gateway"], m["type"], m["epc"], m["to"]) for m in lines)
    assert got == expected(), (got - expected(), expected() - got)
    # Each gateway's stream: seqs 1..N, each exactly once, and no gap reported.
    for gw in ("gw-a", "gw-b"):
        seqs = sorted(m["seq"] for m in lines if m["gateway"] == gw)
        assert seqs == list(range(1, len(seqs) + 1)), (gw, seqs)
    assert summary["gaps"] == 0, summary
    # The stock by location, reconciled across the two streams.
    assert summary["stock"] == {"ZONE-A": 20, "ZONE-B": 50}, summary
    carried = set(epcs("fast")) | set(epcs("slow"))
    moves = [e for e in listen.stderr_events() if e.get("event") == "cross_gateway_move"]
    assert sorted(e["key"] for e in moves) == sorted(carried), moves[:3]
    assert {(e["from_gateway"], e["from"], e["to_gateway"], e["to"]) for e in moves} == {
        ("gw-a", "ZONE-A", "gw-b", "ZONE-B")
    }
    assert summary["cross_gateway_moves"] == len(carried), summary
    # Both orders really happened (else this test would not test the reconciliation).
    b_first = ("gw-b", "arrived"), ("gw-a", "departed")
    assert any(received_order(lines, e)[1:] == list(b_first) for e in epcs("fast"))
    assert any(received_order(lines, e)[1:] == list(b_first)[::-1] for e in epcs("slow"))
