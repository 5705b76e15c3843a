"""What unpacking an agent release leaves when the agent is killed or the power goes mid-way: a
helper container (labelled) and the release image (labelled by scripts/build-release.sh). The real
podman service collects them; modules' containers and tagged images are never touched."""

from __future__ import annotations

import secrets
from pathlib import Path

from devinfra.podman import PodmanService, podman
from edge_agent.runtime.api import HELPER_RELEASE_UNPACK, LABEL_HELPER, RELEASE_IMAGE_LABEL
from edge_agent.runtime.podman import PodmanRuntime


def release_image(busybox_image: str, tag: str) -> str:
    """An image with the release label, as a registry pull by digest leaves it: untagged. Returns its id."""
    key, value = RELEASE_IMAGE_LABEL.split("=", 1)
    container = podman("create", busybox_image, "true").stdout.strip()
    try:
        podman("commit", "-q", "--change", f"LABEL {key}={value}", "--change", f"LABEL nonce={tag}", container,
               f"localhost/edge-release-test:{tag}")
    finally:
        podman("rm", "-f", container)
    image_id = podman("image", "inspect", "--format", "{{.Id}}", f"localhost/edge-release-test:{tag}").stdout.strip()
    podman("untag", image_id)
    return image_id


def exists(kind: str, ref: str) -> bool:
    return podman(kind, "exists", ref, check=False).returncode == 0


async def test_helpers_and_release_images_left_behind_are_collected(
    podman_service: PodmanService, busybox_image: str, tmp_path: Path
) -> None:
    run = secrets.token_hex(4)
    label = f"{LABEL_HELPER}={HELPER_RELEASE_UNPACK}"
    helper = podman("create", "--label", label, busybox_image, "true").stdout.strip()
    module = podman("create", "--label", "edge-agent.module=pilot", busybox_image, "true").stdout.strip()
    left = release_image(busybox_image, f"{run}-left")
    wanted = release_image(busybox_image, f"{run}-wanted")
    podman("tag", wanted, f"localhost/edge-release-wanted:{run}")
    kept_by_hand = release_image(busybox_image, f"{run}-hand")
    podman("tag", kept_by_hand, f"localhost/edge-release-by-hand:{run}")
    try:
        runtime = PodmanRuntime(podman_service.url)
        containers, images = await runtime.collect_release_leftovers(keep_image=f"localhost/edge-release-wanted:{run}")
        assert helper in containers and not exists("container", helper)
        assert exists("container", module)  # not a helper: never touched
        assert left in images and not exists("image", left)
        assert exists("image", wanted) and exists("image", kept_by_hand)
        assert wanted not in images and kept_by_hand not in images
        # Nothing left: a second pass removes nothing.
        containers, images = await runtime.collect_release_leftovers()
        assert helper not in containers and left not in images
    finally:
        podman("rm", "-f", helper, module, check=False)
        podman("rmi", "-f", left, wanted, kept_by_hand, check=False)

