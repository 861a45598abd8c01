"""Security review, proved with the real daemon (`fc-edge run`) and a real mosquitto.

* TLS verification cannot be turned off by accident: only an explicit boolean
  `[mqtt.tls] insecure = true` does it, and the daemon warns at every start.
* Client-certificate auth against a broker with `require_certificate true`: with the
  configured cert the gateway publishes (the outbox drains), without it it is refused and
  keeps every message in the outbox.
* Username and password from a `password_file`, against `allow_anonymous false`: accepted
  with the right password, refused with a wrong one; the password never reaches the log.
* Plain `mqtt://` to a host that is not loopback warns once at start and shows in /readyz.
* Metrics and health listen on loopback unless configured otherwise.
* Names used in topics are validated by the config (+ # / in site, id, device, location).

The wrong-CA case is tests/e2e/test_spine.py::test_wrong_ca_fails_closed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from tests.support.broker import Broker
from tests.support.gateway import fc_edge, gateway_toml
from tests.support.helpers import free_port, wait_for
from tests.support.ops import http_json
from tests.support.spine import ZONE_READER, outbox_depth, write_zone_capture

INSECURE_WARNING = "NOT verified"
N = 30  # movements the zone capture makes


def write_config(tmp_path: Path, broker_url: str, mqtt_extra: str = "", **kw: Any) -> Path:
    capture = tmp_path / "zone.jsonl"
    if not capture.exists():
        write_zone_capture(capture, N, per_second=N)
    text = gateway_toml(
        tmp_path / "state", broker_url, ZONE_READER.format(capture=capture, speed=1.0), **kw
    )
    text = text.replace('client_id = "fc-edge-gw-1"', f'client_id = "fc-edge-gw-1"\n{mqtt_extra}')
    conf = tmp_path / "gw.toml"
    conf.write_text(text)
    return conf


class Daemon:
    """`fc-edge run` with its log in a file."""

    def __init__(self, conf: Path, log: Path, *args: str) -> None:
        self.log = log
        self.out = log.open("ab")
        self.proc = fc_edge("run", "-c", str(conf), *args, stdout=self.out, stderr=self.out)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.out.close()
        return code


# --- TLS verification -------------------------------------------------------------------------


def test_insecure_must_be_an_explicit_boolean(tmp_path: Path) -> None:
    """A string, a number or a typo is a config error, never a silent 'off'."""
    # The line names mqtt.tls, not mqtt.tls.insecure: confschema reports an optional section's
    # error at the section (reported to the lead); the message still says what is wrong.
    for value in ('"true"', "1", '"yes"', '"false"'):
        conf = write_config(tmp_path, "mqtts://127.0.0.1:8883", f"[mqtt.tls]\ninsecure = {value}\n")
        with pytest.raises(config.ConfigError) as caught:
            config.load(conf)
        assert any(
            line.startswith("gw.toml: mqtt.tls") and "expected true or false" in line
            for line in caught.value.lines
        ), caught.value.lines
    # Without the key, verification is on (and mqtts:// alone turns TLS on).
    conf = write_config(tmp_path, "mqtts://127.0.0.1:8883")
    settings = config.load(conf)
    assert settings.mqtt.tls_enabled and settings.mqtt.tls is None


def test_insecure_true_connects_and_warns_at_every_start(
    tmp_path: Path, tls_broker: Broker
) -> None:
    conf = write_config(tmp_path, tls_broker.url, "[mqtt.tls]\ninsecure = true\n")
    for start in range(2):
        log = tmp_path / f"gw-{start}.log"
        gw = Daemon(conf, log, "--log-format", "json")

        def warned(gw: Daemon = gw) -> bool:
            return INSECURE_WARNING in gw.text()

        def published(gw: Daemon = gw) -> bool:
            return outbox_depth(tmp_path / "state") == 0 and "connected" in gw.text()

        try:
            wait_for(warned, 20)
            if start == 0:  # it really talks TLS to the broker, unverified
                wait_for(published, 30)
        finally:
            assert gw.stop() == 0
        warnings = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and INSECURE_WARNING in line
        ]
        assert warnings and all(w.get("level") in ("warning", "WARNING") for w in warnings), (
            warnings
        )


@pytest.mark.parametrize("typo", ["insecur = true", 'ca_fil = "/etc/ca.pem"', 'cert_fle = "c"'])
def test_a_typo_in_the_tls_section_is_an_error(tmp_path: Path, typo: str) -> None:
    conf = write_config(tmp_path, "mqtts://127.0.0.1:8883", f"[mqtt.tls]\n{typo}\n")
    with pytest.raises(config.ConfigError, match=r"unknown key"):
        config.load(conf)


# --- plain MQTT to another machine ------------------------------------------------------------

PLAINTEXT_WARNING = "plain MQTT to 192.0.2.1"


def test_plain_mqtt_to_another_machine_warns_once_at_start_and_in_readyz(tmp_path: Path) -> None:
    """192.0.2.1 (TEST-NET-1) is never this machine and answers nobody: the gateway runs
    store-and-forward, warns once and says so in /readyz; the other cases (loopback, mqtts://)
    are tests/unit/test_config_files.py, and no warning against the local broker is
    tests/e2e/test_ops.py::test_readyz_reports_a_broker_outage_while_staying_ready."""
    port = free_port()
    conf = write_config(tmp_path, "mqtt://192.0.2.1:1883", metrics_port=port)
    log = tmp_path / "gw.log"
    gw = Daemon(conf, log, "--log-format", "json")
    try:
        wait_for(lambda: PLAINTEXT_WARNING in gw.text(), 30)
        wait_for(lambda: listening_addresses(port), 30)  # /readyz answers from here on
        code, body = http_json(port, "/readyz")
        assert body["warnings"] == ["mqtt_plaintext_to_non_loopback"]
        assert body["broker"] == "disconnected"
    finally:
        assert gw.stop() == 0
    warned = [line for line in log.read_text().splitlines() if PLAINTEXT_WARNING in line]
    assert len(warned) == 1, warned
    entry = json.loads(warned[0])
    assert entry["level"] == "warning" and "mqtts://" in entry["message"]


# --- client certificates ----------------------------------------------------------------------


@pytest.fixture
def cert_broker(tmp_path: Path, certs: dict[str, str]) -> Any:
    b = Broker(tmp_path / "cert-broker", free_port(), tls={**certs, "require_certificate": "true"})
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop()


def test_client_certificate_required_publishes_with_it(
    tmp_path: Path, cert_broker: Broker, certs: dict[str, str]
) -> None:
    tls = (
        f'[mqtt.tls]\nca_file = "{certs["ca"]}"\n'
        f'cert_file = "{certs["client_cert"]}"\nkey_file = "{certs["client_key"]}"\n'
    )
    conf = write_config(tmp_path, cert_broker.url, tls)
    gw = Daemon(conf, tmp_path / "gw.log")
    try:
        wait_for(lambda: outbox_depth(tmp_path / "state") == 0 and "connected to" in gw.text(), 40)
        assert "refused" not in gw.text()
    finally:
        assert gw.stop() == 0


def test_client_certificate_required_refused_without_it_keeps_the_outbox(
    tmp_path: Path, cert_broker: Broker, certs: dict[str, str]
) -> None:
    conf = write_config(tmp_path, cert_broker.url, f'[mqtt.tls]\nca_file = "{certs["ca"]}"\n')
    gw = Daemon(conf, tmp_path / "gw.log")
    broker_log = cert_broker.workdir / "mosquitto.log"
    try:
        wait_for(lambda: outbox_depth(tmp_path / "state") >= N, 40)
        wait_for(lambda: "peer did not return a certificate" in broker_log.read_text(), 30)
        assert "connected to" not in gw.text()
    finally:
        assert gw.stop() == 0
    assert outbox_depth(tmp_path / "state") >= N  # kept for when the cert is fixed


def test_a_refused_client_certificate_is_logged(
    tmp_path: Path, cert_broker: Broker, certs: dict[str, str]
) -> None:
    conf = write_config(tmp_path, cert_broker.url, f'[mqtt.tls]\nca_file = "{certs["ca"]}"\n')
    gw = Daemon(conf, tmp_path / "gw.log")
    try:
        wait_for(lambda: "mqtt:" in gw.text(), 20)
    finally:
        assert gw.stop() == 0


# --- username / password ----------------------------------------------------------------------

PASSWORD = "s3cret-Pa55word-never-logged"  # noqa: S105 (a throwaway test broker's password)


@pytest.fixture
def password_broker(tmp_path: Path) -> Any:
    workdir = tmp_path / "pw-broker"
    workdir.mkdir()
    passwd = workdir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "gateway", PASSWORD],
        check=True,
        capture_output=True,
    )
    passwd.chmod(0o600)
    # Later lines win in mosquitto's config: this turns anonymous access off.
    b = Broker(workdir, free_port(), extra=[f"password_file {passwd}", "allow_anonymous false"])
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("right", [True, False], ids=["right-password", "wrong-password"])
def test_password_file_auth_and_the_password_never_logged(
    tmp_path: Path, password_broker: Broker, right: bool
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text((PASSWORD if right else "not-" + PASSWORD) + "\n")
    secret.chmod(0o600)
    conf = write_config(
        tmp_path, password_broker.url, f'username = "gateway"\npassword_file = "{secret}"\n'
    )
    gw = Daemon(conf, tmp_path / "gw.log", "--log-level", "debug")
    try:
        if right:
            wait_for(
                lambda: outbox_depth(tmp_path / "state") == 0 and "connected to" in gw.text(), 40
            )
        else:
            wait_for(lambda: outbox_depth(tmp_path / "state") >= N, 40)
            wait_for(lambda: "refused" in gw.text(), 20)
            assert "connected to" not in gw.text()
    finally:
        assert gw.stop() == 0
    check = subprocess.run(
        [*fc_edge_cmd(), "check-config", "-c", str(conf)], capture_output=True, text=True
    )
    everything = gw.text() + check.stdout + check.stderr
    assert PASSWORD not in everything


def fc_edge_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "gateway.cli"]


# --- metrics and health on loopback -----------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:
                if len(addr_hex) == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(addr_hex))))
                else:
                    found.add(addr_hex)
    return found


def test_metrics_and_health_default_to_loopback() -> None:
    assert config.MetricsSettings().listen == ("127.0.0.1", 9464)


def test_metrics_and_health_listen_only_where_configured(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    conf = write_config(tmp_path, broker.url, metrics_port=port)
    gw = Daemon(conf, tmp_path / "gw.log")
    try:
        wait_for(lambda: listening_addresses(port), 30)
        assert listening_addresses(port) == {"127.0.0.1"}
        for path in ("/metrics", "/healthz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:  # noqa: S310 (loopback http in a test)
                assert resp.status == 200
    finally:
        assert gw.stop() == 0


# --- names used in topics ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a+b", "a#", "a/b", "+", "#", " lead", ""])
@pytest.mark.parametrize("where", ["gateway.site", "gateway.id", "readers[0].name", "locations"])
def test_topic_names_are_validated(tmp_path: Path, bad: str, where: str) -> None:
    conf = write_config(tmp_path, "mqtt://127.0.0.1:1883")
    text = conf.read_text()
    if where == "gateway.site":
        text = text.replace('site = "S1"', f'site = "{bad}"')
        key = "gateway.site"
    elif where == "gateway.id":
        text = text.replace('id = "gw-1"', f'id = "{bad}"')
        key = "gateway.id"
    elif where == "readers[0].name":
        text = text.replace('name = "zone-1"', f'name = "{bad}"')
        key = "readers[0].name"
    else:
        text += f'\n[locations."{bad}"]\noffsite = true\n'
        key = f"locations.{bad}"
    conf.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        config.load(conf)
    assert any(line.startswith(f"gw.toml: {key}: ") for line in caught.value.lines), (
        caught.value.lines
    )
