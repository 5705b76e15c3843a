"""cosign's signature formats: build and strictly parse (pure functions, no I/O).

Legacy (cosign <= v2 default): an OCI image manifest at tag ``sha256-<hex>.sig`` whose layers are
simple-signing payloads (``application/vnd.dev.cosign.simplesigning.v1+json``), each with the
base64 signature in the ``dev.cosignproject.cosign/signature`` annotation. The payload is

    {"critical":{"identity":{"docker-reference":"<registry/repo>"},
                 "image":{"docker-manifest-digest":"sha256:<hex>"},
                 "type":"cosign container image signature"},
     "optional":null | {"<annotation>":"<value>", ...}}

v3 (cosign v3 default): a Sigstore bundle v0.3 (``application/vnd.dev.sigstore.bundle.v0.3+json``)
holding a DSSE envelope over an in-toto Statement v1 with predicate type
``https://sigstore.dev/cosign/sign/v1``, pushed as an OCI 1.1 referrer of the image (subject =
image manifest); found with the referrers API or the fallback tag ``sha256-<hex>`` (an index).

Parsing is strict: duplicate JSON keys, unknown fields in the signed parts, wrong types or
malformed digests are refused, because every field a verifier ignores is a field an attacker
controls. Sources of the formats: tests/fixtures/cosign/README.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_shared.image_ref import DIGEST_RE
from edge_shared.strict_json import loads_strict

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLESIGNING_TYPE = "cosign container image signature"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_BLOB = b"{}"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
BUNDLE_MEDIA_TYPES = (BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3")
DSSE_INTOTO_TYPE = "application/vnd.in-toto+json"
INTOTO_STATEMENT_V1 = "https://in-toto.io/Statement/v1"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


class FormatError(ValueError):
    """A signature artifact that does not have the expected shape; the message says which field."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def legacy_signature_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".sig"


def referrers_fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


def canonical_json(obj: Any) -> bytes:
    """Go's encoding/json output for maps: sorted keys, no spaces."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def strict_json(data: bytes, what: str) -> Any:
    """JSON with duplicate keys and NaN refused (edge_shared.strict_json), errors as FormatError."""
    try:
        return loads_strict(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise FormatError(f"{what}: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"{what}: not JSON ({exc.msg} at {exc.pos})") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what}: {exc}") from None


def _obj(value: Any, what: str, keys: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:  # type: ignore[assignment]
    if not isinstance(value, dict):
        raise FormatError(f"{what}: expected an object")
    missing = keys - set(value)
    extra = set(value) - keys - optional
    if missing:
        raise FormatError(f"{what}: missing {', '.join(sorted(missing))}")
    if extra:
        raise FormatError(f"{what}: unexpected field {', '.join(sorted(extra))}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(f"{what}: expected a non-empty string")
    return value


def b64decode_strict(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{what}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII character in the string
        raise FormatError(f"{what}: not valid base64") from None


# --------------------------------------------------------------------------- simple signing


@dataclass(frozen=True)
class SimpleSigningPayload:
    docker_reference: str
    manifest_digest: str
    annotations: Mapping[str, Any] = field(default_factory=dict)


def build_simplesigning_payload(
    docker_reference: str, manifest_digest: str, annotations: Mapping[str, Any] | None = None
) -> bytes:
    body = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": SIMPLESIGNING_TYPE,
        },
        "optional": dict(annotations) if annotations else None,
    }
    return canonical_json(body)


def parse_simplesigning_payload(data: bytes) -> SimpleSigningPayload:
    doc = _obj(strict_json(data, "payload"), "payload", {"critical"}, {"optional"})
    critical = _obj(doc["critical"], "payload.critical", {"identity", "image", "type"})
    identity = _obj(critical["identity"], "payload.critical.identity", {"docker-reference"})
    image = _obj(critical["image"], "payload.critical.image", {"docker-manifest-digest"})
    if critical["type"] != SIMPLESIGNING_TYPE:
        raise FormatError(f"payload.critical.type: {critical['type']!r}; expected {SIMPLESIGNING_TYPE!r}")
    ref = _str(identity["docker-reference"], "payload.critical.identity.docker-reference")
    digest = _str(image["docker-manifest-digest"], "payload.critical.image.docker-manifest-digest")
    if not DIGEST_RE.match(digest):
        raise FormatError(f"payload.critical.image.docker-manifest-digest: {digest!r} is not sha256:<64 hex>")
    optional = doc.get("optional")
    if optional is not None and not isinstance(optional, dict):
        raise FormatError("payload.optional: expected an object or null")
    return SimpleSigningPayload(ref, digest, dict(optional or {}))


def build_legacy_signature_manifest(layers: Sequence[tuple[bytes, str]]) -> tuple[bytes, bytes]:
    """(manifest, config blob) for the ``.sig`` tag; layers are (payload, base64 signature).
    The config is the minimal OCI image config cosign writes (rootfs diff_ids = layer digests)."""
    config = canonical_json(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(p) for p, _ in layers]},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256_digest(config)},
        "layers": [
            {
                "mediaType": SIMPLESIGNING_MEDIA_TYPE,
                "size": len(payload),
                "digest": sha256_digest(payload),
                "annotations": {SIGNATURE_ANNOTATION: sig_b64},
            }
            for payload, sig_b64 in layers
        ],
    }
    return json.dumps(manifest, separators=(",", ":")).encode(), config


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None


def parse_descriptor(value: Any, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise FormatError(f"{what}: expected a descriptor object")
    media_type = _str(value.get("mediaType"), f"{what}.mediaType")
    digest = _str(value.get("digest"), f"{what}.digest")
    if not DIGEST_RE.match(digest):
        raise FormatError(f"{what}.digest: {digest!r} is not sha256:<64 hex>")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FormatError(f"{what}.size: expected a non-negative integer")
    annotations = value.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise FormatError(f"{what}.annotations: expected an object of strings")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise FormatError(f"{what}.artifactType: expected a string")
    return Descriptor(media_type, digest, size, annotations, artifact_type)


@dataclass(frozen=True)
class LegacySignature:
    payload_descriptor: Descriptor
    signature: bytes


def parse_legacy_signature_manifest(data: bytes) -> list[LegacySignature | FormatError]:
    """One entry per simple-signing layer: the parsed signature, or why that layer is unusable."""
    doc = strict_json(data, "signature manifest")
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise FormatError("signature manifest: expected an image manifest with layers")
    out: list[LegacySignature | FormatError] = []
    for i, raw in enumerate(doc["layers"]):
        try:
            desc = parse_descriptor(raw, f"signature manifest layers[{i}]")
            if desc.media_type != SIMPLESIGNING_MEDIA_TYPE:
                continue
            sig = b64decode_strict(desc.annotations.get(SIGNATURE_ANNOTATION), f"layers[{i}] {SIGNATURE_ANNOTATION}")
            if not sig:
                raise FormatError(f"layers[{i}] {SIGNATURE_ANNOTATION}: empty signature")
            out.append(LegacySignature(desc, sig))
        except FormatError as exc:
            out.append(exc)
    return out


# --------------------------------------------------------------------------- DSSE, in-toto, bundle


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


@dataclass(frozen=True)
class DsseSignature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class DsseEnvelope:
    payload_type: str
    payload: bytes
    signatures: tuple[DsseSignature, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode(),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in self.signatures],
        }


def parse_dsse_envelope(value: Any, what: str = "dsseEnvelope") -> DsseEnvelope:
    env = _obj(value, what, {"payload", "payloadType", "signatures"})
    payload_type = _str(env["payloadType"], f"{what}.payloadType")
    payload = b64decode_strict(env["payload"], f"{what}.payload")
    sigs = env["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise FormatError(f"{what}.signatures: expected a non-empty list")
    parsed = []
    for i, s in enumerate(sigs):
        s = _obj(s, f"{what}.signatures[{i}]", {"sig"}, {"keyid"})
        keyid = s.get("keyid", "")
        if not isinstance(keyid, str):
            raise FormatError(f"{what}.signatures[{i}].keyid: expected a string")
        sig = b64decode_strict(s["sig"], f"{what}.signatures[{i}].sig")
        if not sig:
            raise FormatError(f"{what}.signatures[{i}].sig: empty")
        parsed.append(DsseSignature(keyid, sig))
    return DsseEnvelope(payload_type, payload, tuple(parsed))


@dataclass(frozen=True)
class Statement:
    subject_name: str
    subject_digest: str  # sha256:<hex>
    predicate_type: str
    annotations: Mapping[str, Any]


def build_statement(repository: str, digest: str, annotations: Mapping[str, Any] | None = None) -> bytes:
    subject: dict[str, Any] = {"name": repository, "digest": {"sha256": digest.removeprefix("sha256:")}}
    if annotations:
        subject["annotations"] = dict(annotations)
    return canonical_json(
        {"_type": INTOTO_STATEMENT_V1, "subject": [subject], "predicateType": COSIGN_SIGN_PREDICATE, "predicate": {}}
    )


def parse_statement(data: bytes) -> Statement:
    doc = _obj(strict_json(data, "statement"), "statement", {"_type", "subject", "predicateType"}, {"predicate"})
    if doc["_type"] != INTOTO_STATEMENT_V1:
        raise FormatError(f"statement._type: {doc['_type']!r}; expected {INTOTO_STATEMENT_V1!r}")
    if doc["predicateType"] != COSIGN_SIGN_PREDICATE:
        raise FormatError(f"statement.predicateType: {doc['predicateType']!r}; expected {COSIGN_SIGN_PREDICATE!r}")
    subjects = doc["subject"]
    if not isinstance(subjects, list) or len(subjects) != 1:
        raise FormatError("statement.subject: expected exactly one subject (the image)")
    subject = _obj(subjects[0], "statement.subject[0]", {"digest"}, {"name", "annotations"})
    digests = _obj(subject["digest"], "statement.subject[0].digest", {"sha256"})
    hex_digest = digests["sha256"]
    if not isinstance(hex_digest, str) or not HEX64_RE.match(hex_digest):
        raise FormatError("statement.subject[0].digest.sha256: expected 64 lowercase hex digits")
    name = subject.get("name", "")
    if not isinstance(name, str):
        raise FormatError("statement.subject[0].name: expected a string")
    annotations = subject.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise FormatError("statement.subject[0].annotations: expected an object")
    return Statement(name, "sha256:" + hex_digest, doc["predicateType"], annotations)


def build_bundle(envelope: DsseEnvelope, key_hint: str) -> bytes:
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint}, "tlogEntries": []},
        "dsseEnvelope": envelope.to_json(),
    }
    return json.dumps(bundle, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Bundle:
    key_hint: str | None
    envelope: DsseEnvelope


def parse_bundle(data: bytes) -> Bundle:
    doc = _obj(strict_json(data, "bundle"), "bundle", {"mediaType", "verificationMaterial", "dsseEnvelope"})
    if doc["mediaType"] not in BUNDLE_MEDIA_TYPES:
        raise FormatError(f"bundle.mediaType: {doc['mediaType']!r}; expected {BUNDLE_MEDIA_TYPE!r}")
    material = doc["verificationMaterial"]
    if not isinstance(material, dict):
        raise FormatError("bundle.verificationMaterial: expected an object")
    hint = None
    public_key = material.get("publicKey")
    if isinstance(public_key, dict) and isinstance(public_key.get("hint"), str):
        hint = public_key["hint"]
    envelope = parse_dsse_envelope(doc["dsseEnvelope"], "bundle.dsseEnvelope")
    if envelope.payload_type != DSSE_INTOTO_TYPE:
        raise FormatError(f"bundle.dsseEnvelope.payloadType: {envelope.payload_type!r}; expected {DSSE_INTOTO_TYPE!r}")
    return Bundle(hint, envelope)


def build_referrer_manifest(bundle: bytes, subject: Descriptor, created: str) -> bytes:
    """The OCI 1.1 artifact manifest cosign v3 pushes for a bundle (config = the empty blob)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_MEDIA_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": sha256_digest(OCI_EMPTY_BLOB), "size": len(OCI_EMPTY_BLOB)},
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "digest": sha256_digest(bundle), "size": len(bundle)}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": COSIGN_SIGN_PREDICATE,
            "org.opencontainers.image.created": created,
        },
    }
    return json.dumps(manifest, separators=(",", ":")).encode()


def build_referrers_index(descriptors: Sequence[Descriptor]) -> bytes:
    """The referrers fallback tag's content (OCI distribution spec: an image index)."""
    manifests = []
    for d in descriptors:
        entry: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
        if d.artifact_type:
            entry["artifactType"] = d.artifact_type
        if d.annotations:
            entry["annotations"] = dict(d.annotations)
        manifests.append(entry)
    return json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, separators=(",", ":")
    ).encode()


def parse_referrers_index(data: bytes) -> list[Descriptor]:
    doc = strict_json(data, "referrers index")
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise FormatError("referrers index: expected an image index with manifests")
    return [parse_descriptor(m, f"referrers index manifests[{i}]") for i, m in enumerate(doc["manifests"])]


def parse_manifest_layers(data: bytes, what: str) -> tuple[Descriptor | None, list[Descriptor], str | None]:
    """(config, layers, artifactType) of an image manifest; config None for an index."""
    doc = strict_json(data, what)
    if not isinstance(doc, dict):
        raise FormatError(f"{what}: expected an object")
    config = parse_descriptor(doc["config"], f"{what}.config") if "config" in doc else None
    layers_raw = doc.get("layers", [])
    if not isinstance(layers_raw, list):
        raise FormatError(f"{what}.layers: expected a list")
    layers = [parse_descriptor(item, f"{what}.layers[{i}]") for i, item in enumerate(layers_raw)]
    artifact_type = doc.get("artifactType")
    return config, layers, artifact_type if isinstance(artifact_type, str) else None
