"""Why a reconcile pass acted on each module (pure). An agent release on trial is judged by its
first pass: it must adopt the containers the previous release left, so an action counts against
it only when it would replace a container that the SAME deployment version made, with another
spec (the new release computes containers differently). Everything else has a cause outside the
release and does not count:

    restart_policy  a module exited (e.g. it crashed while the agent restarted) and its policy restarts it
    deployment      the deployment asks for it: a module added or removed, a newer version's pull,
                    create or replacement the update interrupted, desired status stopped, a create
                    or start an earlier agent left half done
    cleanup         duplicate containers left by a crash in the middle of an apply
    release         the same deployment's container has another spec under this release
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from edge_agent.deployment.actions import Action, Create, Plan, Pull, Remove, Start, Stop
from edge_agent.deployment.pinned import PinnedDeployment
from edge_agent.runtime.api import LABEL_DEPLOYMENT, ObservedContainer

CauseKind = Literal["restart_policy", "deployment", "cleanup", "release"]


@dataclass(frozen=True)
class Cause:
    kind: CauseKind
    detail: str


def causes(plan: Plan, observed: Sequence[ObservedContainer], pinned: PinnedDeployment | None,
           device_id: str) -> dict[str, Cause]:
    """module -> why the plan acts on it, for every module the plan has an action for."""
    by_module: dict[str, list[Action]] = {}
    for action in plan.actions:
        by_module.setdefault(action.module, []).append(action)
    return {module: _cause(module, actions, observed, pinned, device_id) for module, actions in by_module.items()}


def counted_against_release(found: Mapping[str, Cause]) -> tuple[str, ...]:
    return tuple(sorted(m for m, c in found.items() if c.kind == "release"))


def _cause(module: str, actions: list[Action], observed: Sequence[ObservedContainer],
           pinned: PinnedDeployment | None, device_id: str) -> Cause:
    spec = pinned.modules.get(module) if pinned is not None else None
    if spec is None or pinned is None:
        return Cause("deployment", "the module is no longer in the deployment")
    containers = [c for c in observed if c.owned_by(device_id) and c.module == module]
    stale = [c for c in containers if c.spec_hash != spec.spec_hash]
    same_version = [c for c in stale if c.labels.get(LABEL_DEPLOYMENT, "") in ("", str(pinned.version))]
    if same_version:  # a container without the label is judged the strict way
        return Cause("release", f"deployment {pinned.version}'s container has another spec under this release")
    if stale:
        older = ", ".join(sorted({c.labels[LABEL_DEPLOYMENT] for c in stale}))
        return Cause("deployment", f"deployment {pinned.version} replaces the container of deployment {older}")
    if any(isinstance(a, Start) and a.is_restart for a in actions):
        restart = next(a for a in actions if isinstance(a, Start) and a.is_restart)
        return Cause("restart_policy", restart.reason)
    if any(isinstance(a, Pull | Create) for a in actions):
        return Cause("deployment", f"no container for deployment {pinned.version}'s spec yet")
    if all(isinstance(a, Stop | Remove) for a in actions) and len(containers) > 1 and \
            not any(isinstance(a, Stop) and a.reason == "desired status stopped" for a in actions):
        return Cause("cleanup", "duplicate containers")
    return Cause("deployment", "; ".join(sorted({a.reason for a in actions})))
