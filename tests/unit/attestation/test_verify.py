from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from edge_shared.attestation import Evidence, event_digest
from edgectl.attestation.ima import make_entry
from edgectl.attestation.verify import CHECKS, Counters, Expectations, verify_quote
from tests.fakes.tpm import FakeTpm

PCRS = (0, 1, 7, 10, 23)
IMG = "sha256:" + "ab" * 32


def device() -> tuple[FakeTpm, str, list[dict[str, Any]]]:
    tpm = FakeTpm()
    entries = [make_entry(f"/bin/f{i}", hashlib.sha256(bytes([i])).digest(), i + 1) for i in range(3)]
    for e in entries:
        tpm.pcr_extend(10, e.extend_value())
    event = {"seq": 0, "module": "pilot", "digest": IMG, "deployment": "3", "time": "2026-01-01T00:00:00Z"}
    tpm.pcr_extend(23, event_digest(event))
    return tpm, "".join(e.to_line() + "\n" for e in entries), [event]


def run(tpm: FakeTpm, ima: str | None, log: list[dict[str, Any]] | None, **overrides: Any) -> Any:
    nonce = os.urandom(32)
    raw = tpm.quote(overrides.pop("quote_pcrs", PCRS), overrides.pop("quoted_nonce", nonce))
    pcrs = dict(raw.pcrs)
    pcrs.update(overrides.pop("pcr_edit", {}))
    evidence = Evidence(overrides.pop("attest", raw.attest), raw.signature, pcrs, ima, log)
    expect = Expectations(
        nonce=nonce,
        pcrs=overrides.pop("pcrs", PCRS),
        ak_public=overrides.pop("ak_public", tpm.ak_public()),
        golden_pcrs=overrides.pop("golden", {0: bytes(32), 1: bytes(32), 7: bytes(32)}),
        deployment_images=overrides.pop("deployment", {"pilot": frozenset({IMG})}),
        **overrides,
    )
    return verify_quote(evidence, expect)


def test_every_check_runs_and_a_good_quote_passes() -> None:
    tpm, ima, log = device()
    result = run(tpm, ima, log)
    assert result.passed, result.as_dict()
    assert [c.name for c in result.checks] == list(CHECKS)
    assert {c.status for c in result.checks if c.name not in {"ima_allowlist", "boot_log_replay"}} == {"pass"}


def test_wrong_nonce() -> None:
    tpm, ima, log = device()
    assert run(tpm, ima, log, quoted_nonce=os.urandom(32)).failed_names() == ["nonce"]


def test_altered_pcr_value_breaks_the_digest_and_untrusted_values_are_not_used() -> None:
    tpm, ima, log = device()
    result = run(tpm, ima, log, pcr_edit={7: b"\x01" * 32})
    assert result.failed_names() == ["pcr_digest"]
    assert {c.name for c in result.checks if c.status == "skip"} >= {"golden_pcrs", "ima_replay", "image_log_replay"}


def test_golden_mismatch_names_the_pcr() -> None:
    tpm, ima, log = device()
    result = run(tpm, ima, log, golden={7: b"\x02" * 32})
    assert result.failed_names() == ["golden_pcrs"]
    assert "PCR 7" in result.failures[0].detail


def test_other_ak_fails_signature_and_nothing_else_is_trusted() -> None:
    tpm, ima, log = device()
    result = run(tpm, ima, log, ak_public=FakeTpm().ak_public())
    assert result.failed_names() == ["ak_signature"]
    assert result.counters is None
    assert all(c.status == "skip" for c in result.checks[2:])


def test_garbage_attest_fails_format() -> None:
    tpm, ima, log = device()
    assert run(tpm, ima, log, attest=b"\x00" * 10).failed_names() == ["attest_format"]


def test_selection_other_than_requested() -> None:
    tpm, ima, log = device()
    assert "pcr_selection" in run(tpm, ima, log, pcrs=(0, 1, 7, 10, 23, 4)).failed_names()


@pytest.mark.parametrize(
    ("last", "ok"),
    [
        (Counters(10, 1, 0), True),
        (Counters(10**9, 0, 5), True),  # a reboot since: clock restarts, fine
        (Counters(10, 2, 0), False),  # reset count went backwards
        (Counters(10, 1, 3), False),  # restart count went backwards
        (Counters(10**9, 1, 0), False),  # same boot, clock went backwards: an old quote
    ],
)
def test_counters_never_go_backwards(last: Counters, ok: bool) -> None:
    tpm, ima, log = device()
    result = run(tpm, ima, log, last_counters=last)
    assert ("counters" in result.failed_names()) is not ok


def test_ima_prefix_replay_tolerates_entries_added_after_the_quote() -> None:
    tpm, ima, log = device()
    later = make_entry("/bin/late", hashlib.sha256(b"late").digest(), 4).to_line() + "\n"
    result = run(tpm, ima + later, log)
    assert result.passed
    assert "1 later entries not covered" in next(c.detail for c in result.checks if c.name == "ima_replay")


def test_truncated_ima_list_fails_replay() -> None:
    tpm, ima, log = device()
    assert run(tpm, ima.splitlines(keepends=True)[0], log).failed_names() == ["ima_replay"]


def test_missing_ima_list_fails_only_when_required() -> None:
    tpm, _, log = device()
    # PCR 10 holds measurements, yet the device sends no list: withheld.
    assert run(tpm, None, log).failed_names() == ["ima_entries"]
    quiet = FakeTpm()  # a kernel without IMA: PCR 10 untouched, no list
    event = {**log[0]}
    quiet.pcr_extend(23, event_digest(event))
    assert run(quiet, None, [event]).passed
    assert run(quiet, None, [event], ima_required=True).failed_names() == ["ima_entries"]


def test_image_log_edits_and_foreign_images() -> None:
    tpm, ima, log = device()
    edited = [{**log[0], "digest": "sha256:" + "cd" * 32}]
    assert set(run(tpm, ima, edited).failed_names()) == {"image_log_replay", "image_deployment"}
    tpm2, ima2, log2 = device()
    result = run(tpm2, ima2, log2, deployment={"pilot": frozenset({"sha256:" + "ee" * 32}), "camera": frozenset()})
    assert result.failed_names() == ["image_deployment"]
    assert "not measured" in result.failures[0].detail and IMG in result.failures[0].detail
    tpm3, ima3, _ = device()
    assert run(tpm3, ima3, None).failed_names()[0] == "image_log_replay"


def test_logs_not_covered_by_the_quote_never_pass_policy_checks() -> None:
    from edgectl.attestation.ima import Allowlist

    tpm, ima, log = device()
    allow = Allowlist.from_json({"digests": {f"/bin/f{i}": [hashlib.sha256(bytes([i])).hexdigest()]
                                             for i in range(3)}})
    # PCR 10 and 23 not quoted: the logs are unverified, so the policy checks must not pass.
    result = run(tpm, ima, log, quote_pcrs=(0, 1, 7), pcrs=(0, 1, 7), ima_allowlist=allow)
    status = {c.name: c.status for c in result.checks}
    assert status["pcr_selection"] == status["pcr_digest"] == "pass"
    assert status["ima_replay"] == status["ima_allowlist"] == "skip"
    assert status["image_log_replay"] == status["image_deployment"] == "skip"
