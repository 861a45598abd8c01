"""The replay zone the spine tests (and others that need a steady stream of movements) run: a
one-antenna STAGING reader, a capture of distinct EPCs arriving in it, and reading the outbox
and the IMS's output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.helpers import sgtin96
from tools.simsite import outbox_depth as outbox_depth  # one copy: the chaos site's

ZONE_READER = """
[[readers]]
name = "zone-1"
driver = "replay"
file = "{capture}"
speed = {speed}
[readers.antennas]
1 = {{ location = "STAGING", read_point = "stg-1" }}
"""


def write_zone_capture(path: Path, n_epcs: int, per_second: int, reads_each: int = 8) -> list[str]:
    """n distinct EPCs arriving in the STAGING zone, `per_second` new ones each second, each
    read `reads_each` times 500 ms apart: plainly there, for any sane engine profile."""
    epcs = [sgtin96(4912345, 67890, i) for i in range(n_epcs)]
    rows = []
    for i, epc in enumerate(epcs):
        t0 = i / per_second
        rows += [(round(t0 + k * 0.5, 3), epc) for k in range(reads_each)]
    rows.sort()
    with path.open("w") as f:
        for t, epc in rows:
            f.write(
                json.dumps({"t": t, "reader": "zone-1", "antenna": 1, "epc": epc, "rssi": -55})
                + "\n"
            )
    return epcs


def movements(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in lines if m.get("schema", "").startswith("fc-edge/movement")]
