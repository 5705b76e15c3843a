"""PodmanRuntime.list_containers against the real podman service: a container's inspect is taken
again exactly when libpod's list shows it changed (a health result, an exit, a start by someone
else) or the agent acted on it, and the observation is what a fresh inspect says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from podman.domain.containers_manager import ContainersManager

from devinfra.podman import PodmanService, podman
from edge_agent.runtime.api import LABEL_DEVICE, ContainerRequest, HealthcheckRequest, ObservedContainer
from edge_agent.runtime.podman import PodmanRuntime, observed_from_inspect

CMD = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done")


async def test_inspects_only_what_changed_and_observes_what_a_fresh_inspect_says(
    run_id: str, podman_service: PodmanService, busybox_image: str, cleanup_containers: None,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    inspected: list[str] = []
    get = ContainersManager.get

    def counting_get(self: ContainersManager, key: str, **kwargs: Any) -> Any:
        inspected.append(key)
        return get(self, key, **kwargs)

    monkeypatch.setattr(ContainersManager, "get", counting_get)
    rt = PodmanRuntime(podman_service.url)
    labels = {LABEL_DEVICE: run_id}
    a = await rt.create(ContainerRequest(f"{run_id}-a", busybox_image, labels, command=CMD, stop_grace_s=1))
    # a healthcheck podman itself does not run here (no systemd timers): it changes when we run it
    hc = HealthcheckRequest(("true",), interval_s=3600, timeout_s=5, retries=3, start_period_s=0)
    b = await rt.create(ContainerRequest(f"{run_id}-b", busybox_image, labels, command=CMD, stop_grace_s=1,
                                         healthcheck=hc))
    await rt.start(f"{run_id}-a")  # by name, as the executor starts a container it just created
    await rt.start(f"{run_id}-b")

    async def observe() -> dict[str, ObservedContainer]:
        inspected.clear()
        found = {c.id: c for c in await rt.list_containers(run_id)}
        # the truth to compare with: a fresh inspect of each, outside the runtime
        for cid, seen in found.items():
            assert seen == observed_from_inspect(get(rt._client.containers, cid).attrs), cid
        return found

    try:
        seen = await observe()
        assert sorted(inspected) == sorted([a, b])  # the ones acted on, once each (names mapped to ids)
        assert (seen[a].state, seen[a].health, seen[b].state, seen[b].health) == (
            "running", "none", "running", "starting")

        assert await observe() == seen and inspected == []  # nothing changed: no inspect

        assert await rt.healthcheck(b) == "healthy"
        seen = await observe()
        assert inspected == [b] and seen[b].health == "healthy"

        podman("kill", a)  # someone else: the list shows the exit
        seen = await observe()
        assert inspected == [a] and (seen[a].state, seen[a].exit_code) == ("exited", 137)
        assert await observe() == seen and inspected == []

        podman("start", a)  # and a start by someone else
        seen = await observe()
        assert inspected == [a] and seen[a].state == "running"

        await rt.stop(b, 1)
        seen = await observe()
        assert inspected == [b] and seen[b].state == "exited"

        await rt.remove(b)
        seen = await observe()
        assert set(seen) == {a} and inspected == []
    finally:
        await rt.close()
