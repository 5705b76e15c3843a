"""Builders and a pure 'apply' for planner tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from edge_agent.deployment.actions import Create, Plan, Pull, Remove, Start, Stop
from edge_agent.deployment.pinned import NamingSettings, PinnedDeployment, pin
from edge_agent.deployment.planner import PlannerSettings
from edge_agent.deployment.restart_policy import BackoffSettings, RestartState, record_restart
from edge_agent.runtime.api import LABEL_DEVICE, LABEL_MODULE, LABEL_SPEC_HASH, ObservedContainer
from edge_shared.spec import validate_deployment

DEVICE = "dev-1"
SETTINGS = PlannerSettings(NamingSettings(DEVICE, "edge-", 5.0), BackoffSettings(1.0, 16.0, 60.0))


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def deployment(version: int, modules: Mapping[str, Mapping[str, Any]]) -> PinnedDeployment:
    raw = {"modules": {name: {"image": f"reg.local:5000/{name}:1", **spec} for name, spec in modules.items()}}
    parsed = validate_deployment(raw)
    pins = {name: f"reg.local:5000/{name}@{digest(abs(hash(spec.get('_img', name))) % 1000)}"
            for name, spec in modules.items()}
    return pin(version, parsed, pins)


def container(cid: str, module: str, spec_hash: str, state: str = "running", device: str = DEVICE,
              **kw: Any) -> ObservedContainer:
    labels = {LABEL_DEVICE: device, LABEL_MODULE: module, LABEL_SPEC_HASH: spec_hash}
    return ObservedContainer(cid, f"edge-{module}", labels, state, **kw)  # type: ignore[arg-type]


def observed_for(d: PinnedDeployment, now: float = 0.0) -> list[ObservedContainer]:
    return [container(f"id-{m.name}", m.name, m.spec_hash, "running" if m.spec.status == "running" else "created",
                      started_at=now if m.spec.status == "running" else None)
            for m in d.modules.values()]


def apply(plan: Plan, observed: list[ObservedContainer], images: set[str], restarts: dict[str, RestartState],
          now: float) -> tuple[list[ObservedContainer], set[str], dict[str, RestartState]]:
    """What a perfect runtime would do with the plan."""
    cs = {c.id: c for c in observed}
    images = set(images)
    restarts = dict(restarts)
    n = len(cs)

    def find(ref: str) -> str:
        return next(i for i, c in cs.items() if ref in (i, c.name))

    for a in plan.actions:
        if isinstance(a, Pull):
            images.add(a.image)
        elif isinstance(a, Create):
            assert a.request.image in images
            assert all(c.name != a.request.name for c in cs.values()), "name conflict"
            n += 1
            cid = f"new-{n}"
            cs[cid] = ObservedContainer(cid, a.request.name, dict(a.request.labels), "created", image=a.request.image)
        elif isinstance(a, Start):
            cid = find(a.container)
            hc = "none" if cs[cid].health == "none" else "starting"
            cs[cid] = replace(cs[cid], state="running", started_at=now, exit_code=None, health=hc)
            if a.is_restart:
                restarts[a.module] = record_restart(restarts.get(a.module, RestartState()), now)
        elif isinstance(a, Stop):
            cid = find(a.container)
            cs[cid] = replace(cs[cid], state="exited", exit_code=143, finished_at=now)
        elif isinstance(a, Remove):
            del cs[find(a.container)]
    return list(cs.values()), images, restarts
