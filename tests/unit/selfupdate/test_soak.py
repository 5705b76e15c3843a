"""The trial's soak: the settings (soak.py) and the confirmation in the running release, which comes
only after the soak and never when the process is ended during it (a watchdog or OOM kill)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent import __version__
from edge_agent.config import AgentConfig
from edge_agent.deployment.pass_causes import Cause
from edge_agent.reported import ReportedState
from edge_agent.selfupdate.component import SelfUpdateComponent
from edge_agent.selfupdate.files import UpdateFiles
from edge_agent.selfupdate.soak import DEFAULT_SOAK_S, Soak, soak_from_env


def test_default_and_set_soak() -> None:
    assert soak_from_env({}) == Soak(DEFAULT_SOAK_S)
    assert soak_from_env({"EDGE_AGENT_UPDATE_SOAK_S": "60"}) == Soak(60)
    assert soak_from_env({"EDGE_AGENT_UPDATE_SOAK_S": "0"}) == Soak(0)


@pytest.mark.parametrize("bad", ["ten", "-5", "1.5"])
def test_a_wrong_soak_is_named_and_the_default_used(bad: str) -> None:
    soak = soak_from_env({"EDGE_AGENT_UPDATE_SOAK_S": bad})
    assert soak.seconds == DEFAULT_SOAK_S
    assert soak.problem is not None and "/etc/edge-agent/update.env" in soak.problem
    assert f"EDGE_AGENT_UPDATE_SOAK_S={bad!r}" in soak.problem


def test_a_soak_that_does_not_end_inside_the_window_is_shortened() -> None:
    soak = soak_from_env({"EDGE_AGENT_UPDATE_SOAK_S": "300", "EDGE_AGENT_UPDATE_WINDOW_S": "120"})
    assert soak.seconds == 90
    assert soak.problem is not None and "every release would be rolled back" in soak.problem
    assert soak_from_env({"EDGE_AGENT_UPDATE_WINDOW_S": "100"}).seconds == 70  # the default soak too


class Clock:
    """The soak's sleep, held until the test lets it end."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.sleeping = asyncio.Event()
        self.wake = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.sleeping.set()
        await self.wake.wait()


def component(tmp_path: Path, clock: Clock, soak: int, first: dict[str, Cause] | None = None,
              ) -> tuple[SelfUpdateComponent, UpdateFiles, list[str]]:
    config = AgentConfig.model_validate({"device": {"id": "d"}, "mqtt": {"host": "h"}, "state": {"dir": str(tmp_path)}})
    files = UpdateFiles(tmp_path)
    files.dir.mkdir(parents=True)
    files.trial_file.write_text(f"version={__version__}\nprevious=/opt/edge-agent\nstarts=1\nstarted=1\n")
    connects: list[str] = []

    async def connected() -> None:
        connects.append("connected")

    async def first_pass() -> dict[str, Cause]:
        return first or {}

    update = SelfUpdateComponent(
        config, ReportedState(), None, lambda: None, connected, first_pass, lambda why: None,  # type: ignore[arg-type]
        is_insecure=lambda image: False, under_guard=True, soak=Soak(soak), sleep=clock.sleep,
    )
    return update, files, connects


async def test_the_release_confirms_only_after_its_soak(tmp_path: Path) -> None:
    clock = Clock()
    update, files, connects = component(tmp_path, clock, 120)
    confirming = asyncio.create_task(update._confirm())
    await clock.sleeping.wait()
    assert clock.asked == [120]
    assert files.trial() is not None and update.state == "trial" and "soak" in update.detail
    clock.wake.set()
    await confirming
    assert files.trial() is None
    outcome = files.outcome()
    assert outcome is not None and outcome["result"] == "succeeded"
    assert connects == ["connected", "connected"]  # connected before, and still after the soak


async def test_a_release_ended_during_its_soak_never_confirms(tmp_path: Path) -> None:
    """What a watchdog or OOM kill does to the process: it ends mid-soak. The trial stays for the
    guard, which counts the next start and rolls back after max starts or the window."""
    clock = Clock()
    update, files, _ = component(tmp_path, clock, 120)
    confirming = asyncio.create_task(update._confirm())
    await clock.sleeping.wait()
    confirming.cancel()
    with pytest.raises(asyncio.CancelledError):
        await confirming
    trial = files.trial()
    assert trial is not None and trial.version == __version__
    assert files.outcome() is None


async def test_no_soak_confirms_at_once(tmp_path: Path) -> None:
    clock = Clock()
    update, files, _ = component(tmp_path, clock, 0)
    await update._confirm()
    assert clock.asked == [] and files.trial() is None


async def test_first_pass_actions_a_deployment_or_restart_policy_asked_for_do_not_count(tmp_path: Path) -> None:
    """A module that crashed in the restart gap, a newer deployment's pull the update interrupted."""
    clock = Clock()
    first = {"camera": Cause("restart_policy", "exited with code 1; policy always"),
             "detector": Cause("deployment", "no container for deployment 7's spec yet")}
    update, files, _ = component(tmp_path, clock, 0, first)
    await update._confirm()
    outcome = files.outcome()
    assert files.trial() is None and outcome is not None and outcome["result"] == "succeeded"


async def test_a_first_pass_that_replaces_the_same_deployments_container_does_not_confirm(tmp_path: Path) -> None:
    clock = Clock()
    first = {"camera": Cause("restart_policy", "exited with code 1; policy always"),
             "detector": Cause("release", "deployment 7's container has another spec under this release")}
    update, files, _ = component(tmp_path, clock, 0, first)
    await update._confirm()
    trial = files.trial()
    assert trial is not None and trial.version == __version__ and files.outcome() is None
    assert "detector" in update.detail and "camera" not in update.detail
