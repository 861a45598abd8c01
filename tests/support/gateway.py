"""Gateway configs for the tests, and (from tools/harness.py) the real `fc-edge` process and
`fc-edge listen` as the IMS."""

from __future__ import annotations

from pathlib import Path

from tools.harness import ROOT, ListenProcess, fc_edge

__all__ = [
    "ROOT",
    "ListenProcess",
    "fc_edge",
    "gateway_head",
    "gateway_toml",
    "llrp_zone_readers",
    "replay_reader",
]


def gateway_toml(
    state_dir: Path,
    broker_url: str,
    readers: str,
    *,
    extra: str = "",
    outbox: str = "",
    site: str = "S1",
    gw: str = "gw-1",
    metrics_port: int | None = None,
) -> str:
    metrics = (
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
        if metrics_port
        else "[metrics]\nenabled = false\n"
    )
    return f"""
[gateway]
site = "{site}"
id = "{gw}"
state_dir = "{state_dir}"
shutdown_timeout_s = 5

[mqtt]
url = "{broker_url}"
client_id = "fc-edge-{gw}"

[outbox]
{outbox}

{metrics}

[locations.YARD]
offsite = true

[locations.DOCK-03]
biz_step = "receiving"
disposition = "in_progress"

[locations.STAGING]
biz_step = "storing"
disposition = "sellable_not_accessible"

{extra}

{readers}
"""


def gateway_head(state_dir: Path, broker_url: str, site: str = "S1", gw: str = "gw-1") -> str:
    """[gateway], [mqtt] and metrics off: the part every test config shares."""
    return f"""
[gateway]
site = "{site}"
id = "{gw}"
state_dir = "{state_dir}"
shutdown_timeout_s = 5
[mqtt]
url = "{broker_url}"
client_id = "fc-edge-{gw}"
[metrics]
enabled = false
"""


def llrp_zone_readers(ports: dict[str, int]) -> str:
    """One LLRP reader per name (on 127.0.0.1:port, a 2 s keepalive, reconnects within 1 s),
    its antenna 1 the zone ZONE-{NAME}, and those zones' locations."""
    text = ""
    for name, port in ports.items():
        text += f"""
[[readers]]
name = "{name}"
driver = "llrp"
host = "127.0.0.1"
port = {port}
keepalive_s = 2.0
reconnect_max_s = 1.0
[readers.antennas]
1 = {{ location = "ZONE-{name.upper()}" }}
"""
    return text + "".join(f'\n[locations.ZONE-{n.upper()}]\nbiz_step = "storing"\n' for n in ports)


def replay_reader(capture: Path, name: str = "dock-03", speed: float = 1.0) -> str:
    return f"""
[[readers]]
name = "{name}"
driver = "replay"
file = "{capture}"
speed = {speed}
[readers.antennas]
1 = {{ location = "YARD", read_point = "{name}-outside" }}
2 = {{ location = "DOCK-03", read_point = "{name}-inside" }}

[portals.{name}]
outside = ["{name}:1"]
inside = ["{name}:2"]
"""
