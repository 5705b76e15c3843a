"""The device side of enrollment evidence (edge_shared/enrollment.py): the TPM's EK and AK with
the AK's quote over the CSR's digest (the CSR was made on the device whose TPM holds the AK),
the renewal proof signed by the current key, and opening the certificate the service sealed to
this TPM (with the secret TPM2_ActivateCredential recovered)."""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_shared.attestation import b64, unb64
from edge_shared.enrollment import RENEW_PROOF_CONTEXT, QuoteEvidence, RenewProof, SealedCertificate, TpmEvidence

QUOTE_PCRS = (0,)  # any PCR: the quote proves the nonce, not the boot state




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
