"""systemd/: the unit file, sysusers.d and tmpfiles.d, checked with systemd's own tools (they
work here without systemd running, DESIGN.md §5), and the real daemon run under strace as an
unprivileged user to show that the sandbox the unit promises does not break it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker
from tests.support.gateway import ROOT, gateway_toml
from tests.support.helpers import free_port, sgtin96, wait_for
from tests.support.ops import (
    ZONE_READER,
    NotifySocket,
    http_json,
    scrape,
    write_capture,
)

SYSTEMD = ROOT / "systemd"
UNIT = SYSTEMD / "fc-edge.service"
NOBODY = 65534
DIALOUT = 20  # Debian's dialout gid, as SupplementaryGroups=dialout gives the service


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: apt-get install systemd strace (Makefile system-deps)"
        )
    return path


def parse_unit(path: Path) -> list[tuple[str, str, str, int]]:
    """(section, key, value, line index) for every assignment; repeated keys kept in order."""
    section, out = "", []
    for i, raw in enumerate(path.read_text().splitlines()):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip(), i))
    return out


def service(path: Path = UNIT) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for section, key, value, _ in parse_unit(path):
        if section == "Service":
            values.setdefault(key, []).append(value)
    return values


# --- the unit file ----------------------------------------------------------------------------


def test_unit_declares_what_the_issue_asks_for() -> None:
    s = service()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30"
    assert one["ExecStart"] == "/opt/fc-edge/.venv/bin/fc-edge run -c /etc/fc-edge/fc-edge.toml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["Restart"] == "on-failure" and one["RestartPreventExitStatus"] == "78"
    assert one["User"] == one["Group"] == "fc-edge"
    assert one["StateDirectory"] == one["ConfigurationDirectory"] == "fc-edge"
    assert any(v.startswith("fc-edge:/etc/fc-edge/credentials") for v in s["LoadCredential"])
    assert one["ProtectSystem"] == "strict"
    for flag in ("NoNewPrivileges", "PrivateTmp", "MemoryDenyWriteExecute", "ProtectHome"):
        assert one[flag] == "yes", flag
    assert one["DevicePolicy"] == "closed"
    assert s["DeviceAllow"] == ["char-ttyUSB rw", "char-ttyACM rw", "char-rfcomm rw"]
    assert one["SupplementaryGroups"] == "dialout"
    assert one["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert one["CapabilityBoundingSet"] == ""
    # The daemon drains the outbox for shutdown_timeout_s (default 10 s) on SIGTERM.
    assert int(one["TimeoutStopSec"]) > 10


def test_every_hardening_line_says_why() -> None:
    """Each assignment in [Service] sits in a block of assignments (no blank line between)
    that opens with a comment saying why."""
    lines = UNIT.read_text().splitlines()
    for section, key, _, i in parse_unit(UNIT):
        if section != "Service":
            continue
        j = i - 1
        while j >= 0 and re.match(r"^[A-Za-z]+=", lines[j]):
            j -= 1
        assert j >= 0 and lines[j].lstrip().startswith("#"), f"line {i + 1}: {key}= needs a why"


def test_security_exposure_is_at_most_1_5() -> None:
    analyze = tool("systemd-analyze")
    out = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=15", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for fc-edge\.service: (\d+\.\d)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 1.5, out.stdout
    assert out.returncode == 0, "--threshold=15 (exposure x10) agrees: " + out.stdout[-2000:]


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """With ExecStart pointing at an interpreter that exists here, `verify` says nothing at all:
    systemd-analyze exits 0 even for "Invalid syntax, ignoring" lines, so stderr is checked."""
    analyze = tool("systemd-analyze")
    text = UNIT.read_text().replace(
        "/opt/fc-edge/.venv/bin/fc-edge", f"{sys.executable} -m gateway.cli"
    )
    assert text != UNIT.read_text()
    unit = tmp_path / "fc-edge.service"
    unit.write_text(text)
    out = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr == "" and out.stdout == "", out.stdout + out.stderr


def test_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a typo'd directive is reported."""
    analyze = tool("systemd-analyze")
    text = UNIT.read_text().replace("/opt/fc-edge/.venv/bin/fc-edge", sys.executable)
    unit = tmp_path / "fc-edge.service"
    unit.write_text(text.replace("ProtectSystem=strict", "ProtectSytem=strict"))
    out = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "ProtectSytem" in out.stderr


# --- sysusers.d and tmpfiles.d into a scratch root --------------------------------------------


@pytest.fixture
def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    shutil.copy(SYSTEMD / "fc-edge.sysusers.conf", root / "usr/lib/sysusers.d/fc-edge.conf")
    shutil.copy(SYSTEMD / "fc-edge.tmpfiles.conf", root / "usr/lib/tmpfiles.d/fc-edge.conf")
    return root


def test_sysusers_makes_a_system_user_without_login(scratch_root: Path) -> None:
    out = subprocess.run(
        [tool("systemd-sysusers"), f"--root={scratch_root}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    users = {
        f[0]: f
        for f in (
            line.split(":") for line in (scratch_root / "etc/passwd").read_text().splitlines()
        )
    }
    name, _, uid, gid, _, home, shell = users["fc-edge"]
    assert int(uid) < 1000, "a system user"
    assert home == "/var/lib/fc-edge" and shell == "/usr/sbin/nologin"
    groups = {
        line.split(":")[0]: line.split(":")[2]
        for line in (scratch_root / "etc/group").read_text().splitlines()
    }
    assert groups["fc-edge"] == gid


def test_tmpfiles_keep_config_and_credentials_private(scratch_root: Path) -> None:
    subprocess.run(
        [tool("systemd-sysusers"), f"--root={scratch_root}"], check=True, capture_output=True
    )
    out = subprocess.run(
        [tool("systemd-tmpfiles"), f"--root={scratch_root}", "--create", "fc-edge.conf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    uid = {
        line.split(":")[0]: int(line.split(":")[2])
        for line in (scratch_root / "etc/passwd").read_text().splitlines()
    }["fc-edge"]

    def owner_mode(rel: str) -> tuple[int, int, int]:
        st = (scratch_root / rel).stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o7777

    assert owner_mode("etc/fc-edge") == (0, uid, 0o750), "config: root-owned, service may read"
    assert owner_mode("etc/fc-edge/credentials") == (0, 0, 0o700), "secrets: root only"
    assert owner_mode("var/lib/fc-edge") == (uid, uid, 0o700), "outbox: the service only"


# --- the real daemon inside the sandbox's rules -----------------------------------------------


def syscall_groups() -> dict[str, list[str]]:
    """`systemd-analyze syscall-filter`: every @group with its members (calls or @groups)."""
    out = subprocess.run(
        [tool("systemd-analyze"), "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
        elif not line.strip():
            current = None
    return groups


def expand(name: str, groups: dict[str, list[str]]) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(member, groups) for member in groups[name]))


def allowed_syscalls() -> set[str]:
    """The unit's SystemCallFilter= lines applied in order, as systemd does."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in service()["SystemCallFilter"]:
        deny = value.startswith("~")
        names = {c for item in value.lstrip("~").split() for c in expand(item, groups)}
        allowed = allowed - names if deny else allowed | names
    return allowed


TRACE_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed>)")


def traced_syscalls(trace: Path, first_pid: int) -> tuple[set[str], list[str], list[str]]:
    """Calls made after the daemon's own execve (setpriv's set-up before it is not the daemon's;
    systemd does that part itself, before the filter applies); plus W+X mappings and
    writable opens."""
    calls: set[str] = set()
    wx: list[str] = []
    writes: list[str] = []
    started = False
    for line in trace.read_text(errors="replace").splitlines():
        m = TRACE_LINE.match(line)
        if not m:
            continue
        pid, name = int(m.group(1)), m.group(2)
        if not started:
            started = (
                pid == first_pid
                and line.split(None, 1)[1].startswith(f'execve("{sys.executable}"')
                and line.endswith("= 0")
            )
            continue
        calls.add(name)
        if name in ("mmap", "mprotect", "pkey_mprotect") and "PROT_EXEC" in line:
            if "PROT_WRITE" in line or name != "mmap":
                wx.append(line)
        if name in ("openat", "open", "creat") and re.search(r"O_WRONLY|O_RDWR|O_CREAT", line):
            if "= -1" not in line:
                writes.append(line)
    return calls, wx, writes


@pytest.fixture
def sandbox_dirs() -> Iterator[Path]:
    """A work dir an unprivileged user can use (pytest's tmp_path is root's, mode 0700)."""
    base = Path(f"/tmp/fc-edge-sandbox-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    (base / "state").mkdir(mode=0o700)
    os.chown(base / "state", NOBODY, NOBODY)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root (CI is root)")
def test_daemon_runs_within_the_units_syscall_filter_and_wx_rules(
    sandbox_dirs: Path, broker: Broker
) -> None:
    """`fc-edge run` as an unprivileged user (uid nobody, group dialout: SQLite behaves
    differently as root) under strace, through start, READY, a replay, a scrape of every
    endpoint, a SIGHUP reload and SIGTERM: every system call it makes is one the unit's
    SystemCallFilter= allows, it never maps memory writable+executable
    (MemoryDenyWriteExecute=) and it opens files for writing only in its state directory
    (ProtectSystem=strict) and the private /tmp."""
    base = sandbox_dirs
    state = base / "state"
    capture = base / "zone.jsonl"
    write_capture(capture, [sgtin96(4912345, 67890, i) for i in range(20)], per_second=10)
    port = free_port()
    conf = base / "gw.toml"
    conf.write_text(
        gateway_toml(state, broker.url, ZONE_READER.format(capture=capture), metrics_port=port)
    )
    notify = NotifySocket()
    trace = base / "trace"
    log = (base / "gw.log").open("wb")
    cmd = [
        tool("strace"), "-f", "-qq", "-o", str(trace),
        tool("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={DIALOUT}",
        # Only to reach the interpreter under /root (0700 here); it changes no system call.
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
        sys.executable, "-m", "gateway.cli", "run", "-c", str(conf), "--log-format", "json",
    ]  # fmt: skip
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"}
    tracer = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
    daemon_pid = 0
    try:
        wait_for(lambda: notify.index("READY=1") is not None, 60)
        daemon_pid = notify.grams()[0].pid  # the daemon: setpriv exec'd it under its own pid
        wait_for(
            lambda: scrape(port).get(("fc_edge_outbox_appended_messages_total", frozenset())) == 20,
            30,
        )
        assert http_json(port, "/readyz")[0] in (200, 503)
        assert http_json(port, "/healthz")[0] == 200
        os.kill(daemon_pid, signal.SIGHUP)
        wait_for(lambda: notify.index("RELOADING=1") is not None, 15)
        wait_for(lambda: notify.lines().count("WATCHDOG=1") >= 2, 15)
        os.kill(daemon_pid, signal.SIGTERM)
        assert tracer.wait(60) == 0
    finally:
        if tracer.poll() is None and daemon_pid:
            os.kill(daemon_pid, signal.SIGKILL)
            tracer.wait(30)
        log.close()
        notify.close()
    entries = [
        json.loads(x) for x in (base / "gw.log").read_text().splitlines() if x.startswith("{")
    ]
    assert not [e for e in entries if e["level"] in ("error", "critical")], entries

    calls, wx, writes = traced_syscalls(trace, daemon_pid)
    assert "sendto" in calls and "openat" in calls, "the trace covers the daemon"
    refused = sorted(calls - allowed_syscalls())
    assert refused == [], f"system calls outside SystemCallFilter=: {refused}"
    assert wx == [], "MemoryDenyWriteExecute= would refuse these:\n" + "\n".join(wx[:5])
    outside = [
        w for w in writes
        if not re.search(rf'"({re.escape(str(state))}/|/tmp/|/dev/(null|tty))', w)
    ]  # fmt: skip
    assert outside == [], "writes outside StateDirectory=:\n" + "\n".join(outside[:5])
