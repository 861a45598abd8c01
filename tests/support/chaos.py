"""What several chaos tests share (the simulated site itself is tools/simsite.py, which the
soak tool runs too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import demo
from tests.support.broker import Broker
from tests.support.helpers import free_port, wait_for
from tools.simsite import Site, metric, scrape


def persistent_broker(tmp_path: Path) -> Broker:
    # Saved on SIGTERM (and every 60 s): Broker's default 1 s autosave rewrites the whole store
    # each second, which with a backlog of 100k+ queued messages stalls the broker (measured:
    # the gateway's drain fell to ~1.8k msg/s).
    b = Broker(tmp_path / "broker", free_port(), persistence=True, autosave_s=60)
    b.workdir.mkdir()
    b.start()
    return b


# The chaos tests that drive LLRP readers run twice: decoded in the gateway process, as they
# were written, and in one decoder process (`[gateway] decoder_processes = 1`, issue #14).
DECODING = pytest.mark.parametrize("decoders", [0, 1], ids=["in-process", "decoder-process"])


def decode_llrp_in(site: Site, processes: int) -> None:
    """The site's gateway config, rewritten with `[gateway] decoder_processes = processes`."""
    site.raw["gateway"]["decoder_processes"] = processes
    demo.write_config(site.raw, site.config)


def assert_decoding(metrics_url: str, processes: int) -> None:
    """The gateway runs `processes` decoder processes (0: none; a variant that silently
    decoded in-process would prove nothing)."""
    running = metric(scrape(metrics_url), "fc_edge_decoder_processes")
    assert running == processes, f"{running:g} decoder processes running, not {processes}"


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_ended(pids: list[int], timeout: float = 10) -> None:
    """Until none of `pids` runs (a gateway's decoder processes, after it was killed)."""
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout, interval=0.05)
