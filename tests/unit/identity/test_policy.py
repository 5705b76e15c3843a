"""The enrollment policy, rule by rule (edgectl/enrollment/policy.py)."""

from __future__ import annotations

import pytest

from edgectl.enrollment.policy import Facts, Record, decide

EK, OTHER_EK, KEY, OTHER_KEY = "ek1", "ek2", "key1", "key2"


def enroll(ek: str | None = EK, key: str = KEY, trusted: str | None = None, problem: str | None = None) -> Facts:
    return Facts("enroll", "dev", ek, key, problem, trusted)


def renew(ek: str | None = EK, problem: str | None = None) -> Facts:
    return Facts("renew", "dev", ek, "key9", None, None, problem)


def test_new_device_trusted_by_policy_is_issued_and_pinned_to_its_tpm() -> None:
    d = decide(enroll(trusted="the EK allowlist"), None)
    assert d.verdict == "issue" and d.record == Record("enrolled", EK, KEY) and "allowlist" in d.reason


@pytest.mark.parametrize("ek", [EK, None])
def test_new_device_not_trusted_waits_pinned_to_what_asked(ek: str | None) -> None:
    d = decide(enroll(ek=ek), None)
    assert d.verdict == "pending" and d.record == Record("pending", ek, KEY)
    assert "edgectl enrollments approve dev" in d.reason


def test_bad_evidence_is_refused_before_anything() -> None:
    d = decide(enroll(trusted="x", problem="the quote's signature: bad"), Record("enrolled", EK, KEY))
    assert d.verdict == "refuse" and d.record is None and "quote" in d.reason


@pytest.mark.parametrize("status", ["pending", "approved", "enrolled", "revoked"])
def test_an_id_claimed_by_one_tpm_is_refused_to_another(status: str) -> None:
    d = decide(enroll(ek=OTHER_EK, trusted="the EK allowlist"), Record(status, EK, KEY))  # type: ignore[arg-type]
    assert d.verdict == "refuse" and "already claimed by another TPM" in d.reason and d.record is None


def test_an_id_claimed_by_a_tpm_is_refused_to_a_request_without_evidence() -> None:
    assert decide(enroll(ek=None), Record("enrolled", EK, KEY)).verdict == "refuse"


def test_a_pending_device_without_tpm_is_pinned_to_its_key() -> None:
    assert decide(enroll(ek=None, key=OTHER_KEY), Record("pending", None, KEY)).verdict == "refuse"
    assert decide(enroll(ek=None, key=KEY), Record("pending", None, KEY)).verdict == "pending"
    assert decide(enroll(ek=None, key=KEY), Record("approved", None, KEY)).verdict == "issue"


def test_enrolled_tpm_enrolls_again_by_itself_with_a_new_key() -> None:
    d = decide(enroll(key=OTHER_KEY), Record("enrolled", EK, KEY))
    assert d.verdict == "issue" and d.record == Record("enrolled", EK, OTHER_KEY)


def test_enrolled_without_tpm_needs_an_operator() -> None:
    assert decide(enroll(ek=None, key=OTHER_KEY), Record("enrolled", None, KEY)).verdict == "pending"


def test_revoked_waits_for_approval_and_denied_is_refused() -> None:
    revoked = decide(enroll(trusted="the EK allowlist"), Record("revoked", EK, KEY))
    assert revoked.verdict == "pending" and "revoked" in revoked.reason and revoked.record is None
    assert decide(enroll(trusted="x"), Record("denied", EK, KEY)).verdict == "refuse"


def test_approved_by_an_operator_is_issued() -> None:
    d = decide(enroll(), Record("approved", EK, KEY))
    assert d.verdict == "issue" and d.record is not None and d.record.status == "enrolled"


def test_a_pending_device_whose_ek_became_trusted_is_issued() -> None:
    assert decide(enroll(trusted="the EK allowlist"), Record("pending", EK, KEY)).verdict == "issue"
    assert decide(enroll(), Record("pending", EK, KEY)).verdict == "pending"


def test_renewal_rules() -> None:
    assert decide(renew(), Record("enrolled", EK, KEY)).verdict == "issue"
    assert decide(renew(problem="not signed by the current key"), Record("enrolled", EK, KEY)).verdict == "refuse"
    assert decide(renew(), None).verdict == "refuse"
    for status in ("revoked", "pending", "denied", "approved"):
        assert decide(renew(), Record(status, EK, KEY)).verdict == "refuse", status
    assert decide(renew(ek=OTHER_EK), Record("enrolled", EK, KEY)).verdict == "refuse"
    assert decide(renew(ek=None), Record("enrolled", None, KEY)).verdict == "issue"
