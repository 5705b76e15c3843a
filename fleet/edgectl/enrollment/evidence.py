"""The fleet side of enrollment evidence (edge_shared/enrollment.py): the AK's quote over the
CSR, the renewal proof by the current key, and the certificate sealed to the requesting TPM
(TPM2_MakeCredential for its EK and AK name: only the TPM holding both can open it)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_shared.attestation import ak_name, b64, unb64
from edge_shared.enrollment import RENEW_PROOF_CONTEXT, RenewProof, SealedCertificate, TpmEvidence, csr_digest


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


def quote_problem(evidence: TpmEvidence, csr_der: bytes) -> str | None:
    """None when the quote is signed by the evidence's AK, carries the CSR digest as its nonce,
    and the AK is a restricted signing key bound to its TPM."""
    from tpm2_pytss.types import TPMS_ATTEST

    from edgectl.attestation.challenge import ak_attributes_problem
    from edgectl.attestation.verify import check_signature

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
