"""Enrollment, fleet side: the credential challenge that proves the AK lives in the same TPM as
the EK (TPM2_MakeCredential here, TPM2_ActivateCredential on the device, as the Keylime registrar
does), and the checks of the EK certificate and the AK's attributes.

`make_challenge` wraps a random secret for (EK public, AK name) with tpm2-pytss's software
MakeCredential; only the TPM that holds that EK can unwrap it, and the TPM releases it only when
an object with that AK name is loaded there.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from edge_shared.attestation import DeviceIdentity, ak_name, b64, unb64


@dataclass(frozen=True)
class Challenge:
    secret: bytes
    credential_blob: bytes  # marshalled TPM2B_ID_OBJECT
    encrypted_secret: bytes  # marshalled TPM2B_ENCRYPTED_SECRET

    def to_wire(self) -> dict[str, str]:
        return {"credential_blob": b64(self.credential_blob), "secret": b64(self.encrypted_secret)}


def make_challenge(identity: DeviceIdentity) -> Challenge:
    from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential

    ek_public, _ = TPM2B_PUBLIC.unmarshal(identity.ek_public)
    secret = secrets.token_bytes(32)
    blob, encrypted = make_credential(ek_public, secret, TPM2B_NAME(ak_name(identity.ak_public)))
    return Challenge(secret, bytes(blob.marshal()), bytes(encrypted.marshal()))


def check_challenge_answer(challenge: Challenge, answer: dict[str, Any]) -> bool:
    returned = unb64(answer.get("secret"), "secret")
    return hmac.compare_digest(returned, challenge.secret)


def ek_certificate_problem(identity: DeviceIdentity, ca_bundle: bytes | None) -> str | None:
    """None when the EK certificate carries the device's EK public key and, with `ca_bundle`
    (PEM, the TPM vendor's CAs), is directly issued by one of them. Full path validation to a
    vendor root (with intermediates, revocation) is not done here."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from tpm2_pytss.types import TPM2B_PUBLIC

    if identity.ek_cert is None:
        return "the TPM has no EK certificate in NV"
    try:
        cert = x509.load_der_x509_certificate(identity.ek_cert)
    except ValueError as exc:
        return f"the EK certificate is not valid DER X.509: {exc}"
    public, _ = TPM2B_PUBLIC.unmarshal(identity.ek_public)
    ek_key = serialization.load_pem_public_key(bytes(public.to_pem()))
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != ek_key.public_bytes(
        serialization.Encoding.DER, spki
    ):
        return "the EK certificate is for another key than the device's EK"
    if ca_bundle is not None:
        issuers = x509.load_pem_x509_certificates(ca_bundle)
        for issuer in issuers:
            try:
                cert.verify_directly_issued_by(issuer)
                return None
            except (ValueError, TypeError, InvalidSignature):
                continue  # not this CA; try the next
        return f"the EK certificate (issuer {cert.issuer.rfc4514_string()}) is not issued by a CA in the bundle"
    return None


def ak_attributes_problem(ak_public: bytes) -> str | None:
    """None when the AK is a restricted signing key that never leaves its TPM. A key without
    `restricted` could sign any data that looks like a quote, so its signatures prove nothing.
    (The credential challenge binds the AK's name, which covers these attributes.)"""
    from tpm2_pytss.constants import TPMA_OBJECT
    from tpm2_pytss.types import TPM2B_PUBLIC

    try:
        public, _ = TPM2B_PUBLIC.unmarshal(ak_public)
    except Exception as exc:
        return f"cannot decode the AK public key: {exc}"
    attrs = int(public.publicArea.objectAttributes)
    required = {
        "restricted": TPMA_OBJECT.RESTRICTED,
        "sign": TPMA_OBJECT.SIGN_ENCRYPT,
        "fixedtpm": TPMA_OBJECT.FIXEDTPM,
        "fixedparent": TPMA_OBJECT.FIXEDPARENT,
        "sensitivedataorigin": TPMA_OBJECT.SENSITIVEDATAORIGIN,
    }
    missing = [name for name, bit in required.items() if not attrs & int(bit)]
    if int(TPMA_OBJECT.DECRYPT) & attrs:
        missing.append("not decrypt")
    if missing:
        return "the AK is not a restricted signing key bound to its TPM (missing: " + ", ".join(missing) + ")"
    return None
