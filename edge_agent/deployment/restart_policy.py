"""Restart policy and backoff (pure). Backoff doubles from `initial_s` to a cap and never gives up
(Azure IoT Edge stops after 20 restarts; we do not). A module that stayed up for `reset_after_s`
starts again from the initial delay."""

from __future__ import annotations

from dataclasses import dataclass, replace

from edge_agent.runtime.api import ObservedContainer
from edge_shared.retry import delay_after


@dataclass(frozen=True)
class BackoffSettings:
    initial_s: float = 1.0
    max_s: float = 300.0
    reset_after_s: float = 600.0


@dataclass(frozen=True)
class RestartState:
    count: int = 0  # restarts since the module was last stable
    last_restart_at: float | None = None
    total: int = 0  # restarts ever (reported as restartCount)


def backoff_delay(count: int, settings: BackoffSettings) -> float:
    """Delay before restart number count+1."""
    return delay_after(count + 1, settings.initial_s, settings.max_s)


def restart_reason(policy: str, container: ObservedContainer) -> str | None:
    """Why this container should be restarted under the policy, or None."""
    if container.state == "exited":
        code = container.exit_code
        if policy == "always":
            return f"exited with code {code}; restartPolicy always"
        if policy in ("on-failure", "on-unhealthy") and code != 0:
            return f"exited with code {code}; restartPolicy {policy}"
        return None
    if container.state == "running" and container.health == "unhealthy" and policy in ("on-unhealthy", "always"):
        return f"unhealthy; restartPolicy {policy}"
    return None


def restart_due_at(state: RestartState, container: ObservedContainer, settings: BackoffSettings) -> float:
    delay = backoff_delay(state.count, settings)
    if container.state == "exited":
        base = container.finished_at or state.last_restart_at or 0.0
    else:
        base = max(state.last_restart_at or 0.0, container.started_at or 0.0)
    return base + delay


def record_restart(state: RestartState, now: float) -> RestartState:
    return RestartState(count=state.count + 1, last_restart_at=now, total=state.total + 1)


def settle(
    state: RestartState, container: ObservedContainer | None, now: float, settings: BackoffSettings
) -> RestartState:
    """Reset the backoff once the container has been up and not unhealthy for reset_after_s."""
    if state.count == 0 or container is None or container.state != "running" or container.health == "unhealthy":
        return state
    up_since = max(container.started_at or now, state.last_restart_at or 0.0)
    if now - up_since >= settings.reset_after_s:
        return replace(state, count=0)
    return state
