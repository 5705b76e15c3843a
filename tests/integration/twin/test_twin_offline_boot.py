"""Offline boot: the broker is down, the agent restarts, and the stored (pinned) deployment is
loaded by the reconciler before any network attempt."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from devinfra.agent import AgentProcess
from devinfra.pki import unique
from devinfra.procs import wait_until
from devinfra.twin_env import TwinEnv

MANIFEST: dict[str, dict[str, object]] = {"modules": {}}  # nothing to pin: accepted without a registry


async def test_offline_boot_hands_over_stored_deployment_at_once(own_twin_env: TwinEnv, tmp_path: Path) -> None:
    env = own_twin_env
    device = unique("dev")
    agent = AgentProcess(tmp_path / "agent", env.agent_config(device))
    agent.start()
    try:
        async with env.fleet_client() as fleet:
            published = await fleet.deploy(device, MANIFEST, properties={"pilot": {"mode": "auto"}})
            await fleet.wait_for(published, "accepted", 20)
            version = published.version
        assert agent.stop() == 0
        env.broker.stop()

        log_path = agent.workdir / "agent.log"
        log_path.write_text("")  # only this boot's lines
        started = time.monotonic()
        agent.start(wait=False)
        handed_over: list[float] = []

        def seen() -> bool:
            if "EVENT=deployment.loaded" in log_path.read_text():
                handed_over.append(time.monotonic() - started)
                return True
            return False

        await asyncio.to_thread(wait_until, seen, 20, "the stored deployment to be handed over", 0.01)
        elapsed = handed_over[0]
        # A figure, not an assertion (timings belong in bench/): the ordering below is what counts.
        print(f"offline boot: stored deployment loaded {elapsed * 1000:.0f} ms after process start")

        log = log_path.read_text()
        assert f"stored deployment {version} will be run" in log
        # Before any network: the hand-over line precedes every MQTT line.
        first_mqtt = min((m.start() for m in re.finditer(r"EVENT=mqtt\.", log)), default=len(log))
        assert log.index("EVENT=deployment.loaded") < first_mqtt
        agent.wait_log("EVENT=mqtt.retry", timeout=10)  # and the broker really is unreachable

        # When the broker returns, the retained copy of the same document is not applied again.
        env.broker.start()
        agent.wait_log("EVENT=mqtt.connected", timeout=20)
        async with env.fleet_client() as fleet:
            view = await fleet.view(device)
        await asyncio.sleep(0.5)
        assert view.desired is not None and view.desired["version"] == version
        assert agent.log().count("EVENT=desired.admitted") == 0  # this boot's log only
        assert "EVENT=deployment.accepted" not in agent.log()
    finally:
        agent.stop()
