"""The TPM worker process on a real swtpm: idle exit and respawn, a SIGKILLed or hung worker,
objects left in the TPM by a killed worker, a bad TCTI, and the agent process staying free of
tpm2-pytss (checked in a fresh interpreter)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devinfra.procs import wait_until
from devinfra.swtpm import Swtpm
from edge_agent.attestation.quote import encode_quote
from edge_agent.attestation.subprocess_tpm import SubprocessTpm
from edge_agent.attestation.tpm import PytssTpm, TpmError
from edge_shared.attestation import ZERO_PCR, DeviceIdentity, decode_evidence
from edgectl.attestation.challenge import make_challenge
from edgectl.attestation.verify import Expectations, verify_quote

REPO_ROOT = Path(__file__).resolve().parents[3]
PROBE = REPO_ROOT / "devinfra" / "attestation_probe.py"


def extended(value: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(value + digest).digest()


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_worker_leaves_when_idle_and_the_next_call_respawns_it(swtpm: Swtpm) -> None:
    tpm = SubprocessTpm(swtpm.tcti, idle_timeout=1.0)
    try:
        first, second = hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()
        tpm.pcr_extend(16, first)
        value = tpm.pcr_read([16])[16]
        assert value == extended(ZERO_PCR, first)
        pid = tpm.worker_pid
        assert pid is not None
        wait_until(lambda: tpm.worker_pid is None and gone(pid), 10, "the idle worker to exit")
        # It let go of the TPM: another client (swtpm serves one at a time) gets in and sees the PCR.
        other = PytssTpm(swtpm.tcti)
        assert other.pcr_read([16]) == {16: value}
        other.close()
        assert tpm.pcr_read([16]) == {16: value}  # a new worker, same TPM state
        assert tpm.spawns == 2 and tpm.worker_pid not in (None, pid)
        tpm.pcr_extend(16, second)
        assert tpm.pcr_read([16]) == {16: extended(value, second)}
    finally:
        tpm.close()


def test_a_worker_that_left_when_idle_is_reaped_without_another_call(swtpm: Swtpm) -> None:
    # Nothing calls the TPM again for hours on a quiet device: the worker must not stay a zombie.
    tpm = SubprocessTpm(swtpm.tcti, idle_timeout=1.0)
    try:
        tpm.pcr_read([16])
        pid = tpm.worker_pid
        assert pid is not None
        wait_until(lambda: gone(pid), 10, "the idle worker to be reaped (not a zombie)")
    finally:
        tpm.close()


def test_sigkilled_worker_is_replaced_on_the_next_call(swtpm: Swtpm, caplog: pytest.LogCaptureFixture) -> None:
    tpm = SubprocessTpm(swtpm.tcti)
    try:
        ak = tpm.ak_public()
        pid = tpm.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: tpm.worker_pid is None, 10, "the killed worker to be gone")
        with caplog.at_level(logging.WARNING):
            assert tpm.ak_public() == ak  # same TPM, same AK from its template
        assert tpm.spawns == 2
        assert any(f"TPM worker {pid} was killed by SIGKILL" in r.getMessage() for r in caplog.records)
    finally:
        tpm.close()


def test_hung_worker_hits_the_deadline_is_killed_and_the_next_call_works(swtpm: Swtpm) -> None:
    tpm = SubprocessTpm(swtpm.tcti, call_timeout=2.0)
    try:
        tpm.pcr_extend(23, b"\x05" * 32)
        pid = tpm.worker_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # a TPM (or bus) that never answers
        with pytest.raises(TpmError, match=r"^TPM operation pcr_read did not finish within 2 s; worker killed$"):
            tpm.pcr_read([23])
        assert gone(pid)
        assert tpm.pcr_read([23]) == {23: extended(ZERO_PCR, b"\x05" * 32)}
        assert tpm.spawns == 2
    finally:
        tpm.close()


def test_objects_left_in_the_tpm_by_a_killed_client_are_flushed(swtpm: Swtpm, caplog: pytest.LogCaptureFixture) -> None:
    from tpm2_pytss.constants import ESYS_TR

    # A worker killed mid-quote leaves its AK loaded; three of them fill swtpm's object slots.
    for _ in range(3):
        leaky = PytssTpm(swtpm.tcti)
        leaky._esys.create_primary(None, leaky._ak_template(), ESYS_TR.ENDORSEMENT)
        leaky._esys.close()
    stuck = PytssTpm(swtpm.tcti)
    with pytest.raises(TpmError, match="out of memory for object contexts"):
        stuck.quote([0], b"n" * 20)
    stuck.close()

    tpm = SubprocessTpm(swtpm.tcti)
    try:
        with caplog.at_level(logging.WARNING):
            nonce = b"\x09" * 20
            raw = tpm.quote([0, 23], nonce)
        assert any("flushed 3 objects/sessions" in r.getMessage() for r in caplog.records)
        result = verify_quote(decode_evidence({"quote": encode_quote(raw), "image_log": []}),
                              Expectations(nonce, [0, 23], tpm.ak_public()))
        assert result.passed, result.as_dict()
    finally:
        tpm.close()


async def test_bad_tcti_gives_the_same_unavailable_reason(make_service: Any, tmp_path: Path) -> None:
    stopped = Swtpm(tmp_path / "stopped")  # ports reserved, nothing listening
    service = await make_service(None, "badtcti", tcti=stopped.tcti)
    assert service.tpm is None
    assert (service.unavailable or "").startswith(
        f"no usable TPM at {stopped.tcti}: cannot open TPM through TCTI '{stopped.tcti}': ")
    assert "Traceback" not in (service.unavailable or "")


def run_probe(swtpm: Swtpm, state: Path, *extra: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, str(PROBE), "--tree", str(REPO_ROOT), "--tcti", swtpm.tcti,
                             "--state", str(state), *extra], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["edge_agent"] == str(REPO_ROOT / "edge_agent")
    return out


def test_agent_process_never_loads_tpm2_pytss(swtpm: Swtpm, tmp_path: Path) -> None:
    """Start, enroll, activate a credential, measure an image and attest in a fresh interpreter:
    tpm2-pytss (and cryptography) stay out of it. The same probe with the TPM opened in process
    (how the agent worked before the worker) shows the check catches them."""
    reader = PytssTpm(swtpm.tcti)  # the fleet side, in this test process: a challenge for this TPM
    identity = DeviceIdentity(reader.endorsement().ek_public, None, "ecc", reader.ak_public())
    reader.close()
    challenge = make_challenge(identity)
    challenge_file = tmp_path / "challenge.json"
    challenge_file.write_text(json.dumps(challenge.to_wire()))

    out = run_probe(swtpm, tmp_path / "state-worker", "--challenge", str(challenge_file))
    assert out["unavailable"] is None
    assert out["loaded"] == [], f"the agent process loaded {out['loaded']}"
    assert DeviceIdentity.from_wire(out["identity"]).ak_public == identity.ak_public
    assert base64.b64decode(out["activated"]) == challenge.secret
    assert out["quoted_pcrs"] == ["0", "23"] and out["image_events"] == 1

    before = run_probe(swtpm, tmp_path / "state-in-process", "--in-process")
    assert before["unavailable"] is None and "tpm2_pytss" in before["loaded"]
