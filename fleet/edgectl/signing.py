"""Signing side (edgectl, CI): push cosign-format signatures for an image to its registry.

Multi-arch images: `digests_to_sign` lists the index and, recursively, each platform manifest.

Legacy: append a simple-signing layer to the ``sha256-<hex>.sig`` manifest (as cosign does, so
signatures from several keys coexist during a rotation). v3: push the bundle as an OCI 1.1
referrer and add it to the referrers fallback tag ``sha256-<hex>`` (registries without the
referrers API, e.g. distribution 2.8, need the tag; those with it index the subject anyway).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_shared.trust.cosign import (
    BUNDLE_MEDIA_TYPE,
    DSSE_INTOTO_TYPE,
    OCI_EMPTY_BLOB,
    OCI_INDEX,
    OCI_MANIFEST,
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING_MEDIA_TYPE,
    Descriptor,
    DsseEnvelope,
    DsseSignature,
    FormatError,
    build_bundle,
    build_legacy_signature_manifest,
    build_referrer_manifest,
    build_referrers_index,
    build_simplesigning_payload,
    build_statement,
    dsse_pae,
    legacy_signature_tag,
    parse_referrers_index,
    referrers_fallback_tag,
    strict_json,
)
from edge_shared.trust.keys import PrivateKey, key_id, public_key_der, sign
from edge_shared.trust.platforms import is_index, parse_index
from edge_shared.trust.registry import ImageRef, RegistryClient, RegistryError


@dataclass(frozen=True)
class SignResult:
    digest: str
    tag_or_digest: str  # where the signature went
    format: str


def key_hint(key: PrivateKey) -> str:
    """The bundle's publicKey.hint: base64 sha256 of the public key DER (informational only)."""
    import hashlib

    return base64.b64encode(hashlib.sha256(public_key_der(key.public_key())).digest()).decode()


def sign_image_legacy(
    client: RegistryClient,
    ref: ImageRef,
    key: PrivateKey,
    annotations: Mapping[str, Any] | None = None,
    *,
    docker_reference: str | None = None,
    digest: str | None = None,
) -> SignResult:
    digest = digest or client.get_manifest(ref).digest
    payload = build_simplesigning_payload(docker_reference or ref.repository, digest, annotations)
    sig_b64 = base64.b64encode(sign(key, payload)).decode()
    layers: list[tuple[bytes, str]] = []
    tag = legacy_signature_tag(digest)
    try:  # keep the signatures already there (other keys)
        existing = strict_json(client.get_manifest(ref, tag).body, "existing signature manifest")
        for layer in existing.get("layers", []):
            if layer.get("mediaType") != SIMPLESIGNING_MEDIA_TYPE:
                continue
            old_payload = client.get_blob(ref, layer["digest"])
            old_sig = layer.get("annotations", {}).get(SIGNATURE_ANNOTATION, "")
            layers.append((old_payload, old_sig))
    except RegistryError as exc:
        if exc.code != "not_found":
            raise
    layers.append((payload, sig_b64))
    manifest, config = build_legacy_signature_manifest(layers)
    client.push_blob(ref, config)
    for p, _ in layers:
        client.push_blob(ref, p)
    client.put_manifest(ref, tag, manifest, OCI_MANIFEST)
    return SignResult(digest, tag, "legacy")


def sign_image_bundle(
    client: RegistryClient,
    ref: ImageRef,
    key: PrivateKey,
    annotations: Mapping[str, Any] | None = None,
    *,
    subject_name: str | None = None,
    digest: str | None = None,
) -> SignResult:
    image = client.get_manifest(ref, digest) if digest else client.get_manifest(ref)
    statement = build_statement(subject_name or ref.repository, image.digest, annotations)
    signature = sign(key, dsse_pae(DSSE_INTOTO_TYPE, statement))
    envelope = DsseEnvelope(DSSE_INTOTO_TYPE, statement, (DsseSignature("", signature),))
    bundle = build_bundle(envelope, key_hint(key))
    subject = Descriptor(image.media_type or OCI_MANIFEST, image.digest, len(image.body))
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    referrer = build_referrer_manifest(bundle, subject, created)
    client.push_blob(ref, OCI_EMPTY_BLOB)
    client.push_blob(ref, bundle)
    referrer_digest = client.put_manifest(ref, _digest_of(referrer), referrer, OCI_MANIFEST)
    # fallback tag: an index of every referrer, ours appended
    tag = referrers_fallback_tag(image.digest)
    entries: list[Descriptor] = []
    try:
        entries = [d for d in parse_referrers_index(client.get_manifest(ref, tag).body) if d.digest != referrer_digest]
    except RegistryError as exc:
        if exc.code != "not_found":
            raise
    except FormatError:
        entries = []
    entries.append(
        Descriptor(
            OCI_MANIFEST,
            referrer_digest,
            len(referrer),
            {
                "dev.sigstore.bundle.content": "dsse-envelope",
                "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1",
            },
            BUNDLE_MEDIA_TYPE,
        )
    )
    client.put_manifest(ref, tag, build_referrers_index(entries), OCI_INDEX)
    return SignResult(image.digest, referrer_digest, "bundle")


def digests_to_sign(client: RegistryClient, ref: ImageRef, recursive: bool = True) -> list[str]:
    """The digest the reference names and, when it is a multi-arch index and `recursive`, the
    digest of each manifest the index lists (as cosign sign --recursive does): devices accept
    either signature (docs/security.md), signing both lets a platform digest be pinned alone."""
    top = client.get_manifest(ref)
    out = [top.digest]
    if recursive and is_index(top.media_type, top.body):
        out += [e.digest for e in parse_index(top.body) if e.digest not in out]
    return out


def _digest_of(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def signer_id(key: PrivateKey) -> str:
    return key_id(key.public_key())
