"""Multi-arch images against the real registry and real podman: a real image index built with
`podman manifest create/add` of a linux/amd64 and a linux/arm64 image and pushed with
`podman manifest push --all`; signed with `edgectl sign-image` (recursively by default) and
resolved by the verifier per platform. A tampered arm64 entry is refused while amd64 still runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devinfra.fault_proxy import FaultProxy
from devinfra.multiarch import MultiArch, build_multiarch, forge_index
from devinfra.podman import podman
from edge_shared.trust import keys as trust_keys
from edge_shared.trust.api import ImageRejected
from edge_shared.trust.platforms import DOCKER_LIST, parse_platform
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference
from edge_shared.trust.verify import CosignVerifier
from edgectl.signing import sign_image_legacy
from tests.integration.trust.conftest import ImageFactory, KeyPair, verifier_for

REPO = Path(__file__).resolve().parents[3]
PASSPHRASE = "multiarch test"


def edgectl(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE}
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    prefix = tmp_path_factory.mktemp("multiarch-keys") / "image"
    out = edgectl("keygen", "--output-key-prefix", str(prefix))
    assert out.returncode == 0, out.stderr
    return prefix.with_suffix(".key"), prefix.with_suffix(".pub")


def build(images: ImageFactory, stem: str, list_format: str = "oci") -> MultiArch:
    return build_multiarch(images.registry.host, f"trust-test/{images.unique(stem)}", "1", images.base,
                           local_prefix="localhost/trust-test-multiarch", list_format=list_format)


def verifier(host: str, platform: str, pub: Path, registry_host: str | None = None) -> CosignVerifier:
    policy = ScopePolicy(host, "enforce", (trust_keys.load_public_key(pub),), {})
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({registry_host or host})))
    return CosignVerifier([policy], client, platform=parse_platform(platform))


def test_podman_manifest_inspect_lists_both_platforms(images: ImageFactory, tmp_path: Path) -> None:
    image = build(images, "inspect")
    # podman manifest inspect has no --tls-verify: the loopback registry is marked insecure in a
    # registries.conf of this test's own
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{images.registry.host}"\ninsecure = true\n')
    out = subprocess.run(["podman", "manifest", "inspect", image.reference], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf)})
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]) for m in doc["manifests"]}
    assert platforms == {("linux", "amd64"), ("linux", "arm64")}
    assert {m["digest"] for m in doc["manifests"]} == set(image.digests.values())


async def test_edgectl_signs_recursively_and_the_verifier_picks_each_platform(
    images: ImageFactory, key_files: tuple[Path, Path]
) -> None:
    key, pub = key_files
    image = build(images, "recursive")
    host = images.registry.host
    signed = edgectl("sign-image", image.reference, "--key", str(key), "--insecure-registry", host)
    assert signed.returncode == 0, signed.stderr
    for digest in (image.index_digest, *image.digests.values()):
        assert f"signed {image.repository}@{digest} (legacy" in signed.stdout, signed.stdout

    checked = edgectl("verify-image", image.reference, "--key", str(pub), "--insecure-registry", host)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"OK {image.pinned('amd64')} linux/amd64 from index {image.index_digest}" in checked.stdout
    assert f"OK {image.pinned('arm64')} linux/arm64/v8 from index {image.index_digest}" in checked.stdout

    for platform, arch in (("linux/amd64", "amd64"), ("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64")):
        v = verifier(host, platform, pub)
        for reference in (image.reference, image.pinned("index")):
            verified = await v.verify(reference)
            assert (verified.digest, verified.index_digest, verified.platform) == (
                image.digests[arch], image.index_digest, str(parse_platform(platform))
            ), reference
        direct = await v.verify(image.pinned(arch))  # a pinned platform digest: its own signature
        assert (direct.digest, direct.index_digest) == (image.digests[arch], None)
    with pytest.raises(ImageRejected) as info:
        await verifier(host, "linux/arm/v7", pub).verify(image.reference)
    assert info.value.code == "platform_not_found"


async def test_index_only_signature_covers_the_platforms_through_the_index(
    images: ImageFactory, key_files: tuple[Path, Path]
) -> None:
    key, pub = key_files
    image = build(images, "indexonly")
    host = images.registry.host
    signed = edgectl("sign-image", image.reference, "--key", str(key), "--insecure-registry", host, "--no-recursive",
                     "--bundle")
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.count("signed ") == 1 and image.index_digest in signed.stdout
    verified = await verifier(host, "linux/arm64", pub).verify(image.reference)
    assert (verified.digest, verified.index_digest) == (image.digests["arm64"], image.index_digest)
    # the platform digest pinned alone has no signature of its own
    alone = edgectl("verify-image", image.pinned("arm64"), "--key", str(pub), "--insecure-registry", host)
    assert alone.returncode == 1 and "REFUSED" in alone.stdout and "unsigned" in alone.stdout, alone.stdout
    by_index = edgectl("verify-image", image.reference, "--key", str(pub), "--insecure-registry", host,
                       "--platform", "linux/arm64")
    assert by_index.returncode == 0 and f"OK {image.pinned('arm64')}" in by_index.stdout, by_index.stdout


async def test_replaced_arm64_entry_refused_while_amd64_still_runs(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient, cleanup_containers: list[str]
) -> None:
    """Signed recursively; then a new index under the same tag keeps the amd64 entry and points
    the arm64 entry at another (unsigned) arm64 image."""
    image = build(images, "replaced")
    ref = parse_reference(image.reference)
    for digest in (image.index_digest, *image.digests.values()):
        sign_image_legacy(registry_client, ref, signer.private, digest=digest)
    other = build_multiarch(images.registry.host, ref.path.removeprefix(f"{ref.registry}/"), "other", images.base,
                            marker="intruder", local_prefix="localhost/trust-test-multiarch")
    forged = forge_index(images.registry.host, image, other.digests["arm64"], "1")  # the same tag

    host = images.registry.host
    arm64 = verifier_for(host, [signer.public])
    arm64.platform = parse_platform("linux/arm64")
    with pytest.raises(ImageRejected) as info:
        await arm64.verify(image.reference)
    assert info.value.code == "unsigned"
    amd64 = verifier_for(host, [signer.public])
    amd64.platform = parse_platform("linux/amd64")
    verified = await amd64.verify(image.reference)
    assert (verified.digest, verified.signer) == (image.digests["amd64"], signer.public.key_id)
    assert verified.index_digest == forged  # the forged index: not signed, not needed
    # and it runs: pulled and started by the platform digest with real podman
    container = f"trust-test-{images.unique('multiarch-amd64')}"
    cleanup_containers.append(container)
    podman("pull", "--tls-verify=false", "-q", image.pinned("amd64"))
    podman("run", "-d", "--name", container, image.pinned("amd64"), "sleep", "600")
    state = podman("inspect", "--format", "{{.State.Running}} {{.ImageName}}", container).stdout.split()
    assert state == ["true", image.pinned("amd64")]
    arch = podman("image", "inspect", "--format", "{{.Architecture}}", image.pinned("amd64")).stdout.strip()
    assert arch == "amd64"


async def test_arm64_manifest_bytes_not_matching_the_index_refused_amd64_verifies(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient
) -> None:
    """Between registry and device, other bytes are served for the arm64 digest the signed index names."""
    image = build(images, "tampered")
    ref = parse_reference(image.reference)
    arm_digest = image.digests["arm64"]

    def tamper(path: str, body: bytes) -> bytes:
        if path.endswith(f"/manifests/{arm_digest}"):
            doc = json.loads(body)
            doc["annotations"] = {"tampered": "yes"}
            return json.dumps(doc).encode()
        return body

    with FaultProxy(images.registry.host, mutate=tamper) as proxy:
        proxied = f"{proxy.host}/{ref.path}:1"
        # the index only, for the name the device uses (through the proxy)
        sign_image_legacy(registry_client, ref, signer.private, docker_reference=parse_reference(proxied).repository)
        for platform, expected in (("linux/arm64", None), ("linux/amd64", image.digests["amd64"])):
            v = verifier_for(proxy.host, [signer.public])
            v.platform = parse_platform(platform)
            if expected is None:
                with pytest.raises(ImageRejected) as info:
                    await v.verify(proxied)
                assert info.value.code == "digest_mismatch" and arm_digest in info.value.description
            else:
                verified = await v.verify(proxied)
                assert (verified.digest, verified.index_digest) == (expected, image.index_digest)


async def test_docker_manifest_list_resolves_like_an_oci_index(
    images: ImageFactory, signer: KeyPair, registry_client: RegistryClient
) -> None:
    image = build(images, "dockerlist", list_format="v2s2")
    ref = parse_reference(image.reference)
    top = registry_client.get_manifest(ref)
    assert top.media_type == DOCKER_LIST
    child = registry_client.get_manifest(ref, image.digests["arm64"])
    assert child.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    sign_image_legacy(registry_client, ref, signer.private, digest=image.digests["arm64"])
    arm64 = verifier_for(images.registry.host, [signer.public])
    arm64.platform = parse_platform("linux/arm64")
    verified = await arm64.verify(image.reference)
    assert (verified.digest, verified.index_digest) == (image.digests["arm64"], image.index_digest)
    amd64 = verifier_for(images.registry.host, [signer.public])
    amd64.platform = parse_platform("linux/amd64")
    with pytest.raises(ImageRejected) as info:  # only arm64 was signed
        await amd64.verify(image.reference)
    assert info.value.code == "unsigned"
