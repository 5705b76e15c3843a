"""The device's deployment state across crashes and registry faults, black-box: the real
`edge-agent run` daemon, real podman, a real registry (behind a fault proxy), deployments handed
over on the control socket. Every wait is for a condition the device reports or podman shows."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from devinfra.agent import AgentProcess
from devinfra.fault_proxy import FaultProxy
from devinfra.podman import PodmanService, podman
from devinfra.procs import wait_until
from devinfra.registry import Registry

from .conftest import RunImages, agent_config_text, owned

REPO = Path(__file__).resolve().parents[3]
SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}
CRASH_LOOP = {"command": ["sh", "-c"], "args": ["sleep 1; exit 3"]}


def new_agent(agents: list[AgentProcess], tmp_path: Path, config: str) -> AgentProcess:
    agent = AgentProcess(tmp_path / "agent", config, env={"PYTHONPATH": str(REPO)})
    agents.append(agent)
    return agent


def section(agent: AgentProcess, name: str) -> dict[str, Any]:
    status = agent.call("status")
    assert isinstance(status, dict)
    return dict(status["reported"].get(name) or {})


def version_entry(agent: AgentProcess, version: int) -> dict[str, Any]:
    return dict((section(agent, "deployment").get("versions") or {}).get(str(version)) or {})


def state(agent: AgentProcess, version: int) -> str | None:
    return version_entry(agent, version).get("state")


def listed(run_id: str) -> list[dict[str, Any]]:
    """The run's containers as `podman ps` lists them (one call: no race with a removal)."""
    out = podman("ps", "-a", "--format", "json", "--filter", f"label=edge-agent.device={run_id}").stdout
    return list(json.loads(out or "[]"))


def deployment_of(c: dict[str, Any]) -> str:
    return str((c.get("Labels") or {}).get("edge-agent.deployment"))


def running_containers(run_id: str) -> list[dict[str, Any]]:
    return [c for c in owned(run_id) if c["State"]["Status"] == "running"]


def test_a_crash_looping_version_replaced_then_an_agent_kill_ends_with_the_newest_running(
    tmp_path: Path,
    images: RunImages,
    run_id: str,
    podman_service: PodmanService,
    registry: Registry,
    agents: list[AgentProcess],
) -> None:
    """Version 2's module crash-loops; version 3 arrives while it does; the agent is killed
    (SIGKILL, as in a power cut) and started again: version 3 runs and is reported, and version 2
    ends rolled_back or superseded, with its reason."""
    config = agent_config_text(run_id, podman_service.url, registry, stabilisation_window_s=3)
    agent = new_agent(agents, tmp_path, config).start()
    image = images.image("app", "v1")
    agent.call("deploy", {"version": 1, "deployment": {"modules": {"app": {"image": image, **SLEEP}}}})
    wait_until(lambda: state(agent, 1) == "good", 60, f"version 1 good\n{agent.log()[-3000:]}", interval=0.2)

    agent.call("deploy", {"version": 2, "deployment": {"modules": {"app": {"image": image, **CRASH_LOOP}}}})
    # Version 2 is committed and its module has crashed at least once (podman shows it exited).
    wait_until(
        lambda: any(deployment_of(c) == "2" and c["State"] == "exited" for c in listed(run_id))
        or state(agent, 2) == "rolled_back",
        60, f"version 2's module crashed\n{agent.log()[-3000:]}", interval=0.1,
    )
    three = {"modules": {"app": {"image": image, "env": {"VERSION": "3"}, **SLEEP}}}
    agent.call("deploy", {"version": 3, "deployment": three})
    wait_until(lambda: section(agent, "deployment").get("current") == 3, 30, "version 3 committed", interval=0.1)

    agent.signal(signal.SIGKILL)
    assert agent.proc is not None and agent.proc.proc is not None
    agent.proc.proc.wait(10)
    agent.start()

    wait_until(lambda: state(agent, 3) == "good", 90, f"version 3 good after the restart\n{agent.log()[-3000:]}",
               interval=0.2)
    dep = section(agent, "deployment")
    assert (dep["current"], dep["lastKnownGood"]) == (3, 3)
    v2 = version_entry(agent, 2)
    assert v2["state"] in ("rolled_back", "superseded"), v2
    assert v2.get("description"), v2  # its reason: the failure, or "replaced by version 3"
    if v2["state"] == "rolled_back":
        assert v2["module"] == "app" and "exited with code 3" in v2["description"]
    else:
        assert "version 3" in v2["description"]
    # What runs is version 3 (its environment), and the report says so.
    wait_until(lambda: section(agent, "modules").get("app", {}).get("runtimeStatus") == "running", 30, "app reported")
    running = running_containers(run_id)
    assert len(running) == 1 and "VERSION=3" in running[0]["Config"]["Env"], running
    assert {deployment_of(c) for c in listed(run_id)} == {"3"}


def test_429_then_truncated_manifests_for_30_s_end_good_without_a_new_version(
    tmp_path: Path,
    images: RunImages,
    run_id: str,
    podman_service: PodmanService,
    registry: Registry,
    agents: list[AgentProcess],
) -> None:
    """The registry answers 429 Too Many Requests, then breaks manifests off mid-body, for 30 s
    from the first fault: the version stays `verifying` (the cause and the next attempt reported),
    is never rejected, and ends good once the registry answers in full; the fleet sends nothing
    new."""
    faults_until: list[float] = []  # set at the first faulty answer: the registry's own 30 s
    phase = ["429"]

    def fault_window_open() -> bool:
        if not faults_until:
            faults_until.append(time.monotonic() + 30.0)
        return time.monotonic() < faults_until[0]

    def refuse(path: str) -> int | None:
        if "/manifests/" in path and phase[0] == "429" and fault_window_open():
            return 429
        return None

    def truncate(path: str) -> bool:
        return "/manifests/" in path and phase[0] == "truncate" and fault_window_open()

    with FaultProxy(registry.host, truncate=truncate, refuse=refuse) as proxy:
        config = agent_config_text(run_id, podman_service.url, registry, also_insecure=(proxy.host,),
                                   stabilisation_window_s=2)
        agent = new_agent(agents, tmp_path, config).start()
        image = images.image("flaky", "v1").replace(registry.host, proxy.host, 1)
        agent.call("deploy", {"version": 1, "deployment": {"modules": {"app": {"image": image, **SLEEP}}}})

        wait_until(lambda: version_entry(agent, 1).get("code") == "registry_unreachable", 30,
                   f"429 reported as a transient cause\n{agent.log()[-3000:]}", interval=0.1)
        entry = version_entry(agent, 1)
        assert entry["state"] == "verifying" and "429" in entry["description"] and "next at" in entry["description"]
        phase[0] = "truncate"
        wait_until(lambda: version_entry(agent, 1).get("code") == "manifest_truncated", 60,
                   f"truncation reported as a transient cause\n{agent.log()[-3000:]}", interval=0.1)
        assert state(agent, 1) == "verifying"
        assert proxy.refused > 0 and proxy.truncated > 0

        wait_until(lambda: state(agent, 1) == "good", 180,
                   f"version 1 good after the registry recovered\n{agent.log()[-3000:]}", interval=0.5)
        assert time.monotonic() >= faults_until[0]  # it became good only after the faults ended
        dep = section(agent, "deployment")
        assert dep["current"] == 1 and dep["lastKnownGood"] == 1 and dep["highestVersion"] == 1
        assert "EVENT=deployment.rejected" not in agent.log()
        assert [c["Config"]["Labels"]["edge-agent.deployment"] for c in running_containers(run_id)] == ["1"]
