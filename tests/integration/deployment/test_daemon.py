"""The real `edge-agent run` daemon managing modules: restarts of the agent never restart
modules, SIGKILL in the middle of applying converges cleanly, and an offline boot starts the
stored deployment from local images."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from devinfra.agent import AgentProcess
from devinfra.podman import PodmanService, podman
from devinfra.procs import wait_until
from devinfra.registry import Registry

from .conftest import RunImages, agent_config_text, owned

REPO = Path(__file__).resolve().parents[3]
SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}


def new_agent(agents: list[AgentProcess], tmp_path: Path, config: str) -> AgentProcess:
    agent = AgentProcess(tmp_path / "agent", config, env={"PYTHONPATH": str(REPO)})
    agents.append(agent)
    return agent


def modules(agent: AgentProcess) -> dict[str, Any]:
    status = agent.call("status")
    assert isinstance(status, dict)
    return status["reported"].get("modules") or {}


def deployment(agent: AgentProcess) -> dict[str, Any]:
    status = agent.call("status")
    assert isinstance(status, dict)
    return status["reported"].get("deployment") or {}


def wait_running(agent: AgentProcess, names: set[str], timeout: float = 60) -> None:
    def ok() -> bool:
        m = modules(agent)
        return set(m) == names and all(v["runtimeStatus"] == "running" for v in m.values())

    wait_until(ok, timeout, f"modules {sorted(names)} running\n{agent.log()[-3000:]}", interval=0.2)


def snapshot(run_id: str) -> dict[str, tuple[str, str]]:
    return {c["Config"]["Labels"]["edge-agent.module"]: (c["Id"], c["State"]["StartedAt"]) for c in owned(run_id)}


def three(images: RunImages) -> dict[str, Any]:
    return {
        "modules": {
            "first": {"image": images.image("one", "v1"), "startupOrder": 1, **SLEEP},
            "second": {"image": images.image("two", "v1"), "startupOrder": 2, **SLEEP},
            "third": {"image": images.image("three", "v1"), "startupOrder": 3, **SLEEP},
        }
    }


def test_agent_restart_leaves_running_modules_untouched(
    tmp_path: Path,
    images: RunImages,
    run_id: str,
    podman_service: PodmanService,
    registry: Registry,
    agents: list[AgentProcess],
) -> None:
    config = agent_config_text(run_id, podman_service.url, registry)
    agent = new_agent(agents, tmp_path, config).start()
    agent.call("deploy", {"version": 1, "deployment": three(images)})
    wait_running(agent, {"first", "second", "third"})
    wait_until(lambda: deployment(agent).get("lastKnownGood") == 1, 30, "deployment good")
    before = snapshot(run_id)
    assert agent.stop() == 0
    log_before = len(agent.log())

    agent.start()
    wait_running(agent, {"first", "second", "third"})
    time.sleep(2)  # a few reconcile passes and events
    assert snapshot(run_id) == before  # same container ids, same start times
    after_restart = agent.log()[log_before:]
    assert "module.start" not in after_restart and ": stop " not in after_restart, after_restart[-2000:]
    assert deployment(agent)["current"] == 1


def test_sigkill_mid_apply_converges_without_duplicates_or_orphans(
    tmp_path: Path,
    images: RunImages,
    run_id: str,
    podman_service: PodmanService,
    registry: Registry,
    agents: list[AgentProcess],
) -> None:
    config = agent_config_text(run_id, podman_service.url, registry)
    doc = three(images)
    agent = new_agent(agents, tmp_path, config).start()
    agent.call("deploy", {"version": 1, "deployment": doc})
    # Kill it hard right after its first container exists, with the rest still to do.
    wait_until(lambda: ": create " in agent.log(), 60, "first create", interval=0.01)
    agent.signal(signal.SIGKILL)
    assert agent.proc is not None and agent.proc.proc is not None
    agent.proc.proc.wait(10)
    partial = owned(run_id)
    assert 1 <= len(partial) < 3, f"the kill was not mid-apply: {len(partial)} containers"

    agent.start()
    wait_running(agent, {"first", "second", "third"})
    containers = owned(run_id)
    assert sorted(c["Config"]["Labels"]["edge-agent.module"] for c in containers) == ["first", "second", "third"]
    named = podman("ps", "-a", "-q", "--filter", f"name={run_id}-").stdout.split()
    assert len(named) == 3, "orphan containers with our name prefix"
    assert all(c["State"]["Status"] == "running" for c in containers)


def test_offline_boot_starts_the_stored_deployment(
    tmp_path: Path,
    images: RunImages,
    run_id: str,
    podman_service: PodmanService,
    busybox_image: str,
    agents: list[AgentProcess],
) -> None:
    # A registry of this test's own, so it can go away.
    private = Registry(tmp_path / "registry").start()
    try:
        own_images = RunImages(images.run, private, busybox_image, tmp_path / "own-images")
        doc = {
            "modules": {
                "cam": {"image": own_images.image("cam", "v1"), **SLEEP},
                "pilot": {"image": own_images.image("pilot", "v1"), "startupOrder": 200, **SLEEP},
            }
        }
        config = agent_config_text(run_id, podman_service.url, private)
        agent = new_agent(agents, tmp_path, config).start()
        agent.call("deploy", {"version": 1, "deployment": doc})
        wait_running(agent, {"cam", "pilot"})
        assert agent.stop() == 0
    finally:
        private.stop()  # the network is gone from here on

    # "Reboot": the agent is down and the module containers are gone; only state.db and the
    # local image store remain.
    podman("rm", "-f", "--ignore", "-t", "0", *[c["Id"] for c in owned(run_id)])
    assert owned(run_id) == []
    log_before = len(agent.log())
    agent.start()
    wait_running(agent, {"cam", "pilot"}, timeout=30)
    after = agent.log()[log_before:]
    assert "module.pull" not in after and ": pull " not in after
    for c in owned(run_id):
        assert "@sha256:" in c["ImageName"]


def test_cli_status_plan_logs_restart(
    tmp_path: Path,
    images: RunImages,
    run_id: str,
    podman_service: PodmanService,
    registry: Registry,
    agents: list[AgentProcess],
) -> None:
    import subprocess
    import sys

    config = agent_config_text(run_id, podman_service.url, registry)
    agent = new_agent(agents, tmp_path, config).start()
    talker = {
        "image": images.image("one", "v1"),
        "command": ["sh", "-c"],
        "args": ["echo hello-from-talker; trap 'exit 0' TERM; while true; do sleep 1; done"],
    }
    agent.call("deploy", {"version": 1, "deployment": {"modules": {"talker": talker}}})
    wait_running(agent, {"talker"})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", *args, "--config", str(agent.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        )

    state = ["--state-dir", str(agent.state_dir)]
    status = cli("status", *state)
    assert status.returncode == 0, status.stderr
    assert "MODULE" in status.stdout and "talker" in status.stdout and "running" in status.stdout

    plan = cli("plan", "--dry-run", *state)
    assert plan.returncode == 0 and "nothing to change" in plan.stdout, plan.stdout + plan.stderr

    podman("stop", "-t", "0", f"{run_id}-talker")  # an exit the agent will restart after its backoff
    plan_json = cli("plan", "--dry-run", "--json", *state)
    assert plan_json.returncode == 0

    logs = cli("logs", "talker")
    assert logs.returncode == 0 and "hello-from-talker" in logs.stdout, logs.stdout + logs.stderr

    wait_running(agent, {"talker"})
    before = snapshot(run_id)["talker"]
    restart = cli("restart", "talker", *state)
    assert restart.returncode == 0 and "restarted talker" in restart.stdout, restart.stderr
    after = snapshot(run_id)["talker"]
    assert after[0] == before[0] and after[1] != before[1]  # same container, started again
    unknown = cli("restart", "nope", *state)
    assert unknown.returncode == 1 and "no module 'nope'" in unknown.stderr
