"""The device's local images as the image verifier sees them: podman's image id of
repository@digest, to check a pulled image is the one the verified manifest names."""

from __future__ import annotations

from edge_agent.api_url import podman_client
from edge_shared.threads import run_blocking


class PodmanLocalImages:
    """Asks podman (podman-py's images.get, on the socket in [podman]) for an image's id."""

    def __init__(self, socket_url: str, timeout: float = 10.0) -> None:
        self.client = podman_client(socket_url, timeout=timeout)

    async def image_id(self, repository: str, digest: str) -> str | None:
        return await run_blocking(self._image_id, f"{repository}@{digest}", name="podman image id")

    def _image_id(self, name: str) -> str | None:
        from podman.errors import ImageNotFound, NotFound

        try:
            image_id = self.client.images.get(name).id
        except (ImageNotFound, NotFound):
            return None
        return str(image_id).removeprefix("sha256:") if image_id else None
