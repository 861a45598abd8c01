"""Chaos: devices misbehave one after the other while the whole site runs — a reader flapping
(connection dropped three times), a half-open reader (socket open, nothing said: `silent`), a
reader refusing connections, the handheld's port vanishing, a PLC that stops answering. Each
one is noticed and counted (/metrics: fc_edge_device_reconnects_total{device,cause},
fc_edge_device_errors_total{device,kind}), each recovers on its own once the fault ends, and
every other device keeps delivering meanwhile, without a reconnect of its own. It runs with the
LLRP readers decoded in the daemon and in one decoder process (`decoder_processes = 1`, all
six readers in one child: a reader's fault there must not disturb the other five)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.chaos import DECODING, assert_decoding, decode_llrp_in
from tests.support.helpers import wait_for
from tools.simsite import (
    CONVEYOR,
    HANDHELD,
    ROBOT,
    Site,
    http_json,
    metric,
    running_site,
    scrape,
    wait_all_up,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def activity(samples: Samples, device: str) -> float:
    """What a device has delivered: tag reads for readers, events for the handheld and equipment."""
    return metric(samples, "fc_edge_reads_total", reader=device) + metric(
        samples, "fc_edge_device_events_total", device=device
    )


def reconnects(samples: Samples, device: str, cause: str | None = None) -> float:
    labels = {"device": device} | ({"cause": cause} if cause else {})
    return metric(samples, "fc_edge_device_reconnects_total", **labels)


def errors(samples: Samples, device: str) -> float:
    return metric(samples, "fc_edge_device_errors_total", device=device)


def fresh_scrape(site: Site) -> Samples:
    return wait_for(lambda: scrape(site.metrics_url), 30, interval=0.5)


@contextmanager
def others_unaffected(site: Site, faulty: str) -> Iterator[None]:
    """Around a fault: every other device delivers more than before and never reconnects."""
    before = fresh_scrape(site)
    yield
    after = fresh_scrape(site)
    for device in site.devices:
        if device == faulty:
            continue
        if device == HANDHELD:
            # A handheld delivers only when its operator pulls the trigger (a count every few
            # seconds here), so a short fault window may see nothing from it: it must stay up.
            assert site.device_states().get(device) == "up", (
                f"{device} went {site.device_states().get(device)} while {faulty} was faulty"
            )
        else:
            assert activity(after, device) > activity(before, device), (
                f"{device} stopped delivering while {faulty} was faulty"
            )
        assert reconnects(after, device) == reconnects(before, device), (
            f"{device} reconnected while only {faulty} was faulty"
        )


def recovered(site: Site, device: str, since: Samples, timeout: float = 120) -> None:
    """Up again and delivering again."""

    def ok() -> bool:
        now = scrape(site.metrics_url)
        return site.device_states().get(device) == "up" and activity(now, device) > activity(
            since, device
        )

    try:
        wait_for(ok, timeout, interval=0.5)
    except AssertionError:
        raise AssertionError(
            f"{device} did not recover: {site.device_states()}\n{site.gateway_log()}"
        ) from None


def llrp_fault(site: Site, reader: str, fault: str, **kw: object) -> None:
    reply = http_json(f"{site.control_url}/readers/{reader}/fault", {"fault": fault, **kw})
    assert "error" not in reply, reply


def left_up(site: Site, device: str, timeout: float = 60) -> None:
    wait_for(lambda: site.device_states().get(device) != "up", timeout, interval=0.1)


def counted(
    site: Site, what: Callable[[Samples], float], more_than: float, timeout: float = 60
) -> float:
    return float(
        wait_for(lambda: (v := what(scrape(site.metrics_url))) > more_than and v, timeout, 0.5)
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
@DECODING
def test_flapping_half_open_refusing_vanishing_and_timing_out_devices_recover_counted_alone(
    tmp_path: Path, broker: Broker, decoders: int
) -> None:
    with running_site(tmp_path, broker.url, minutes=8) as site:
        decode_llrp_in(site, decoders)
        site.start_gateway()
        wait_all_up(site, 180)
        assert_decoding(site.metrics_url, decoders)
        time.sleep(3)

        # 1. A reader flapping: its connection dropped three times in a row.
        with others_unaffected(site, "dock-01"):
            start = fresh_scrape(site)
            for _ in range(3):
                before = fresh_scrape(site)
                llrp_fault(site, "dock-01", "drop")
                counted(site, lambda s: reconnects(s, "dock-01"), reconnects(before, "dock-01"))
                recovered(site, "dock-01", before)
        assert reconnects(fresh_scrape(site), "dock-01") >= reconnects(start, "dock-01") + 3

        # 2. Half-open: the socket stays open, the reader says nothing (no reports, no
        # keepalives, not even to a new connection) until the fault is cleared.
        with others_unaffected(site, "staging"):
            before = fresh_scrape(site)
            llrp_fault(site, "staging", "silent")
            counted(
                site,
                lambda s: reconnects(s, "staging", "liveness"),
                reconnects(before, "staging", "liveness"),
            )
            left_up(site, "staging")
            llrp_fault(site, "staging", "clear")
            recovered(site, "staging", before)

        # 3. Refusing: the connection dropped and new ones accepted-and-closed for 10 s.
        with others_unaffected(site, "conv-1"):
            before = fresh_scrape(site)
            llrp_fault(site, "conv-1", "refuse", seconds=10)
            llrp_fault(site, "conv-1", "drop")
            counted(site, lambda s: reconnects(s, "conv-1"), reconnects(before, "conv-1") + 1)
            recovered(site, "conv-1", before)

        # 4. The handheld's port vanishes for 5 s (a Bluetooth link going away).
        with others_unaffected(site, HANDHELD):
            before = fresh_scrape(site)
            assert site.handheld is not None
            site.handheld.vanish_in_background(5.0)
            counted(site, lambda s: reconnects(s, HANDHELD), reconnects(before, HANDHELD))
            recovered(site, HANDHELD, before)

        # 5. A PLC stops answering (requests dropped: every poll times out) for 8 s.
        with others_unaffected(site, CONVEYOR):
            before = fresh_scrape(site)
            plc = site.modbus[CONVEYOR]
            plc.command({"fault": "no_answer"})
            try:
                counted(site, lambda s: errors(s, CONVEYOR), errors(before, CONVEYOR))
                left_up(site, CONVEYOR)
                time.sleep(8)
            finally:
                plc.command({"fault": "none"})
            recovered(site, CONVEYOR, before)
        final = fresh_scrape(site)
        assert metric(final, "fc_edge_device_errors_total", device=CONVEYOR, kind="timeout") > 0
        assert reconnects(final, CONVEYOR) > reconnects(before, CONVEYOR)

        # Through it all the robot handed over its moves, and at the end every device is up
        # (and no decoder process was restarted: each fault was its reader's alone).
        assert site.modbus[ROBOT].command({"status": True})["status"]["acked"]
        wait_all_up(site, 60)
        assert_decoding(site.metrics_url, decoders)
        assert metric(fresh_scrape(site), "fc_edge_decoder_restarts_total") == 0
        assert site.stop_gateway() == 0, site.gateway_log()
