"""What unpacking an agent release leaves when the agent is killed or the power goes mid-way: a
helper container (labelled) and the release image (labelled by scripts/build-release.sh). The real
podman service collects them; modules' containers and tagged images are never touched.

The collection takes every labelled helper and untagged release image in the store, so the test runs
on a container store of its own: an agent another test starts meanwhile (every agent collects at
its start) must not collect what this test planted."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devinfra.podman import PodmanService, PrivateStore, copy_image_into, podman, private_store
from devinfra.registry import Registry
from edge_agent.runtime.api import HELPER_RELEASE_UNPACK, LABEL_HELPER, RELEASE_IMAGE_LABEL
from edge_agent.runtime.podman import PodmanRuntime


@dataclass
class OwnStore:
    store: PrivateStore
    service: PodmanService

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman(*args, check=check, store=self.store)

    def out(self, *args: str) -> str:
        return self.podman(*args).stdout.strip()

    def exists(self, kind: str, ref: str) -> bool:
        return self.podman(kind, "exists", ref, check=False).returncode == 0


@pytest.fixture
def store(podman_env: Path, busybox_image: str, tmp_path: Path) -> Iterator[OwnStore]:
    with private_store(tmp_path / "store") as store:
        copy_image_into(store, busybox_image)
        (tmp_path / "service").mkdir()
        service = PodmanService(tmp_path / "service", store).start()
        try:
            yield OwnStore(store, service)
        finally:
            service.stop()


def release_image(store: OwnStore, busybox_image: str, tag: str) -> str:
    """An image with the release label, as a registry pull by digest leaves it: untagged. Returns its id."""
    key, value = RELEASE_IMAGE_LABEL.split("=", 1)
    container = store.out("create", busybox_image, "true")
    try:
        store.podman("commit", "-q", "--change", f"LABEL {key}={value}", "--change", f"LABEL nonce={tag}",
                     container, f"localhost/edge-release-test:{tag}")
    finally:
        store.podman("rm", "-f", container)
    image_id = store.out("image", "inspect", "--format", "{{.Id}}", f"localhost/edge-release-test:{tag}")
    store.podman("untag", image_id)
    return image_id


async def test_helpers_and_release_images_left_behind_are_collected(store: OwnStore, busybox_image: str) -> None:
    run = secrets.token_hex(4)
    helper = store.out("create", "--label", f"{LABEL_HELPER}={HELPER_RELEASE_UNPACK}", busybox_image, "true")
    module = store.out("create", "--label", "edge-agent.module=pilot", busybox_image, "true")
    left = release_image(store, busybox_image, f"{run}-left")
    wanted = release_image(store, busybox_image, f"{run}-wanted")
    store.podman("tag", wanted, f"localhost/edge-release-wanted:{run}")
    kept_by_hand = release_image(store, busybox_image, f"{run}-hand")
    store.podman("tag", kept_by_hand, f"localhost/edge-release-by-hand:{run}")

    runtime = PodmanRuntime(store.service.url)
    containers, images = await runtime.collect_release_leftovers(keep_image=f"localhost/edge-release-wanted:{run}")
    assert helper in containers and not store.exists("container", helper)
    assert store.exists("container", module)  # not a helper: never touched
    assert left in images and not store.exists("image", left)
    assert store.exists("image", wanted) and store.exists("image", kept_by_hand)
    assert wanted not in images and kept_by_hand not in images
    # Nothing left: a second pass removes nothing.
    containers, images = await runtime.collect_release_leftovers()
    assert helper not in containers and left not in images


async def test_a_release_image_pulled_by_digest_is_collected(
    store: OwnStore, busybox_image: str, registry: Registry, tmp_path: Path
) -> None:
    """As the agent pulls a release (pinned by digest): podman lists the digest reference among the
    image's RepoTags, which is no tag; a kill between the pull and the install's removal of the image
    must not leave it forever."""
    run = secrets.token_hex(4)
    local = release_image(store, busybox_image, f"{run}-pulled")
    ref = f"{registry.host}/leftovers-{run}/edge-agent-release:1"
    store.podman("tag", local, ref)
    digest_file = tmp_path / "digest"
    store.podman("push", "-q", "--tls-verify=false", "--digestfile", str(digest_file), ref)
    store.podman("rmi", "-f", local)
    pinned = f"{registry.host}/leftovers-{run}/edge-agent-release@{digest_file.read_text().strip()}"
    runtime = PodmanRuntime(store.service.url)
    await runtime.pull(pinned, insecure=True, timeout_s=120)
    pulled = store.out("image", "inspect", "--format", "{{.Id}}", pinned)
    _, images = await runtime.collect_release_leftovers()
    assert pulled in images and not store.exists("image", pulled)
