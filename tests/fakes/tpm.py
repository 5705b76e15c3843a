"""A software TPM for fast unit tests (the real one in tests is swtpm, devinfra/swtpm.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from edge_agent.attestation.tpm import Endorsement, RawQuote, TpmError, pcr_digest, selection_string
from edge_shared.attestation import DIGEST_SIZE, ZERO_PCR


class FakeTpm:
    """A software stand-in for unit tests: a SHA-256 PCR bank in memory and an ECDSA P-256 AK
    held by `cryptography`. Quotes have the real TPMS_ATTEST / TPMT_SIGNATURE encoding, so the
    verifier cannot tell them apart. It has no EK and cannot activate credentials: enrollment
    is tested against swtpm only."""

    def __init__(self, reset_count: int = 1, restart_count: int = 0) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        self.pcrs: dict[int, bytes] = {i: ZERO_PCR for i in range(24)}
        self.clock = 1000
        self.reset_count = reset_count
        self.restart_count = restart_count

    def describe(self) -> str:
        return "fake TPM (software, unit tests only)"

    def endorsement(self) -> Endorsement:
        raise TpmError("the fake TPM has no endorsement key")

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        raise TpmError("the fake TPM cannot activate credentials")

    def ak_public(self) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from tpm2_pytss.types import TPM2B_PUBLIC

        pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return bytes(TPM2B_PUBLIC.from_pem(pem).marshal())

    def pcr_read(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        return {i: self.pcrs[i] for i in sorted(set(pcrs))}

    def pcr_extend(self, pcr: int, digest: bytes) -> None:
        if len(digest) != DIGEST_SIZE:
            raise TpmError(f"PCR extend needs a {DIGEST_SIZE}-byte SHA-256 digest, got {len(digest)} bytes")
        self.pcrs[pcr] = hashlib.sha256(self.pcrs[pcr] + digest).digest()

    def quote(self, pcrs: Sequence[int], nonce: bytes) -> RawQuote:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        from tpm2_pytss.constants import TPM2_ALG, TPM2_GENERATED, TPM2_ST
        from tpm2_pytss.types import (
            TPML_PCR_SELECTION,
            TPMS_ATTEST,
            TPMS_CLOCK_INFO,
            TPMS_SIGNATURE_ECC,
            TPMT_SIGNATURE,
        )

        self.clock += 10
        values = self.pcr_read(pcrs)
        attest = TPMS_ATTEST(
            magic=TPM2_GENERATED.VALUE,
            type=TPM2_ST.ATTEST_QUOTE,
            extraData=nonce,
            clockInfo=TPMS_CLOCK_INFO(
                clock=self.clock, resetCount=self.reset_count, restartCount=self.restart_count, safe=1
            ),
            firmwareVersion=0x20191023,
        )
        attest.attested.quote.pcrSelect = TPML_PCR_SELECTION.parse(selection_string(pcrs))
        attest.attested.quote.pcrDigest = pcr_digest(values, pcrs)
        message = bytes(attest.marshal())
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        signature = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
        signature.signature.ecdsa = TPMS_SIGNATURE_ECC(
            hash=TPM2_ALG.SHA256, signatureR=r.to_bytes(32, "big"), signatureS=s.to_bytes(32, "big")
        )
        return RawQuote(message, bytes(signature.marshal()), values)

    def close(self) -> None:
        return None
