"""edge-agent under a real systemd (PID 1 in a podman container), installed the way
docs/operations.md tells an operator to: wheel into a venv at /opt/edge-agent, the shipped
unit, sysusers and tmpfiles files, the annotated default config.

No MQTT broker and no podman socket exist in the container: the agent must start anyway.
The tests share one booted container and run in file order; each leaves the service running
with the good config.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import SystemdContainer

UNIT = "edge-agent.service"
CONFIG = "/etc/edge-agent/config.toml"
DROPIN_DIR = "/etc/systemd/system/edge-agent.service.d"

INSTALL = f"""
set -e
python3 -m venv /opt/edge-agent
/opt/edge-agent/bin/pip install --quiet --no-index --find-links /wheels edge-agent
install -m 0644 /src/systemd/edge-agent.service /etc/systemd/system/{UNIT}
install -m 0644 /src/systemd/edge-agent-update-check.service /src/systemd/edge-agent-update-check.timer \
    /etc/systemd/system/
install -D -m 0755 /src/systemd/edge-agent-update-guard /usr/lib/edge-agent/update-guard
install -D -m 0644 /src/systemd/edge-agent.sysusers.conf /etc/sysusers.d/edge-agent.conf
install -D -m 0644 /src/systemd/edge-agent.tmpfiles.conf /etc/tmpfiles.d/edge-agent.conf
systemd-sysusers
systemd-tmpfiles --create /etc/tmpfiles.d/edge-agent.conf
install -m 0640 -o root -g edge-agent /src/config/config.toml {CONFIG}
systemctl daemon-reload
"""


@pytest.fixture(scope="module")
def agent(systemd_container: SystemdContainer) -> Iterator[SystemdContainer]:
    box = systemd_container
    box.sh(INSTALL, timeout=300)
    # Type=notify: `systemctl start` returns only once the agent sent READY=1 (or fails).
    started = box.sh(f"systemctl start {UNIT}", check=False, timeout=150)
    if started.returncode != 0:
        shown = box.sh(f"journalctl -u {UNIT} --no-pager -n 60", check=False).stdout
        raise AssertionError(f"systemctl start {UNIT} failed:\n{started.stderr}\n{shown}")
    yield box


def main_pid(box: SystemdContainer) -> int:
    return int(box.show(UNIT, "MainPID")["MainPID"])


def journal(box: SystemdContainer, since_cursor: str | None = None) -> list[dict[str, str]]:
    after = f"--after-cursor='{since_cursor}'" if since_cursor else ""
    text = box.out(f"journalctl -u {UNIT} -o json --no-pager {after}")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cursor(box: SystemdContainer) -> str:
    entries = journal(box)
    return entries[-1]["__CURSOR"] if entries else ""


def agent_entries(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """Entries the agent itself wrote (not systemd's lines about the unit)."""
    return [e for e in entries if e.get("SYSLOG_IDENTIFIER") == "edge-agent" and e.get("_COMM") != "systemd"]


def test_service_is_active_after_ready_and_hardened(agent: SystemdContainer) -> None:
    props = agent.show(UNIT, "ActiveState", "SubState", "Type", "StatusText", "MainPID", "User", "WatchdogUSec")
    assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify"), props
    assert props["StatusText"].startswith("running"), props  # STATUS= sent with READY=1
    entries = journal(agent)
    started = [e for e in agent_entries(entries) if e.get("EVENT") == "agent.started"]
    assert started, "no agent.started event in the journal"
    # systemd considered the unit started only after the agent's READY=1, which it sends after
    # loading its state (agent.started is logged just before READY=1).
    unit_started = [e for e in entries if e.get("_COMM") == "systemd" and e["MESSAGE"].startswith("Started ")]
    assert unit_started, "systemd never logged the unit as started"
    assert int(unit_started[0]["__REALTIME_TIMESTAMP"]) >= int(started[0]["__REALTIME_TIMESTAMP"])

    pid = main_pid(agent)
    status = agent.out(f"cat /proc/{pid}/status")
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    uid = int(fields["Uid"].split()[0])
    assert agent.out(f"getent passwd {uid}").startswith("edge-agent:"), "runs as the edge-agent user"
    tss_gid = agent.out("getent group tss").split(":")[2]
    assert tss_gid in fields["Groups"].split(), "tss supplementary group (TPM access)"
    assert fields["CapEff"] == "0000000000000000" and fields["CapBnd"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    # ProtectSystem=strict really applied: / is read-only in the agent's mount namespace,
    # its state directory is writable.
    mounts = agent.out(f"cat /proc/{pid}/mountinfo").splitlines()
    root_opts = next(line.split()[5] for line in mounts if line.split()[4] == "/")
    assert root_opts.split(",")[0] == "ro", root_opts
    state_mount = [line for line in mounts if line.split()[4] == "/var/lib/edge-agent"]
    assert state_mount and state_mount[0].split()[5].split(",")[0] == "rw", state_mount
    assert agent.out("stat -c '%U %a' /var/lib/edge-agent").split() == ["edge-agent", "700"]
    # The agent opened its state DB and control socket there and answers on it.
    status_doc = json.loads(agent.out("/opt/edge-agent/bin/edge-agent status --json"))
    assert status_doc["pid"] == pid and status_doc["state_dir"] == "/var/lib/edge-agent", status_doc


def test_journal_carries_native_fields(agent: SystemdContainer) -> None:
    entries = agent_entries(journal(agent))
    assert entries, "the agent wrote nothing to the journal"
    evented = [e for e in entries if "EVENT" in e]
    assert {"agent.started"} <= {e["EVENT"] for e in evented}
    for entry in evented:
        # Native protocol (not stderr lines): structured fields survive.
        assert entry["_TRANSPORT"] == "journal", entry
        assert entry["CODE_FILE"].endswith(".py") and entry["LOGGER"].startswith("edge_agent"), entry
    # journalctl field matches work, which is what operators use.
    by_event = agent.out(f"journalctl -u {UNIT} EVENT=agent.started -o json --no-pager").splitlines()
    assert by_event and all(json.loads(line)["EVENT"] == "agent.started" for line in by_event)


def test_module_and_deployment_fields_reach_the_journal(agent: SystemdContainer) -> None:
    """MODULE=/DEPLOYMENT= ride along with EVENT= through the agent's journal handler.

    The daemon logs them once deployments and modules run (no component does yet at this
    stage), so this drives the installed package's logging setup directly, in a transient
    unit with the agent's user, exactly as the daemon configures it under systemd."""
    snippet = (
        "from edge_agent.logs import get_logger, setup_logging; setup_logging('info', 'auto'); "
        "get_logger('edge_agent.deployment').info('module started', "
        "extra={'EVENT': 'module.started', 'MODULE': 'pilot', 'DEPLOYMENT': '7'})"
    )
    agent.sh(
        "systemd-run --wait --quiet --unit edge-agent-fields -p User=edge-agent "
        f'/opt/edge-agent/bin/python -c "{snippet}"',
        timeout=60,
    )
    lines = agent.out("journalctl MODULE=pilot DEPLOYMENT=7 EVENT=module.started -o json --no-pager").splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["_TRANSPORT"] == "journal" and entry["MESSAGE"] == "module started", entry
    assert entry["_SYSTEMD_UNIT"] == "edge-agent-fields.service"


def test_podman_socket_dropin_lets_the_agent_user_connect(agent: SystemdContainer) -> None:
    """Debian's podman.socket plus our drop-in: root:edge-agent 0660, reachable by the agent
    user and by no one else. (No podman runs in this container; the socket is enough.)"""
    agent.sh("mkdir -p /etc/systemd/system/podman.socket.d")
    podman_socket_unit = Path("/usr/lib/systemd/system/podman.socket").read_text()
    agent.sh(f"cat > /etc/systemd/system/podman.socket <<'EOF'\n{podman_socket_unit}EOF")
    # A socket unit needs its service unit to exist; podman itself is not installed here, so a
    # stand-in that never answers (connect() succeeds on the listening socket regardless).
    agent.sh("printf '[Service]\\nExecStart=/usr/bin/sleep infinity\\n' > /etc/systemd/system/podman.service")
    agent.sh(
        "install -m 0644 /src/systemd/podman.socket.d/edge-agent.conf /etc/systemd/system/podman.socket.d/"
        " && systemctl daemon-reload && systemctl start podman.socket"
    )
    try:
        assert agent.out("stat -c '%U %G %a' /run/podman/podman.sock").split() == ["root", "edge-agent", "660"]
        connect = "python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('/run/podman/podman.sock')\""
        assert (
            agent.sh(f"setpriv --reuid edge-agent --regid edge-agent --init-groups {connect}", check=False).returncode
            == 0
        )
        assert agent.sh(f"setpriv --reuid nobody --regid nogroup --clear-groups {connect}", check=False).returncode != 0
    finally:
        agent.sh("systemctl stop podman.socket podman.service", check=False)


def test_agent_libraries_work_inside_the_unit_sandbox(agent: SystemdContainer) -> None:
    """The shipped unit's exact hardening, with only the command swapped for a check script
    (Type=oneshot so `systemctl start` waits for it)."""
    agent.sh(
        "sed -e 's/^Type=notify/Type=oneshot/'"
        " -e 's|^ExecStart=.*|ExecStart=/opt/edge-agent/bin/python /src/sandbox_check.py|'"
        " -e '/^ExecReload=/d' -e '/^WatchdogSec=/d' -e '/^Restart=/d'"
        f" /etc/systemd/system/{UNIT} > /etc/systemd/system/edge-agent-sandbox.service"
        " && systemctl daemon-reload"
    )
    try:
        result = agent.sh("systemctl start edge-agent-sandbox.service", check=False, timeout=60)
        output = agent.out("journalctl -u edge-agent-sandbox.service -o cat --no-pager")
        assert result.returncode == 0, output
        assert "SANDBOX OK" in output, output
    finally:
        agent.sh("rm -f /etc/systemd/system/edge-agent-sandbox.service && systemctl daemon-reload", check=False)


def test_reload_with_broken_config_keeps_running_and_logs_file_line(agent: SystemdContainer) -> None:
    pid = main_pid(agent)
    mark = cursor(agent)
    good = agent.out(f"cat {CONFIG}")
    lines = good.splitlines()
    port_line = next(i for i, line in enumerate(lines, 1) if line.startswith("port = "))
    try:
        agent.sh(f"sed -i '{port_line}s/.*/port = \"not-a-port\"/' {CONFIG}")
        agent.sh(f"systemctl reload {UNIT}", timeout=60)

        def refused() -> list[dict[str, str]]:
            return [e for e in agent_entries(journal(agent, mark)) if e.get("EVENT") == "config.rejected"]

        rejected = agent.wait_for("the config.rejected event", refused, timeout=20)
        message = rejected[0]["MESSAGE"]
        assert f"{CONFIG}:{port_line}:" in message and "mqtt.port" in message, message
        assert int(rejected[0]["PRIORITY"]) <= 3, "logged as an error"
        props = agent.show(UNIT, "ActiveState", "SubState", "MainPID", "StatusText")
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert int(props["MainPID"]) == pid, "the agent kept running (no restart)"
        assert "refused" in props["StatusText"], props
    finally:
        agent.sh(f"install -m 0640 -o root -g edge-agent /src/config/config.toml {CONFIG}")
    mark = cursor(agent)
    agent.sh(f"systemctl reload {UNIT}", timeout=60)
    agent.wait_for(
        "config.reloaded after restoring the good config",
        lambda: [e for e in agent_entries(journal(agent, mark)) if e.get("EVENT") == "config.reloaded"],
        timeout=20,
    )
    assert main_pid(agent) == pid


def test_watchdog_restarts_a_frozen_agent(agent: SystemdContainer) -> None:
    # A short watchdog so this runs fast; the shipped unit uses 30 s.
    agent.sh(
        f"mkdir -p {DROPIN_DIR} && printf '[Service]\\nWatchdogSec=4s\\nRestartSec=1s\\n' > {DROPIN_DIR}/test.conf"
        f" && systemctl daemon-reload && systemctl restart {UNIT}",
        timeout=150,
    )
    try:
        assert agent.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "4s"
        # While responsive it pings: it stays up well past the watchdog limit.
        pid = main_pid(agent)
        time.sleep(6)
        assert main_pid(agent) == pid and agent.show(UNIT, "ActiveState")["ActiveState"] == "active"

        restarts_before = int(agent.show(UNIT, "NRestarts")["NRestarts"])
        mark = cursor(agent)
        agent.sh(f"kill -STOP {pid}")
        agent.wait_for(
            "a new agent process after the watchdog fired",
            lambda: main_pid(agent) not in (0, pid) and agent.show(UNIT, "ActiveState")["ActiveState"] == "active",
            timeout=40,
        )
        assert int(agent.show(UNIT, "NRestarts")["NRestarts"]) == restarts_before + 1
        systemd_lines = [e.get("MESSAGE", "") for e in journal(agent, mark) if e.get("_COMM") == "systemd"]
        assert any("Watchdog timeout" in m for m in systemd_lines), systemd_lines
    finally:
        agent.sh(f"rm -f {DROPIN_DIR}/test.conf && systemctl daemon-reload && systemctl restart {UNIT}", timeout=150)
    assert agent.show(UNIT, "ActiveState")["ActiveState"] == "active"


def test_unexpected_exception_traceback_reaches_the_journal(agent: SystemdContainer) -> None:
    """A state.db that is not a database is not something the agent expects: it exits 1, and the
    journal holds the traceback (in MESSAGE, which journalctl shows, and in TRACEBACK) and the
    cause (EXCEPTION)."""
    state_db = "/var/lib/edge-agent/state.db"
    agent.sh(f"systemctl stop {UNIT} && cp -p {state_db} /root/state.db.good && rm -f {state_db}-wal {state_db}-shm"
             f" && printf 'this is not a database' > {state_db}", timeout=60)
    mark = cursor(agent)
    try:
        agent.sh(f"systemctl start {UNIT}", check=False, timeout=60)

        def failed() -> list[dict[str, str]]:
            return [e for e in agent_entries(journal(agent, mark)) if e.get("EVENT") == "agent.failed"]

        entry = agent.wait_for("the agent.failed event", failed, timeout=30)[0]
        assert entry["EXCEPTION"] == "DatabaseError: file is not a database", entry
        assert entry["TRACEBACK"].startswith("Traceback (most recent call last):"), entry
        assert "sqlite3.DatabaseError: file is not a database" in entry["TRACEBACK"], entry
        assert "edge_agent/daemon.py" in entry["TRACEBACK"], entry
        assert "Traceback (most recent call last):" in entry["MESSAGE"], entry
        assert int(entry["PRIORITY"]) <= 2, "logged as critical"
        shown = agent.out(f"journalctl -u {UNIT} EVENT=agent.failed --no-pager -o cat")
        assert "sqlite3.DatabaseError: file is not a database" in shown, shown
    finally:
        agent.sh(f"systemctl stop {UNIT}; cp -p /root/state.db.good {state_db} && systemctl reset-failed {UNIT};"
                 f" systemctl start {UNIT}", timeout=150)
    assert agent.show(UNIT, "ActiveState")["ActiveState"] == "active"


def test_stop_is_clean(agent: SystemdContainer) -> None:
    mark = cursor(agent)
    agent.sh(f"systemctl stop {UNIT}", timeout=60)
    props = agent.show(UNIT, "ActiveState", "Result")
    assert props == {"ActiveState": "inactive", "Result": "success"}, props
    events = [e.get("EVENT") for e in agent_entries(journal(agent, mark))]
    assert "agent.stopped" in events, events
