"""The update guard when a step fails (disk full, I/O error), when the agent's user planted symlinks
or files in the state folder, and its window counted in device-up time."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.unit.selfupdate.test_files import fake_release
from tests.unit.selfupdate.test_guard import Box

WRAPPED = ("dd", "mv", "ln", "sync", "chown", "rm", "mkdir", "readlink", "stat", "sed", "head")
AGENT_UID = 4242


@pytest.fixture
def plain_box(tmp_path: Path) -> Box:
    return Box(tmp_path)


class FailingBox(Box):
    """The guard with its commands wrapped: the N-th call of any of them fails as on a full disk."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp)
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.calls = tmp / "calls"
        self.calls.write_text("0")
        self.fail_at = tmp / "fail-at"
        self.fail_at.write_text("0")
        for name in WRAPPED:
            real = shutil.which(name)
            assert real is not None
            wrapper = self.bin / name
            wrapper.write_text(
                "#!/bin/sh\n"
                f'n=$(/bin/cat {self.calls}); n=$((n + 1)); echo "$n" > {self.calls}\n'
                f'echo "$n {name} $*" >> {self.calls}.log\n'
                f'if [ "$n" = "$(/bin/cat {self.fail_at})" ]; then\n'
                f'  echo "{name}: No space left on device" >&2; exit 1\n'
                "fi\n"
                f'exec {real} "$@"\n'
            )
            wrapper.chmod(0o755)
        self.env["PATH"] = f"{self.bin}:{os.environ['PATH']}"

    def failing_at(self, n: int) -> None:
        self.calls.write_text("0")
        self.fail_at.write_text(str(n))

    def call_count(self) -> int:
        return int(self.calls.read_text())

    def call_log(self) -> list[str]:
        """The wrapped calls since the box was made (for failure messages)."""
        log = self.calls.with_name("calls.log")
        return log.read_text().splitlines() if log.exists() else []


def db(path: Path, written_by: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('written_by', ?)", (written_by,))
    conn.close()


def written_by(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return str(conn.execute("SELECT value FROM meta WHERE key = 'written_by'").fetchone()[0])
    finally:
        conn.close()


def test_a_failure_at_any_step_of_a_switch_still_starts_the_agent(tmp_path: Path) -> None:
    box = FailingBox(tmp_path / "count")
    box.guard("start")
    fake_release(box.files, "1.1", "1.1")
    db(box.state / "state.db", "factory")
    box.files.request("1.1")
    box.failing_at(0)
    before = len(box.call_log())
    box.guard("start")
    total = box.call_count()
    calls = box.call_log()[before:]
    assert total > 20
    for n in range(1, total + 1):
        box = FailingBox(tmp_path / str(n))
        box.guard("start")
        release = fake_release(box.files, "1.1", "1.1")
        db(box.state / "state.db", "factory")
        box.files.request("1.1")
        box.failing_at(n)
        proc = box.guard("start")  # exits 0 whatever failed
        where = f"call {n} of {total} failing: {calls[n - 1]}"
        assert box.files.pending_request() is None, where  # dropped, never retried at every start
        target = box.points_to()
        trial = box.files.trial()
        if target == str(release):
            assert trial is not None and trial.version == "1.1" and trial.previous == str(box.factory), where
        else:
            assert target == str(box.factory) and trial is None, where
            assert "start failed" in proc.stderr, where
            outcome = box.files.outcome()
            if outcome is not None:  # unless writing it was what failed
                assert outcome["result"] == "failed" and outcome["version"] == "1.1", where
                assert "No space left on device" in outcome["reason"], where
        assert written_by(box.state / "state.db") == "factory", where
        assert not (box.files.dir / "state-before-update.tmp").exists(), where


def test_a_failure_during_a_roll_back_starts_the_agent_and_the_next_start_finishes_it(tmp_path: Path) -> None:
    def trial_box(where: Path) -> FailingBox:
        box = FailingBox(where)
        box.guard("start")
        fake_release(box.files, "1.1", "1.1")
        db(box.state / "state.db", "factory")
        box.files.request("1.1")
        box.guard("start", max_starts=1)
        db(box.state / "state.db", "1.1")
        return box

    box = trial_box(tmp_path / "count")
    box.failing_at(0)
    before = len(box.call_log())
    box.guard("start", max_starts=1)  # the crash loop's roll-back
    total = box.call_count()
    calls = box.call_log()[before:]
    for n in range(1, total + 1):
        box = trial_box(tmp_path / str(n))
        box.failing_at(n)
        box.guard("start", max_starts=1)  # exits 0
        where = f"call {n} of {total} failing: {calls[n - 1]}"
        assert os.access(Path(box.points_to()) / "bin" / "edge-agent", os.X_OK), where
        box.failing_at(0)
        box.guard("start", max_starts=1)  # the next start, nothing failing
        assert box.points_to() == str(box.factory), where
        assert box.files.trial() is None and "1.1" in box.files.bad_versions(), where
        assert written_by(box.state / "state.db") == "factory", where


def test_the_window_counts_device_up_time_across_power_cuts(plain_box: Box, tmp_path: Path) -> None:
    box = plain_box
    uptime, boot = tmp_path / "uptime", tmp_path / "boot_id"
    box.env.update(EDGE_AGENT_UPTIME_FILE=str(uptime), EDGE_AGENT_BOOT_ID_FILE=str(boot))
    boot.write_text("boot-a\n")
    uptime.write_text("100.5 90.0\n")
    box.guard("start")
    fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start")
    uptime.write_text("250.0 1.0\n")
    box.guard("check", window=300)  # 150 s up
    assert box.files.trial() is not None
    # A power cut: hours pass; the device boots again, its uptime starts over.
    boot.write_text("boot-b\n")
    uptime.write_text("10.0 1.0\n")
    box.guard("start")
    uptime.write_text("150.0 1.0\n")
    box.guard("check", window=300)  # 150 + 140 s up
    assert box.files.trial() is not None and box.points_to().endswith("/1.1")
    uptime.write_text("162.0 1.0\n")
    box.guard("check", window=300)  # 302 s
    assert box.points_to() == str(box.factory)
    outcome = box.files.outcome()
    assert outcome is not None and "not confirmed within 300s" in outcome["reason"]


# ---------------------------------------------------------------------------------------------------
# What the agent's user could plant in the folder it owns: the guard, as root, follows none of it.


@pytest.fixture
def agent_box(plain_box: Box) -> Box:
    os.chown(plain_box.state, AGENT_UID, AGENT_UID)
    plain_box.guard("start")
    return plain_box


def plant(link: Path, target: Path) -> None:
    os.symlink(target, link)
    os.lchown(link, AGENT_UID, AGENT_UID)


def test_planted_symlinks_are_never_followed(agent_box: Box, tmp_path: Path) -> None:
    box = agent_box
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o600)
    fake_release(box.files, "1.1", "1.1")
    for name in ("trial.tmp", "current.tmp", "outcome.json.tmp", "request.tmp"):
        plant(box.files.dir / name, victim)
    (box.files.dir / "lock").unlink()
    plant(box.files.dir / "lock", victim)
    box.files.request_file.write_text("1.1\n")
    box.guard("start")
    assert box.points_to().endswith("/1.1") and box.files.trial() is not None
    assert victim.read_text() == "root's file\n"
    st = victim.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    assert box.files.trial_file.stat().st_uid == AGENT_UID and not box.files.trial_file.is_symlink()


def test_a_request_naming_a_secret_file_leaks_nothing(agent_box: Box, tmp_path: Path) -> None:
    box = agent_box
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-line\n")
    plant(box.files.request_file, secret)
    box.guard("start")
    assert box.files.request_file.exists() is False and not box.files.request_file.is_symlink()
    assert "s3cr3t" not in box.files.outcome_file.read_text(errors="replace") if box.files.outcome_file.exists() \
        else True
    assert box.points_to() == str(box.factory)


def test_a_state_copy_the_agent_planted_is_not_restored(agent_box: Box, tmp_path: Path) -> None:
    box = agent_box
    secret = tmp_path / "secret"
    secret.write_text("not a database")
    fake_release(box.files, "1.1", "1.1")
    db(box.state / "state.db", "factory")
    box.files.request("1.1")
    box.guard("start", max_starts=1)
    saved = box.files.dir / "state-before-update"
    assert saved.stat().st_uid == 0 and saved.stat().st_mode & 0o777 == 0o700  # root's copy
    db(box.state / "state.db", "1.1")
    # The agent swaps root's copy for its own, pointing at a file it may not read.
    shutil.rmtree(saved)
    saved.mkdir()
    plant(saved / "state.db", secret)
    os.chown(saved, AGENT_UID, AGENT_UID)
    proc = box.guard("start", max_starts=1)  # the crash loop's roll-back
    assert box.points_to() == str(box.factory)
    assert "no usable copy" in proc.stderr
    assert written_by(box.state / "state.db") == "1.1"  # kept as it was, not the planted file
