"""Fixtures for deployment tests against real podman and a real OCI registry.

Every run gets its own device id (`lc-test-<hex>`): it is the ownership label of every
container the agent creates, and the container name prefix, so these tests never see or touch
anyone else's containers. Containers and images of the run are removed at the end, also on
failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent import AgentProcess
from devinfra.pipeline import Pipeline
from devinfra.podman import PodmanService, podman
from devinfra.procs import free_port
from devinfra.registry import Registry
from edge_agent.config import AgentConfig, parse_config
from edge_agent.desired.admission import Decision, DocumentTrust
from edge_agent.reported import ReportedState
from edge_agent.runtime.podman import PodmanRuntime
from edge_agent.store import open_state_db
from edge_agent.trust.factory import build_verifier
from edge_shared.protocol import desired_document


class RunImages:
    """Images built for this run (label lc-test-run=<run>), pushed to the registry and removed
    locally, so the agent really resolves and pulls them."""

    def __init__(self, run: str, registry: Registry, base: str, workdir: Path) -> None:
        self.run = run
        self.registry = registry
        self.base = base
        self.workdir = workdir
        self.built: dict[str, str] = {}

    def image(self, name: str = "mod", tag: str = "v1") -> str:
        """Registry reference registry/lc-test/<name>:<tag> (built and pushed once)."""
        ref = f"{self.registry.host}/lc-test/{self.run}-{name}:{tag}"
        if ref in self.built:
            return ref
        ctx = self.workdir / f"{name}-{tag}"
        ctx.mkdir(parents=True, exist_ok=True)
        (ctx / "Containerfile").write_text(f"FROM {self.base}\nLABEL lc-test-run={self.run} variant={name}-{tag}\n")
        local = f"localhost/lc-test-{self.run}-{name}:{tag}"
        podman("build", "-q", "--pull=never", "-t", local, str(ctx))
        podman("push", "-q", "--tls-verify=false", local, ref)
        podman("rmi", local)  # the agent must pull it
        self.built[ref] = local
        return ref


@pytest.fixture
def run_id() -> str:
    return f"lc-test-{uuid.uuid4().hex[:8]}"


def remove_run_containers(run_id: str) -> None:
    ids = podman("ps", "-a", "-q", "--filter", f"label=edge-agent.device={run_id}", check=False).stdout.split()
    if ids:
        podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)


@pytest.fixture
def images(run_id: str, registry: Registry, busybox_image: str, tmp_path: Path) -> Iterator[RunImages]:
    imgs = RunImages(run_id.removeprefix("lc-test-"), registry, busybox_image, tmp_path / "images")
    yield imgs
    remove_run_containers(run_id)
    ids = podman("images", "-q", "--filter", f"label=lc-test-run={imgs.run}", check=False).stdout.split()
    if ids:
        podman("rmi", "-f", *sorted(set(ids)), check=False)


@pytest.fixture
def cleanup_containers(run_id: str, podman_env: Path) -> Iterator[None]:
    yield
    remove_run_containers(run_id)


def agent_config_text(
    run_id: str, podman_url: str, registry: Registry, *, also_insecure: tuple[str, ...] = (), **deployment: Any
) -> str:
    settings = {
        "stabilisation_window_s": 3,
        "backoff_initial_s": 1,
        "backoff_max_s": 4,
        "backoff_reset_s": 60,
        "poll_interval_s": 5,
        "apply_timeout_s": 120,
        "local_deploy": True,  # the tests hand deployments over on the control socket
        **deployment,
    }
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return (
        f'[device]\nid = "{run_id}"\n'
        f'[logging]\nlevel = "debug"\nformat = "text"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {free_port()}\n'  # no broker: the twin just retries
        f'[podman]\nsocket = "{podman_url}"\nstop_grace_s = 2\n'
        f"[attestation]\nenabled = false\n[telemetry]\nenabled = false\n"
        f"[trust]\ninsecure_registries = {json.dumps([registry.host, *also_insecure])}\n"
        f'[[trust.policy]]\nscope = "*"\nmode = "off"\n'
        f'[deployment]\ncontainer_prefix = "{run_id}-"\n{lines}\n'
    )


class Harness:
    """The desired-state owner and the reconciler (wired as daemon.py wires them) running in this
    process against the real podman service and registry; deployments handed over unsigned."""

    def __init__(self, config: AgentConfig, state_dir: Path) -> None:
        self.config = config
        self.db = open_state_db(state_dir)
        self.reported = ReportedState()
        self.pipeline = Pipeline(
            config, self.db, self.reported, PodmanRuntime(config.podman.socket), build_verifier(config, self.db)
        )
        self.reconciler = self.pipeline.reconciler
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> Harness:
        await self.pipeline.start()
        self.tasks = [asyncio.create_task(self.pipeline.manager.run())]
        return self

    async def deploy(self, version: int, deployment: dict[str, Any]) -> Decision:
        """Through the document gate (signatures off); pinned and committed by the running room."""
        return self.pipeline.manager.submit(
            desired_document(version, deployment), trust=DocumentTrust(mode="off")
        )

    def state(self, version: int) -> str | None:
        return self.pipeline.state(version)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            done, _ = await asyncio.wait(self.tasks, timeout=15)
            assert len(done) == len(self.tasks), "the pipeline did not stop within 15 s of being cancelled"
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.db.close()

    def modules(self) -> dict[str, Any]:
        return self.reported.get("modules") or {}

    def deployment(self) -> dict[str, Any]:
        return self.reported.get("deployment") or {}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for task in self.tasks:
                if task.done():
                    task.result()  # surface a crash
            if predicate():
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{what} (modules: {self.modules()}, deployment: {self.deployment()})")

    async def wait_running(self, names: list[str], timeout: float = 60) -> None:
        await self.wait_for(
            lambda: (
                all(self.modules().get(n, {}).get("runtimeStatus") == "running" for n in names)
                and set(self.modules()) == set(names)
            ),
            timeout,
            f"modules {names} running",
        )


@pytest.fixture
async def harness_factory(
    run_id: str,
    podman_service: PodmanService,
    registry: Registry,
    tmp_path: Path,
    images: RunImages,
    cleanup_containers: None,
) -> AsyncIterator[Callable[..., Any]]:
    """Depends on `images` so that the agents stop before the run's images are removed."""
    made: list[Harness] = []

    async def make(also_insecure: tuple[str, ...] = (), **deployment: Any) -> Harness:
        text = agent_config_text(run_id, podman_service.url, registry, also_insecure=also_insecure, **deployment)
        h = await Harness(parse_config(text), tmp_path / "state").start()
        made.append(h)
        return h

    yield make
    for h in made:
        await h.stop()


def inspect(container: str) -> dict[str, Any]:
    out = subprocess.run(["podman", "inspect", container], capture_output=True, text=True, check=True).stdout
    doc: dict[str, Any] = json.loads(out)[0]
    return doc


def owned(run_id: str) -> list[dict[str, Any]]:
    ids = podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label=edge-agent.device={run_id}").stdout.split()
    return [inspect(i) for i in ids]


@pytest.fixture
def agents(tmp_path: Path, images: RunImages, cleanup_containers: None) -> Iterator[list[AgentProcess]]:
    made: list[AgentProcess] = []
    yield made
    for agent in made:
        if agent.proc is not None and agent.proc.alive():
            agent.stop()
