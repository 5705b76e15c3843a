"""The update guard (systemd/edge-agent-update-guard, the real script) through whole updates on the
power-cut filesystem, with the power cut after every change it or the agent makes (each write,
rename, fsync, directory fsync; so also between any two guard commands), then a reboot (the guard's
`start`, as ExecStartPre= runs it) and the rest of the device's life.

After every cut:
- the reboot's `start` succeeds (a failing ExecStartPre= keeps the agent down for good);
- `current` names a release that works (the factory install, or an installed release whose marker
  names it);
- state.db opens, passes PRAGMA integrity_check and holds the state of before the update or of the
  release on trial; on the factory install, always the state of before (a roll-back restored it);
- no request is left, and a trial names the release `current` points at and never itself as previous;
- a release `current` points at is on trial or confirmed: never unwatched;
- the device then ends where it should: a healthy release confirmed (or the update not begun), a
  broken one rolled back with the state of before.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devinfra.powercut_fs import PowerCutFS
from edge_agent.selfupdate.files import RELEASE_MARKER, UpdateFiles
from tests.integration.powercut.explore import Exploration, Step, explore, reset

# EDGE_AGENT_GUARD_UNDER_TEST: run these scenarios against another guard script (e.g. an older one).
GUARD = Path(os.environ.get("EDGE_AGENT_GUARD_UNDER_TEST")
             or Path(__file__).resolve().parents[3] / "systemd" / "edge-agent-update-guard")
MAX_STARTS = 2
WATCH_RESTARTS = 3  # the guard's default

# The agent killed right after a commit (no checkpoint on close): its WAL stays beside state.db.
AGENT_WRITES_STATE = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
conn.execute("INSERT OR REPLACE INTO meta VALUES ('written_by', ?)", (sys.argv[2],))
os._exit(0)
"""


class Device:
    def __init__(self, tmp: Path, fs: PowerCutFS) -> None:
        self.fs = fs
        self.state = fs.mountpoint / "state"
        self.files = UpdateFiles(self.state)
        self.factory = tmp / "factory"
        (self.factory / "bin").mkdir(parents=True)
        (self.factory / "bin" / "edge-agent").write_text("#!/bin/sh\n")
        (self.factory / "bin" / "edge-agent").chmod(0o755)
        self.systemctl = tmp / "systemctl"
        self.systemctl.write_text("#!/bin/sh\nexit 0\n")
        self.systemctl.chmod(0o755)

    def template(self, at: Path) -> Path:
        """The device before the update: the factory install runs and wrote state.db, release 1.1
        is installed (all durable)."""
        state = at / "state"
        release = state / "agent" / "releases" / "1.1"
        (release / "bin").mkdir(parents=True)
        (release / "bin" / "edge-agent").write_text("#!/bin/sh\n")
        (release / "bin" / "edge-agent").chmod(0o755)
        (release / RELEASE_MARKER).write_text("1.1\n")
        os.symlink(self.factory, state / "agent" / "current")
        conn = sqlite3.connect(state / "state.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('written_by', 'factory')")
        conn.close()
        return at

    def guard(self, mode: str, window: int = 300) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(self.state), "EDGE_AGENT_FACTORY_DIR": str(self.factory),
               "EDGE_AGENT_SYSTEMCTL": str(self.systemctl), "EDGE_AGENT_UPDATE_WINDOW_S": str(window),
               "EDGE_AGENT_UPDATE_MAX_STARTS": str(MAX_STARTS)}
        return subprocess.run(["sh", str(GUARD), mode], env=env, capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        proc = self.guard("start")
        if proc.returncode != 0:
            raise RuntimeError(f"guard start exited {proc.returncode}: {proc.stderr.strip()}")

    def check(self, window: int = 300) -> None:
        proc = self.guard("check", window)
        if proc.returncode != 0:
            raise RuntimeError(f"guard check exited {proc.returncode}: {proc.stderr.strip()}")

    def agent_runs(self) -> None:
        """The release `current` names runs and writes its state (then is killed)."""
        subprocess.run([sys.executable, "-c", AGENT_WRITES_STATE, str(self.state / "state.db"), self.running()],
                       check=True, capture_output=True, timeout=60)

    def running(self) -> str:
        target = Path(os.readlink(self.files.pointer))
        return "factory" if target == self.factory else target.name

    # -- invariants -----------------------------------------------------------------------------

    def violations(self) -> list[str]:
        found: list[str] = []
        try:
            target = os.readlink(self.files.pointer)
        except OSError as e:
            return [f"no pointer: {e}"]
        if target == str(self.factory):
            version = "factory"
        else:
            release = Path(target)
            version = release.name
            if release.parent != self.files.releases or not self.files.installed(version):
                found.append(f"current -> {target}: not a working release")
        written_by = self.state_written_by(found)
        if written_by is not None:
            allowed = {"factory"} if version == "factory" else {"factory", version}
            if written_by not in allowed:
                found.append(f"state.db holds the state of {written_by} while {version} runs")
        if self.files.request_file.exists():
            found.append(f"a request is left after the start: {self.files.request_file.read_text()!r}")
        trial = self.files.trial()
        if self.files.trial_file.exists() and trial is None:
            found.append(f"an unreadable trial is left: {self.files.trial_file.read_text()!r}")
        if trial is not None:
            if trial.version != version:
                found.append(f"the trial names {trial.version} while current -> {target}")
            if trial.previous == target:
                found.append(f"the trial of {trial.version} names itself as previous")
        outcome = self.files.outcome() or {}
        confirmed = outcome.get("result") == "succeeded" and outcome.get("version") == version
        if version != "factory" and trial is None and not confirmed:
            found.append(f"current -> {version}, which is neither on trial nor confirmed: nothing will ever "
                         "confirm or roll it back")
        return found

    def state_written_by(self, found: list[str]) -> str | None:
        db = self.state / "state.db"
        if not db.exists():
            found.append("state.db is gone")
            return None
        conn = sqlite3.connect(db)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()
            if check != ("ok",):
                found.append(f"state.db integrity_check: {check}")
                return None
            row = conn.execute("SELECT value FROM meta WHERE key = 'written_by'").fetchone()
        except sqlite3.Error as e:
            found.append(f"state.db: {e}")
            return None
        finally:
            conn.close()
        if row is None:
            found.append("state.db holds no state at all")
            return None
        return str(row[0])


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    with PowerCutFS(tmp_path / "backing", tmp_path / "mnt") as fs:
        yield Device(tmp_path, fs)


def run(device: Device, tmp_path: Path, steps: list[Step], finish: Callable[[], list[str]]) -> Exploration:
    template = device.template(tmp_path / "template")

    def after_cut(k: int, keep_names: bool) -> list[str]:
        proc = device.guard("start")  # the reboot
        found = [] if proc.returncode == 0 else [f"the reboot's guard start failed: {proc.stderr.strip()}"]
        found += device.violations()
        if not found:
            found += [f"later: {v}" for v in finish()]
        return found

    found = explore(device.fs, template, steps, after_cut, lambda: device.violations() + finish())
    print(f"guard: {found.changes} cut points, {found.cuts} cuts checked, {len(found.violations)} violations")
    return found


def healthy_finish(device: Device) -> Callable[[], list[str]]:
    """A healthy release confirms what is on trial; the device stays on what it confirmed."""

    def finish() -> list[str]:
        trial = device.files.trial()
        if trial is not None and not device.files.confirm(trial.version, "factory"):
            return [f"the trial of {trial.version} could not be confirmed"]
        device.check()
        device.start()
        return device.violations()

    return finish


def broken_finish(device: Device) -> Callable[[], list[str]]:
    """A release that never confirms: starts until the guard gives up; then the factory install
    runs on the state of before, and 1.1 is marked bad."""

    def finish() -> list[str]:
        for _ in range(MAX_STARTS + 1):
            device.start()
        found = device.violations()
        if device.running() != "factory":
            found.append(f"{device.running()} still runs after {MAX_STARTS + 1} starts without confirming")
        elif device.files.trial_file.exists():
            found.append("a trial is left after the roll-back")
        return found

    return finish


def crashing_finish(device: Device) -> Callable[[], list[str]]:
    """A release that confirms, then crashes again and again: back to the factory install, with the
    state of before, whether the guard catches it on trial or in its watch after the confirmation."""

    def finish() -> list[str]:
        trial = device.files.trial()
        if trial is not None:
            device.files.confirm(trial.version, "factory")
        for _ in range(WATCH_RESTARTS + 1):
            device.start()
        found = device.violations()
        if device.running() != "factory":
            found.append(f"{device.running()} still runs after {WATCH_RESTARTS + 1} restarts after its confirmation")
        elif device.files.trial_file.exists() or device.files.watch_file.exists():
            found.append("a trial or a watch is left after the roll-back")
        return found

    return finish


def assert_clean(found: Exploration) -> None:
    assert found.changes > 0
    kinds = Counter(v.split(": ", 1)[1] for v in found.violations)
    summary = "\n".join(f"{n:4d} x {kind}" for kind, n in kinds.most_common())
    assert not found.violations, (f"{len(found.violations)} violations of {found.cuts} cuts, by kind:\n{summary}\n"
                                  "first ones:\n" + "\n".join(found.violations[:10]))


def test_update_trial_and_confirmation(device: Device, tmp_path: Path) -> None:
    steps: list[Step] = [
        lambda: device.files.request("1.1"),
        device.start,
        device.agent_runs,
        device.check,  # inside the window: records the trial's device time so far
        lambda: device.files.confirm("1.1", "factory"),
        device.check,  # the trial is over: stops its timer
        device.start,
    ]
    assert_clean(run(device, tmp_path, steps, healthy_finish(device)))


def test_crash_loop_roll_back(device: Device, tmp_path: Path) -> None:
    steps: list[Step] = [lambda: device.files.request("1.1"), device.start, device.agent_runs]
    steps += [device.start] * MAX_STARTS  # the last one switches back
    assert_clean(run(device, tmp_path, steps, broken_finish(device)))


def test_window_roll_back(device: Device, tmp_path: Path) -> None:
    steps: list[Step] = [
        lambda: device.files.request("1.1"),
        device.start,
        device.agent_runs,
        lambda: device.files.note("cannot reach the broker"),
        lambda: device.check(window=0),
    ]
    assert_clean(run(device, tmp_path, steps, broken_finish(device)))


def test_restarts_after_the_confirmation_roll_back(device: Device, tmp_path: Path) -> None:
    steps: list[Step] = [
        lambda: device.files.request("1.1"),
        device.start,
        device.agent_runs,
        lambda: device.files.confirm("1.1", "factory"),
        device.check,  # the timer's next check starts the watch's time
    ]
    steps += [device.start] * WATCH_RESTARTS  # crash, crash, crash: the last one switches back
    assert_clean(run(device, tmp_path, steps, crashing_finish(device)))


def test_the_reviews_empty_trial(device: Device, tmp_path: Path) -> None:
    """The review's case, on its own: the power goes right after the switch and the request's
    removal; the names made it to disk, the trial's data did not. The release must still be on
    trial after the reboot."""
    template = device.template(tmp_path / "template")
    reset(device.fs, template)
    device.files.request("1.1")
    device.start()
    switched = next(i for i, line in enumerate(device.fs.log(), 1) if line == "unlink /state/agent/request")
    reset(device.fs, template)
    device.fs.power_off_at(switched)
    device.files.request("1.1")
    with contextlib.suppress(RuntimeError):  # the power went during it
        device.start()
    device.fs.cut(keep_names=True)
    reboot = device.guard("start")
    assert reboot.returncode == 0, reboot.stderr
    assert device.violations() == []
