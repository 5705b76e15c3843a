"""Signed deployment documents: the signature gate the twin calls before parsing a desired document.

Envelope: DSSE (the primitive cosign v3 bundles use), JSON

    {"payloadType": "application/vnd.edge-agent.desired+json",
     "payload": "<base64 of the desired document JSON>",
     "signatures": [{"keyid": "<hex sha256 of the signer's public key DER>", "sig": "<base64>"}]}

The signature is over DSSE's PAE("DSSEv1", payloadType, payload), so the type cannot be swapped.
Gate-owned fields inside the payload (removed before the twin sees the document):
  expires  RFC 3339 UTC time; a document past it is refused (code "expired"), so a broker cannot
           hold back a signed document and deliver it months later;
  trust    {"documentKeys": [<PEM public key>, ...]}: key rotation. A document signed by a
           currently trusted key may replace the trusted document key set. The set is kept in
           state.db with the document version that installed it; a rotation is applied only from
           a document with a higher version (a replayed older document cannot roll keys back).
Replay (version not newer) is the twin's check against its store; signature, key and expiry are
checked here. The config's [trust] document_keys are the root of trust: while they are unchanged
the rotated set in state.db wins; when an operator edits them on the device, they win again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from edge_agent.logs import get_logger
from edge_agent.store import get_meta, set_meta
from edge_agent.trust.cosign import DsseEnvelope, DsseSignature, FormatError, dsse_pae, parse_dsse_envelope, strict_json
from edge_agent.trust.keys import KeyFileError, PrivateKey, TrustedKey, key_id, parse_public_key, sign
from edge_agent.twin.events import DesiredRejected

log = get_logger(__name__)

DOCUMENT_PAYLOAD_TYPE = "application/vnd.edge-agent.desired+json"
MAX_DOCUMENT_BYTES = 1024 * 1024
GATE_FIELDS = ("expires", "trust")

SCHEMA = """
CREATE TABLE IF NOT EXISTS trust_document_keys (
    key_id TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    installed_version INTEGER NOT NULL,
    installed_at REAL NOT NULL
);
"""
META_CONFIG_FP = "trust.document_keys.config"
META_VERSION = "trust.document_keys.version"


@dataclass(frozen=True)
class OpenedDocument:
    payload: bytes  # the desired document without the gate-owned fields
    signer: TrustedKey
    version: int | None
    expires: datetime | None
    new_keys: tuple[TrustedKey, ...] | None  # rotation requested by this document


def parse_rfc3339(value: str) -> datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no time zone (write e.g. 2026-01-31T12:00:00Z)")
    return parsed


def open_signed_document(
    raw: bytes, keys: Sequence[TrustedKey], *, now: float | None = None, require_expires: bool = False
) -> OpenedDocument:
    """Check a signed desired document; returns the payload. Raises DesiredRejected."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise DesiredRejected("too_large", f"document is {len(raw)} bytes; limit {MAX_DOCUMENT_BYTES}")
    try:
        outer = strict_json(raw, "document")
    except FormatError as exc:
        raise DesiredRejected("invalid_json", str(exc)) from None
    if not isinstance(outer, dict) or "signatures" not in outer or "payloadType" not in outer:
        raise DesiredRejected(
            "unsigned",
            "document is not a signed envelope (expected payloadType, payload, signatures; "
            "sign it with edgectl sign-document or edgectl deploy --key)",
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
    try:
        doc = strict_json(envelope.payload, "payload")
    except FormatError as exc:
        raise DesiredRejected("invalid_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise DesiredRejected("invalid_json", "payload: expected a JSON object")
    expires = _expiry(doc, require_expires, time.time() if now is None else now)
    new_keys = _rotation(doc)
    version = doc.get("version")
    version = version if isinstance(version, int) and not isinstance(version, bool) else None
    if new_keys is not None and version is None:
        raise DesiredRejected("invalid_trust", "payload.trust: a key rotation needs an integer payload.version")
    stripped = {k: v for k, v in doc.items() if k not in GATE_FIELDS}
    payload = envelope.payload if len(stripped) == len(doc) else json.dumps(stripped, separators=(",", ":")).encode()
    return OpenedDocument(payload, signer, version, expires, new_keys)


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
            f"signature by trusted key does not verify (corrupted or altered); trusted document keys: {ids}",
        )
    named = ", ".join(s.keyid[:16] for s in envelope.signatures if s.keyid) or "(no keyid)"
    raise DesiredRejected("untrusted_key", f"signed by {named}, which is not a trusted document key ({ids})")


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


# --------------------------------------------------------------------------- the gate (stateful)


class DocumentGate:
    """`Callable[[bytes], bytes]` for the twin: verifies, applies rotation, returns the payload."""

    def __init__(
        self,
        db: sqlite3.Connection,
        config_keys: Sequence[TrustedKey],
        *,
        mode: Literal["enforce", "off"] = "enforce",
        require_expires: bool = False,
        clock: Callable[[], float] = time.time,
        last_accepted_version: Callable[[], int | None] | None = None,
    ) -> None:
        self.db = db
        self.last_accepted_version = last_accepted_version
        self.config_keys = tuple(config_keys)
        self.mode = mode
        self.require_expires = require_expires
        self.clock = clock
        self._lock = threading.Lock()
        with self._lock:
            db.executescript(SCHEMA)
            fingerprint = _keys_fingerprint(self.config_keys)
            if get_meta(db, META_CONFIG_FP) != fingerprint:
                # the operator changed the root keys on the device: they win over any rotation
                db.execute("DELETE FROM trust_document_keys")
                db.execute("DELETE FROM meta WHERE key = ?", (META_VERSION,))
                set_meta(db, META_CONFIG_FP, fingerprint)

    def trusted_keys(self) -> tuple[TrustedKey, ...]:
        with self._lock:
            rows = self.db.execute("SELECT pem FROM trust_document_keys ORDER BY key_id").fetchall()
        if not rows:
            return self.config_keys
        return tuple(parse_public_key(str(r[0]).encode(), "state.db trust_document_keys") for r in rows)

    def __call__(self, raw: bytes) -> bytes:
        if self.mode == "off":
            return raw
        opened = open_signed_document(raw, self.trusted_keys(), now=self.clock(), require_expires=self.require_expires)
        last = self.last_accepted_version() if self.last_accepted_version is not None else None
        if last is not None and (opened.version is None or opened.version <= last):
            # the twin checks this too; checking here as well keeps a replayed rotation from applying
            raise DesiredRejected("replayed", f"version {opened.version} is not newer than the accepted {last}")
        if opened.new_keys is not None and opened.version is not None:
            self._rotate(opened.new_keys, opened.version, opened.signer)
        return opened.payload

    def _rotate(self, new_keys: Sequence[TrustedKey], version: int, signer: TrustedKey) -> None:
        with self._lock:
            installed = int(get_meta(self.db, META_VERSION) or -1)
            if version <= installed:
                return  # an old (replayed) document's rotation is never re-applied
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("DELETE FROM trust_document_keys")
                for key in new_keys:
                    self.db.execute(
                        "INSERT OR REPLACE INTO trust_document_keys(key_id, pem, installed_version, installed_at) "
                        "VALUES(?,?,?,?)",
                        (key.key_id, key.pem().decode(), version, time.time()),
                    )
                set_meta(self.db, META_VERSION, str(version))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        log.warning(
            "document keys rotated by version %d (signed by %s): now %s",
            version,
            signer.short_id,
            ", ".join(k.short_id for k in new_keys),
            extra={"EVENT": "trust.document_keys_rotated"},
        )


def _keys_fingerprint(keys: Sequence[TrustedKey]) -> str:
    return hashlib.sha256("|".join(sorted(k.key_id for k in keys)).encode()).hexdigest()


# --------------------------------------------------------------------------- signing (edgectl)


def sign_document(
    document: Mapping[str, Any],
    key: PrivateKey,
    *,
    expires_in: timedelta | None = timedelta(days=30),
    rotate_to: Sequence[bytes] | None = None,
    now: datetime | None = None,
) -> bytes:
    """The signed envelope for a desired document (a JSON object with an integer version)."""
    body = dict(document)
    if expires_in is not None:
        moment = (now or datetime.now(UTC)) + expires_in
        body["expires"] = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if rotate_to:
        body["trust"] = {"documentKeys": [p.decode() for p in rotate_to]}
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    sig = sign(key, dsse_pae(DOCUMENT_PAYLOAD_TYPE, payload))
    envelope = DsseEnvelope(DOCUMENT_PAYLOAD_TYPE, payload, (DsseSignature(key_id(key.public_key()), sig),))
    return json.dumps(envelope.to_json(), separators=(",", ":")).encode()


def envelope_signer_ids(raw: bytes) -> list[str]:
    try:
        env = parse_dsse_envelope(strict_json(raw, "document"), "envelope")
    except FormatError:
        return []
    return [s.keyid for s in env.signatures]
