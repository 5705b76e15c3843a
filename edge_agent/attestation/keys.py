"""Enrollment: the device's EK and AK, and the credential challenge that proves the AK lives in
the same TPM as the EK (TPM2_MakeCredential on the fleet side, TPM2_ActivateCredential on the
device, as the Keylime registrar does).

Fleet side: `make_challenge` wraps a random secret for (EK public, AK name) with tpm2-pytss's
software MakeCredential; only the TPM that holds that EK can unwrap it, and the TPM releases it
only when an object with that AK name is loaded there.
"""

from __future__ import annotations

from typing import Any

from edge_agent.attestation.tpm import Endorsement, TpmBackend
from edge_shared.attestation import DeviceIdentity, b64, unb64


def read_identity(tpm: TpmBackend) -> DeviceIdentity:
    endorsement: Endorsement = tpm.endorsement()
    return DeviceIdentity(endorsement.ek_public, endorsement.ek_cert, endorsement.ek_type, tpm.ak_public())


def activate(tpm: TpmBackend, request: dict[str, Any]) -> dict[str, str]:
    """Device side of the challenge."""
    blob = unb64(request.get("credential_blob"), "credential_blob")
    encrypted = unb64(request.get("secret"), "secret")
    return {"secret": b64(tpm.activate_credential(blob, encrypted))}
