"""What the agent does about the agent version a deployment names: pure, from what it can see."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.selfupdate.files import Trial


@dataclass(frozen=True)
class Idle:
    why: str


@dataclass(frozen=True)
class Confirm:
    """This process is the release on trial: confirm once it proved healthy."""

    version: str


@dataclass(frozen=True)
class Refuse:
    version: str
    reason: str


@dataclass(frozen=True)
class Install:
    """Download, verify and install the release, then ask the guard to switch to it."""

    version: str
    image: str


@dataclass(frozen=True)
class Restart:
    """The release is installed and requested: stop so that systemd starts it."""

    version: str


Action = Idle | Confirm | Refuse | Install | Restart


def decide(
    wanted_version: str | None,
    wanted_image: str | None,
    running: str,
    trial: Trial | None,
    bad: dict[str, str],
    installed: bool,
    requested: str | None,
) -> Action:
    if trial is not None and trial.version == running:
        return Confirm(running)  # whatever the document says now, the trial must end first
    if wanted_version is None or wanted_image is None:
        return Idle("no agent version in the deployment")
    if wanted_version == running:
        return Idle(f"running {running}, as wanted")
    if wanted_version in bad:
        return Refuse(wanted_version, f"rolled back before: {bad[wanted_version]}")
    if installed and requested == wanted_version:
        return Restart(wanted_version)
    return Install(wanted_version, wanted_image)
