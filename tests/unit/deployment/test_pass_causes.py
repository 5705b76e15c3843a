"""Why a pass acted on each module, and which of it counts against an agent release on trial
(edge_agent/deployment/pass_causes.py): planned by the real planner from observed containers."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from edge_agent.deployment.pass_causes import Cause, causes, counted_against_release
from edge_agent.deployment.pinned import PinnedDeployment
from edge_agent.deployment.planner import plan
from edge_agent.deployment.restart_policy import RestartState
from edge_agent.runtime.api import LABEL_DEPLOYMENT, LABEL_SPEC_HASH, ObservedContainer

from .helpers import DEVICE, SETTINGS, container, deployment, observed_for

TWO = {"camera": {"restartPolicy": "always"}, "detector": {}}


def made_by(version: int, containers: list[ObservedContainer]) -> list[ObservedContainer]:
    return [replace(c, labels={**c.labels, LABEL_DEPLOYMENT: str(version)}) for c in containers]


def why(d: PinnedDeployment, observed: list[ObservedContainer], images: Collection[str] | None = None,
        restarts: dict[str, RestartState] | None = None) -> dict[str, Cause]:
    p = plan(d, observed, d.images if images is None else images, restarts or {}, 1000.0, SETTINGS)
    return causes(p, observed, d, DEVICE)


def test_adopting_everything_acts_on_nothing() -> None:
    d = deployment(3, TWO)
    assert why(d, made_by(3, observed_for(d))) == {}


def test_a_module_that_crashed_in_the_restart_gap_is_the_restart_policys() -> None:
    d = deployment(3, TWO)
    obs = made_by(3, observed_for(d))
    obs[0] = replace(obs[0], state="exited", exit_code=1, finished_at=10.0)
    found = why(d, obs)
    assert set(found) == {obs[0].module} and found[obs[0].module or ""].kind == "restart_policy"
    assert counted_against_release(found) == ()


def test_a_newer_deployments_interrupted_replacement_and_pull_are_the_deployments() -> None:
    old = deployment(3, TWO)
    new = deployment(4, {"camera": {"restartPolicy": "always", "env": {"X": "1"}}, "detector": {}, "tracker": {}})
    found = why(new, made_by(3, observed_for(old)), images=old.images)
    assert {m: c.kind for m, c in found.items()} == {"camera": "deployment", "tracker": "deployment"}
    assert "replaces the container of deployment 3" in found["camera"].detail
    assert counted_against_release(found) == ()


def test_a_module_that_left_the_deployment_is_the_deployments() -> None:
    old = deployment(3, TWO)
    new = deployment(4, {"detector": {}})
    found = why(new, made_by(3, observed_for(old)))
    assert found == {"camera": Cause("deployment", "the module is no longer in the deployment")}


def test_a_half_done_start_and_a_desired_stop_are_the_deployments() -> None:
    d = deployment(3, {"camera": {}, "detector": {"status": "stopped"}})
    obs = made_by(3, [container("c1", "camera", d.modules["camera"].spec_hash, "created"),
                      container("d1", "detector", d.modules["detector"].spec_hash, "running")])
    found = why(d, obs)
    assert {m: c.kind for m, c in found.items()} == {"camera": "deployment", "detector": "deployment"}


def test_duplicates_left_by_a_crash_are_cleanup() -> None:
    d = deployment(3, {"camera": {}})
    h = d.modules["camera"].spec_hash
    obs = made_by(3, [container("old", "camera", h, "exited", exit_code=0, started_at=1.0),
                      container("live", "camera", h, "running", started_at=5.0)])
    assert why(d, obs) == {"camera": Cause("cleanup", "duplicate containers")}


def test_the_same_deployment_with_another_spec_counts_against_the_release() -> None:
    """The new release computes another container for deployment 3 than the previous one made."""
    d = deployment(3, TWO)
    obs = made_by(3, observed_for(d))
    obs[1] = replace(obs[1], labels={**obs[1].labels, LABEL_SPEC_HASH: "computed-by-the-old-release"})
    module = obs[1].module or ""
    obs[0] = replace(obs[0], state="exited", exit_code=1, finished_at=10.0)  # and a crash beside it
    found = why(d, obs)
    assert found[module].kind == "release" and counted_against_release(found) == (module,)
    assert found[obs[0].module or ""].kind == "restart_policy"


def test_a_container_without_its_deployment_label_is_judged_strictly() -> None:
    d = deployment(3, {"camera": {}})
    obs = [container("c1", "camera", "another-spec")]
    assert counted_against_release(why(d, obs)) == ("camera",)
