"""The planner (pure: no asyncio, no I/O): pinned deployment + observed containers + restart
state + now -> Plan.

Rules:
- A container belongs to us only with our labels AND our device id; others are never touched.
- A container's identity is its spec hash: a changed spec means stop+remove the old container,
  then create a new one. Duplicates (e.g. after a crash mid-apply) are removed, keeping one.
- Modules are created/started in (startupOrder, name) order; modules that left the deployment
  are stopped and removed first, in reverse order.
- Restarts follow the module's restartPolicy, gated by the backoff in restart_policy.py.
- A module of the stored document this release cannot load (PinnedDeployment.unloadable) is
  never touched: its container, if any, stays as it is.
- Planning again after a plan was applied yields an empty plan (tested with hypothesis).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from edge_agent.deployment.actions import Action, Create, Plan, Pull, Remove, Start, Stop, Wait
from edge_agent.deployment.pinned import NamingSettings, PinnedDeployment, PinnedModule, container_request
from edge_agent.deployment.restart_policy import BackoffSettings, RestartState, restart_due_at, restart_reason
from edge_agent.runtime.api import ObservedContainer


@dataclass(frozen=True)
class PlannerSettings:
    naming: NamingSettings
    backoff: BackoffSettings = field(default_factory=BackoffSettings)


_STATE_RANK = {"running": 0, "paused": 1, "created": 2, "exited": 3, "unknown": 4}


def _keep_first(containers: Sequence[ObservedContainer]) -> list[ObservedContainer]:
    """Best container first: running before created before exited; newest start first."""
    return sorted(containers, key=lambda c: (_STATE_RANK[c.state], -(c.started_at or 0.0), c.id))


def _retire(container: ObservedContainer, module: str, reason: str, grace_s: float) -> list[Action]:
    actions: list[Action] = []
    if container.state in ("running", "paused"):
        actions.append(Stop(module, container.id, grace_s, reason))
    actions.append(Remove(module, container.id, reason))
    return actions


def plan(
    pinned: PinnedDeployment | None,
    observed: Sequence[ObservedContainer],
    local_images: Collection[str],
    restarts: Mapping[str, RestartState],
    now: float,
    settings: PlannerSettings,
) -> Plan:
    naming = settings.naming
    grace = naming.default_stop_grace_s
    owned: dict[str, list[ObservedContainer]] = defaultdict(list)
    for c in observed:
        if c.owned_by(naming.device_id) and c.module:
            owned[c.module].append(c)
    modules = pinned.modules if pinned is not None else {}
    # a module this release cannot load from the stored document is left exactly as it is
    untouchable = set(pinned.unloadable) if pinned is not None else set()

    actions: list[Action] = []
    waits: list[Wait] = []

    # 1. Modules that left the deployment: stop and remove, reverse name order.
    for name in sorted((m for m in owned if m not in modules and m not in untouchable), reverse=True):
        for c in _keep_first(owned[name]):
            actions += _retire(c, name, "module is no longer in the deployment", grace)

    # 2. Modules in the deployment, in startup order.
    pulled: set[str] = set()
    assert pinned is not None or not modules
    for module in pinned.ordered() if pinned is not None else []:
        current = [c for c in owned.get(module.name, []) if c.spec_hash == module.spec_hash]
        stale = [c for c in owned.get(module.name, []) if c.spec_hash != module.spec_hash]
        module_grace = module.spec.stop_grace if module.spec.stop_grace is not None else grace
        for c in _keep_first(stale):
            actions += _retire(c, module.name, "spec changed", module_grace)
        kept = _keep_first(current)
        for c in kept[1:]:
            actions += _retire(c, module.name, "duplicate container", module_grace)
        container = kept[0] if kept else None
        if container is None:
            actions += _bring_up(module, pinned.version if pinned else 0, local_images, pulled, naming)
            continue
        actions += _keep_in_state(module, container, restarts.get(module.name, RestartState()), now, settings, waits)
    return Plan(tuple(actions), tuple(waits))


def _bring_up(
    module: PinnedModule, version: int, local_images: Collection[str], pulled: set[str], naming: NamingSettings
) -> list[Action]:
    actions: list[Action] = []
    if module.image not in local_images and module.image not in pulled:
        actions.append(Pull(module.name, module.image, "image not on the device"))
        pulled.add(module.image)
    request = container_request(module, version, naming)
    actions.append(Create(module.name, request, "no container for this spec"))
    if module.spec.status == "running":
        actions.append(Start(module.name, request.name, "desired status running"))
    return actions


def _keep_in_state(
    module: PinnedModule,
    container: ObservedContainer,
    restart: RestartState,
    now: float,
    settings: PlannerSettings,
    waits: list[Wait],
) -> list[Action]:
    name = module.name
    spec = module.spec
    grace = spec.stop_grace if spec.stop_grace is not None else settings.naming.default_stop_grace_s
    if spec.status == "stopped":
        if container.state in ("running", "paused"):
            return [Stop(name, container.id, grace, "desired status stopped")]
        return []
    if container.state == "created":
        return [Start(name, container.id, "created but not started")]
    if container.state == "unknown":
        return []
    reason = restart_reason(spec.restart_policy, container)
    if reason is None:
        return []
    due = restart_due_at(restart, container, settings.backoff)
    if now < due:
        waits.append(Wait(name, due, f"{reason}; restart {restart.count + 1} after backoff"))
        return []
    actions: list[Action] = []
    if container.state in ("running", "paused"):
        actions.append(Stop(name, container.id, grace, reason))
    actions.append(Start(name, container.id, reason, is_restart=True))
    return actions
