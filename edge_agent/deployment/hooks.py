"""What other components do around a module container's life, without the deployment layer
knowing them: telemetry gives each module its ingest socket (mounted into the container),
attestation measures the image into its PCR before the container starts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.deployment.pinned import PinnedDeployment, PinnedModule
from edge_agent.runtime.api import ContainerRequest


class ModuleHooks(Protocol):
    async def before_create(self, module: str, request: ContainerRequest) -> ContainerRequest:
        """Return the request to create (e.g. with a mount added). Raising fails the module."""
        ...

    async def before_start(self, module: str, image: str, deployment: int | None) -> None:
        """`image` is repository@sha256:digest. Must not raise for a start to go ahead. Also called
        once for each running container the agent adopts after its own restart (the reconciler's
        first look at it), so whatever a start sets up is restored: it must be idempotent."""
        ...

    async def after_remove(self, module: str) -> None:
        """The module left the deployment (not called when it is only being re-created)."""
        ...


@dataclass(frozen=True)
class ArtifactWait:
    """A module has not confirmed the artifact it was given yet."""

    module: str
    reason: str


@dataclass(frozen=True)
class ArtifactRefusal:
    """A module refused the artifact it was given (it fails the deployment like a crash)."""

    module: str
    reason: str


class ArtifactHooks(ModuleHooks, Protocol):
    """Module artifacts as the reconciler uses them (edge_agent/artifacts/modules.py)."""

    on_report: Callable[[], None]

    async def place(self, pinned: PinnedDeployment | None) -> dict[str, str]:
        """Put every artifact the deployment pins in place; module -> error for those that failed."""
        ...

    def verdict(self, pinned: PinnedDeployment) -> ArtifactRefusal | ArtifactWait | None: ...

    def report(self, module: PinnedModule) -> dict[str, Any]: ...

    def module_uses(self, module: str) -> dict[str, Any] | None: ...

    async def collect(self, keep_from: Sequence[PinnedDeployment], fetched: set[tuple[str, str, str]]) -> None:
        """Remove artifact versions none of these deployments pins and the version being verified
        did not download (module, slot, digest); off the event loop."""
        ...
