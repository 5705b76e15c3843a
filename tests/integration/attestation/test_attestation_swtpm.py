"""Enrollment, quotes and verification against a real swtpm, cross-checked with tpm2_checkquote."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devinfra.swtpm import Swtpm
from edge_agent.attestation.service import AttestationService
from edge_shared.attestation import DeviceIdentity
from edge_shared.protocol import CommandFailed
from edgectl.attest_cmds import AttestationFailure, EnrollmentRecord, attest_device, enroll_device
from edgectl.attestation.ima import Allowlist
from tests.integration.attestation.conftest import (
    local_transport,
    synthetic_files,
    write_boot_log,
    write_ima_list,
)

DIGEST_A = "sha256:" + hashlib.sha256(b"image a").hexdigest()
DIGEST_B = "sha256:" + hashlib.sha256(b"image b").hexdigest()
EVIL = "sha256:" + hashlib.sha256(b"evil").hexdigest()


async def prepared_device(make_service: Any, swtpm: Swtpm, name: str = "dev") -> tuple[AttestationService, list[Any]]:
    """A device whose IMA list is extended into the swtpm's PCR 10 and which started two modules."""
    service = await make_service(swtpm, name)
    assert service.unavailable is None, service.unavailable
    for pcr, digest in write_boot_log(service.section.boot_log):  # the "firmware" measures the boot
        await asyncio.to_thread(service.tpm.pcr_extend, pcr, digest)
    files = synthetic_files()
    entries = write_ima_list(service.section.ima_log, files)
    for entry in entries:
        await asyncio.to_thread(service.tpm.pcr_extend, 10, entry.extend_value())
    await service.measurer.extend(DIGEST_A, "pilot", "7")
    await service.measurer.extend(DIGEST_B, "camera", "7")
    return service, files


def allowlist_for(files: list[tuple[str, bytes]]) -> Allowlist:
    return Allowlist.from_json({"digests": {p: [d.hex()] for p, d in files}})


async def enrolled(service: AttestationService, name: str = "dev", tamper: Any = None) -> tuple[Any, EnrollmentRecord]:
    transport = local_transport({name: service}, tamper)
    record = await enroll_device(transport, name)
    return transport, record


def failed(result: Any) -> list[str]:
    return result.failed_names()


async def test_enrollment_registers_ek_and_ak_and_golden_pcrs(make_service: Any, swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    _, record = await enrolled(service)
    identity = DeviceIdentity.from_wire(await service.handle_enroll({}))
    assert record.identity.ek_public == identity.ek_public
    assert record.identity.ak_public == identity.ak_public
    assert record.identity.ek_cert is None  # swtpm started without swtpm_setup has no EK certificate in NV
    assert sorted(record.golden_pcrs) == list(range(8))
    assert record.golden_pcrs[4] != bytes(32)  # the synthetic boot measured into PCR 4
    assert record.last_counters is not None and record.last_counters.reset_count >= 0


async def test_valid_quote_passes_our_verifier_and_tpm2_checkquote(make_service: Any, swtpm: Swtpm,
                                                                   tmp_path: Path) -> None:
    service, files = await prepared_device(make_service, swtpm)
    transport, record = await enrolled(service)
    evidence_dir = tmp_path / "evidence"
    result = await attest_device(transport, record, allowlist=allowlist_for(files), require_ima=True,
                                 deployment={"pilot": {DIGEST_A}, "camera": {DIGEST_B}}, save_dir=evidence_dir)
    assert result.passed, result.as_dict()
    statuses = {c.name: c.status for c in result.checks}
    assert all(statuses[n] == "pass" for n in ("ak_signature", "nonce", "pcr_digest", "counters", "golden_pcrs",
                                               "boot_log_replay", "ima_entries", "ima_replay", "ima_allowlist",
                                               "image_log_replay", "image_deployment"))
    # An independent implementation agrees: tpm2-tools checks signature, nonce and PCR digest.
    nonce = (evidence_dir / "nonce.hex").read_text()
    argv = ["tpm2_checkquote", "-u", evidence_dir / "ak.pem", "-m", evidence_dir / "quote.msg",
            "-s", evidence_dir / "quote.sig", "-f", evidence_dir / "quote.pcrs", "-g", "sha256"]
    ok = subprocess.run([*argv, "-q", nonce], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "23:" in ok.stdout and "10:" in ok.stdout  # it hashed the PCR values we sent
    wrong = subprocess.run([*argv, "-q", "00" * 32], capture_output=True, text=True)
    assert wrong.returncode != 0 and "nonce" in wrong.stderr.lower()


async def test_wrong_nonce_fails_nonce_check(make_service: Any, swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    _, record = await enrolled(service)

    async def send(device: str, command: str, payload: Any) -> dict[str, Any]:
        # The device (or a man in the middle) quotes over a nonce of its choosing.
        return await service.handle_attest({**payload, "nonce": "ab" * 32})

    result = await attest_device(send, record)
    assert failed(result) == ["nonce"]


async def test_changed_pcr_fails(make_service: Any, swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    transport, record = await enrolled(service)

    def edit_pcr(command: str, request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        if command == "attest":
            answer["quote"]["pcrs"]["7"] = "11" * 32
        return answer

    # A PCR value altered in transit no longer matches the signed digest.
    result = await attest_device(local_transport({"dev": service}, edit_pcr), record)
    assert "pcr_digest" in failed(result)
    # A PCR that really changed since enrollment (e.g. other firmware) fails the golden values.
    await asyncio.to_thread(service.tpm.pcr_extend, 7, hashlib.sha256(b"other firmware").digest())
    result = await attest_device(transport, record)
    # ... and, extended behind the firmware's back, the boot log no longer explains it either.
    assert failed(result) == ["golden_pcrs", "boot_log_replay"]
    assert all("PCR 7" in c.detail for c in result.failures)


async def test_replayed_old_quote_fails(make_service: Any, swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    _transport, record = await enrolled(service)
    recorded: list[dict[str, Any]] = []

    def capture(command: str, request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        if command == "attest":
            recorded.append(copy.deepcopy(answer))
        return answer

    first = await attest_device(local_transport({"dev": service}, capture), record)
    assert first.passed, first.as_dict()

    def replay(command: str, request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(recorded[0]) if command == "attest" else answer

    result = await attest_device(local_transport({"dev": service}, replay), record)
    assert set(failed(result)) == {"nonce", "counters"}


async def test_ak_from_another_tpm_is_refused(make_service: Any, swtpm: Swtpm, other_swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    other = await make_service(other_swtpm, "other")
    other_identity = await other.handle_enroll({})

    def swap_ak(command: str, request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        if command == "attest_enroll":  # the device claims the other TPM's AK as its own
            answer = {**answer, "ak_public": other_identity["ak_public"], "ak_name": other_identity["ak_name"]}
        return answer

    with pytest.raises(AttestationFailure, match="not in the same TPM as the EK"):
        await enrolled(service, tamper=swap_ak)

    # A quote made by another TPM's AK does not verify against the enrolled AK.
    _transport, record = await enrolled(service)
    result = await attest_device(local_transport({"dev": other}), record)
    assert failed(result) == ["ak_signature"]


async def test_ima_list_replays_to_pcr10_and_a_tampered_entry_fails(make_service: Any, swtpm: Swtpm) -> None:
    service, files = await prepared_device(make_service, swtpm)
    transport, record = await enrolled(service)
    allowlist = allowlist_for(files)
    good = await attest_device(transport, record, allowlist=allowlist, require_ima=True)
    assert good.passed, good.as_dict()

    ima_path = service.section.ima_log
    lines = ima_path.read_text().splitlines()
    path, digest = files[2]
    forged = hashlib.sha256(b"trojan").hexdigest()
    lines[3] = lines[3].replace(digest.hex(), forged)  # the attacker hides a changed file
    ima_path.write_text("\n".join(lines) + "\n")
    result = await attest_device(transport, record, allowlist=allowlist, require_ima=True)
    assert {"ima_entries", "ima_replay", "ima_allowlist"} <= set(failed(result))
    assert path in next(c.detail for c in result.checks if c.name == "ima_entries")

    # A file measured at runtime that the allowlist does not permit fails the allowlist only.
    ima_path.write_text("\n".join(ln for ln in ima_path.read_text().splitlines()) + "\n")
    write_ima_list(ima_path, files)
    strict = Allowlist.from_json({"digests": {p: [d.hex()] for p, d in files[:-1]}})
    result = await attest_device(transport, record, allowlist=strict, require_ima=True)
    assert failed(result) == ["ima_allowlist"]


async def test_image_not_in_deployment_fails(make_service: Any, swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    transport, record = await enrolled(service)
    await service.measurer.extend(EVIL, "pilot", "7")
    result = await attest_device(transport, record, deployment={"pilot": {DIGEST_A}, "camera": {DIGEST_B}})
    assert failed(result) == ["image_deployment"]
    assert EVIL in next(c.detail for c in result.failures)

    # Editing the log to hide the image breaks the replay against PCR 23.
    def hide(command: str, request: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        if command == "attest":
            answer["image_log"] = answer["image_log"][:-1]
        return answer

    result = await attest_device(local_transport({"dev": service}, hide), record,
                                 deployment={"pilot": {DIGEST_A}, "camera": {DIGEST_B}})
    assert failed(result) == ["image_log_replay"]


async def test_image_log_survives_agent_restart_and_restarts_after_reboot(make_service: Any, swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    log_path = service.measurer.path
    events = json.loads(json.dumps(service.measurer.snapshot()))
    service.close()
    again = await make_service(swtpm, "dev")  # same state dir, same TPM: an agent restart
    assert again.measurer.snapshot() == events and again.measurer.consistent
    again.close()
    swtpm.restart()  # a reboot: PCR 23 is reset
    rebooted = await make_service(swtpm, "dev")
    assert rebooted.measurer.snapshot() == [] and rebooted.measurer.consistent
    assert log_path.with_name("image-measurements.prev.jsonl").exists()


async def test_without_tpm_attest_is_answered_with_a_clear_error(make_service: Any) -> None:
    service = await make_service(None, "notpm")
    assert service.unavailable and "device:/dev/nonexistent-tpm" in service.unavailable
    with pytest.raises(CommandFailed) as info:
        await service.handle_attest({"nonce": "00" * 32})
    assert info.value.code == "attestation_unavailable"
    assert service.reported.get("attestation")["available"] is False


async def test_ek_certificate_from_nv_is_read_and_checked(make_service: Any, tmp_path: Path) -> None:
    """A TPM provisioned by swtpm_setup (vendor-style EK certificate in NV), RSA EK."""
    tpm = Swtpm(tmp_path / "manufactured").manufacture().start()
    try:
        service = await make_service(tpm, "rsa-dev", ek_type="rsa")
        assert service.unavailable is None, service.unavailable
        vendor_ca = b"".join(p.read_bytes() for p in tpm.ca_certs)
        transport = local_transport({"rsa-dev": service})
        record = await enroll_device(transport, "rsa-dev", ek_ca=vendor_ca, require_ek_cert=True)
        assert record.identity.ek_cert is not None and record.identity.ek_type == "rsa"
        result = await attest_device(transport, record)
        assert result.passed, result.as_dict()

        # A CA that did not issue this TPM's certificate is refused.
        other = Swtpm(tmp_path / "other-vendor").manufacture()
        with pytest.raises(AttestationFailure, match="not issued by a CA in the bundle"):
            await enroll_device(transport, "rsa-dev", ek_ca=b"".join(p.read_bytes() for p in other.ca_certs))
    finally:
        tpm.stop()


async def test_tpm_without_ek_certificate_is_refused_when_one_is_required(make_service: Any, swtpm: Swtpm) -> None:
    service = await make_service(swtpm)
    with pytest.raises(AttestationFailure, match="no EK certificate in NV"):
        await enroll_device(local_transport({"dev": service}), "dev", require_ek_cert=True)


async def test_persistent_ak_survives_agent_restarts(make_service: Any, swtpm: Swtpm) -> None:
    service = await make_service(swtpm, extra="ak_handle = 0x81010002\n")
    _transport, record = await enrolled(service)
    service.close()
    restarted = await make_service(swtpm, extra="ak_handle = 0x81010002\n")
    result = await attest_device(local_transport({"dev": restarted}), record)
    assert result.passed, result.as_dict()


async def test_boot_event_log_is_replayed_against_the_boot_pcrs(make_service: Any, swtpm: Swtpm) -> None:
    service, _ = await prepared_device(make_service, swtpm)
    transport, record = await enrolled(service)
    boot_log = service.section.boot_log
    original = boot_log.read_bytes()
    # Edit the logged kernel digest (the last event): the log no longer explains PCR 4.
    boot_log.write_bytes(original[: -(32 + 4 + 7)] + hashlib.sha256(b"nice kernel").digest() + original[-11:])
    result = await attest_device(transport, record)
    assert failed(result) == ["boot_log_replay"]
    assert "PCR 4" in result.failures[0].detail
