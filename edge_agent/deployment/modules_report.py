"""The reported `modules` section (pure): what each module of the committed deployment is doing,
from the containers observed, the restart counters, the plan's waits and the last action errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from edge_agent.deployment.actions import Plan, Wait
from edge_agent.deployment.pinned import PinnedDeployment, PinnedModule
from edge_agent.deployment.restart_policy import RestartState
from edge_agent.runtime.api import ObservedContainer
from edge_agent.trust.origins import ImageOrigins


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class ArtifactReport(Protocol):
    def report(self, module: PinnedModule) -> dict[str, Any]: ...

    def module_uses(self, module: str) -> dict[str, Any] | None: ...


def container_for(
    observed: Sequence[ObservedContainer], pinned: PinnedDeployment | None, module: str, device_id: str
) -> ObservedContainer | None:
    """The module's container of this deployment (its spec hash), if one exists."""
    want = pinned.modules.get(module) if pinned else None
    for c in observed:
        if c.owned_by(device_id) and c.module == module and (want is None or c.spec_hash == want.spec_hash):
            return c
    return None


def modules_report(
    pinned: PinnedDeployment,
    observed: Sequence[ObservedContainer],
    restarts: Mapping[str, RestartState],
    current_plan: Plan,
    module_errors: Mapping[str, str],
    device_id: str,
    now: float,
    *,
    artifacts: ArtifactReport | None = None,
    origins: ImageOrigins | None = None,
) -> dict[str, Any]:
    waits = {w.module: w for w in current_plan.waits}
    modules: dict[str, Any] = {}
    for m in pinned.ordered():
        c = container_for(observed, pinned, m.name, device_id)
        restart = restarts.get(m.name, RestartState())
        origin = origins.lookup(m.image) if origins is not None else None
        entry: dict[str, Any] = {
            "image": m.spec.image,
            "digest": m.image.split("@", 1)[1],
            **({"indexDigest": origin.index_digest, "platform": origin.platform} if origin else {}),
            "desiredStatus": m.spec.status,
            "restartPolicy": m.spec.restart_policy,
            "restartCount": restart.total,
            "lastRestartTime": iso(restart.last_restart_at),
        }
        status, description = module_status(m.spec.status, c, waits.get(m.name), module_errors.get(m.name), now)
        entry.update(runtimeStatus=status, statusDescription=description)
        if c is not None:
            entry.update(
                containerId=c.id[:12],
                exitCode=c.exit_code,
                startTime=iso(c.started_at),
                lastExitTime=iso(c.finished_at),
                health=c.health,
            )
        if artifacts is not None and m.spec.artifacts:
            entry["artifacts"] = artifacts.report(m)
            uses = artifacts.module_uses(m.name)
            if uses is not None:
                entry["moduleReport"] = uses
        modules[m.name] = entry
    for name, reason in sorted(pinned.unloadable.items()):
        c = container_for(observed, None, name, device_id)
        entry = {"runtimeStatus": "unloadable", "statusDescription": reason, "error": reason}
        if c is not None:
            entry.update(containerId=c.id[:12], containerState=c.state, startTime=iso(c.started_at))
        modules[name] = entry
    return modules


def runtime_unknown(modules: Mapping[str, Any], error: str) -> dict[str, Any]:
    """Podman does not answer: what the modules do is unknown, and the report says so rather
    than repeat what was last seen."""
    out: dict[str, Any] = {}
    for name, last in modules.items():
        entry = dict(last)
        if entry.get("runtimeStatus") != "unknown":
            entry["statusDescription"] = f"podman does not answer ({error}); last seen {entry.get('runtimeStatus')}"
            entry["runtimeStatus"] = "unknown"
        out[name] = entry
    return out


def module_status(
    desired_status: str, c: ObservedContainer | None, wait: Wait | None, error: str | None, now: float
) -> tuple[str, str]:
    if c is None:
        return ("failed", error) if error else ("pending", "container not created yet")
    if c.state == "running":
        if c.health == "unhealthy":
            return "unhealthy", "healthcheck failing" + (f"; {wait.reason}" if wait else "")
        return "running", "running" + (f", health {c.health}" if c.health != "none" else "")
    if c.state == "exited":
        if wait is not None:
            due = max(0.0, wait.until - now)
            return "backoff", f"exited with code {c.exit_code}; restarting in {due:.1f} s"
        if desired_status == "stopped":
            return "stopped", "stopped as desired"
        return ("stopped" if c.exit_code == 0 else "failed"), f"exited with code {c.exit_code}"
    if c.state == "created":
        return "stopped", error or ("created, not started" if desired_status == "running" else "stopped as desired")
    return c.state, error or c.state
