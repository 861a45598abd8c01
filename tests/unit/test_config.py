"""Config: every shipped config validates; every kind of mistake is named by its dotted key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config
from gateway.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
[gateway]
site = "TYO-FC1"
id = "gw-dock-a"
state_dir = "/tmp/fc-edge-test"
timezone = "Asia/Tokyo"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[locations.YARD]
offsite = true
[locations.DOCK-03]
biz_step = "receiving"
disposition = "in_progress"

[portals.dock-03]
outside = ["dock-03:1"]
inside = ["dock-03:2"]

[[readers]]
name = "dock-03"
driver = "replay"
file = "capture.jsonl"
[readers.antennas]
1 = { location = "YARD", read_point = "dock-03-outside" }
2 = { location = "DOCK-03", read_point = "dock-03-inside" }
"""


def load_text(tmp_path: Path, text: str, name: str = "site.toml") -> config.Settings:
    path = tmp_path / name
    path.write_text(text)
    return config.load(path)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value.lines


def test_good_config_loads_into_frozen_settings(tmp_path: Path) -> None:
    s = load_text(tmp_path, GOOD)
    assert s.gateway.site == "TYO-FC1"
    assert s.mqtt.host_port == ("127.0.0.1", 1883)
    assert s.outbox.max_bytes == 2**30 and s.outbox.synchronous == "full"
    assert s.readers[0].antennas[2].location == "DOCK-03"
    assert s.readers[0].options.file == "capture.jsonl"
    assert s.readers[0].resolve("capture.jsonl") == tmp_path / "capture.jsonl"
    with pytest.raises(AttributeError):
        s.gateway.site = "X"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # 1. unknown location, the issue's own example shape
        (
            ('location = "DOCK-03", read_point = "dock-03-inside"', 'location = "DOKC-03"'),
            "site.toml: readers[0].antennas.2.location: unknown location 'DOKC-03'",
        ),
        # 2. unknown key
        (
            ('timezone = "Asia/Tokyo"', 'timezone = "Asia/Tokyo"\ncolour = "red"'),
            "site.toml: gateway.colour: unknown key",
        ),
        # 3. wrong type
        (
            ("offsite = true", 'offsite = "yes"'),
            "site.toml: locations.YARD.offsite: expected true or false, got a string",
        ),
        # 4. a name that cannot be a topic level
        (
            ('site = "TYO-FC1"', 'site = "TYO/FC1"'),
            "site.toml: gateway.site: 'TYO/FC1' cannot be used",
        ),
        # 5. unknown driver
        (
            ('driver = "replay"', 'driver = "rfid9000"'),
            "site.toml: readers[0].driver: unknown driver 'rfid9000'",
        ),
        # 6. portal antenna that no reader has
        (
            ('inside = ["dock-03:2"]', 'inside = ["dock-03:7"]'),
            "site.toml: portals.dock-03.inside[0]: unknown antenna 'dock-03:7'",
        ),
        # 7. bad enum value
        (
            ("[mqtt]", '[outbox]\nwhen_full = "explode"\n[mqtt]'),
            "site.toml: outbox.when_full: must be one of 'drop_oldest', 'drop_newest'",
        ),
        # 8. bad size
        (
            ("[mqtt]", '[outbox]\nmax_bytes = "lots"\n[mqtt]'),
            "site.toml: outbox.max_bytes: expected a size",
        ),
        # 9. negative duration
        (
            ('timezone = "Asia/Tokyo"', 'timezone = "Asia/Tokyo"\nshutdown_timeout_s = -1'),
            "site.toml: gateway.shutdown_timeout_s: must be a positive number of seconds",
        ),
        # 10. unknown time zone
        (
            ('timezone = "Asia/Tokyo"', 'timezone = "Mars/Olympus"'),
            "site.toml: gateway.timezone: unknown time zone 'Mars/Olympus'",
        ),
        # 11. bad URL scheme
        (
            ('url = "mqtt://127.0.0.1:1883"', 'url = "http://127.0.0.1:1883"'),
            "site.toml: mqtt.url: expected mqtt://",
        ),
        # 12. bad protocol
        (
            ('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://127.0.0.1:1883"\nprotocol = 4'),
            "site.toml: mqtt.protocol: must be 5 or '3.1.1'",
        ),
        # 13. missing required key in a device
        (('name = "dock-03"\n', ""), "site.toml: readers[0].name: missing required key"),
        # 14. driver-specific key of the wrong type
        (
            ('file = "capture.jsonl"', "file = 42"),
            "site.toml: readers[0].file: expected a string, got a number",
        ),
        # 15. antenna numbers
        (
            ('1 = { location = "YARD"', 'one = { location = "YARD"'),
            "site.toml: readers[0].antennas.one: antenna numbers are whole numbers from 1",
        ),
        # 16. unknown section
        (("[mqtt]", '[mqqt]\nurl = "x"\n[mqtt]'), "site.toml: mqqt: unknown section"),
        # 17. TLS key without cert
        (
            (
                '[mqtt]\nurl = "mqtt://127.0.0.1:1883"',
                '[mqtt]\nurl = "mqtts://127.0.0.1:8883"\n[mqtt.tls]\nkey_file = "k"',
            ),
            "site.toml: mqtt.tls: cert_file and key_file go together",
        ),
        # 18. unknown profile
        (
            ('disposition = "in_progress"', 'disposition = "in_progress"\nprofile = "speedy"'),
            "site.toml: locations.DOCK-03.profile: unknown profile 'speedy'",
        ),
    ],
)
def test_each_mistake_is_named_by_its_key(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    old, new = change
    assert old in GOOD
    lines = errors_of(tmp_path, GOOD.replace(old, new, 1))
    assert any(line.startswith(expected) for line in lines), lines


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("offsite = true", "offsite = 1").replace('site = "TYO-FC1"', 'site = ""')
    lines = errors_of(tmp_path, text)
    assert len(lines) == 2, lines


def test_missing_sections_and_devices(tmp_path: Path) -> None:
    lines = errors_of(tmp_path, '[gateway]\nsite = "a"\nid = "b"\nstate_dir = "/tmp/x"\n')
    assert "site.toml: mqtt: missing required section" in lines
    assert "site.toml: locations: missing required section" in lines
    assert any(line.startswith("site.toml: readers: at least one device") for line in lines)


def test_env_substitution_and_unset_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = GOOD.replace('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://${BROKER_HOST}:1883"')
    monkeypatch.setenv("BROKER_HOST", "10.0.0.9")
    assert load_text(tmp_path, text).mqtt.host_port == ("10.0.0.9", 1883)
    monkeypatch.delenv("BROKER_HOST")
    assert errors_of(tmp_path, text) == [
        "site.toml: mqtt.url: environment variable ${BROKER_HOST} is not set"
    ]


def test_state_dir_defaults_to_systemd_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = GOOD.replace('state_dir = "/tmp/fc-edge-test"\n', "")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/fc-edge")
    assert load_text(tmp_path, text).gateway.state_dir == "/var/lib/fc-edge"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert any("gateway.state_dir: missing required key" in e for e in errors_of(tmp_path, text))


def test_secret_from_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mqtt").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert config.read_secret("mqtt") == "s3cret"


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "[gateway\n")[0].startswith("site.toml: not valid TOML")
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "nope.toml")
    assert "no such file" in info.value.lines[0]


SHIPPED = sorted(p for p in (ROOT / "config").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FC_EDGE_STATE_DIR", "/tmp/fc-edge-check")
    monkeypatch.setenv("FC_EDGE_MQTT_URL", "mqtt://127.0.0.1:1883")
    settings = config.load(path)
    assert settings.devices
    text = path.read_text()
    assert "password =" not in text, "secrets never inline in shipped configs"


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    (tmp_path / "capture.jsonl").write_text("")  # check-config checks that named files exist
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('location = "YARD",', 'location = "YRAD",'))
    ok = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", "-c", str(good)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    fail = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert fail.returncode == 78
    assert (
        fail.stderr.strip() == "bad.toml: readers[0].antennas.1.location: unknown location 'YRAD'"
    )
