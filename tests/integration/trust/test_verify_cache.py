"""Verification cache: warm verification, offline reboot with verified local images, swapped image."""

from __future__ import annotations

from pathlib import Path

import pytest

from devinfra.podman import podman
from devinfra.registry import Registry
from edge_agent.store import open_state_db
from edge_agent.trust.cache import VerifyCache
from edge_agent.trust.local_images import PodmanLocalImages
from edge_shared.trust import cosign
from edge_shared.trust.api import ImageRejected
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference
from edgectl.signing import sign_image_legacy
from tests.integration.trust.conftest import ImageFactory, KeyPair, build_variant, verifier_for


async def test_podman_local_image_id_is_the_verified_config_digest(
    images: ImageFactory, registry_client: RegistryClient, local_images: PodmanLocalImages
) -> None:
    reference = images.push(images.unique("localid"))
    ref = parse_reference(reference)
    manifest = registry_client.get_manifest(ref)
    config, _, _ = cosign.parse_manifest_layers(manifest.body, "m")
    assert config is not None
    assert await local_images.image_id(ref.repository, "sha256:" + "0" * 64) is None
    podman("pull", "--tls-verify=false", "-q", f"{ref.repository}@{manifest.digest}")
    try:
        assert await local_images.image_id(ref.repository, manifest.digest) == config.digest.removeprefix("sha256:")
    finally:
        podman("rmi", "-f", f"{ref.repository}@{manifest.digest}", check=False)


async def test_warm_verification_comes_from_the_cache(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, cache: VerifyCache
) -> None:
    reference = images.push(images.unique("warm"))
    ref = parse_reference(reference)
    sign_image_legacy(registry_client, ref, signer.private)
    verifier = verifier_for(images.registry.host, [signer.public], cache=cache)
    first = await verifier.verify(reference)
    # remove the signature from the registry: only the cached verdict can still pass
    sig_tag = cosign.legacy_signature_tag(first.digest)
    sig_digest = registry_client.get_manifest(ref, sig_tag).digest
    registry_client._request(ref, "DELETE", f"/v2/{ref.path}/manifests/{sig_digest}", scope="pull,push", what="m")
    second = await verifier.verify(reference)
    assert (second.digest, second.signer) == (first.digest, first.signer)
    # a policy change (other keys) invalidates the cached verdict
    other = verifier_for(images.registry.host, [signer.public], cache=cache, required={"env": "prod"})
    with pytest.raises(ImageRejected) as info:
        await other.verify(reference)
    assert info.value.code == "unsigned"


class SwappedLocalImages:
    """Real podman, except that repository@digest reports another image's (real) id, as after a
    swap in local storage. Podman offers no way to do the swap itself without editing its store."""

    def __init__(self, real: PodmanLocalImages, other_id: str) -> None:
        self.real, self.other_id = real, other_id

    async def image_id(self, repository: str, digest: str) -> str | None:
        return self.other_id if await self.real.image_id(repository, digest) else None


async def test_offline_reboot_starts_verified_local_images_and_catches_a_swap(
    tmp_path: Path, busybox_image: str, signer: KeyPair, local_images: PodmanLocalImages
) -> None:
    own = Registry(tmp_path / "registry").start()
    try:
        factory = ImageFactory(own, busybox_image)
        client = RegistryClient(RegistrySettings(insecure_registries=frozenset({own.host})))
        verified_ref = factory.push("offline-verified", variant="offline-a")
        never_verified = factory.push("offline-never", variant="offline-b")
        sign_image_legacy(client, parse_reference(verified_ref), signer.private)
        sign_image_legacy(client, parse_reference(never_verified), signer.private)
        db_dir = tmp_path / "state"
        online = verifier_for(own.host, [signer.public], cache=VerifyCache(open_state_db(db_dir)), local=local_images)
        verified = await online.verify(verified_ref)
        pinned = f"{verified.repository}@{verified.digest}"
        podman("pull", "--tls-verify=false", "-q", pinned)
        never_digest = client.get_manifest(parse_reference(never_verified)).digest
        podman("pull", "--tls-verify=false", "-q", f"{parse_reference(never_verified).repository}@{never_digest}")
    finally:
        own.stop()
    try:
        # "reboot": new objects on the same state.db, registry gone
        rebooted = verifier_for(own.host, [signer.public], cache=VerifyCache(open_state_db(db_dir)), local=local_images)
        again = await rebooted.verify(verified_ref)
        assert (again.digest, again.signer) == (verified.digest, verified.signer)
        with pytest.raises(ImageRejected) as info:
            await rebooted.verify(never_verified)  # present locally, but never verified here
        assert info.value.code == "registry_unreachable"
        with pytest.raises(ImageRejected) as info:
            await rebooted.verify(f"{own.host}/trust-test/not-pulled:1")
        assert info.value.code == "registry_unreachable"
        # a local image swapped under the verified name is caught
        other_id = podman("image", "inspect", "--format", "{{.Id}}", build_variant(busybox_image, "swap")).stdout
        swapped = verifier_for(
            own.host,
            [signer.public],
            cache=VerifyCache(open_state_db(db_dir)),
            local=SwappedLocalImages(local_images, other_id.strip()),
        )
        with pytest.raises(ImageRejected) as info:
            await swapped.verify(verified_ref)
        assert info.value.code == "local_image_mismatch"
    finally:
        podman("rmi", "-f", pinned, check=False)
        podman("rmi", "-f", f"{parse_reference(never_verified).repository}@{never_digest}", check=False)
