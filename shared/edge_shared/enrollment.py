"""The enrollment protocol between a device and the fleet's enrollment service, over MQTT.

Topics (P is mqtt.topic_prefix; CID is the requesting connection's MQTT client id, random per
request: "enroll-" and 32 hex digits):
  P/enroll/CID/request   device -> service  an EnrollRequest (JSON)
  P/enroll/CID/answer    service -> device  an EnrollAnswer (JSON)
Shared by the device (edge_agent/identity/) and the fleet (edgectl/enrollment/).
The broker's ACL lets a client write only P/enroll/<its own client id>/request and read only
P/enroll/<its own client id>/answer (mosquitto `pattern ... %c`), and only the enrollment
service reads the requests: nobody can read another device's answer without guessing its
random client id, which travels only to the service.

A claim certificate (CN "claim:BATCH") reaches no device's topics; a device certificate (CN = device
id) uses the same topics to renew (kind "renew", with a proof signed by its current key).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA = 1
CLIENT_ID_PATTERN = re.compile(r"^enroll-[0-9a-f]{32}$")
MAX_MESSAGE_BYTES = 64 * 1024
RENEW_PROOF_CONTEXT = b"edge-agent renew v1\x00"  # what the current key signs, before the CSR (DER)


class WireError(ValueError):
    """A message does not follow the protocol; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, populate_by_name=True)


T = TypeVar("T", bound=Strict)


class QuoteEvidence(Strict):
    attest: str  # base64 TPMS_ATTEST; its extraData (nonce) is SHA-256 of the CSR (DER)
    signature: str  # base64 TPMT_SIGNATURE by the AK


class TpmEvidence(Strict):
    ek_public: str  # base64 TPM2B_PUBLIC
    ek_cert: str | None  # base64 DER, from the TPM's NV
    ek_type: Literal["ecc", "rsa"]
    ak_public: str  # base64 TPM2B_PUBLIC
    quote: QuoteEvidence


class RenewProof(Strict):
    certificate: str  # PEM: the device's current certificate
    signature: str  # base64 ECDSA-SHA256 by the current key over RENEW_PROOF_CONTEXT + CSR (DER)


class EnrollRequest(Strict):
    schema_: int = Field(SCHEMA, alias="schema")
    kind: Literal["enroll", "renew"]
    device_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    csr: str = Field(max_length=8192)  # PEM
    tpm: TpmEvidence | None = None
    proof: RenewProof | None = None


class SealedCertificate(Strict):
    """The certificate encrypted (AES-256-GCM) with a key only the requesting TPM can recover:
    TPM2_MakeCredential for its EK and AK name; TPM2_ActivateCredential on the device."""

    credential_blob: str
    secret: str
    nonce: str
    ciphertext: str


class EnrollAnswer(Strict):
    schema_: int = Field(SCHEMA, alias="schema")
    device_id: str
    status: Literal["issued", "pending", "refused"]
    reason: str = ""
    certificate: str | None = None  # PEM, for a device without a TPM
    sealed: SealedCertificate | None = None


def csr_digest(csr_der: bytes) -> bytes:
    """The nonce of the AK's quote in an enrollment request: SHA-256 of the CSR (DER)."""
    return hashlib.sha256(csr_der).digest()


def new_client_id() -> str:
    return "enroll-" + secrets.token_hex(16)


def request_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/enroll/{client_id}/request"


def answer_topic(prefix: str, client_id: str) -> str:
    return f"{prefix}/enroll/{client_id}/answer"


def request_filter(prefix: str) -> str:
    return f"{prefix}/enroll/+/request"


def client_id_of(prefix: str, topic: str) -> str | None:
    """The client id in a request topic, None when the topic is not one."""
    head, tail = f"{prefix}/enroll/", "/request"
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    cid = topic[len(head) : -len(tail)]
    return cid if CLIENT_ID_PATTERN.match(cid) else None


def encode(message: EnrollRequest | EnrollAnswer) -> bytes:
    return json.dumps(message.model_dump(by_alias=True, exclude_none=True), separators=(",", ":")).encode()


def _decode(cls: type[T], raw: bytes) -> T:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise WireError(f"expected a JSON object with schema {SCHEMA}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WireError(f"{where}: {first['msg']}") from None


def decode_request(raw: bytes) -> EnrollRequest:
    return _decode(EnrollRequest, raw)


def decode_answer(raw: bytes) -> EnrollAnswer:
    return _decode(EnrollAnswer, raw)
