"""TPM evidence for an enrollment request, shared by both sides.

- The AK quotes with the CSR's SHA-256 as its nonce: the CSR was made on the device whose TPM
  holds that AK (a restricted key signs only what the TPM itself produced).
- The certificate comes back encrypted with a secret wrapped by TPM2_MakeCredential for the EK
  and the AK's name: only the TPM holding both can unwrap it (ActivateCredential). A request
  that copies another device's EK and AK public keys gets nothing it can read.
- A renewal is signed by the device's current key (RenewProof).
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.identity.wire import RENEW_PROOF_CONTEXT, QuoteEvidence, RenewProof, SealedCertificate, TpmEvidence

QUOTE_PCRS = (0,)  # any PCR: the quote proves the nonce, not the boot state


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f"{name}: not base64") from None


def csr_digest(csr_der: bytes) -> bytes:
    return hashlib.sha256(csr_der).digest()


def spki_sha256(public_key: Any) -> str:
    """Hex SHA-256 of a public key's SubjectPublicKeyInfo (DER): how EKs and device keys are named."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def ek_hash(ek_public_marshalled: bytes) -> str:
    """The EK's name in allowlists and enrollment records: SHA-256 of its SPKI, hex."""
    from tpm2_pytss.types import TPM2B_PUBLIC

    public, _ = TPM2B_PUBLIC.unmarshal(ek_public_marshalled)
    key = serialization.load_pem_public_key(bytes(public.to_pem()))
    return spki_sha256(key)


# ----------------------------------------------------------------- device side


def tpm_evidence(endorsement: Any, ak_public: bytes, quote: Any) -> TpmEvidence:
    """From the attestation TPM's Endorsement, AK public and a RawQuote over csr_digest."""
    return TpmEvidence(
        ek_public=b64(endorsement.ek_public),
        ek_cert=b64(endorsement.ek_cert) if endorsement.ek_cert else None,
        ek_type=endorsement.ek_type,
        ak_public=b64(ak_public),
        quote=QuoteEvidence(attest=b64(quote.attest), signature=b64(quote.signature)),
    )


def renew_proof(key: ec.EllipticCurvePrivateKey, certificate_pem: bytes, csr_der: bytes) -> RenewProof:
    signature = key.sign(RENEW_PROOF_CONTEXT + csr_der, ec.ECDSA(hashes.SHA256()))
    return RenewProof(certificate=certificate_pem.decode("ascii"), signature=b64(signature))


def open_sealed(sealed: SealedCertificate, secret: bytes) -> bytes:
    """The certificate PEM, with the secret the TPM recovered."""
    try:
        return AESGCM(secret).decrypt(unb64(sealed.nonce, "nonce"), unb64(sealed.ciphertext, "ciphertext"), None)
    except (InvalidTag, ValueError) as exc:
        raise ValueError(f"the sealed certificate does not open: {exc or 'authentication failed'}") from None


# ----------------------------------------------------------------- fleet side


def quote_problem(evidence: TpmEvidence, csr_der: bytes) -> str | None:
    """None when the quote is signed by the evidence's AK, carries the CSR digest as its nonce,
    and the AK is a restricted signing key bound to its TPM."""
    from tpm2_pytss.types import TPMS_ATTEST

    from edge_agent.attestation.keys import ak_attributes_problem
    from edge_agent.attestation.verify import check_signature

    try:
        ak_public = unb64(evidence.ak_public, "ak_public")
        attest = unb64(evidence.quote.attest, "quote.attest")
        signature = unb64(evidence.quote.signature, "quote.signature")
    except ValueError as exc:
        return str(exc)
    if problem := ak_attributes_problem(ak_public):
        return problem
    if problem := check_signature(ak_public, attest, signature):
        return f"the quote's signature: {problem}"
    try:
        parsed, _ = TPMS_ATTEST.unmarshal(attest)
    except Exception as exc:
        return f"the quote is not a TPMS_ATTEST: {exc}"
    if bytes(parsed.extraData) != csr_digest(csr_der):
        return "the quote was not made for this CSR (its nonce is not the CSR's SHA-256)"
    return None


def renew_proof_problem(proof: RenewProof, csr_der: bytes) -> tuple[x509.Certificate | None, str | None]:
    """The current certificate from the proof and None, or (cert or None, what is wrong). The
    caller checks the certificate's chain, subject and revocation."""
    try:
        cert = x509.load_pem_x509_certificate(proof.certificate.encode())
    except ValueError as exc:
        return None, f"proof.certificate: not a PEM certificate ({exc})"
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return cert, "proof.certificate: not an EC key"
    try:
        key.verify(unb64(proof.signature, "proof.signature"), RENEW_PROOF_CONTEXT + csr_der, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return cert, "the renewal is not signed by the key of the current certificate"
    return cert, None


def seal_certificate(evidence: TpmEvidence, certificate_pem: bytes) -> SealedCertificate:
    from tpm2_pytss.types import TPM2B_NAME, TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential

    from edge_agent.attestation.verify import ak_name

    ek_public, _ = TPM2B_PUBLIC.unmarshal(unb64(evidence.ek_public, "ek_public"))
    secret = os.urandom(32)
    blob, encrypted = make_credential(ek_public, secret, TPM2B_NAME(ak_name(unb64(evidence.ak_public, "ak_public"))))
    nonce = os.urandom(12)
    return SealedCertificate(
        credential_blob=b64(bytes(blob.marshal())),
        secret=b64(bytes(encrypted.marshal())),
        nonce=b64(nonce),
        ciphertext=b64(AESGCM(secret).encrypt(nonce, certificate_pem, None)),
    )
