"""Files the config names, and what the config allows but warns about at start.

- `check-config` checks what `run` will open: every file the config names (password, TLS,
  register maps, replay captures) exists, is a regular file and is readable; an error names
  the key, the path and why. `run` fails the same way before it touches the outbox.
- A plain `mqtt://` URL to a host that is not this machine is a start warning: logged once,
  listed in /readyz, never unready.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config
from gateway.config import ConfigError
from gateway.daemon import Gateway
from gateway.health import Devices, Health
from gateway.outbox_thread import OutboxThread

ROOT = Path(__file__).resolve().parents[2]


def site_toml(state_dir: Path, url: str = "mqtt://127.0.0.1:1883", mqtt_extra: str = "") -> str:
    return f"""
[gateway]
site = "S1"
id = "gw-1"
state_dir = "{state_dir}"

[mqtt]
url = "{url}"
{mqtt_extra}

[locations.YARD]
offsite = true

[[readers]]
name = "zone-1"
driver = "replay"
file = "zone.jsonl"
[readers.antennas]
1 = {{ location = "YARD" }}

[[equipment]]
name = "conveyor-1"
driver = "modbus"
host = "192.0.2.20"
map = "maps/conveyor.toml"
"""


def write_site(tmp_path: Path, mqtt_extra: str = "", url: str = "mqtt://127.0.0.1:1883") -> Path:
    """A config and the files it names: the capture and the map next to it."""
    (tmp_path / "zone.jsonl").write_text("")
    (tmp_path / "maps").mkdir(exist_ok=True)
    shutil.copy(ROOT / "drivers" / "maps" / "conveyor.toml", tmp_path / "maps" / "conveyor.toml")
    path = tmp_path / "site.toml"
    path.write_text(site_toml(tmp_path / "state", url, mqtt_extra))
    return path


def file_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.check_named_files(config.load(path))
    return info.value.lines


# --- which files -------------------------------------------------------------------------------


def test_named_files_lists_every_file_with_its_key_resolved_as_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/fc-edge.service")
    tls = '[mqtt.tls]\nca_file = "/etc/ca.pem"\ncert_file = "/etc/gw.pem"\nkey_file = "gw.key"\n'
    conf = write_site(tmp_path, f'password_file = "mqtt-password"\n{tls}')
    named = dict(config.named_files(config.load(conf)))
    assert named == {
        "mqtt.password_file": Path("/run/credentials/fc-edge.service/mqtt-password"),
        "mqtt.tls.ca_file": Path("/etc/ca.pem"),
        "mqtt.tls.cert_file": Path("/etc/gw.pem"),
        "mqtt.tls.key_file": Path("/run/credentials/fc-edge.service/gw.key"),
        "readers[0].file": tmp_path / "zone.jsonl",
        "equipment[0].map": tmp_path / "maps" / "conveyor.toml",
    }


def test_every_named_file_present_and_readable_passes(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config.check_named_files(config.load(write_site(tmp_path, f'password_file = "{secret}"')))


# --- why a file is refused ---------------------------------------------------------------------


def test_a_missing_password_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    conf = write_site(tmp_path, 'password_file = "/nonexistent/pw"')
    assert file_errors(conf) == ["site.toml: mqtt.password_file: /nonexistent/pw: no such file"]


def test_a_relative_secret_outside_systemd_says_where_the_service_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    conf = write_site(tmp_path, 'password_file = "fc-edge_mqtt-password"')
    assert file_errors(conf) == [
        "site.toml: mqtt.password_file: fc-edge_mqtt-password: no such file (relative, and "
        "$CREDENTIALS_DIRECTORY, where the service finds it, is not set)"
    ]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    conf = write_site(tmp_path, '[mqtt.tls]\nca_file = "/nonexistent/ca.pem"\n')
    (tmp_path / "zone.jsonl").unlink()
    assert file_errors(conf) == [
        "site.toml: mqtt.tls.ca_file: /nonexistent/ca.pem: no such file",
        f"site.toml: readers[0].file: {tmp_path / 'zone.jsonl'}: no such file",
    ]


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    conf = write_site(tmp_path, f'[mqtt.tls]\nca_file = "{tmp_path}"\n')
    assert file_errors(conf) == [f"site.toml: mqtt.tls.ca_file: {tmp_path}: not a regular file"]


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    conf = write_site(tmp_path, f'password_file = "{secret}"')
    # root reads a mode-000 file anyway: ask os.access the way an unprivileged user would
    # be answered, for this one file.
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != secret and real_access(p, mode))
    assert file_errors(conf) == [
        f"site.toml: mqtt.password_file: {secret}: not readable by this user"
    ]


# --- check-config and run ----------------------------------------------------------------------


def fc_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_check_config_refuses_a_missing_password_file_naming_the_key(tmp_path: Path) -> None:
    conf = write_site(tmp_path, 'password_file = "/nonexistent/pw"')
    check = fc_edge("check-config", "-c", str(conf))
    assert check.returncode == 78
    assert check.stderr.strip() == "site.toml: mqtt.password_file: /nonexistent/pw: no such file"


def test_run_refuses_it_the_same_way_before_it_touches_the_outbox(tmp_path: Path) -> None:
    conf = write_site(tmp_path, 'username = "gw"\npassword_file = "/nonexistent/pw"')
    run = fc_edge("run", "-c", str(conf), "--log-format", "text")
    assert run.returncode == 78
    assert "site.toml: mqtt.password_file: /nonexistent/pw: no such file" in run.stderr
    assert "Errno" not in run.stderr
    assert not (tmp_path / "state").exists(), "the state dir (and its outbox) was not created"


# --- plain MQTT to another machine -------------------------------------------------------------


def warning_codes(tmp_path: Path, url: str, mqtt_extra: str = "") -> list[str]:
    settings = config.load(write_site(tmp_path, mqtt_extra, url=url))
    return [w.code for w in config.start_warnings(settings)]


@pytest.mark.parametrize("url", ["mqtt://10.0.0.5", "tcp://10.0.0.5:1883", "mqtt://broker.lan"])
def test_plain_mqtt_to_another_machine_is_a_start_warning_naming_the_host(
    tmp_path: Path, url: str
) -> None:
    settings = config.load(write_site(tmp_path, url=url))
    (warning,) = config.start_warnings(settings)
    assert warning.code == "mqtt_plaintext_to_non_loopback"
    assert settings.mqtt.host_port[0] in warning.message and "mqtts://" in warning.message


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://127.0.0.1:1883",
        "mqtt://127.8.9.10",
        "mqtt://localhost:1883",
        "mqtt://LOCALHOST",
        "mqtt://[::1]:1883",
        "mqtts://10.0.0.5",
        "ssl://10.0.0.5:8883",
    ],
)
def test_no_warning_for_loopback_or_tls(tmp_path: Path, url: str) -> None:
    assert warning_codes(tmp_path, url) == []


def test_no_warning_for_mqtt_url_with_a_tls_section(tmp_path: Path) -> None:
    """A [mqtt.tls] section turns TLS on whatever the scheme (MqttSettings.tls_enabled)."""
    assert warning_codes(tmp_path, "mqtt://10.0.0.5:8883", "[mqtt.tls]\n") == []


def test_readyz_lists_the_start_warnings_without_turning_unready(tmp_path: Path) -> None:
    gateway = Gateway(config.load(write_site(tmp_path, url="mqtt://10.0.0.5")))
    assert gateway.health.warnings == ("mqtt_plaintext_to_non_loopback",)
    health = Health(Devices(()), OutboxThread(), ["mqtt_plaintext_to_non_loopback"])
    ok, body = health.ready()
    assert body["warnings"] == ["mqtt_plaintext_to_non_loopback"]
    assert set(body) >= {"ready", "broker", "outbox", "devices"}, "the existing keys stay"
    without = Health(Devices(()), OutboxThread())
    assert without.ready() == (ok, body | {"warnings": []}), "readiness does not depend on it"
