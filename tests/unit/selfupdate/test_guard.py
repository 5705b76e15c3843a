"""The update guard (systemd/edge-agent-update-guard), the real script, against a state folder in
tmp: the same files UpdateFiles reads and writes. The systemd end of it (ExecStartPre=+, the
timer) is in tests/system/test_self_update.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edge_agent.selfupdate.files import UpdateFiles
from tests.unit.selfupdate.test_files import fake_release

GUARD = Path(__file__).resolve().parents[3] / "systemd" / "edge-agent-update-guard"


class Box:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.state.mkdir()
        self.factory = tmp / "factory"
        (self.factory / "bin").mkdir(parents=True)
        (self.factory / "bin" / "edge-agent").write_text("#!/bin/sh\n")
        (self.factory / "bin" / "edge-agent").chmod(0o755)
        self.restarts = tmp / "restarts"
        recorder = tmp / "systemctl"
        recorder.write_text(f'#!/bin/sh\necho "$@" >> {self.restarts}\n')
        recorder.chmod(0o755)
        self.systemctl = recorder
        self.files = UpdateFiles(self.state)
        self.env: dict[str, str] = {}  # more environment for the guard (tests' replacements)

    def guard(self, mode: str, window: int = 300, max_starts: int = 3) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "EDGE_AGENT_STATE_DIR": str(self.state), "EDGE_AGENT_FACTORY_DIR": str(self.factory),
               "EDGE_AGENT_SYSTEMCTL": str(self.systemctl), "EDGE_AGENT_UPDATE_WINDOW_S": str(window),
               "EDGE_AGENT_UPDATE_MAX_STARTS": str(max_starts), **self.env}
        proc = subprocess.run(["sh", str(GUARD), mode], env=env, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc

    def points_to(self) -> str:
        return os.readlink(self.files.pointer)

    def systemctl_calls(self) -> list[str]:
        return self.restarts.read_text().splitlines() if self.restarts.exists() else []

    def restarted(self) -> list[str]:
        return [c for c in self.systemctl_calls() if c.endswith(" edge-agent.service")]


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def test_first_start_points_at_the_factory_install(box: Box) -> None:
    box.guard("start")
    assert box.points_to() == str(box.factory)
    box.guard("start")  # idempotent
    assert box.points_to() == str(box.factory)


def test_a_request_starts_a_trial_and_switches(box: Box) -> None:
    box.guard("start")
    release = fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start")
    assert box.points_to() == str(release)
    trial = box.files.trial()
    assert trial is not None and (trial.version, trial.previous, trial.starts) == ("1.1", str(box.factory), 1)
    assert box.files.pending_request() is None
    assert box.systemctl_calls() == ["--no-block start edge-agent-update-check.timer"]  # the deadline watch


def test_a_request_for_a_release_that_is_not_installed_is_refused(box: Box) -> None:
    box.guard("start")
    fake_release(box.files, "1.1")  # no marker: the install never finished
    box.files.dir.mkdir(parents=True, exist_ok=True)
    box.files.request_file.write_text("1.1\n")
    box.guard("start")
    assert box.points_to() == str(box.factory)
    assert box.files.trial() is None and box.files.pending_request() is None
    outcome = box.files.outcome()
    assert outcome is not None and outcome["result"] == "refused" and outcome["version"] == "1.1"


@pytest.mark.parametrize("hostile", ["../../etc", "1.1/../..", "-rf", ".x", "a b"])
def test_a_hostile_request_moves_nothing(box: Box, hostile: str) -> None:
    box.guard("start")
    box.files.request_file.write_text(hostile + "\n")
    box.guard("start")
    assert box.points_to() == str(box.factory)
    assert box.files.trial() is None


def test_a_crash_loop_switches_back_after_max_starts(box: Box) -> None:
    box.guard("start")
    previous = fake_release(box.files, "1.0", "1.0")
    box.guard("start")  # (the factory already runs; make 1.0 current the way an update would)
    box.files.request("1.0")
    box.guard("start")
    assert box.files.confirm("1.0", "factory")
    fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start", max_starts=3)  # start 1
    box.guard("start", max_starts=3)  # 2
    box.guard("start", max_starts=3)  # 3
    assert box.files.trial() is not None and box.points_to().endswith("/1.1")
    box.guard("start", max_starts=3)  # a 4th start without confirmation: back to 1.0
    assert box.points_to() == str(previous)
    assert box.files.trial() is None
    outcome = box.files.outcome()
    assert outcome is not None
    assert (outcome["result"], outcome["version"], outcome["previous"]) == ("rolled_back", "1.1", "1.0")
    assert "without confirming" in outcome["reason"]
    assert "1.1" in box.files.bad_versions()
    assert box.restarted() == []  # at start, systemd is starting the unit anyway


def test_no_confirmation_in_the_window_switches_back_and_restarts(box: Box) -> None:
    box.guard("start")
    fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start")
    box.guard("check", window=300)  # inside the window: nothing
    assert box.points_to().endswith("/1.1") and box.restarted() == []
    box.files.note("cannot reach the broker: connection refused")
    box.guard("check", window=0)
    assert box.points_to() == str(box.factory)
    # Stopped before its files are touched, started again on the previous version.
    assert box.restarted() == ["stop edge-agent.service", "--no-block start edge-agent.service"]
    outcome = box.files.outcome()
    assert outcome is not None and outcome["result"] == "rolled_back" and outcome["previous"] == "factory"
    assert "not confirmed within 0s" in outcome["reason"] and "cannot reach the broker" in outcome["reason"]
    assert json.loads(box.files.outcome_file.read_text())["version"] == "1.1"


def test_a_confirmed_trial_is_left_alone(box: Box) -> None:
    box.guard("start")
    release = fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start")
    assert box.files.confirm("1.1", "factory")
    box.guard("check", window=0)
    assert box.systemctl_calls()[-1] == "--no-block stop edge-agent-update-check.timer"  # nothing left to watch
    box.guard("start", max_starts=1)
    box.guard("start", max_starts=1)
    assert box.points_to() == str(release) and box.restarted() == []
    outcome = box.files.outcome()
    assert outcome is not None and outcome["result"] == "succeeded"


def test_power_cut_between_trial_and_switch_completes_the_switch(box: Box) -> None:
    box.guard("start")
    release = fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    # What the guard had written when the power went: the trial, not yet the switch.
    box.files.trial_file.write_text(f"version=1.1\nprevious={box.factory}\nstarts=1\nstarted=1\n")
    box.guard("start")
    assert box.points_to() == str(release)
    trial = box.files.trial()
    assert trial is not None and trial.starts == 1 and trial.previous == str(box.factory)
    assert box.files.pending_request() is None  # a request never outlives its switch


def test_a_vanished_release_falls_back_to_the_factory_install(box: Box) -> None:
    box.guard("start")
    release = fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start")
    assert box.files.confirm("1.1", "factory")
    (release / "bin" / "edge-agent").unlink()
    box.guard("start")
    assert box.points_to() == str(box.factory)


def test_a_roll_back_brings_back_the_state_database_of_before_the_trial(box: Box) -> None:
    """A newer release may migrate state.db to a schema the previous one refuses."""
    box.guard("start")
    (box.state / "state.db").write_text("schema 1")
    (box.state / "state.db-wal").write_text("wal 1")
    fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start", max_starts=1)
    (box.state / "state.db").write_text("schema 2, migrated by 1.1")
    (box.state / "state.db-wal").unlink()
    (box.state / "state.db-shm").write_text("shm 2")
    box.guard("start", max_starts=1)  # crash loop: back
    assert (box.state / "state.db").read_text() == "schema 1"
    assert (box.state / "state.db-wal").read_text() == "wal 1"
    assert not (box.state / "state.db-shm").exists()


def test_a_roll_back_keeps_the_replay_floor_kept_outside_state_db(box: Box) -> None:
    """document-trust.json (edge_agent/desired/trust_floor.py) moved forward during the trial and
    is not part of the copy the guard restores: the roll-back leaves it as the trial wrote it."""
    box.guard("start")
    (box.state / "state.db").write_text("schema 1")
    (box.state / "document-trust.json").write_text('{"version": 1}')
    fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start", max_starts=1)
    (box.state / "state.db").write_text("schema 2, rotated by version 2")
    (box.state / "document-trust.json").write_text('{"version": 2}')
    box.guard("start", max_starts=1)  # crash loop: back
    assert (box.state / "state.db").read_text() == "schema 1"
    assert (box.state / "document-trust.json").read_text() == '{"version": 2}'


def test_a_confirmed_trial_keeps_its_state(box: Box) -> None:
    box.guard("start")
    (box.state / "state.db").write_text("schema 1")
    fake_release(box.files, "1.1", "1.1")
    box.files.request("1.1")
    box.guard("start")
    (box.state / "state.db").write_text("schema 2")
    assert box.files.confirm("1.1", "factory")
    box.guard("check", window=0)
    box.guard("start")
    assert (box.state / "state.db").read_text() == "schema 2"
