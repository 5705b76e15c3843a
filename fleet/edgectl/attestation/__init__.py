"""The verifier half of TPM attestation: enrollment challenges, quote, boot log and IMA checks."""
