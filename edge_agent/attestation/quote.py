"""The attest command's wire format: request validation, response encoding (device side) and
decoding into verifier evidence (fleet side). JSON; binary fields are base64, digests hex.

Request  ``{"nonce": HEX (16-64 bytes), "pcrs": [0, 1, ..., 23]}``
Response ``{"quote": {"attest": B64, "signature": B64, "bank": "sha256", "pcrs": {"0": HEX, ...}},
"ak_name": HEX, "image_pcr": 23, "image_log": [EVENT, ...], "ima_log": TEXT|null,
"boot_log": B64|null, "tpm": TEXT}``
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.attestation.tpm import RawQuote
from edge_shared.attestation import BANK, DEFAULT_PCRS, b64

MIN_NONCE, MAX_NONCE = 16, 64  # TPM2B_DATA holds up to 64 bytes; fewer than 16 is guessable


class AttestRequestError(ValueError):
    """The attest request is malformed; the message names the field."""


@dataclass(frozen=True)
class AttestRequest:
    nonce: bytes
    pcrs: tuple[int, ...]


def parse_attest_request(request: Mapping[str, Any], image_pcr: int) -> AttestRequest:
    nonce_hex = request.get("nonce")
    if not isinstance(nonce_hex, str):
        raise AttestRequestError("nonce: expected a hex string of 16-64 bytes")
    try:
        nonce = bytes.fromhex(nonce_hex)
    except ValueError:
        raise AttestRequestError("nonce: not valid hex") from None
    if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
        raise AttestRequestError(f"nonce: {len(nonce)} bytes; expected {MIN_NONCE}-{MAX_NONCE}")
    pcrs = request.get("pcrs", [*DEFAULT_PCRS[:-1], image_pcr])
    if (not isinstance(pcrs, list) or not pcrs
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 23 for i in pcrs)):
        raise AttestRequestError("pcrs: expected a non-empty list of PCR indexes 0-23")
    return AttestRequest(nonce, tuple(sorted(set(pcrs))))


def encode_quote(raw: RawQuote) -> dict[str, Any]:
    return {
        "attest": b64(raw.attest),
        "signature": b64(raw.signature),
        "bank": BANK,
        "pcrs": {str(i): v.hex() for i, v in sorted(raw.pcrs.items())},
    }


def pcr_list(pcrs: Sequence[int]) -> str:
    return ",".join(str(i) for i in sorted(pcrs))
