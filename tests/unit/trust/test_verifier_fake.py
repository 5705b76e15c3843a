"""CosignVerifier decisions with an in-memory registry (fast; the real registry is in
tests/integration/trust). Covers the mode/cache/offline branches exhaustively."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from edge_agent.store import open_state_db
from edge_agent.trust.cache import VerifyCache
from edge_shared.trust import cosign, keys
from edge_shared.trust.api import ImageRejected
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import ImageRef, Manifest, RegistryError
from edge_shared.trust.verify import CosignVerifier

REG = "reg.example"
REPO = f"{REG}/fleet/pilot"
PRIV = keys.generate_private_key()
KEY = keys.parse_public_key(keys.public_key_pem(PRIV.public_key()), "k")
CONFIG = b'{"os":"linux"}'
IMAGE = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": cosign.OCI_MANIFEST,
        "config": {"mediaType": cosign.OCI_CONFIG, "digest": cosign.sha256_digest(CONFIG), "size": len(CONFIG)},
        "layers": [],
    }
).encode()
DIGEST = cosign.sha256_digest(IMAGE)
IMAGE_ID = hashlib.sha256(CONFIG).hexdigest()


class FakeRegistry:
    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {"1": IMAGE, DIGEST: IMAGE}
        self.blobs: dict[str, bytes] = {}
        self.down = False
        self.calls = 0

    def sign(self) -> None:
        payload = cosign.build_simplesigning_payload(REPO, DIGEST)
        manifest, _ = cosign.build_legacy_signature_manifest(
            [(payload, base64.b64encode(keys.sign(PRIV, payload)).decode())]
        )
        self.blobs[cosign.sha256_digest(payload)] = payload
        self.manifests[cosign.legacy_signature_tag(DIGEST)] = manifest

    def get_manifest(self, ref: ImageRef, reference: str | None = None) -> Manifest:
        self.calls += 1
        if self.down:
            raise RegistryError("unreachable", f"{ref.registry}: connection refused")
        body = self.manifests.get(reference or ref.reference)
        if body is None:
            raise RegistryError("not_found", "not found")
        return Manifest(cosign.sha256_digest(body), cosign.OCI_MANIFEST, body)

    def get_blob(self, ref: ImageRef, digest: str, max_bytes: int | None = None) -> bytes:
        self.calls += 1
        return self.blobs[digest]

    def referrers(self, ref: ImageRef, digest: str, artifact_type: str | None = None) -> None:
        return None


class FakeLocal:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    async def image_id(self, repository: str, digest: str) -> str | None:
        return self.ids.get(f"{repository}@{digest}")


def make(tmp_path: Path, mode: str = "enforce") -> tuple[CosignVerifier, FakeRegistry, FakeLocal]:
    registry, local = FakeRegistry(), FakeLocal()
    policy = ScopePolicy(REG, mode, (KEY,) if mode != "off" else ())  # type: ignore[arg-type]
    verifier = CosignVerifier([policy], registry, VerifyCache(open_state_db(tmp_path)), local)  # type: ignore[arg-type]
    return verifier, registry, local


async def code_of(verifier: CosignVerifier, reference: str) -> str:
    with pytest.raises(ImageRejected) as info:
        await verifier.verify(reference)
    return info.value.code


async def test_verified_then_warm_from_cache(tmp_path: Path) -> None:
    verifier, registry, _ = make(tmp_path)
    registry.sign()
    first = await verifier.verify(f"{REPO}:1")
    assert first.digest == DIGEST and first.signer == KEY.key_id
    registry.calls = 0
    await verifier.verify(f"{REPO}:1")
    assert registry.calls == 1  # only the manifest: the verdict came from the cache


async def test_modes(tmp_path: Path) -> None:
    enforce, _, _ = make(tmp_path / "e")
    assert await code_of(enforce, f"{REPO}:1") == "unsigned"
    warn, _, _ = make(tmp_path / "w", "warn")
    assert (await warn.verify(f"{REPO}:1")).signer is None
    off, _, _ = make(tmp_path / "o", "off")
    assert (await off.verify(f"{REPO}@{DIGEST}")).digest == DIGEST
    assert await code_of(enforce, "other.example/x:1") == "no_trust_policy"
    assert await code_of(enforce, "no-registry-part:1") == "invalid_reference"
    assert await code_of(enforce, f"{REPO}:2") == "image_not_found"


async def test_offline_paths(tmp_path: Path) -> None:
    verifier, registry, local = make(tmp_path)
    registry.sign()
    await verifier.verify(f"{REPO}:1")
    registry.down = True
    assert await code_of(verifier, f"{REPO}:1") == "registry_unreachable"  # not pulled yet
    local.ids[f"{REPO}@{DIGEST}"] = IMAGE_ID
    assert (await verifier.verify(f"{REPO}:1")).digest == DIGEST  # by tag, through the remembered resolution
    assert (await verifier.verify(f"{REPO}@{DIGEST}")).signer == KEY.key_id
    assert await code_of(verifier, f"{REPO}:never") == "registry_unreachable"
    local.ids[f"{REPO}@{DIGEST}"] = "f" * 64
    assert await code_of(verifier, f"{REPO}:1") == "local_image_mismatch"


async def test_online_swap_is_caught_and_verdict_dropped(tmp_path: Path) -> None:
    verifier, registry, local = make(tmp_path)
    registry.sign()
    local.ids[f"{REPO}@{DIGEST}"] = "e" * 64
    assert await code_of(verifier, f"{REPO}:1") == "local_image_mismatch"
    local.ids[f"{REPO}@{DIGEST}"] = IMAGE_ID
    assert (await verifier.verify(f"{REPO}:1")).digest == DIGEST
