"""CosignVerifier with multi-arch images (an image index), against an in-memory registry that
checks content digests like the real client does. The same cases against the real registry and
real podman are in tests/integration/trust/test_multiarch.py.

What is signed: a signature on the platform manifest, or on the index the platform manifest was
picked from, is accepted (docs/security.md, "Multi-arch images")."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from edge_agent.store import open_state_db
from edge_agent.trust.cache import VerifyCache
from edge_agent.trust.origins import ImageOrigins
from edge_shared.trust import cosign, keys
from edge_shared.trust.api import ImageRejected
from edge_shared.trust.platforms import OCI_INDEX, parse_platform
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import ImageRef, Manifest, RegistryError
from edge_shared.trust.verify import CosignVerifier

REG = "reg.example"
REPO = f"{REG}/fleet/pilot"
PRIV = keys.generate_private_key()
KEY = keys.parse_public_key(keys.public_key_pem(PRIV.public_key()), "k")
OTHER = keys.generate_private_key()


def image(arch: str, salt: str = "") -> tuple[bytes, str]:
    config = json.dumps({"architecture": arch, "os": "linux", "salt": salt}).encode()
    body = json.dumps({
        "schemaVersion": 2,
        "mediaType": cosign.OCI_MANIFEST,
        "config": {"mediaType": cosign.OCI_CONFIG, "digest": cosign.sha256_digest(config), "size": len(config)},
        "layers": [],
    }).encode()
    return body, hashlib.sha256(config).hexdigest()


AMD64, AMD64_ID = image("amd64")
ARM64, ARM64_ID = image("arm64")
EVIL_ARM64, _ = image("arm64", "evil")
D_AMD64, D_ARM64, D_EVIL = (cosign.sha256_digest(b) for b in (AMD64, ARM64, EVIL_ARM64))


def index_of(*entries: tuple[str, bytes, str | None]) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": cosign.OCI_MANIFEST, "digest": cosign.sha256_digest(b), "size": len(b),
             "platform": {"os": "linux", "architecture": arch, **({"variant": v} if v else {})}}
            for arch, b, v in entries
        ],
    }).encode()


INDEX = index_of(("amd64", AMD64, None), ("arm64", ARM64, "v8"))
D_INDEX = cosign.sha256_digest(INDEX)


class FakeRegistry:
    """Manifests by tag or digest; a digest lookup returns whatever bytes are stored under it,
    and the digest check below is the one RegistryClient.get_manifest makes."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {"1": INDEX, D_INDEX: INDEX, D_AMD64: AMD64, D_ARM64: ARM64}
        self.blobs: dict[str, bytes] = {}
        self.down = False

    def sign(self, digest: str, key: keys.PrivateKey = PRIV) -> None:
        payload = cosign.build_simplesigning_payload(REPO, digest)
        manifest, _ = cosign.build_legacy_signature_manifest(
            [(payload, base64.b64encode(keys.sign(key, payload)).decode())]
        )
        self.blobs[cosign.sha256_digest(payload)] = payload
        self.manifests[cosign.legacy_signature_tag(digest)] = manifest

    def get_manifest(self, ref: ImageRef, reference: str | None = None) -> Manifest:
        if self.down:
            raise RegistryError("unreachable", f"{ref.registry}: connection refused")
        reference = reference or ref.reference
        body = self.manifests.get(reference)
        if body is None:
            raise RegistryError("not_found", f"{reference} not found")
        digest = cosign.sha256_digest(body)
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError("digest_mismatch", f"{ref.repository}: {reference} has content digest {digest}")
        media_type = json.loads(body).get("mediaType", "")
        return Manifest(digest, media_type, body)

    def get_blob(self, ref: ImageRef, digest: str, max_bytes: int | None = None) -> bytes:
        return self.blobs[digest]

    def referrers(self, ref: ImageRef, digest: str, artifact_type: str | None = None) -> None:
        return None


class FakeLocal:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    async def image_id(self, repository: str, digest: str) -> str | None:
        return self.ids.get(f"{repository}@{digest}")


def make(tmp_path: Path, platform: str, mode: str = "enforce") -> tuple[CosignVerifier, FakeRegistry, FakeLocal]:
    registry, local = FakeRegistry(), FakeLocal()
    db = open_state_db(tmp_path / platform.replace("/", "-") / mode)
    policy = ScopePolicy(REG, mode, (KEY,) if mode != "off" else ())  # type: ignore[arg-type]
    verifier = CosignVerifier(
        [policy], registry, VerifyCache(db), local, parse_platform(platform), ImageOrigins(db)  # type: ignore[arg-type]
    )
    return verifier, registry, local


async def code_of(verifier: CosignVerifier, reference: str) -> str:
    with pytest.raises(ImageRejected) as info:
        await verifier.verify(reference)
    return info.value.code


@pytest.mark.parametrize(("platform", "digest"), [("linux/amd64", D_AMD64), ("linux/arm64", D_ARM64)])
async def test_signed_index_resolves_to_the_device_platform(tmp_path: Path, platform: str, digest: str) -> None:
    verifier, registry, _ = make(tmp_path, platform)
    registry.sign(D_INDEX)  # cosign sign without --recursive: only the index
    verified = await verifier.verify(f"{REPO}:1")
    assert (verified.digest, verified.index_digest, verified.signer) == (digest, D_INDEX, KEY.key_id)
    assert verified.platform == str(parse_platform(platform))
    origin = verifier.origins.lookup(f"{REPO}@{digest}")  # type: ignore[union-attr]
    assert origin is not None and (origin.index_digest, origin.platform) == (D_INDEX, verified.platform)
    # pinned by the index digest: the same platform digest
    assert (await verifier.verify(f"{REPO}@{D_INDEX}")).digest == digest


async def test_platform_signature_alone_is_enough(tmp_path: Path) -> None:
    verifier, registry, _ = make(tmp_path, "linux/arm64")
    registry.sign(D_ARM64)  # a platform manifest signed, the index not
    verified = await verifier.verify(f"{REPO}:1")
    assert (verified.digest, verified.index_digest, verified.signer) == (D_ARM64, D_INDEX, KEY.key_id)
    # pinned by the platform digest: a plain image, no index involved
    direct = await verifier.verify(f"{REPO}@{D_ARM64}")
    assert (direct.digest, direct.index_digest, direct.platform) == (D_ARM64, None, None)
    # the amd64 manifest of the same index is signed by nobody
    amd64, registry64, _ = make(tmp_path, "linux/amd64")
    registry64.sign(D_ARM64)
    assert await code_of(amd64, f"{REPO}:1") == "unsigned"


async def test_index_signature_does_not_cover_a_platform_digest_pinned_alone(tmp_path: Path) -> None:
    """Pinned by its own digest, a platform manifest has no index to vouch for it, also after it
    was verified through the index (that verdict is cached for the index route only)."""
    verifier, registry, local = make(tmp_path, "linux/arm64")
    registry.sign(D_INDEX)
    assert await code_of(verifier, f"{REPO}@{D_ARM64}") == "unsigned"
    assert (await verifier.verify(f"{REPO}:1")).digest == D_ARM64
    assert await code_of(verifier, f"{REPO}@{D_ARM64}") == "unsigned"
    registry.down = True
    local.ids[f"{REPO}@{D_ARM64}"] = ARM64_ID
    assert (await verifier.verify(f"{REPO}:1")).digest == D_ARM64  # offline by tag: through the index
    assert await code_of(verifier, f"{REPO}@{D_ARM64}") == "registry_unreachable"  # never verified alone


async def test_unsigned_and_wrongly_signed(tmp_path: Path) -> None:
    verifier, registry, _ = make(tmp_path, "linux/arm64")
    assert await code_of(verifier, f"{REPO}:1") == "unsigned"
    registry.sign(D_INDEX, OTHER)
    registry.sign(D_ARM64, OTHER)
    assert await code_of(verifier, f"{REPO}:1") == "untrusted_key"


async def test_tampered_platform_bytes_refused(tmp_path: Path) -> None:
    """The registry serves other bytes under the arm64 digest the signed index names."""
    arm, registry, _ = make(tmp_path / "arm", "linux/arm64")
    registry.sign(D_INDEX)
    registry.manifests[D_ARM64] = EVIL_ARM64
    assert await code_of(arm, f"{REPO}:1") == "digest_mismatch"
    amd, registry64, _ = make(tmp_path / "amd", "linux/amd64")
    registry64.sign(D_INDEX)
    registry64.manifests[D_ARM64] = EVIL_ARM64
    assert (await amd.verify(f"{REPO}:1")).digest == D_AMD64


async def test_replaced_arm64_entry_refused_while_amd64_still_runs(tmp_path: Path) -> None:
    """cosign sign --recursive signed the index and both platforms; then someone pushes a new
    index under the tag with the amd64 entry kept and the arm64 entry replaced by their own."""
    forged = index_of(("amd64", AMD64, None), ("arm64", EVIL_ARM64, "v8"))
    results = {}
    for platform in ("linux/amd64", "linux/arm64"):
        verifier, registry, _ = make(tmp_path, platform)
        for digest in (D_INDEX, D_AMD64, D_ARM64):
            registry.sign(digest)
        registry.manifests.update({"1": forged, cosign.sha256_digest(forged): forged, D_EVIL: EVIL_ARM64})
        try:
            results[platform] = (await verifier.verify(f"{REPO}:1")).digest
        except ImageRejected as exc:
            results[platform] = exc.code
    assert results == {"linux/amd64": D_AMD64, "linux/arm64": "unsigned"}


async def test_no_image_for_this_platform(tmp_path: Path) -> None:
    verifier, registry, _ = make(tmp_path, "linux/arm/v7")
    registry.sign(D_INDEX)
    with pytest.raises(ImageRejected) as info:
        await verifier.verify(f"{REPO}:1")
    assert info.value.code == "platform_not_found"
    assert "linux/arm/v7" in info.value.description and "linux/amd64, linux/arm64/v8" in info.value.description


async def test_nested_and_malformed_index(tmp_path: Path) -> None:
    verifier, registry, _ = make(tmp_path, "linux/amd64")
    nested = index_of(("amd64", INDEX, None))
    registry.manifests.update({"nested": nested})
    registry.manifests[cosign.sha256_digest(INDEX)] = INDEX
    assert await code_of(verifier, f"{REPO}:nested") == "malformed_index"
    registry.manifests["bad"] = json.dumps({"mediaType": OCI_INDEX, "manifests": [{"digest": 1}]}).encode()
    assert await code_of(verifier, f"{REPO}:bad") == "malformed_index"


async def test_warn_and_off_still_pick_the_platform(tmp_path: Path) -> None:
    warn, _, _ = make(tmp_path, "linux/arm64", "warn")
    verified = await warn.verify(f"{REPO}:1")
    assert (verified.digest, verified.mode, verified.signer, verified.index_digest) == (D_ARM64, "warn", None, D_INDEX)
    off, _, _ = make(tmp_path, "linux/arm64", "off")
    assert (await off.verify(f"{REPO}:1")).digest == D_ARM64


async def test_offline_by_index_digest_uses_the_remembered_platform_digest(tmp_path: Path) -> None:
    verifier, registry, local = make(tmp_path, "linux/arm64")
    registry.sign(D_INDEX)
    await verifier.verify(f"{REPO}@{D_INDEX}")
    registry.down = True
    assert await code_of(verifier, f"{REPO}@{D_INDEX}") == "registry_unreachable"  # not pulled
    local.ids[f"{REPO}@{D_ARM64}"] = ARM64_ID
    offline = await verifier.verify(f"{REPO}@{D_INDEX}")
    assert (offline.digest, offline.index_digest, offline.signer) == (D_ARM64, D_INDEX, KEY.key_id)
    local.ids[f"{REPO}@{D_ARM64}"] = AMD64_ID  # a different image under that name
    assert await code_of(verifier, f"{REPO}@{D_INDEX}") == "local_image_mismatch"
