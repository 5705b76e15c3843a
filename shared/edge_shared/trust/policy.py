"""Trust decisions as pure functions: which policy covers a repository, and whether one signature
artifact (bytes already fetched) satisfies it. No I/O here; verify.py does the fetching.

A scope is ``*`` (everything), a registry ``host[:port]``, or ``host[:port]/path`` matching that
repository and everything below it on a ``/`` boundary. The longest matching scope wins, so a
fleet can enforce everywhere and relax one test repository explicitly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_shared.trust.api import TrustMode
from edge_shared.trust.cosign import (
    SIGNATURE_ANNOTATION,
    FormatError,
    dsse_pae,
    parse_bundle,
    parse_simplesigning_payload,
    parse_statement,
)
from edge_shared.trust.keys import TrustedKey


@dataclass(frozen=True)
class ScopePolicy:
    scope: str
    mode: TrustMode
    keys: tuple[TrustedKey, ...] = ()
    required_annotations: Mapping[str, str] = field(default_factory=dict)
    # stock cosign v3 bundles name no repository in the signed statement (subject has only a digest)
    allow_unnamed_bundles: bool = False

    def fingerprint(self) -> str:
        """Changes whenever what this policy accepts changes; cached verdicts are keyed on it."""
        text = "|".join(
            [
                self.mode,
                f"unnamed={self.allow_unnamed_bundles}",
                *sorted(k.key_id for k in self.keys),
                *sorted(f"{k}={v}" for k, v in self.required_annotations.items()),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def scope_matches(scope: str, repository: str) -> bool:
    if scope == "*":
        return True
    scope, repository = scope.lower().rstrip("/"), repository.lower()
    return repository == scope or repository.startswith(scope + "/")


def select_policy(policies: Sequence[ScopePolicy], repository: str) -> ScopePolicy | None:
    matching = [p for p in policies if scope_matches(p.scope, repository)]
    if not matching:
        return None
    return max(matching, key=lambda p: -1 if p.scope == "*" else len(p.scope))


def reference_matches(signed_reference: str, repository: str) -> bool:
    """The signed docker-reference must name exactly this repository (registry host compared
    case-insensitively). cosign itself skips this; without it a signature made for
    registry/other-app is accepted for registry/pilot when both are signed with one key."""
    signed_host, _, signed_path = signed_reference.partition("/")
    host, _, path = repository.partition("/")
    return signed_host.lower() == host.lower() and signed_path == path


def missing_annotations(required: Mapping[str, str], actual: Mapping[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(required.items()) if actual.get(k) != v]


@dataclass(frozen=True)
class Accepted:
    key: TrustedKey
    format: str  # "legacy" or "bundle"


@dataclass(frozen=True)
class Refused:
    code: str
    description: str

    RANK = {
        "malformed_signature": 1,
        "untrusted_key": 2,
        "digest_mismatch": 3,
        "reference_mismatch": 3,
        "missing_annotation": 3,
        "wrong_artifact": 1,
    }

    @property
    def rank(self) -> int:
        return self.RANK.get(self.code, 0)


def _verifying_key(keys: Sequence[TrustedKey], signature: bytes, data: bytes) -> TrustedKey | None:
    for key in keys:
        if key.verify(signature, data):
            return key
    return None


def _no_key(keys: Sequence[TrustedKey], what: str) -> Refused:
    ids = ", ".join(k.short_id for k in keys) or "none configured"
    return Refused("untrusted_key", f"{what} does not verify with any trusted key ({ids}): wrong key or corrupted")


def check_simplesigning(
    payload: bytes, signature: bytes, policy: ScopePolicy, repository: str, digest: str
) -> Accepted | Refused:
    """One legacy signature layer: signature first (nothing unsigned is even parsed further)."""
    key = _verifying_key(policy.keys, signature, payload)
    if key is None:
        return _no_key(policy.keys, f"{SIGNATURE_ANNOTATION} signature")
    try:
        parsed = parse_simplesigning_payload(payload)
    except FormatError as exc:
        return Refused("malformed_signature", str(exc))
    return _check_claims(
        parsed.manifest_digest, parsed.docker_reference, parsed.annotations, policy, repository, digest, key, "legacy"
    )


def check_bundle(bundle_bytes: bytes, policy: ScopePolicy, repository: str, digest: str) -> Accepted | Refused:
    """One cosign v3 bundle: DSSE signature over PAE(payloadType, statement), then the statement."""
    try:
        bundle = parse_bundle(bundle_bytes)
    except FormatError as exc:
        return Refused("malformed_signature", str(exc))
    env = bundle.envelope
    pae = dsse_pae(env.payload_type, env.payload)
    key = None
    for sig in env.signatures:
        key = _verifying_key(policy.keys, sig.sig, pae)
        if key is not None:
            break
    if key is None:
        return _no_key(policy.keys, "bundle DSSE signature")
    try:
        statement = parse_statement(env.payload)
    except FormatError as exc:
        return Refused("malformed_signature", str(exc))
    return _check_claims(
        statement.subject_digest,
        statement.subject_name,
        statement.annotations,
        policy,
        repository,
        digest,
        key,
        "bundle",
    )


def _check_claims(
    signed_digest: str,
    signed_reference: str,
    annotations: Mapping[str, Any],
    policy: ScopePolicy,
    repository: str,
    digest: str,
    key: TrustedKey,
    fmt: str,
) -> Accepted | Refused:
    if signed_digest != digest:
        return Refused("digest_mismatch", f"signature (key {key.short_id}) is for {signed_digest}, image is {digest}")
    if fmt == "bundle" and not signed_reference:
        if not policy.allow_unnamed_bundles:
            return Refused(
                "reference_mismatch",
                f"bundle (key {key.short_id}) names no repository (stock cosign v3 signs only the digest); "
                "sign with edgectl sign-image --bundle, or set allow_unnamed_bundles = true for this scope",
            )
    elif not reference_matches(signed_reference, repository):
        return Refused(
            "reference_mismatch",
            f"signature (key {key.short_id}) is for repository {signed_reference or '(none)'}, not {repository}",
        )
    missing = missing_annotations(policy.required_annotations, annotations)
    if missing:
        return Refused(
            "missing_annotation", f"signature (key {key.short_id}) lacks required annotation(s) " + ", ".join(missing)
        )
    return Accepted(key, fmt)


def best_refusal(refusals: Sequence[Refused]) -> Refused:
    """The most specific reason among several failed signatures (e.g. a correctly signed payload
    for another digest beats an unrelated signature by an unknown key)."""
    if not refusals:
        return Refused("unsigned", "no cosign signature found (neither a .sig tag nor a sigstore bundle referrer)")
    return max(refusals, key=lambda r: r.rank)
