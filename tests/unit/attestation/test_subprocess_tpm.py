"""SubprocessTpm's process handling against scripted workers (a fake interpreter that speaks the
wire protocol over a FakeTpm, and misbehaves on cue): when a request is sent again and when not,
deadlines, crashes, garbage, a flood of stderr. The real worker on a real swtpm is tested in
tests/integration/attestation/test_tpm_worker.py."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_agent.attestation.service import tpm_from_config
from edge_agent.attestation.subprocess_tpm import SubprocessTpm
from edge_agent.attestation.tpm import TpmError
from edge_agent.config import parse_config
from edge_shared.attestation import ZERO_PCR

REPO_ROOT = Path(__file__).resolve().parents[3]

# Gets the worker's argv (-P -m edge_agent.attestation.tpm_worker --tcti ...). Behaviour per spawn
# from FAKE_WORKER_PLAN, e.g. "bye,serve": the first spawn says bye, the second serves.
FAKE_WORKER = f"""#!{sys.executable}
import os, sys, time
sys.path.insert(0, {str(REPO_ROOT)!r})
from tests.fakes.tpm import FakeTpm
from edge_agent.attestation.tpm_wire import bye_line, execute, result_line

counter = os.environ["FAKE_WORKER_COUNTER"]
spawn = len(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "a").write("x")
with open(os.environ["FAKE_WORKER_ARGV"], "w") as f:
    f.write(" ".join(sys.argv[1:]))
plan = os.environ["FAKE_WORKER_PLAN"].split(",")
mode = plan[min(spawn, len(plan) - 1)]
out = sys.stdout.buffer
if mode == "crash-at-start":
    sys.stderr.write("Traceback (most recent call last):\\n  ...\\n")
    sys.stderr.write("ModuleNotFoundError: No module named 'tpm2_pytss'\\n")
    sys.exit(1)
out.write(result_line(0, {{"pid": os.getpid(), "flushed": 2 if mode == "flushed" else 0}})); out.flush()
if mode == "bye":
    out.write(bye_line()); out.flush()
    time.sleep(0.3)  # still alive when the agent writes its request
    sys.exit(0)
tpm = FakeTpm()
for number, line in enumerate(sys.stdin.buffer):
    if mode == "die-after-read":
        sys.stderr.write("x" * 200000 + "\\nboom: the TSS fell over\\n"); sys.stderr.flush()
        os._exit(3)
    if mode == "hang" and number == 1:
        time.sleep(3600)
    if mode == "garbage":
        out.write(b"this is not json\\n"); out.flush(); continue
    out.write(execute(tpm, line.rstrip(b"\\n"))); out.flush()
"""


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_WORKER)
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_WORKER_COUNTER", str(tmp_path / "spawns"))
    monkeypatch.setenv("FAKE_WORKER_ARGV", str(tmp_path / "argv"))
    return path


def plan(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FAKE_WORKER_PLAN", value)


def make(python: Path, timeout: float = 10.0) -> SubprocessTpm:
    return SubprocessTpm("swtpm:host=127.0.0.1,port=1", call_timeout=timeout, idle_timeout=7.5, python=str(python))


def test_serves_calls_and_passes_its_settings(fake_python: Path, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    plan(monkeypatch, "serve")
    tpm = make(fake_python)
    digest = hashlib.sha256(b"img").digest()
    tpm.pcr_extend(23, digest)
    assert tpm.pcr_read([23, 0]) == {0: ZERO_PCR, 23: hashlib.sha256(ZERO_PCR + digest).digest()}
    assert tpm.spawns == 1 and tpm.worker_pid is not None
    argv = (tmp_path / "argv").read_text()
    assert argv.startswith("-P -m edge_agent.attestation.tpm_worker --tcti swtpm:host=127.0.0.1,port=1")
    assert "--idle-timeout 7.5" in argv
    pid = tpm.worker_pid
    tpm.close()
    assert tpm.worker_pid is None and not os.path.exists(f"/proc/{pid}/status")
    with pytest.raises(TpmError, match="the TPM connection is closed"):
        tpm.describe()


def test_request_is_sent_again_when_the_worker_said_bye_before_reading_it(
        fake_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan(monkeypatch, "bye,serve")
    tpm = make(fake_python)
    tpm.pcr_extend(16, b"\x01" * 32)  # written to the leaving worker, which never read it
    assert tpm.spawns == 2
    # extended exactly once, by the second worker
    assert tpm.pcr_read([16]) == {16: hashlib.sha256(ZERO_PCR + b"\x01" * 32).digest()}
    tpm.close()


def test_only_one_resend(fake_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan(monkeypatch, "bye")
    tpm = make(fake_python)
    with pytest.raises(TpmError, match="worker left after its idle timeout, twice in a row"):
        tpm.describe()
    assert tpm.spawns == 2


def test_worker_dying_after_reading_the_request_is_an_error_not_a_resend(
        fake_python: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    plan(monkeypatch, "die-after-read,serve")
    tpm = make(fake_python)
    with caplog.at_level(logging.ERROR), pytest.raises(TpmError) as info:
        tpm.pcr_extend(23, b"\x02" * 32)
    message = str(info.value)
    assert message.startswith("TPM worker exited with code 3 during pcr_extend (stderr: ")
    assert message.endswith("boom: the TSS fell over)") and len(message) < 400
    assert tpm.spawns == 1  # not sent again: the extend may have happened
    [record] = [r for r in caplog.records if getattr(r, "EVENT", "") == "attestation.worker_failed"]
    line = record.getMessage()
    assert "\n" not in line and len(line) < 1200 and line.endswith("boom: the TSS fell over")
    assert tpm.pcr_read([23]) == {23: ZERO_PCR}  # the next call gets a new worker
    assert tpm.spawns == 2
    tpm.close()


def test_hanging_worker_is_killed_at_the_deadline(fake_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan(monkeypatch, "hang,serve")
    tpm = make(fake_python, timeout=0.5)
    tpm.describe()  # the first worker hangs on its second request
    pid = tpm.worker_pid
    with pytest.raises(TpmError, match=r"^TPM operation pcr_read did not finish within 0.5 s; worker killed$"):
        tpm.pcr_read([0])
    assert not os.path.exists(f"/proc/{pid}/status")
    # The next call spawns a new worker; starting Python can take longer than 0.5 s on a loaded
    # machine (the deadline counts the spawn), so give the recovery a realistic one.
    tpm.call_timeout = 30.0
    assert tpm.pcr_read([0]) == {0: ZERO_PCR} and tpm.spawns == 2
    tpm.close()


def test_garbage_on_stdout_kills_the_worker(fake_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan(monkeypatch, "garbage,serve")
    tpm = make(fake_python)
    with pytest.raises(TpmError, match="TPM worker sent a malformed line during describe: not a JSON line"):
        tpm.describe()
    assert tpm.describe() == "fake TPM (software, unit tests only)"
    tpm.close()


def test_worker_that_cannot_start_names_the_reason(fake_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan(monkeypatch, "crash-at-start")
    tpm = make(fake_python)
    with pytest.raises(TpmError, match=r"^the TPM worker did not start: exited with code 1 \(stderr: .*"
                                       r"ModuleNotFoundError: No module named 'tpm2_pytss'\)$"):
        tpm.describe()


def test_leftovers_flushed_by_a_new_worker_are_logged(fake_python: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    plan(monkeypatch, "flushed")
    tpm = make(fake_python)
    with caplog.at_level(logging.WARNING):
        tpm.describe()
    assert any(getattr(r, "EVENT", "") == "attestation.tpm_leftovers_flushed" for r in caplog.records)
    tpm.close()


def test_missing_interpreter_is_a_tpm_error(tmp_path: Path) -> None:
    tpm = make(tmp_path / "no-such-python")
    with pytest.raises(TpmError, match="cannot start the TPM worker"):
        tpm.describe()


def test_the_agent_uses_the_worker_with_the_configured_limits(tmp_path: Path) -> None:
    config = parse_config(f'[state]\ndir = "{tmp_path}"\n[attestation]\ntpm_timeout_s = 9\nworker_idle_s = 4\n')
    tpm = tpm_from_config(config.attestation)
    assert isinstance(tpm, SubprocessTpm)
    assert (tpm.tcti, tpm.call_timeout, tpm.idle_timeout, tpm.worker_pid) == ("device:/dev/tpmrm0", 9, 4, None)


def test_close_cuts_a_running_call_short(fake_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan(monkeypatch, "hang")
    tpm = make(fake_python, timeout=60)
    tpm.describe()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            tpm.pcr_read([0])
        except TpmError as exc:
            errors.append(exc)

    sent_before = tpm._next_id
    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 60
    while tpm._next_id == sent_before and time.monotonic() < deadline:  # the call took its id and sends
        time.sleep(0.01)
    assert tpm._lock.locked()  # the call is waiting on the hung worker
    tpm.close()
    thread.join(10)
    assert not thread.is_alive()
    assert [str(e) for e in errors] == ["TPM worker was killed by SIGKILL during pcr_read"]
