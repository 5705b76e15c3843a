"""What the deployment layer needs from a container engine, as plain values and a Protocol.

The podman adapter (runtime/podman.py) and the tests' in-memory fake (tests/fakes/runtime.py)
both implement `ContainerRuntime`; nothing outside runtime/ knows about Podman's API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

ContainerState = Literal["created", "running", "exited", "paused", "unknown"]
Health = Literal["none", "starting", "healthy", "unhealthy"]

# Ownership labels: a container is the agent's only if it carries these AND our device id.
LABEL_DEVICE = "edge-agent.device"
LABEL_MODULE = "edge-agent.module"
LABEL_DEPLOYMENT = "edge-agent.deployment"
LABEL_SPEC_HASH = "edge-agent.spec-hash"
# Short-lived containers the agent makes for itself (never a module), e.g. to unpack a release.
LABEL_HELPER = "edge-agent.helper"
HELPER_RELEASE_UNPACK = "agent-release-unpack"
# What scripts/build-release.sh puts on every agent release image.
RELEASE_IMAGE_LABEL = "org.opencontainers.image.title=edge-agent-release"


@dataclass(frozen=True)
class HealthcheckRequest:
    command: tuple[str, ...]
    interval_s: float
    timeout_s: float
    retries: int
    start_period_s: float


@dataclass(frozen=True)
class PortRequest:
    container: int
    host: int
    protocol: str
    host_ip: str


@dataclass(frozen=True)
class MountRequest:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerRequest:
    """Everything needed to create one module container; least privilege is the default."""

    name: str
    image: str  # always repository@sha256:digest
    labels: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] | None = None
    command: tuple[str, ...] | None = None
    mounts: tuple[MountRequest, ...] = ()
    devices: tuple[str, ...] = ()
    ports: tuple[PortRequest, ...] = ()
    memory_bytes: int | None = None
    cpus: float | None = None
    pids_limit: int = 256
    healthcheck: HealthcheckRequest | None = None
    user: str | None = None
    read_only_rootfs: bool = True
    cap_add: tuple[str, ...] = ()
    network: str = "bridge"
    stop_grace_s: float = 10.0


@dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    labels: Mapping[str, str]
    state: ContainerState
    exit_code: int | None = None
    started_at: float | None = None  # unix seconds
    finished_at: float | None = None
    health: Health = "none"
    image: str = ""
    oom_killed: bool = False

    @property
    def module(self) -> str | None:
        return self.labels.get(LABEL_MODULE)

    @property
    def spec_hash(self) -> str | None:
        return self.labels.get(LABEL_SPEC_HASH)

    def owned_by(self, device_id: str) -> bool:
        return (
            self.labels.get(LABEL_DEVICE) == device_id
            and bool(self.labels.get(LABEL_MODULE))
            and bool(self.labels.get(LABEL_SPEC_HASH))
        )


@dataclass(frozen=True)
class RuntimeEvent:
    container_id: str
    name: str
    action: str  # start, died, health_status, remove, ...
    module: str | None = None


class RuntimeFailure(Exception):
    """A runtime call failed; the message is fit for an operator (reported as statusDescription)."""


class ContainerRuntime(Protocol):
    async def list_containers(self, device_id: str) -> list[ObservedContainer]:
        """Every container carrying our device label (owned check is the caller's)."""
        ...

    async def image_exists(self, image: str) -> bool: ...

    async def pull(self, image: str, *, insecure: bool, timeout_s: float) -> None: ...

    async def create(self, request: ContainerRequest) -> str: ...

    async def start(self, container: str) -> None: ...

    async def stop(self, container: str, grace_s: float) -> None: ...

    async def remove(self, container: str) -> None: ...

    async def healthcheck(self, container: str) -> Health: ...

    async def remove_image(self, image: str) -> bool: ...

    def events(self, device_id: str) -> AsyncIterator[RuntimeEvent]: ...

    async def close(self) -> None: ...
