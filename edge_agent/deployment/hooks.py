"""What other components do around a module container's life, without the deployment layer
knowing them: telemetry gives each module its ingest socket (mounted into the container),
attestation measures the image into its PCR before the container starts."""

from __future__ import annotations

from typing import Protocol

from edge_agent.runtime.api import ContainerRequest


class ModuleHooks(Protocol):
    async def before_create(self, module: str, request: ContainerRequest) -> ContainerRequest:
        """Return the request to create (e.g. with a mount added). Raising fails the module."""
        ...

    async def before_start(self, module: str, image: str, deployment: int | None) -> None:
        """`image` is repository@sha256:digest. Must not raise for a start to go ahead."""
        ...

    async def after_remove(self, module: str) -> None:
        """The module left the deployment (not called when it is only being re-created)."""
        ...
