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
    (expiry against `now` on a synchronised clock; on one that is
    not, against the last time seen on a synchronised clock, or
    not judged: ExpiryBasis)
 8. envelope schema and field types                              invalid_document, unsupported_schema
 9. replay: the version must be newer than every version that
    passed this gate before (the same bytes again are a duplicate) replayed
    and not older than the floor kept across agent roll-backs    replayed
9b. one rollout at a time: another rollout's lease holds the
    device (rollout_guard.py; the claim is payload.meta.rollout)  rollout_in_flight, invalid_rollout
10. the deployment itself (module specs, mount roots)            invalid_deployment

The gate reads no clock: the caller passes `now` and, for expiry, an ExpiryBasis. Only after 6 is
a document authenticated: a refusal before that carries no version (an attacker's claimed version
must not reach the fleet's view). The depth scan is hand-written because the json module has no
depth limit; it removes string literals with one regular expression (C speed) and
counts brackets in what remains.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from edge_agent.desired import rollout_guard
from edge_shared.document import DesiredRejected, Limits, load_json, open_envelope
from edge_shared.protocol import SCHEMA_VERSION
from edge_shared.rollout_claim import RolloutClaim, claim_of
from edge_shared.spec import Deployment
from edge_shared.trust.keys import KeyFileError, TrustedKey, parse_public_key
from edge_shared.validation import summary

MAX_VERSION = 2**53 - 1  # survives a round trip through JavaScript tooling
GATE_FIELDS = ("expires", "trust")

DeploymentValidator = Callable[[Mapping[str, Any]], Deployment]


@dataclass(frozen=True)
class DocumentTrust:
    """How documents are authenticated: [trust] document_mode, the trusted keys (the config's, or
    the set a signed rotation installed), and whether an expiry is required."""

    mode: Literal["enforce", "off"] = "enforce"
    keys: tuple[TrustedKey, ...] = ()
    require_expires: bool = False


@dataclass(frozen=True)
class ExpiryBasis:
    """What `expires` is judged against when the wall clock may be wrong (identity/clock.py):
    `at` is now on a synchronised clock, the last time seen on a synchronised clock otherwise,
    None when there is none (expiry not judged). `clock` says which, for the refusal."""

    at: float | None
    clock: str = ""  # empty: a synchronised clock, nothing to say


def expiry_basis(synchronised: bool, reason: str, reference: datetime | None) -> ExpiryBasis:
    """From the clock's state (identity/clock.py: ClockState, expiry_reference)."""
    if synchronised and reference is not None:
        return ExpiryBasis(reference.timestamp())
    if reference is None:
        return ExpiryBasis(None, f"clock not synchronised ({reason}): expiry not judged")
    return ExpiryBasis(reference.timestamp(), f"clock not synchronised ({reason}): judged against "
                       f"{reference:%Y-%m-%dT%H:%M:%S}Z, the last time seen on a synchronised clock")


@dataclass(frozen=True)
class History:
    """What the gate must know of the past: the newest version that ever passed it, and its digest."""

    highest_version: int | None = None
    highest_digest: str | None = None
    rollout: RolloutClaim | None = None  # the claim of the last admitted document (who holds the device)
    # The newest version ever accepted and its digest, kept outside state.db (trust_floor.py): an
    # agent roll-back that restored an older state.db does not lower it. That very document is
    # admitted again (the restored state.db has forgotten it); any other at or below it is a replay.
    floor: tuple[int, str] | None = None


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
    rollout: RolloutClaim | None = None  # the rollout it belongs to (payload.meta.rollout), with its lease


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


def parse_rfc3339(value: str) -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no time zone (write e.g. 2026-01-31T12:00:00Z)")
    return parsed


def _expiry(doc: Mapping[str, Any], required: bool, basis: ExpiryBasis) -> datetime | None:
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
    if basis.at is not None and expires.timestamp() <= basis.at:
        raise DesiredRejected("expired", f"document expired at {value}" + (f"; {basis.clock}" if basis.clock else ""))
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
    expiry: ExpiryBasis | None = None,
) -> Decision:
    """The whole decision for one received payload (see the module docstring for the order).
    `expiry`: what `expires` is judged against (None: `now`, a clock known to be right)."""
    basis = expiry if expiry is not None else ExpiryBasis(now)
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
            expires = _expiry(data, trust.require_expires and signer is not None, basis) if signer else None
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
        floor = history.floor
        if floor is not None and (envelope.version < floor[0] or (envelope.version == floor[0] and digest != floor[1])):
            raise DesiredRejected(
                "replayed",
                f"version {envelope.version} is not newer than version {floor[0]}, the newest this device "
                "accepted (kept across agent roll-backs); a new deployment needs a higher version",
            )
        claim = claim_of(envelope.meta)
        rollout_guard.check(claim, history.rollout, now)
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
        rollout=claim,
    )
