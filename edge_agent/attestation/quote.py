"""The attest command's wire format: request validation, response encoding (device side) and
decoding into verifier evidence (fleet side). JSON; binary fields are base64, digests hex.

Request  ``{"nonce": HEX (16-64 bytes), "pcrs": [0, 1, ..., 23]}``
Response ``{"quote": {"attest": B64, "signature": B64, "bank": "sha256", "pcrs": {"0": HEX, ...}},
"ak_name": HEX, "image_pcr": 23, "image_log": [EVENT, ...], "ima_log": TEXT|null,
"boot_log": B64|null, "tpm": TEXT}``
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.attestation.tpm import BANK, DIGEST_SIZE, RawQuote
from edge_agent.attestation.verify import Evidence

MIN_NONCE, MAX_NONCE = 16, 64  # TPM2B_DATA holds up to 64 bytes; fewer than 16 is guessable
DEFAULT_PCRS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 10, 23)


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


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f"{name}: not valid base64") from None


def encode_quote(raw: RawQuote) -> dict[str, Any]:
    return {
        "attest": b64(raw.attest),
        "signature": b64(raw.signature),
        "bank": BANK,
        "pcrs": {str(i): v.hex() for i, v in sorted(raw.pcrs.items())},
    }


def decode_evidence(response: Mapping[str, Any]) -> Evidence:
    """Fleet side: the device's answer as verifier evidence. Raises ValueError naming the field."""
    quote = response.get("quote")
    if not isinstance(quote, dict):
        raise ValueError("quote: expected an object")
    if quote.get("bank") != BANK:
        raise ValueError(f"quote.bank: got {quote.get('bank')!r}; expected {BANK}")
    raw_pcrs = quote.get("pcrs")
    if not isinstance(raw_pcrs, dict):
        raise ValueError("quote.pcrs: expected an object of index -> hex")
    pcrs: dict[int, bytes] = {}
    for key, value in raw_pcrs.items():
        try:
            index, digest = int(key), bytes.fromhex(value)
        except (TypeError, ValueError):
            raise ValueError(f"quote.pcrs.{key}: expected a PCR index and a hex digest") from None
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"quote.pcrs.{key}: {len(digest)} bytes; expected {DIGEST_SIZE}")
        pcrs[index] = digest
    ima = response.get("ima_log")
    if ima is not None and not isinstance(ima, str):
        raise ValueError("ima_log: expected text or null")
    image_log = response.get("image_log")
    if image_log is not None and (not isinstance(image_log, list) or not all(isinstance(e, dict) for e in image_log)):
        raise ValueError("image_log: expected a list of event objects")
    boot = response.get("boot_log")
    return Evidence(
        boot_log=unb64(boot, "boot_log") if boot is not None else None,
        attest=unb64(quote.get("attest"), "quote.attest"),
        signature=unb64(quote.get("signature"), "quote.signature"),
        pcrs=pcrs,
        ima_log=ima,
        image_log=image_log,
    )


def pcr_list(pcrs: Sequence[int]) -> str:
    return ",".join(str(i) for i in sorted(pcrs))
