"""LLRP decoder processes: the pipe format (drivers/llrp_wire.py), how many processes "auto"
means and how readers are dealt to them (gateway/decoders.py), and the config key."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from drivers import llrp_wire as wire
from drivers.base import DriverHealth
from gateway import config as config_mod
from gateway.decoders import deal, pooled_readers, process_count
from gateway.model import TagRead

NAMES = ["dock-1", "dock-2"]


def reads(n: int, reader: str = "dock-2") -> list[TagRead]:
    return [
        TagRead(f"3034257BF7194E4000{k:06X}", reader, 1 + k % 4, -40.5 - k % 30, 10**15 + k, k + 1)
        for k in range(n)
    ]


@pytest.mark.parametrize("n", [0, 1, 100])
def test_a_batch_of_reads_arrives_as_it_was_sent(n: int) -> None:
    batch = reads(n)
    message = wire.unpack(wire.pack_reads(1, batch), NAMES)
    assert message == wire.Reads(1, batch)


def test_progress_state_health_and_reload_arrive_as_sent() -> None:
    health = DriverHealth("up", 5, 7, Counter(liveness=2), Counter(bad_tag=3), None)
    assert wire.unpack(wire.pack_progress(0, 123), NAMES) == wire.Progress(0, 123)
    assert wire.unpack(wire.pack_state(1, health, -40), NAMES) == wire.State(1, health, -40)
    assert wire.unpack(wire.pack_health({0: (health, None)}), NAMES) == wire.Health(
        {0: (health, None)}
    )
    assert wire.unpack(wire.pack_reloaded(3), NAMES) == wire.Reloaded(3)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "unknown message kind"),
        (b"Zjunk", "unknown message kind"),
        (wire.pack_reads(5, reads(1, "x")), "reader index 5 out of range"),
        (wire.pack_reads(0, reads(3))[:-30], "3 reads with 2 EPCs"),
        (wire.pack_reads(0, reads(3))[:40], "a batch of 3 reads in 40 bytes"),
        (wire.pack_reads(0, reads(2)) + b"\nEXTRA", "2 reads with 3 EPCs"),
        (wire.pack_progress(0, 1)[:-1], "'P' message"),
        (b'S{"reader": 0}', "'S' message"),
        (b'S{"reader": 0, "health": {"state": "dancing"}}', "unknown device state"),
        (b"Snot json", "'S' message"),
        (b'H{"readers": {"7": {}}}', "reader index 7 out of range"),
    ],
)
def test_a_malformed_message_is_refused_with_a_reason(data: bytes, why: str) -> None:
    with pytest.raises(wire.MalformedMessage, match=why):
        wire.unpack(data, NAMES)


def test_auto_is_the_cores_but_one_and_at_least_one() -> None:
    assert process_count("auto", cores=1) == 1
    assert process_count("auto", cores=2) == 2  # one decoder process stops at its core there
    assert process_count("auto", cores=4) == 3
    assert process_count("auto", cores=16) == 15
    assert process_count(0, cores=16) == 0
    assert process_count(3, cores=2) == 3


def site(tmp_path: Path, processes: str) -> Path:
    path = tmp_path / "site.toml"
    readers = "".join(
        f'[[readers]]\nname = "r{k}"\ndriver = "{driver}"\n{where}\n'
        '[readers.antennas]\n1 = { location = "DOCK" }\n'
        for k, (driver, where) in enumerate(
            [
                ("llrp", 'host = "192.0.2.1"'),
                ("replay", 'file = "x.jsonl"'),
                ("llrp", 'host = "192.0.2.2"'),
                ("llrp", 'host = "192.0.2.3"'),
            ]
        )
    )
    path.write_text(
        f'[gateway]\nsite = "S"\nid = "g"\nstate_dir = "{tmp_path}"\n{processes}\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[locations.DOCK]\n' + readers
    )
    return path


def test_llrp_readers_are_dealt_to_the_processes_in_turn(tmp_path: Path) -> None:
    settings = config_mod.load(site(tmp_path, "decoder_processes = 2"))
    pooled = pooled_readers(settings)
    assert [d.name for d in pooled] == ["r0", "r2", "r3"]  # not the replay reader
    assert [[d.name for d in group] for group in deal(pooled, 2)] == [["r0", "r3"], ["r2"]]
    assert len(deal(pooled, 8)) == 3  # no process without a reader


def test_decoding_stays_in_process_by_default_and_with_0(tmp_path: Path) -> None:
    assert config_mod.load(site(tmp_path, "")).gateway.decoder_processes == 0
    assert pooled_readers(config_mod.load(site(tmp_path, "decoder_processes = 0"))) == []
    auto = config_mod.load(site(tmp_path, 'decoder_processes = "auto"'))
    assert auto.gateway.decoder_processes == "auto"
    assert len(pooled_readers(auto)) == 3


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("-1", "must be 0 (decode in the gateway process) to 64, got -1"),
        ("65", "must be 0 (decode in the gateway process) to 64, got 65"),
        ('"many"', "expected \"auto\" or a number of processes (0 = none), got 'many'"),
        ("true", 'expected "auto" or a number of processes (0 = none), got True'),
        ("1.5", 'expected "auto" or a number of processes (0 = none), got 1.5'),
    ],
)
def test_a_bad_decoder_processes_names_the_key(tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(config_mod.ConfigError) as raised:
        config_mod.load(site(tmp_path, f"decoder_processes = {value}"))
    assert raised.value.lines == [f"site.toml: gateway.decoder_processes: {why}"]
