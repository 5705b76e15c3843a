"""Fleet side (edgectl push-model, the model pipeline): upload a model artifact to its registry
and sign it with the same cosign signatures as images (trust/signing.py: no second format)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_shared.artifacts.format import BuiltArtifact
from edge_shared.trust.cosign import OCI_MANIFEST
from edge_shared.trust.keys import PrivateKey
from edge_shared.trust.registry import ImageRef, RegistryClient
from edgectl.signing import SignResult, sign_image_bundle, sign_image_legacy


@dataclass(frozen=True)
class Pushed:
    reference: str  # registry/repository@sha256:... (what a deployment can pin)
    digest: str
    bytes_uploaded: int  # config + layers (blobs the registry already had are not sent again)
    signatures: tuple[SignResult, ...] = ()


def push_artifact(client: RegistryClient, ref: ImageRef, artifact: BuiltArtifact) -> Pushed:
    """Blobs first, the manifest last (at the tag when the reference has one, else by digest)."""
    sent = 0
    for data in (artifact.config, *(blob for _, blob in artifact.layers)):
        if client.has_blob(ref, _digest(data)):
            continue
        client.push_blob(ref, data)
        sent += len(data)
    where = ref.tag or artifact.digest
    digest = client.put_manifest(ref, where, artifact.manifest, OCI_MANIFEST)
    return Pushed(f"{ref.repository}@{digest}", digest, sent)


def push_and_sign(
    client: RegistryClient,
    ref: ImageRef,
    artifact: BuiltArtifact,
    key: PrivateKey,
    annotations: Mapping[str, Any] | None = None,
    *,
    legacy: bool = True,
    bundle: bool = False,
) -> Pushed:
    pushed = push_artifact(client, ref, artifact)
    results = []
    if legacy:
        results.append(sign_image_legacy(client, ref, key, annotations, digest=pushed.digest))
    if bundle:
        results.append(sign_image_bundle(client, ref, key, annotations, digest=pushed.digest))
    return Pushed(pushed.reference, pushed.digest, pushed.bytes_uploaded, tuple(results))


def _digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()
