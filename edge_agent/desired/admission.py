"""The document gate: the bytes of a desired document in, one decision out. Pure: no I/O, no clock
(the caller passes `now`), no state (the caller passes what it knows). The one place a desired
document is checked; nothing downstream parses or validates it again.

Checks, in the order of cost, each before the next one reads anything:

 1. empty payload (the retained document was deleted)           cleared
 2. size, before any parse (also the MQTT maximum packet size)   too_large
 3. UTF-8                                                        invalid_utf8
 4. nesting depth, by a bracket scan that never recurses         too_deep
 5. strict JSON (duplicate keys, NaN refused)                    invalid_json
 6. signed envelope (DSSE): at most Limits.max_signatures        too_many_signatures
    signatures, counted before any is decoded or verified; then
    the signature, when enforced                                 unsigned, bad_signature, untrusted_key
    the payload then goes through 2-5 again
 7. gate-owned fields: expiry, key rotation                      expired, invalid_expires, invalid_trust
 8. envelope schema and field types                              invalid_document, unsupported_schema
 9. replay: the version must be newer than every version that
    passed this gate before (the same bytes again are a duplicate) replayed
10. the deployment itself (module specs, mount roots)            invalid_deployment

Only after 6 is a document authenticated: a refusal before that carries no version (an attacker's
claimed version must not reach the fleet's view). The depth scan is hand-written because the json
module has no depth limit; it removes string literals with one regular expression (C speed) and
counts brackets in what remains.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from edge_agent.deployment.manifest import Deployment
from edge_agent.desired.errors import DesiredRejected
from edge_agent.strict_json import loads_strict
from edge_agent.trust.cosign import DsseEnvelope, FormatError, dsse_pae, parse_dsse_envelope
from edge_agent.trust.keys import KeyFileError, TrustedKey, parse_public_key
from edge_agent.twin.protocol import SCHEMA_VERSION
from edge_agent.validation import summary

DOCUMENT_PAYLOAD_TYPE = "application/vnd.edge-agent.desired+json"
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 32
# Signatures per envelope: each one may cost a public-key verification per trusted key before the
# document is authenticated, so anyone who can publish could otherwise buy seconds of event-loop
# CPU with one message (a fleet signs with one key, two during a rotation).
DEFAULT_MAX_SIGNATURES = 8
MAX_VERSION = 2**53 - 1  # survives a round trip through JavaScript tooling
GATE_FIELDS = ("expires", "trust")
# A string literal, or an unterminated one running to the end (possessive: never backtracks, so
# the scan stays linear even for `"\"\"\"...` with no closing quote).
_STRING_LITERAL = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

DeploymentValidator = Callable[[Mapping[str, Any]], Deployment]


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_signatures: int = DEFAULT_MAX_SIGNATURES


@dataclass(frozen=True)
class DocumentTrust:
    """How documents are authenticated: [trust] document_mode, the trusted keys (the config's, or
    the set a signed rotation installed), and whether an expiry is required."""

    mode: Literal["enforce", "off"] = "enforce"
    keys: tuple[TrustedKey, ...] = ()
    require_expires: bool = False


@dataclass(frozen=True)
class History:
    """What the gate must know of the past: the newest version that ever passed it, and its digest."""

    highest_version: int | None = None
    highest_digest: str | None = None


@dataclass(frozen=True)
class Admitted:
    version: int
    digest: str  # sha256 of the exact bytes received
    deployment: Deployment  # validated
    document: Mapping[str, Any]  # the deployment object as received (what is stored and pinned)
    properties: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    signer: str | None = None  # short id of the key whose signature verified (None: document_mode off)
    expires: datetime | None = None
    new_keys: tuple[TrustedKey, ...] | None = None  # a key rotation, committed with the document


@dataclass(frozen=True)
class Duplicate:
    version: int


@dataclass(frozen=True)
class Refused:
    code: str
    description: str
    digest: str
    version: int | None = None  # only when the document was authenticated


Decision = Admitted | Duplicate | Refused


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    schema_: Literal[1] = Field(alias="schema")
    version: StrictInt = Field(ge=1, le=MAX_VERSION)
    deployment: dict[str, Any]
    properties: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Optional free-form metadata from the fleet side (who deployed, when); not acted on.
    meta: dict[str, Any] = Field(default_factory=dict)


def digest_of(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def nesting_depth(data: bytes) -> int:
    """Deepest bracket nesting of JSON text, ignoring brackets inside strings. Never recurses."""
    brackets = _STRING_LITERAL.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def load_json(raw: bytes, limits: Limits, what: str = "document") -> Any:
    """Checks 2-5: size, UTF-8, depth, strict JSON. Raises DesiredRejected naming what is wrong."""
    if len(raw) > limits.max_bytes:
        raise DesiredRejected("too_large", f"{what} is {len(raw)} bytes; the limit is {limits.max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DesiredRejected("invalid_utf8", f"{what} is not UTF-8: invalid byte at offset {exc.start}") from None
    depth = nesting_depth(raw)
    if depth > limits.max_depth:
        raise DesiredRejected("too_deep", f"{what}: JSON nests {depth} levels deep; the limit is {limits.max_depth}")
    try:
        return loads_strict(text)
    except json.JSONDecodeError as exc:
        raise DesiredRejected(
            "invalid_json", f"{what}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:  # duplicate keys, NaN, huge ints
        raise DesiredRejected("invalid_json", f"{what}: not valid JSON: {exc}") from None


def open_envelope(outer: Any, limits: Limits, keys: Sequence[TrustedKey]) -> tuple[Any, TrustedKey]:
    """Check 6: the signed envelope; returns (the parsed payload, the key that verified it)."""
    if not isinstance(outer, dict) or "signatures" not in outer or "payloadType" not in outer:
        raise DesiredRejected(
            "unsigned",
            "document is not a signed envelope (expected payloadType, payload, signatures; "
            "sign it with edgectl sign-document or edgectl deploy --key)",
        )
    signatures = outer.get("signatures")
    if isinstance(signatures, list) and len(signatures) > limits.max_signatures:
        # Checked before anything is decoded or verified: the work per unauthenticated message is bounded.
        raise DesiredRejected(
            "too_many_signatures",
            f"envelope.signatures has {len(signatures)} entries; the limit is {limits.max_signatures} "
            "(twin.max_document_signatures)",
        )
    try:
        envelope = parse_dsse_envelope(outer, "envelope")
    except FormatError as exc:
        raise DesiredRejected("bad_signature", str(exc)) from None
    if envelope.payload_type != DOCUMENT_PAYLOAD_TYPE:
        raise DesiredRejected(
            "bad_signature", f"envelope.payloadType {envelope.payload_type!r}; expected {DOCUMENT_PAYLOAD_TYPE!r}"
        )
    signer = _verify(envelope, keys)
    return load_json(envelope.payload, limits, "payload"), signer


def _verify(envelope: DsseEnvelope, keys: Sequence[TrustedKey]) -> TrustedKey:
    pae = dsse_pae(envelope.payload_type, envelope.payload)
    by_id = {k.key_id: k for k in keys}
    named_trusted = False
    for sig in envelope.signatures:
        candidates = [by_id[sig.keyid]] if sig.keyid in by_id else ([] if sig.keyid else list(keys))
        named_trusted = named_trusted or sig.keyid in by_id
        for key in candidates:
            if key.verify(sig.sig, pae):
                return key
    ids = ", ".join(k.short_id for k in keys) or "none configured"
    if named_trusted:
        raise DesiredRejected(
            "bad_signature",
            f"signature by a trusted key does not verify (corrupted or altered); trusted document keys: {ids}",
        )
    named = ", ".join(s.keyid[:16] for s in envelope.signatures if s.keyid) or "(no keyid)"
    raise DesiredRejected("untrusted_key", f"signed by {named}, which is not a trusted document key ({ids})")


def parse_rfc3339(value: str) -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no time zone (write e.g. 2026-01-31T12:00:00Z)")
    return parsed


def _expiry(doc: Mapping[str, Any], required: bool, now: float) -> datetime | None:
    value = doc.get("expires")
    if value is None:
        if required:
            raise DesiredRejected("expired", "payload.expires is missing and trust.require_document_expiry is on")
        return None
    if not isinstance(value, str):
        raise DesiredRejected("invalid_expires", "payload.expires: expected an RFC 3339 time string")
    try:
        expires = parse_rfc3339(value)
    except ValueError as exc:
        raise DesiredRejected("invalid_expires", f"payload.expires: {value!r}: {exc}") from None
    if expires.timestamp() <= now:
        raise DesiredRejected("expired", f"document expired at {value}")
    return expires


def _rotation(doc: Mapping[str, Any]) -> tuple[TrustedKey, ...] | None:
    trust = doc.get("trust")
    if trust is None:
        return None
    if not isinstance(trust, dict) or set(trust) != {"documentKeys"}:
        raise DesiredRejected("invalid_trust", 'payload.trust: expected exactly {"documentKeys": [PEM, ...]}')
    pems = trust["documentKeys"]
    if not isinstance(pems, list) or not pems or not all(isinstance(p, str) for p in pems):
        raise DesiredRejected("invalid_trust", "payload.trust.documentKeys: expected a non-empty list of PEM strings")
    try:
        return tuple(parse_public_key(p.encode(), f"payload.trust.documentKeys[{i}]") for i, p in enumerate(pems))
    except KeyFileError as exc:
        raise DesiredRejected("invalid_trust", str(exc)) from None


def _describe(exc: ValidationError) -> str:
    return summary(exc)


def _envelope(data: Any) -> _Envelope:
    """Check 8: the envelope's schema and field types."""
    if not isinstance(data, dict):
        raise DesiredRejected("invalid_document", f"expected a JSON object, got {type(data).__name__}")
    if "schema" not in data:
        raise DesiredRejected("invalid_document", "schema: field required (the envelope's schema version)")
    schema = data["schema"]
    if schema != SCHEMA_VERSION or isinstance(schema, bool):
        raise DesiredRejected(
            "unsupported_schema", f"schema: got {json.dumps(schema)[:40]}; this agent understands {SCHEMA_VERSION}"
        )
    try:
        return _Envelope.model_validate(data)
    except ValidationError as exc:
        raise DesiredRejected("invalid_document", _describe(exc)) from None


def _claimed_version(data: Any) -> int | None:
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def admit(
    raw: bytes,
    *,
    limits: Limits,
    trust: DocumentTrust,
    history: History,
    now: float,
    validate: DeploymentValidator,
) -> Decision:
    """The whole decision for one received payload (see the module docstring for the order)."""
    digest = digest_of(raw)
    authenticated_version: int | None = None
    try:
        if not raw:
            raise DesiredRejected("cleared", "the retained desired document was deleted; keeping what runs")
        data = load_json(raw, limits)
        signer: TrustedKey | None = None
        if trust.mode == "enforce":
            data, signer = open_envelope(data, limits, trust.keys)
        authenticated_version = _claimed_version(data)
        expires = new_keys = None
        if isinstance(data, dict):
            expires = _expiry(data, trust.require_expires and signer is not None, now) if signer else None
            new_keys = _rotation(data) if signer else None
            data = {k: v for k, v in data.items() if k not in GATE_FIELDS} if signer else data
        envelope = _envelope(data)
        last, last_digest = history.highest_version, history.highest_digest
        if last is not None and envelope.version <= last:
            if envelope.version == last and digest == last_digest:
                return Duplicate(envelope.version)
            raise DesiredRejected(
                "replayed",
                f"version {envelope.version} is not newer than version {last}, the newest this device has "
                "seen; a new deployment needs a higher version",
            )
        deployment = validate(envelope.deployment)
    except DesiredRejected as exc:
        return Refused(exc.code, exc.description, digest, authenticated_version)
    return Admitted(
        version=envelope.version,
        digest=digest,
        deployment=deployment,
        document=envelope.deployment,
        properties=envelope.properties,
        signer=signer.short_id if signer else None,
        expires=expires,
        new_keys=new_keys,
    )
