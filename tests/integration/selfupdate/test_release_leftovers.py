"""What unpacking an agent release leaves when the agent is killed or the power goes mid-way: a
helper container (labelled) and the release image (labelled by scripts/build-release.sh). The real
podman service collects them; modules' containers and tagged images are never touched."""

from __future__ import annotations

import secrets
from pathlib import Path

from devinfra.podman import PodmanService, podman
from devinfra.registry import Registry
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



async def test_a_release_image_pulled_by_digest_is_collected(
    podman_service: PodmanService, busybox_image: str, registry: Registry
) -> None:
    """As the agent pulls a release (pinned by digest): podman lists the digest reference among the
    image's RepoTags, which is no tag; a kill between the pull and the install's removal of the image
    must not leave it forever."""
    run = secrets.token_hex(4)
    local = release_image(busybox_image, f"{run}-pulled")
    ref = f"{registry.host}/leftovers-{run}/edge-agent-release:1"
    podman("tag", local, ref)
    digest_file = Path(podman("info", "--format", "{{.Store.RunRoot}}").stdout.strip()) / f"digest-{run}"
    try:
        podman("push", "-q", "--tls-verify=false", "--digestfile", str(digest_file), ref)
        digest = digest_file.read_text().strip()
    finally:
        digest_file.unlink(missing_ok=True)
    podman("rmi", "-f", local)
    pinned = f"{registry.host}/leftovers-{run}/edge-agent-release@{digest}"
    runtime = PodmanRuntime(podman_service.url)
    try:
        await runtime.pull(pinned, insecure=True, timeout_s=120)
        pulled = podman("image", "inspect", "--format", "{{.Id}}", pinned).stdout.strip()
        _, images = await runtime.collect_release_leftovers()
        assert pulled in images and not exists("image", pulled)
    finally:
        podman("rmi", "-f", pinned, check=False)
