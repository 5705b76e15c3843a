"""Image garbage collection: remove images the agent pulled that no deployment the owner keeps
(current, last-known-good, one committed or being verified) names. An image a container still
uses is kept by podman (the removal fails and is tried again next time)."""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.deployment.store import ReconcilerStore
from edge_agent.logs import get_logger
from edge_agent.runtime.api import ContainerRuntime, RuntimeFailure

log = get_logger(__name__)


async def collect_images(runtime: ContainerRuntime, store: ReconcilerStore, keep: Iterable[str]) -> list[str]:
    """The images removed."""
    removed = []
    for image in sorted(store.pulled_images() - set(keep)):
        try:
            if await runtime.remove_image(image):
                removed.append(image)
                store.forget_pulled(image)
                log.info("removed unused image %s", image, extra={"EVENT": "image.removed"})
        except RuntimeFailure as exc:
            log.warning("could not remove image %s: %s", image, exc, extra={"EVENT": "image.gc_failed"})
    return removed
