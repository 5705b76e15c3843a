"""What the agent does about the agent version a deployment names: pure, from what it can see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Wait:
    """The release is installed but the switch waits (for the broker, or after the guard failed)."""

    version: str
    why: str


Action = Idle | Confirm | Refuse | Install | Restart | Wait

# After the guard could not start a trial (disk full, ...), the next switch waits this long: each
# switch restarts the agent, and a cause that lasts would otherwise restart it every few seconds.
SWITCH_RETRY_S = 600.0


def decide(
    wanted_version: str | None,
    wanted_image: str | None,
    running: str,
    trial: Trial | None,
    bad: dict[str, str],
    installed: bool,
    requested: str | None,
    *,
    connected: bool = True,
    last: dict[str, Any] | None = None,
    now: float = 0.0,
) -> Action:
    """`connected`: to the broker now; `last`: outcome.json (how the last update ended)."""
    if trial is not None and trial.version == running:
        return Confirm(running)  # whatever the document says now, the trial must end first
    if wanted_version is None or wanted_image is None:
        return Idle("no agent version in the deployment")
    if wanted_version == running:
        return Idle(f"running {running}, as wanted")
    if wanted_version in bad:
        return Refuse(wanted_version, f"rolled back before: {bad[wanted_version]}")
    if installed and not connected:
        # A trial confirms only connected: switching offline would roll back (and mark bad) a
        # release that may be healthy. Installing goes on offline; the switch waits.
        return Wait(wanted_version, f"agent {wanted_version} installed; switches once connected to the broker")
    if installed and last is not None and last.get("result") == "failed" and last.get("version") == wanted_version:
        at = last.get("at")
        retry_at = (at if isinstance(at, (int, float)) else 0) + SWITCH_RETRY_S
        if now < retry_at:
            return Wait(wanted_version, f"agent {wanted_version}: the update guard could not start its trial "
                        f"({last.get('reason', '')}); next try in {retry_at - now:.0f} s")
    if installed and requested == wanted_version:
        return Restart(wanted_version)
    return Install(wanted_version, wanted_image)
