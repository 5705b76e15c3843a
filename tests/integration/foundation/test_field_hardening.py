"""The real daemon process in the situations a field technician creates: signals while it starts,
a config deployed by swapping a symlink, and an unexpected failure (its traceback on the terminal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.procs import free_port, wait_until

from .test_daemon_lifecycle import NotifySocket, agent_config

REPO = Path(__file__).resolve().parents[3]


def _catches(pid: int, sig: signal.Signals) -> bool:
    """True once the process has a handler for `sig` (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (sig - 1)))


def _start_with_notify(tmp_path: Path) -> tuple[AgentProcess, NotifySocket]:
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = AgentProcess(tmp_path / "agent", agent_config(free_port()), env={"NOTIFY_SOCKET": str(notify.path)})
    agent.start(wait=False)
    return agent, notify


def test_sighup_before_ready_is_a_reload_once_ready(tmp_path: Path) -> None:
    agent, notify = _start_with_notify(tmp_path)
    try:
        assert agent.proc is not None and agent.proc.proc is not None
        pid = agent.proc.proc.pid
        wait_until(lambda: _catches(pid, signal.SIGHUP), 20, "edge-agent run to catch SIGHUP")
        # Change the file, then send SIGHUP at once and keep sending until READY. The agent says
        # when one arrived while it was starting (the case under test), however fast it starts.
        agent.config_path.write_text(agent.config_path.read_text().replace('level = "info"', 'level = "debug"'))
        while True:
            assert agent.proc.alive(), f"the agent died on an early SIGHUP (rc {agent.proc.proc.poll()})\n{agent.log()}"
            os.kill(pid, signal.SIGHUP)
            if any("READY=1" in m for m in notify.drain()):
                break
            time.sleep(0.02)
        agent.wait_log("received SIGHUP while starting: reloading once started", timeout=20)
        # The reload comes once READY. What it changes depends on when the agent read the file at
        # start: the signal handler is in place before the config is read (so that no early signal
        # kills it), so an edit made just after the handler appeared may already be in the config it
        # started with ("changed: nothing"); either way the reload happens and the agent runs on.
        agent.wait_log("config reloaded; changed: ", timeout=20)
        assert agent.proc.alive()
        status = agent.call("status")
        assert isinstance(status, dict) and status["reported"]["config"]["status"] == "applied"
        assert agent.stop() == 0
    finally:
        agent.kill()
        notify.close()


def test_sigterm_before_ready_stops_cleanly(tmp_path: Path) -> None:
    agent, notify = _start_with_notify(tmp_path)
    try:
        assert agent.proc is not None and agent.proc.proc is not None
        pid = agent.proc.proc.pid
        wait_until(lambda: _catches(pid, signal.SIGTERM), 20, "edge-agent run to catch SIGTERM")
        os.kill(pid, signal.SIGTERM)
        assert agent.proc.proc.wait(20) == 0, agent.log()
        assert "EVENT=agent.stopped" in agent.log() or "READY=1" not in "".join(notify.drain()), agent.log()
        assert not agent.control_socket.exists()
    finally:
        agent.kill()
        notify.close()


def test_reload_follows_a_swapped_symlink(tmp_path: Path) -> None:
    """Config management deploys a new file and swaps a symlink atomically (rename over it)."""
    releases = tmp_path / "releases"
    releases.mkdir()
    v1 = releases / "v1.toml"
    v2 = releases / "v2.toml"
    v1.write_text(agent_config(free_port()))
    v2.write_text(v1.read_text().replace('level = "info"', 'level = "debug"'))
    agent = AgentProcess(tmp_path / "agent", "")
    agent.config_path.unlink()
    agent.config_path.symlink_to(v1)
    agent.start()
    try:
        tmp_link = agent.config_path.with_name("config.toml.new")
        tmp_link.symlink_to(v2)
        tmp_link.replace(agent.config_path)  # rename(2): atomic
        agent.signal(signal.SIGHUP)
        agent.wait_log("config reloaded; changed: logging.level")
        status = agent.call("status")
        assert isinstance(status, dict) and status["config"] == str(agent.config_path)
    finally:
        agent.stop()
        agent.kill()


def test_unexpected_exception_shows_its_traceback_on_the_terminal(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(agent_config(free_port()))
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"this is not a database")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config), "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    failed = [line for line in lines if "edge-agent failed" in line]
    assert len(failed) == 1, proc.stderr  # logged once
    assert failed[0].endswith("edge-agent failed: DatabaseError: file is not a database  [EVENT=agent.failed]")
    after = lines[lines.index(failed[0]) + 1 :]
    assert after[0] == "    Traceback (most recent call last):", proc.stderr
    assert "    sqlite3.DatabaseError: file is not a database" in after, proc.stderr
    assert any("edge_agent/store.py" in line for line in after), proc.stderr


def test_state_dir_option_obeys_the_config_rules(tmp_path: Path) -> None:
    """--state-dir overrides state.dir: the same rules apply (here, the control socket's path)."""
    config = tmp_path / "config.toml"
    config.write_text(agent_config(free_port()))
    too_deep = tmp_path / ("d" * 100)
    for command in ("run", "check", "status"):
        proc = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", command, "--config", str(config), "--state-dir", str(too_deep)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert proc.stderr.startswith("--state-dir: state.dir: the socket path .../control.sock would be "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not too_deep.exists()
