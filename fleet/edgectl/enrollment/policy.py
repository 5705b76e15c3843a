"""Who gets a device certificate (pure). The enrollment service gathers the facts about a request
(its evidence checked, the EK named by its hash, whether a policy trusts that EK) and the
device's enrollment record; `decide` says issue, pending (an operator decides) or refuse, and
what the record becomes.

Rules, in order:
- Evidence that does not verify (CSR, quote, renewal proof): refused.
- A renewal: only for an enrolled device proving itself with its current key, and, where it
  enrolled with a TPM, from that TPM.
- An id already claimed (pending, approved or enrolled) by another TPM, or by another key for a
  device without TPM: refused. A claim certificate cannot enroll two devices under one id.
- Denied by an operator: refused. Revoked: pending until an operator approves it again.
- Enrolled (the device lost or outlived its certificate) and the same TPM: issued again.
- Approved by an operator and the same TPM/key as when approved: issued.
- New, and the EK is in the allowlist or its certificate comes from a trusted TPM maker: issued.
- Otherwise: pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["issue", "pending", "refuse"]
Status = Literal["pending", "approved", "enrolled", "denied", "revoked"]


@dataclass(frozen=True)
class Facts:
    kind: Literal["enroll", "renew"]
    device_id: str
    ek_hash: str | None  # None: the request has no TPM evidence
    key_hash: str  # the CSR's public key
    evidence_problem: str | None = None
    ek_trusted_by: str | None = None  # "the EK allowlist" / "a trusted TPM maker's EK certificate"
    renew_problem: str | None = None  # renewals: None when the proof holds


@dataclass(frozen=True)
class Record:
    status: Status
    ek_hash: str | None  # the TPM this id belongs to (None: a device without TPM)
    key_hash: str | None  # for a device without TPM: the key an operator approved


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    record: Record | None  # the record to store (None: leave it as it is)


def approve_hint(device_id: str) -> str:
    return f"an operator approves it with: edgectl enrollments approve {device_id}"


def decide(facts: Facts, record: Record | None) -> Decision:
    if facts.evidence_problem:
        return Decision("refuse", facts.evidence_problem, None)
    if facts.kind == "renew":
        return _renew(facts, record)
    if record is None:
        pinned = Record("enrolled", facts.ek_hash, facts.key_hash)
        if facts.ek_trusted_by:
            return Decision("issue", f"approved by policy: {facts.ek_trusted_by}", pinned)
        why = ("no TPM evidence" if facts.ek_hash is None
               else "the TPM is not in the EK allowlist nor from a trusted maker")
        return Decision("pending", f"waiting for approval ({why}); {approve_hint(facts.device_id)}",
                        Record("pending", facts.ek_hash, facts.key_hash))
    if record.status == "denied":
        return Decision("refuse", "an operator denied this device", None)
    if not _same_device(facts, record):
        what = "TPM" if record.ek_hash is not None else "key (a device without TPM evidence)"
        return Decision("refuse", f"device id {facts.device_id} is already claimed by another {what}", None)
    if record.status == "revoked":
        return Decision("pending", f"the device was revoked; {approve_hint(facts.device_id)}", None)
    if record.status == "enrolled":
        if record.ek_hash is None:
            return Decision("pending", f"enrolled without a TPM: re-enrollment needs an operator; "
                                       f"{approve_hint(facts.device_id)}", None)
        return Decision("issue", "re-enrollment by the enrolled TPM", Record("enrolled", record.ek_hash,
                                                                                 facts.key_hash))
    if record.status == "approved":
        return Decision("issue", "approved by an operator", Record("enrolled", record.ek_hash, facts.key_hash))
    # pending
    if facts.ek_trusted_by:
        return Decision("issue", f"approved by policy: {facts.ek_trusted_by}",
                        Record("enrolled", facts.ek_hash, facts.key_hash))
    return Decision("pending", f"waiting for approval; {approve_hint(facts.device_id)}", None)


def _same_device(facts: Facts, record: Record) -> bool:
    if record.ek_hash is not None:
        return facts.ek_hash == record.ek_hash
    # Without a TPM, the key pins the device until it is enrolled; after that any request needs
    # an operator (see above), and a revoked one is approved again by hand.
    if record.status in ("pending", "approved"):
        return facts.ek_hash is None and facts.key_hash == record.key_hash
    return facts.ek_hash is None


def _renew(facts: Facts, record: Record | None) -> Decision:
    if facts.renew_problem:
        return Decision("refuse", facts.renew_problem, None)
    if record is None or record.status != "enrolled":
        state = "not enrolled" if record is None else record.status
        return Decision("refuse", f"device {facts.device_id} is {state}: renewal refused", None)
    if record.ek_hash is not None and facts.ek_hash != record.ek_hash:
        return Decision("refuse", "renewal without the evidence of the TPM the device enrolled with", None)
    return Decision("issue", "renewal proven by the current certificate",
                    Record("enrolled", record.ek_hash, facts.key_hash))
