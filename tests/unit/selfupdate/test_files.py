"""UpdateFiles: the agent's side of the files it shares with the update guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.selfupdate.files import RELEASE_MARKER, UpdateFiles


def fake_release(files: UpdateFiles, version: str, marker: str | None = None) -> Path:
    release = files.release_dir(version)
    (release / "bin").mkdir(parents=True)
    script = release / "bin" / "edge-agent"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    if marker is not None:
        (release / RELEASE_MARKER).write_text(marker + "\n")
    return release


def test_installed_needs_the_marker_naming_the_version(tmp_path: Path) -> None:
    files = UpdateFiles(tmp_path)
    fake_release(files, "1.1")
    assert not files.installed("1.1")  # interrupted install: no marker
    (files.release_dir("1.1") / RELEASE_MARKER).write_text("1.2\n")
    assert not files.installed("1.1")
    (files.release_dir("1.1") / RELEASE_MARKER).write_text("1.1\n")
    assert files.installed("1.1")


@pytest.mark.parametrize("bad", ["../x", ".hidden", "", "a/b", "x" * 65])
def test_release_dir_refuses_odd_versions(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="agent version"):
        UpdateFiles(tmp_path).release_dir(bad)


def test_request_only_an_installed_release(tmp_path: Path) -> None:
    files = UpdateFiles(tmp_path)
    with pytest.raises(FileNotFoundError):
        files.request("1.1")
    assert files.pending_request() is None
    fake_release(files, "1.1", "1.1")
    files.request("1.1")
    assert files.pending_request() == "1.1"


def test_confirm_ends_only_the_trial_of_that_version(tmp_path: Path) -> None:
    files = UpdateFiles(tmp_path)
    files.dir.mkdir(parents=True)
    assert not files.confirm("1.1", "1.0")  # no trial: the guard rolled it back meanwhile
    files.trial_file.write_text("version=1.1\nprevious=/opt/edge-agent\nstarts=2\nstarted=100\n")
    files.note("waiting for the broker")
    trial = files.trial()
    assert trial is not None and (trial.version, trial.starts, trial.started) == ("1.1", 2, 100.0)
    assert not files.confirm("1.2", "1.0")
    assert files.trial() is not None
    assert files.confirm("1.1", "1.0")
    assert files.trial() is None and not files.note_file.exists()
    outcome = files.outcome()
    assert outcome is not None
    assert (outcome["result"], outcome["version"], outcome["previous"]) == ("succeeded", "1.1", "1.0")
    assert json.loads(files.outcome_file.read_text()) == outcome


def test_a_broken_trial_file_reads_as_none(tmp_path: Path) -> None:
    files = UpdateFiles(tmp_path)
    files.dir.mkdir(parents=True)
    files.trial_file.write_text("starts=x\n")
    assert files.trial() is None


def test_bad_versions_and_their_reasons(tmp_path: Path) -> None:
    files = UpdateFiles(tmp_path)
    assert files.bad_versions() == {}
    files.bad_dir.mkdir(parents=True)
    (files.bad_dir / "1.1").write_text("crash loop\n")
    (files.bad_dir / "1.2.tmp").write_text("half written\n")
    assert files.bad_versions() == {"1.1": "crash loop"}


def test_previous_version_from_the_marker(tmp_path: Path) -> None:
    files = UpdateFiles(tmp_path)
    release = fake_release(files, "1.0", "1.0")
    files.dir.mkdir(parents=True, exist_ok=True)
    files.trial_file.write_text(f"version=1.1\nprevious={release}\nstarts=1\nstarted=1\n")
    trial = files.trial()
    assert trial is not None and files.previous_version(trial) == "1.0"
    files.trial_file.write_text("version=1.1\nprevious=/opt/edge-agent\nstarts=1\nstarted=1\n")
    trial = files.trial()
    assert trial is not None and files.previous_version(trial) == "factory"


def test_check_says_whether_updates_can_happen_and_how_the_last_ended(tmp_path: Path) -> None:
    from edge_agent.checks import check_agent_updates
    from edge_agent.config import AgentConfig

    config = AgentConfig.model_validate({"device": {"id": "d"}, "mqtt": {"host": "h"}, "state": {"dir": str(tmp_path)}})
    result = check_agent_updates(config)
    assert result.outcome == "pass" and "not installed with the update guard" in result.detail
    files = UpdateFiles(tmp_path)
    release = fake_release(files, "1.1", "1.1")
    files.pointer.symlink_to(release)
    assert check_agent_updates(config).detail == f"A/B guard installed; runs {release}"
    files.outcome_file.write_text(json.dumps({"result": "rolled_back", "version": "1.2", "reason": "crash loop"}))
    (files.bad_dir).mkdir()
    (files.bad_dir / "1.2").write_text("crash loop")
    result = check_agent_updates(config)
    assert result.outcome == "warn"
    assert "last update: rolled_back 1.2 (crash loop); not retried: 1.2" in result.detail


class CollectingRuntime:
    """The podman adapter's release-leftover collection, recorded."""

    def __init__(self) -> None:
        self.collections: list[str | None] = []

    async def collect_release_leftovers(self, keep_image: str | None = None) -> tuple[list[str], list[str]]:
        self.collections.append(keep_image)
        return [], []


async def test_only_an_interrupted_install_is_collected_at_start(tmp_path: Path) -> None:
    from typing import cast

    from edge_agent.config import AgentConfig
    from edge_agent.reported import ReportedState
    from edge_agent.runtime.podman import PodmanRuntime
    from edge_agent.selfupdate.component import SelfUpdateComponent

    async def nothing() -> None:
        return None

    async def no_causes() -> dict[str, object]:
        return {}

    config = AgentConfig.model_validate({"device": {"id": "d"}, "mqtt": {"host": "h"}, "state": {"dir": str(tmp_path)}})
    runtime = CollectingRuntime()
    component = SelfUpdateComponent(
        config, ReportedState(), cast(PodmanRuntime, runtime), lambda: None, nothing, no_causes,
        lambda _: None, is_insecure=lambda _: False, under_guard=True,
    )
    # No install was under way: the store may hold another agent's install, which is left alone.
    await component.collect_interrupted_install()
    assert runtime.collections == []
    # An install was cut short after its mark: collected, and the mark goes.
    component.files.start_fetching("registry.example/edge-agent-release@sha256:" + "a" * 64)
    assert component.files.fetching() == "registry.example/edge-agent-release@sha256:" + "a" * 64
    await component.collect_interrupted_install()
    assert runtime.collections == [None] and component.files.fetching() is None
    await component.collect_interrupted_install()
    assert runtime.collections == [None]
