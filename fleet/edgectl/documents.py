"""Signing desired documents (edgectl): the DSSE envelope the device's document gate checks.

Envelope: DSSE (the primitive cosign v3 bundles use), JSON

    {"payloadType": "application/vnd.edge-agent.desired+json",
     "payload": "<base64 of the desired document JSON>",
     "signatures": [{"keyid": "<hex sha256 of the signer's public key DER>", "sig": "<base64>"}]}

The signature is over DSSE's PAE("DSSEv1", payloadType, payload), so the type cannot be swapped.
Gate-owned fields inside the payload (the device removes them before the document is stored):
  expires  RFC 3339 UTC time; a document past it is refused (code "expired"), so a broker cannot
           hold back a signed document and deliver it months later;
  trust    {"documentKeys": [<PEM public key>, ...]}: key rotation, installed when (and only when)
           the document is accepted (edge_agent/desired/).
The device side (verification, expiry, rotation, replay) is edge_agent/desired/admission.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from edge_shared.document import DOCUMENT_PAYLOAD_TYPE
from edge_shared.trust.cosign import (
    DsseEnvelope,
    DsseSignature,
    FormatError,
    dsse_pae,
    parse_dsse_envelope,
    strict_json,
)
from edge_shared.trust.keys import PrivateKey, key_id, sign

__all__ = ["DOCUMENT_PAYLOAD_TYPE", "envelope_signer_ids", "sign_document"]


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
