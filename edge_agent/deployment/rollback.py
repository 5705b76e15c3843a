"""Is a new deployment good, still on probation, or failed? (pure)

A deployment that differs from the last-known-good one is on probation after it is activated.
It becomes good when every module that should run has been running (and healthy, when it has a
healthcheck) for the stabilisation window. It fails as soon as such a module exits (except a
clean exit under restartPolicy never/on-failure), turns unhealthy, or is restarted, or when the
whole deployment is not good within the apply timeout. Podman auto-update misses the "starts,
then crashes" case; the window is what catches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_agent.deployment.pinned import PinnedDeployment
from edge_agent.deployment.restart_policy import RestartState
from edge_agent.runtime.api import ObservedContainer


@dataclass(frozen=True)
class Settled:
    """The deployment is the last-known-good one: nothing to judge."""


@dataclass(frozen=True)
class Probation:
    until: float | None  # earliest time it can become good (None: waiting for a module)
    reason: str


@dataclass(frozen=True)
class Good:
    pass


@dataclass(frozen=True)
class Failed:
    module: str
    reason: str
    exit_code: int | None = None
    health: str | None = None
    code: str = "module_failed"  # the reported reason code (artifact_refused: the module refused its artifact)


Verdict = Settled | Probation | Good | Failed


@dataclass(frozen=True)
class ProbationSettings:
    window_s: float = 30.0
    apply_timeout_s: float = 600.0


def judge(
    candidate: PinnedDeployment,
    last_known_good_version: int | None,
    activated_at: float,
    observed: Sequence[ObservedContainer],
    restarts: Mapping[str, RestartState],
    now: float,
    device_id: str,
    settings: ProbationSettings,
) -> Verdict:
    if last_known_good_version == candidate.version:
        return Settled()
    by_hash: dict[tuple[str, str], ObservedContainer] = {}
    for seen in observed:
        if seen.owned_by(device_id) and seen.module and seen.spec_hash:
            key = (seen.module, seen.spec_hash)
            # Prefer a running container when duplicates exist.
            if key not in by_hash or seen.state == "running":
                by_hash[key] = seen
    earliest_good = activated_at + settings.window_s
    waiting: str | None = None
    for module in candidate.ordered():
        if module.spec.status != "running":
            continue
        restart = restarts.get(module.name)
        if restart is not None and restart.last_restart_at is not None and restart.last_restart_at >= activated_at:
            return Failed(module.name, "was restarted during the stabilisation window")
        c = by_hash.get((module.name, module.spec_hash))
        if c is None or c.state == "created":
            waiting = waiting or f"{module.name}: not started yet"
            continue
        if c.state == "exited":
            if c.exit_code == 0 and module.spec.restart_policy in ("never", "on-failure"):
                continue  # a one-shot module that finished cleanly
            detail = " (out of memory)" if c.oom_killed else ""
            return Failed(module.name, f"exited with code {c.exit_code}{detail}", exit_code=c.exit_code)
        if c.state != "running":
            waiting = waiting or f"{module.name}: {c.state}"
            continue
        if c.health == "unhealthy":
            return Failed(module.name, "healthcheck failed", health="unhealthy")
        if module.spec.healthcheck is not None and c.health != "healthy":
            waiting = waiting or f"{module.name}: health {c.health}"
            continue
        earliest_good = max(earliest_good, (c.started_at or now) + settings.window_s)
    if waiting is None and now >= earliest_good:
        return Good()
    if now >= activated_at + settings.apply_timeout_s:
        return Failed(
            (waiting or "deployment").split(":")[0],
            f"not running and healthy within {settings.apply_timeout_s:g} s ({waiting or 'not stable'})",
        )
    return Probation(None if waiting else earliest_good, waiting or "stabilisation window")
