"""A fleet of real agents for the fleet-side tests: N `edge-agent run` processes with labels, one
mutual-TLS mosquitto with the example ACL, the real registry with cosign-signed images and real
podman, built with the desired-state tests' Device (its keys, images, broker and per-device
configs), whose own agent is not started."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent import AgentProcess
from devinfra.pki import Pki, tls_broker, unique
from devinfra.podman import PodmanService, podman
from devinfra.registry import Registry
from tests.integration.desired.conftest import REPO, Device


class Fleet:
    def __init__(self, kit: Device, workdir: Path) -> None:
        self.kit = kit
        self.workdir = workdir
        self.agents: dict[str, AgentProcess] = {}
        self.labels: dict[str, dict[str, str]] = {}

    def add(self, device_id: str, labels: dict[str, str]) -> None:
        config = self.kit.agent_config(device_id, labels)
        self.agents[device_id] = AgentProcess(self.workdir / device_id, config, env={"PYTHONPATH": str(REPO)})
        self.labels[device_id] = labels

    def start(self, timeout: float = 120) -> None:
        for agent in self.agents.values():
            agent.start(wait=False)
        deadline = time.monotonic() + timeout
        for device, agent in self.agents.items():
            assert agent.proc is not None
            agent.proc.wait_ready(agent.answers, timeout=max(1.0, deadline - time.monotonic()))
            assert agent.proc.alive(), f"{device} exited:\n{agent.log()[-2000:]}"

    def reported(self) -> dict[str, dict[str, Any]]:
        """Every device's retained reported document, read at once."""

        async def read() -> dict[str, dict[str, Any]]:
            async with self.kit.fleet_client() as fleet:
                await fleet.watch(None)
                return {d: fleet.cached_view(d).reported or {} for d in self.agents}

        return asyncio.run(read())

    def wait_all(self, predicate: Any, what: str, timeout: float = 120) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            last = self.reported()
            if all(predicate(d, doc) for d, doc in last.items()):
                return last
            time.sleep(0.5)
        bad = {d: (doc.get("deployment") or {}) for d, doc in last.items() if not predicate(d, doc)}
        raise AssertionError(f"timed out waiting for {what}; not yet: {str(bad)[:4000]}")

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.alive():
                agent.signal(signal.SIGTERM)
        for agent in self.agents.values():
            if agent.proc is not None:
                agent.proc.stop()
        ids = podman("ps", "-a", "-q", "--filter", f"name={self.kit.run}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)


@pytest.fixture
def fleet(
    tmp_path: Path, registry: Registry, podman_service: PodmanService, busybox_image: str,
) -> Iterator[Fleet]:
    pki = Pki(tmp_path / "pki")
    prefix = unique("fl")
    fleet_cert = pki.client(unique("fleet"))
    broker = tls_broker(tmp_path / "mosquitto", pki, prefix, fleet_cert.cn).start()
    kit = Device(tmp_path / "kit", pki, broker, prefix, fleet_cert, registry, podman_service.url, busybox_image)
    out = Fleet(kit, tmp_path / "agents")
    try:
        yield out
    finally:
        out.stop()
        kit.cleanup()
        broker.stop()
