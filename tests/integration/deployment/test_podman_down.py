"""Podman's API goes away under the real agent for longer than the retries take to reach their cap:
the retries back off to the cap (whatever wakes the loop in between: the poll timer fires every
second here), the log holds a handful of lines rather than one per attempt, and when podman
returns the deployment converges (a module killed meanwhile is started again) without restarting
the agent. The cap is `[podman] retry_max_s`, 8 s here (60 s by default, the same doubling), so
the outage lasts about 35 s rather than over two minutes."""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.podman import PodmanService, podman
from devinfra.procs import wait_until
from devinfra.registry import Registry

from .conftest import RunImages, agent_config_text, owned

REPO = Path(__file__).resolve().parents[3]
SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}
RETRY_MAX_S = 8
GAPS = [2, 4, 8, 8, 8]  # doubling from 2 s up to the cap, then the cap: the outage waits for all of them
ATTEMPT = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) \S+\s+deployment\.reconciler\s+reconcile failed: .*\(attempt (\d+);",
                     re.MULTILINE)


def module_status(agent: AgentProcess) -> str | None:
    status = agent.call("status")
    assert isinstance(status, dict)
    return ((status["reported"].get("modules") or {}).get("app") or {}).get("runtimeStatus")


def test_podman_down_backs_off_to_the_cap_and_converges(
    tmp_path: Path, images: RunImages, run_id: str, registry: Registry, podman_env: Path,
    agents: list[AgentProcess],
) -> None:
    (tmp_path / "own-podman").mkdir()
    service = PodmanService(tmp_path / "own-podman").start()
    try:
        config = agent_config_text(run_id, service.url, registry, poll_interval_s=1).replace(
            "[podman]\n", f"[podman]\nretry_max_s = {RETRY_MAX_S}\n"
        )
        agent = AgentProcess(tmp_path / "agent", config, env={"PYTHONPATH": str(REPO)})
        agents.append(agent)
        agent.start()
        agent.call("deploy", {"version": 1, "deployment": {"modules": {"app": {"image": images.image(), **SLEEP}}}})
        wait_until(lambda: module_status(agent) == "running", 60, "module running", interval=0.2)
        pid = agent.proc.proc.pid if agent.proc and agent.proc.proc else None
        log_file = agent.workdir / "agent.log"
        log_before = len(log_file.read_text(errors="replace"))

        service.stop()
        container = owned(run_id)[0]["Id"]
        podman("kill", container)  # the module dies while nobody can tell the agent

        def outage_log() -> str:
            return log_file.read_text(errors="replace")[log_before:]

        def attempts() -> list[datetime]:
            return [datetime.strptime(m.group(1), "%H:%M:%S.%f") for m in ATTEMPT.finditer(outage_log())]

        # Every failed attempt is logged at debug with its number; wait for one more than the gaps.
        wait_until(lambda: len(attempts()) > len(GAPS), 4 * sum(GAPS), "the retries up to the cap", interval=0.5)
        # The device does not claim what it cannot see.
        assert module_status(agent) == "unknown"
        stamps = attempts()
        gaps = [round((b - a).total_seconds()) for a, b in itertools.pairwise(stamps)]
        print(f"podman down: {len(stamps)} attempts, gaps {gaps} s")
        assert gaps[: len(GAPS)] == GAPS, gaps
        outage = outage_log()
        loud = [line for line in outage.splitlines() if " WARNING " in line or " ERROR " in line]
        print("warning/error lines during the outage:\n" + "\n".join(loud))
        assert 1 <= len(loud) <= 5, loud

        service.start()  # same socket path
        agent.wait_log("EVENT=deployment.runtime_back", timeout=90)
        wait_until(lambda: module_status(agent) == "running", 90, "the module running again", interval=0.5)
        assert agent.proc is not None and agent.proc.proc is not None and agent.proc.proc.pid == pid
        assert owned(run_id)[0]["State"]["Running"] is True
    finally:
        service.stop()
