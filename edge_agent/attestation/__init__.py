"""TPM 2.0 attestation: the device half (keys, quotes, image measurements) and the verifier
half used by edgectl. See docs/attestation.md."""
