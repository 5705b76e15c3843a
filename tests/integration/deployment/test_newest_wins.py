"""The newest document wins: one that arrives while the previous one is still being verified (a
slow registry) is applied, the slow one is reported superseded, and at no moment does the
reported state claim a version that is not what runs (real podman, real registry behind a proxy
that holds back chosen responses)."""

from __future__ import annotations

import asyncio
from typing import Any

from devinfra.fault_proxy import FaultProxy

from .conftest import RunImages, owned

SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}


async def test_a_document_arriving_during_verification_wins(
    harness_factory: Any, images: RunImages, run_id: str, registry: Any
) -> None:
    with FaultProxy(registry.host) as proxy:
        h = await harness_factory(also_insecure=(proxy.host,), stabilisation_window_s=1)

        def via_proxy(ref: str) -> str:
            return ref.replace(registry.host, proxy.host, 1)

        one, slow, three = (via_proxy(images.image(n, "v1")) for n in ("one", "slow", "three"))
        await h.deploy(1, {"modules": {"app": {"image": one, **SLEEP}}})
        await h.wait_for(lambda: h.state(1) == "good", 60, "version 1 good")

        # Every reported state from here on, sampled as it changes.
        seen: list[dict[str, Any]] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                snapshot = h.deployment()
                if not seen or seen[-1] != snapshot:
                    seen.append(snapshot)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        proxy.slow_path, proxy.delay_s = "-slow/manifests/", 8.0
        await h.deploy(2, {"modules": {"app": {"image": slow, **SLEEP}}})
        await h.wait_for(lambda: proxy.delayed > 0, 10, "version 2's image lookup held back by the registry")
        assert h.state(2) == "verifying"
        await h.deploy(3, {"modules": {"app": {"image": three, **SLEEP}}})
        await h.wait_for(lambda: h.state(3) == "good", 60, "version 3 good")
        await asyncio.sleep(8.5)  # the held-back lookup of version 2 returns meanwhile: it must not apply
        stop.set()
        await sampler

        assert h.state(2) == "superseded" and h.deployment()["current"] == 3
        containers = owned(run_id)
        assert [c["Config"]["Labels"]["edge-agent.deployment"] for c in containers] == ["3"]
        assert containers[0]["ImageName"].startswith(three.rsplit(":", 1)[0] + "@sha256:")
        # Never claimed: version 2 was never current nor past verifying; "current" moved 1 -> 3 once.
        assert all(s.get("current") in (1, 3) for s in seen), seen
        v2_states = {(s.get("versions") or {}).get("2", {}).get("state") for s in seen} - {None}
        assert v2_states <= {"verifying", "superseded"}, v2_states
        currents = [s.get("current") for s in seen]
        assert currents == sorted(currents), currents
