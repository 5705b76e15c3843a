"""The real daemon process: sd_notify protocol, SIGHUP reload, stop times, check against real parts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.podman import PodmanService
from devinfra.procs import free_port, wait_until

REPO = Path(__file__).resolve().parents[3]


def agent_config(broker_port: int, podman_url: str = "unix:///nonexistent/podman.sock", level: str = "info") -> str:
    return (
        f'[logging]\nlevel = "{level}"\nformat = "text"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\n'
        f'[podman]\nsocket = "{podman_url}"\n'
        '[device]\nid = "lifecycle-test"\n'
    )


class NotifySocket:
    """Plays systemd's side of sd_notify: collects the datagrams the agent sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, needle: str, timeout: float = 10) -> str:
        def found() -> bool:
            return any(needle in m for m in self.drain())

        wait_until(found, timeout, f"sd_notify message {needle!r} (got {self.messages})")
        return next(m for m in self.messages if needle in m)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


@pytest.fixture
def agent_with_notify(tmp_path: Path, notify: NotifySocket) -> Iterator[AgentProcess]:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    agent = AgentProcess(tmp_path / "agent", agent_config(free_port()), env=env)
    yield agent
    agent.kill()


def test_ready_only_after_state_is_loaded_then_watchdog_then_stopping(
    agent_with_notify: AgentProcess, notify: NotifySocket
) -> None:
    agent = agent_with_notify.start(wait=False)
    ready = notify.wait_for("READY=1")
    assert "STATUS=running" in ready
    # READY means the state database exists and the control socket answers.
    assert (agent.state_dir / "state.db").exists()
    assert agent.answers()
    notify.wait_for("WATCHDOG=1", timeout=5)
    agent.signal(signal.SIGTERM)
    assert agent.proc is not None and agent.proc.proc is not None
    assert agent.proc.proc.wait(10) == 0
    notify.wait_for("STOPPING=1")


def test_sighup_with_valid_change_applies_it(agent_with_notify: AgentProcess, notify: NotifySocket) -> None:
    agent = agent_with_notify.start()
    notify.wait_for("READY=1")
    text = agent.config_path.read_text().replace('level = "info"', 'level = "debug"')
    agent.config_path.write_text(text)
    notify.messages.clear()
    agent.signal(signal.SIGHUP)
    agent.wait_log("config reloaded; changed: logging.level")
    notify.wait_for("RELOADING=1")
    notify.wait_for("READY=1")
    status = agent.call("status")
    assert isinstance(status, dict)
    assert status["reported"]["config"] == {"status": "applied", "changed": ["logging.level"]}


def test_sighup_with_broken_config_keeps_old_one_and_says_why(
    agent_with_notify: AgentProcess, notify: NotifySocket
) -> None:
    agent = agent_with_notify.start()
    notify.wait_for("READY=1")
    good = agent.config_path.read_text()
    agent.config_path.write_text(good.replace("[mqtt]\n", "[mqtt]\nprot = 1\n"))
    agent.signal(signal.SIGHUP)
    agent.wait_log("config reload refused")
    log = agent.log()
    assert f"{agent.config_path}:5: mqtt.prot: unknown key, did you mean mqtt.port?" in log
    assert "EVENT=config.rejected" in log
    status = agent.call("status")
    assert isinstance(status, dict)
    assert status["reported"]["config"]["status"] == "rejected"
    assert "mqtt.prot" in status["reported"]["config"]["description"]
    assert agent.proc is not None and agent.proc.alive()
    # And the fixed file is then accepted.
    agent.config_path.write_text(good.replace('level = "info"', 'level = "debug"'))
    agent.signal(signal.SIGHUP)
    agent.wait_log("config reloaded; changed: logging.level")


@pytest.mark.parametrize(("sig", "limit"), [(signal.SIGINT, 2.0), (signal.SIGTERM, 10.0)])
def test_stops_promptly(tmp_path: Path, sig: signal.Signals, limit: float) -> None:
    agent = AgentProcess(tmp_path / "agent", agent_config(free_port())).start()
    assert agent.proc is not None and agent.proc.proc is not None
    started = time.monotonic()
    agent.signal(sig)
    code = agent.proc.proc.wait(limit + 5)
    elapsed = time.monotonic() - started
    agent.kill()
    assert code == 0
    assert elapsed < limit, f"took {elapsed:.2f} s to stop on {sig.name}"
    assert not agent.control_socket.exists()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_check_passes_against_real_broker_and_podman(
    tmp_path: Path, mosquitto: Mosquitto, podman_service: PodmanService
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(agent_config(mosquitto.port, podman_service.url))
    result = run_cli("check", "--config", str(config), "--state-dir", str(tmp_path / "state"), "--json")
    results = {r["name"]: r for r in json.loads(result.stdout)}
    assert results["broker reachable"]["outcome"] == "pass", results
    assert results["podman reachable"]["outcome"] == "pass", results
    assert results["config valid"]["outcome"] == "pass"
    assert results["state dir writable"]["outcome"] == "pass"
    assert results["agent running"]["outcome"] == "warn"  # not started in this test
    assert result.returncode == 0, result.stdout


def test_check_fails_with_hint_when_broker_and_podman_are_down(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(agent_config(free_port()))
    result = run_cli("check", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    broker = next(line for line in lines if "broker reachable" in line)
    assert broker.startswith("FAIL")
    assert any(line.strip().startswith("hint:") for line in lines)
    assert next(line for line in lines if "podman reachable" in line).startswith("FAIL")


def test_check_reports_broken_config_and_fails(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[mqtt]\nport = 99999\n")
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL  config valid")
    assert f"{config}:2: mqtt.port" in result.stdout


def test_status_when_agent_not_running_says_so(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(agent_config(free_port()))
    result = run_cli("status", "--config", str(config), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert "the agent is not running" in result.stderr


def test_status_of_running_agent(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", agent_config(free_port())).start()
    try:
        result = run_cli("status", "--config", str(agent.config_path), "--state-dir", str(agent.state_dir), "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["state_dir"] == str(agent.state_dir)
        assert status["reported"]["agent"]["version"]
    finally:
        agent.stop()


def test_version_and_help() -> None:
    assert run_cli("version").stdout.startswith("edge-agent ")
    assert json.loads(run_cli("version", "--json").stdout)["version"]
    help_text = run_cli("--help").stdout
    for word in ("run", "check", "status", "config", "version", "journalctl"):
        assert word in help_text
