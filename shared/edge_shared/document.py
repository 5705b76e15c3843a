"""The signed desired document's envelope as both sides read it: DSSE with DOCUMENT_PAYLOAD_TYPE,
bounded strict JSON (size, UTF-8, depth, duplicate keys), and the refusal it raises. The device's
document gate (edge_agent/desired/admission.py) runs these checks first; the fleet runs the same
ones on what it is about to publish or reads back. Pure: no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_shared.strict_json import loads_strict
from edge_shared.trust.cosign import DsseEnvelope, FormatError, dsse_pae, parse_dsse_envelope
from edge_shared.trust.keys import TrustedKey


class DesiredRejected(Exception):
    """A desired document (or its deployment) was refused. `code` is machine-readable and listed in
    docs/protocol.md (e.g. too_large, invalid_utf8, unsigned, replayed, invalid_deployment);
    `description` names the field or module at fault and is reported upstream."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


DOCUMENT_PAYLOAD_TYPE = "application/vnd.edge-agent.desired+json"
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 32
# Signatures per envelope: each one may cost a public-key verification per trusted key before the
# document is authenticated, so anyone who can publish could otherwise buy seconds of event-loop
# CPU with one message (a fleet signs with one key, two during a rotation).
DEFAULT_MAX_SIGNATURES = 8


# A string literal, or an unterminated one running to the end (possessive: never backtracks, so
# the scan stays linear even for `"\"\"\"...` with no closing quote).
_STRING_LITERAL = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_signatures: int = DEFAULT_MAX_SIGNATURES


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
