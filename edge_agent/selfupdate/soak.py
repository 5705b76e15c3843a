"""How long a release on trial must run well before it confirms (the soak), from the update
settings the unit reads (/etc/edge-agent/update.env, as environment variables). Pure.

A release that passes its first seconds and then hangs, leaks or is killed (watchdog, OOM) must
not be kept: it confirms only after running `EDGE_AGENT_UPDATE_SOAK_S` seconds (default 120)
with its state loaded, connected, and its first pass clean. A kill during the soak ends the
process before it confirms; the guard counts the start, and rolls back after
EDGE_AGENT_UPDATE_MAX_STARTS of them or at the end of EDGE_AGENT_UPDATE_WINDOW_S. The soak must
end well inside the window: a soak of the window or longer would roll back every release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SETTINGS_FILE = "/etc/edge-agent/update.env"
SOAK_VAR = "EDGE_AGENT_UPDATE_SOAK_S"
WINDOW_VAR = "EDGE_AGENT_UPDATE_WINDOW_S"
DEFAULT_SOAK_S = 120
DEFAULT_WINDOW_S = 300  # the guard's default (systemd/edge-agent-update-guard)
MARGIN_S = 30  # time the soak leaves in the window for the start, the broker and the first pass


@dataclass(frozen=True)
class Soak:
    seconds: int
    problem: str | None = None  # a setting that was wrong, and what is used instead


def _seconds(env: Mapping[str, str], name: str, default: int) -> tuple[int, str | None]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default, None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        return default, f"{SETTINGS_FILE}: {name}={raw!r} is not a whole number of seconds; using {default}"
    return value, None


def soak_from_env(env: Mapping[str, str]) -> Soak:
    soak, problem = _seconds(env, SOAK_VAR, DEFAULT_SOAK_S)
    window, window_problem = _seconds(env, WINDOW_VAR, DEFAULT_WINDOW_S)
    problem = problem or window_problem
    if soak > window - MARGIN_S:
        shorter = max(0, window - MARGIN_S)
        problem = (f"{SETTINGS_FILE}: {SOAK_VAR}={soak} does not end {MARGIN_S} s before the end of "
                   f"{WINDOW_VAR}={window}: every release would be rolled back; using {shorter}")
        soak = shorter
    return Soak(soak, problem)
