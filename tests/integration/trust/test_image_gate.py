"""The executor's contract with trust, against a real registry and real podman:

    verified = await verifier.verify(reference)        # ImageRejected -> refuse, keep the old one
    podman pull repository@verified.digest             # run by digest, never by tag
    podman run ... repository@verified.digest

`deploy_module` below is that contract in a dozen lines, so these tests can later be pointed at
the real executor (edge_agent.deployment) by replacing it. Each refusal must leave the previous
deployment running, name the module, and give a machine-readable code.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pytest

from devinfra.fault_proxy import FaultProxy
from devinfra.podman import podman
from edge_shared.trust import cosign
from edge_shared.trust.api import ImageRejected, ImageVerifier
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference
from edgectl.signing import sign_image_bundle, sign_image_legacy
from tests.integration.trust.conftest import ImageFactory, KeyPair, verifier_for


@dataclass
class Outcome:
    module: str
    ok: bool
    digest: str | None = None
    code: str | None = None
    description: str | None = None


async def deploy_module(verifier: ImageVerifier, module: str, reference: str, container: str) -> Outcome:
    """Verify, pull by digest, replace the module's container. A refusal changes nothing."""
    try:
        verified = await verifier.verify(reference)
    except ImageRejected as exc:
        return Outcome(module, False, code=exc.code, description=f"module {module}: {exc.description}")
    pinned = f"{verified.repository}@{verified.digest}"
    podman("pull", "--tls-verify=false", "-q", pinned)
    podman("rm", "-f", "-t", "0", container, check=False)
    podman("run", "-d", "--name", container, pinned, "sleep", "600")
    return Outcome(module, True, digest=verified.digest)


def running_image(container: str) -> str:
    return podman("inspect", "--format", "{{.ImageName}}", container).stdout.strip()


def is_running(container: str) -> bool:
    return podman("inspect", "--format", "{{.State.Running}}", container).stdout.strip() == "true"


@pytest.fixture
def module(images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, cleanup_containers: list[str]):
    """A module 'pilot' already running a verified, signed image (the previous deployment)."""
    name = images.unique("pilot")
    reference = images.push(name)
    sign_image_legacy(registry_client, parse_reference(reference), signer.private)
    container = f"trust-test-{name}"
    cleanup_containers.append(container)
    return name, reference, container


async def refuse_and_keep_previous(
    images: ImageFactory,
    signer: KeyPair,
    module: tuple[str, str, str],
    bad_reference: str,
    code: str,
    verifier: ImageVerifier | None = None,
) -> Outcome:
    _name, reference, container = module
    verifier = verifier or verifier_for(images.registry.host, [signer.public])
    first = await deploy_module(verifier, "pilot", reference, container)
    assert first.ok, first
    previous = running_image(container)
    outcome = await deploy_module(verifier, "pilot", bad_reference, container)
    assert not outcome.ok
    assert outcome.code == code, outcome
    assert outcome.description and outcome.description.startswith("module pilot: ")
    assert is_running(container) and running_image(container) == previous  # previous deployment keeps running
    return outcome


async def test_signed_image_is_started_by_digest(images: ImageFactory, signer: KeyPair, module) -> None:
    _name, reference, container = module
    outcome = await deploy_module(verifier_for(images.registry.host, [signer.public]), "pilot", reference, container)
    assert outcome.ok and outcome.digest
    expected = RegistryClient(RegistrySettings(insecure_registries=frozenset({images.registry.host}))).get_manifest(
        parse_reference(reference)
    )
    assert outcome.digest == expected.digest
    assert running_image(container) == f"{parse_reference(reference).repository}@{outcome.digest}"
    assert is_running(container)


async def test_v3_bundle_signature_verifies_and_starts(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, cleanup_containers: list[str]
) -> None:
    name = images.unique("bundle")
    reference = images.push(name)
    sign_image_bundle(registry_client, parse_reference(reference), signer.private)
    container = f"trust-test-{name}"
    cleanup_containers.append(container)
    # the registry (distribution 2.8) has no referrers API: found via the fallback tag
    digest = registry_client.get_manifest(parse_reference(reference)).digest
    assert registry_client.referrers(parse_reference(reference), digest) is None
    outcome = await deploy_module(verifier_for(images.registry.host, [signer.public]), "pilot", reference, container)
    assert outcome.ok and is_running(container)


async def test_unsigned_image_is_refused(images: ImageFactory, signer: KeyPair, module) -> None:
    unsigned = images.push(images.unique("unsigned"))
    await refuse_and_keep_previous(images, signer, module, unsigned, "unsigned")


async def test_untrusted_key_is_refused(
    images: ImageFactory, signer: KeyPair, stranger: KeyPair, registry_client: RegistryClient, module
) -> None:
    other = images.push(images.unique("stranger"))
    sign_image_legacy(registry_client, parse_reference(other), stranger.private)
    sign_image_bundle(registry_client, parse_reference(other), stranger.private)
    outcome = await refuse_and_keep_previous(images, signer, module, other, "untrusted_key")
    assert signer.public.short_id in (outcome.description or "")


async def test_tag_moved_after_signing_is_refused(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, module
) -> None:
    name = images.unique("moved")
    reference = images.push(name, tag="1")
    sign_image_legacy(registry_client, parse_reference(reference), signer.private)
    signed_digest = registry_client.get_manifest(parse_reference(reference)).digest
    images.push(name, tag="1", variant=name)  # the tag now points at another digest
    moved_digest = registry_client.get_manifest(parse_reference(reference)).digest
    assert moved_digest != signed_digest
    await refuse_and_keep_previous(images, signer, module, reference, "unsigned")
    # ... and copying the old signature to the new digest's .sig tag does not help
    ref = parse_reference(reference)
    old_sig = registry_client.get_manifest(ref, cosign.legacy_signature_tag(signed_digest))
    registry_client.put_manifest(ref, cosign.legacy_signature_tag(moved_digest), old_sig.body, cosign.OCI_MANIFEST)
    await refuse_and_keep_previous(images, signer, module, reference, "digest_mismatch")


async def test_signature_for_another_repository_is_refused(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, module
) -> None:
    reference = images.push(images.unique("elsewhere"))
    other_repo = f"{images.registry.host}/trust-test/some-other-app"
    sign_image_legacy(registry_client, parse_reference(reference), signer.private, docker_reference=other_repo)
    sign_image_bundle(registry_client, parse_reference(reference), signer.private, subject_name=other_repo)
    outcome = await refuse_and_keep_previous(images, signer, module, reference, "reference_mismatch")
    assert "some-other-app" in (outcome.description or "")


async def test_corrupted_signature_bytes_are_refused(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, module
) -> None:
    reference = images.push(images.unique("corrupt"))
    ref = parse_reference(reference)
    result = sign_image_legacy(registry_client, ref, signer.private)
    manifest = json.loads(registry_client.get_manifest(ref, result.tag_or_digest).body)
    annotations = manifest["layers"][0]["annotations"]
    sig = bytearray(base64.b64decode(annotations[cosign.SIGNATURE_ANNOTATION]))
    sig[-1] ^= 0x01  # still DER, wrong value
    annotations[cosign.SIGNATURE_ANNOTATION] = base64.b64encode(bytes(sig)).decode()
    registry_client.put_manifest(ref, result.tag_or_digest, json.dumps(manifest).encode(), cosign.OCI_MANIFEST)
    await refuse_and_keep_previous(images, signer, module, reference, "untrusted_key")
    annotations[cosign.SIGNATURE_ANNOTATION] = "not base64 !!"
    registry_client.put_manifest(ref, result.tag_or_digest, json.dumps(manifest).encode(), cosign.OCI_MANIFEST)
    await refuse_and_keep_previous(images, signer, module, reference, "malformed_signature")


async def test_payload_with_wrong_digest_is_refused(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, module
) -> None:
    reference = images.push(images.unique("wrongdigest"))
    ref = parse_reference(reference)
    real = registry_client.get_manifest(ref).digest
    sign_image_legacy(registry_client, ref, signer.private, digest="sha256:" + "0" * 64)
    # the signature made for the zero digest, placed where the real digest's signature belongs
    bogus = registry_client.get_manifest(ref, cosign.legacy_signature_tag("sha256:" + "0" * 64))
    registry_client.put_manifest(ref, cosign.legacy_signature_tag(real), bogus.body, cosign.OCI_MANIFEST)
    outcome = await refuse_and_keep_previous(images, signer, module, reference, "digest_mismatch")
    assert "0000000000" in (outcome.description or "")


async def test_oversized_manifest_is_refused(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, module
) -> None:
    reference = images.push(images.unique("big"))
    ref = parse_reference(reference)
    manifest = json.loads(registry_client.get_manifest(ref).body)
    # distribution itself caps manifests at 4 MiB; the device's limit is configurable (trust.max_manifest_kb)
    manifest["annotations"] = {"padding": "x" * (100 * 1024)}
    body = json.dumps(manifest).encode()
    registry_client.put_manifest(ref, "big", body, cosign.OCI_MANIFEST)
    big_ref = reference.rsplit(":", 1)[0] + ":big"
    sign_image_legacy(registry_client, parse_reference(big_ref), signer.private, digest=cosign.sha256_digest(body))
    limited = RegistrySettings(insecure_registries=frozenset({images.registry.host}), max_manifest_bytes=64 * 1024)
    verifier = verifier_for(images.registry.host, [signer.public], settings=limited)
    await refuse_and_keep_previous(images, signer, module, big_ref, "manifest_too_large", verifier=verifier)


async def test_truncated_manifest_is_refused(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, module
) -> None:
    name = images.unique("truncated")
    images.push(name)

    class Both:
        """Good module image from the real registry; the new one through a truncating proxy."""

        def __init__(self, proxy_host: str) -> None:
            self.direct = verifier_for(images.registry.host, [signer.public])
            self.proxied = verifier_for(proxy_host, [signer.public])

        async def verify(self, reference: str):  # type: ignore[no-untyped-def]
            target = self.proxied if reference.startswith(proxy.host) else self.direct
            return await target.verify(reference)

    with FaultProxy(images.registry.host, truncate=lambda path: "/manifests/" in path) as proxy:
        bad = f"{proxy.host}/trust-test/{name}:1"
        await refuse_and_keep_previous(images, signer, module, bad, "manifest_truncated", verifier=Both(proxy.host))


async def test_required_annotation_and_warn_mode(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, cleanup_containers: list[str]
) -> None:
    name = images.unique("annotated")
    reference = images.push(name)
    sign_image_legacy(registry_client, parse_reference(reference), signer.private, {"env": "dev"})
    strict = verifier_for(images.registry.host, [signer.public], required={"env": "prod"})
    with pytest.raises(ImageRejected) as info:
        await strict.verify(reference)
    assert info.value.code == "missing_annotation"
    # warn: runs, but reports that nothing was verified
    unsigned = images.push(images.unique("warned"))
    warned = await verifier_for(images.registry.host, [signer.public], mode="warn").verify(unsigned)
    assert warned.mode == "warn" and warned.signer is None and warned.digest.startswith("sha256:")
    off = await verifier_for(images.registry.host, [], mode="off").verify(unsigned)
    assert off.mode == "off" and off.digest == warned.digest


async def test_no_policy_means_refused(images: ImageFactory, signer: KeyPair) -> None:
    from edge_shared.trust.policy import ScopePolicy
    from edge_shared.trust.verify import CosignVerifier

    reference = images.push(images.unique("nopolicy"))
    verifier = CosignVerifier(
        [ScopePolicy("other.example", "enforce", (signer.public,))],
        RegistryClient(RegistrySettings(insecure_registries=frozenset({images.registry.host}))),
    )
    with pytest.raises(ImageRejected) as info:
        await verifier.verify(reference)
    assert info.value.code == "no_trust_policy"


def test_key_rotation_two_trusted_keys(
    images: ImageFactory, signer: KeyPair, stranger: KeyPair, registry_client: RegistryClient
) -> None:
    """Both the old and the new key sign during a rotation; a device trusting either accepts."""
    import asyncio

    reference = images.push(images.unique("rotation"))
    ref = parse_reference(reference)
    sign_image_legacy(registry_client, ref, stranger.private)
    sign_image_legacy(registry_client, ref, signer.private)  # appended, not replacing
    layers = json.loads(
        registry_client.get_manifest(ref, cosign.legacy_signature_tag(registry_client.get_manifest(ref).digest)).body
    )["layers"]
    assert len(layers) == 2
    for trusted in ([signer.public], [stranger.public], [stranger.public, signer.public]):
        verified = asyncio.run(verifier_for(images.registry.host, trusted).verify(reference))
        assert verified.signer in {k.key_id for k in trusted}
