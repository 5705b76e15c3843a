"""A stored document this release no longer accepts (an older release committed it): the modules
that still load are pinned, the others are named with a reason naming the artifact and path, and
the planner never touches their containers."""

from __future__ import annotations

import json
from typing import Any

from edge_agent.deployment.modules_report import modules_report
from edge_agent.deployment.pinned import CommittedDeployment, pin_what_loads
from edge_agent.deployment.planner import plan

from .helpers import DEVICE, SETTINGS, container, digest

MODEL = f"reg.local:5000/models/pilot:v1@{digest(7)}"


def stored(app_path: str = "/tmp", **extra: Any) -> dict[str, Any]:
    return {"modules": {
        "app": {"image": "reg.local:5000/app:1", "artifacts": [{"ref": MODEL, "path": app_path}]},
        "other": {"image": "reg.local:5000/other:1"},
    }, **extra}


IMAGES = {"app": f"reg.local:5000/app@{digest(1)}", "other": f"reg.local:5000/other@{digest(2)}"}


def test_a_document_that_loads_has_nothing_unloadable() -> None:
    pinned = CommittedDeployment(3, stored("/models"), IMAGES, 0.0).pinned()
    assert set(pinned.modules) == {"app", "other"} and pinned.unloadable == {}


def test_a_module_with_an_artifact_path_now_refused_is_named_with_its_artifact_and_path() -> None:
    for path, problem in (("/tmp", "/tmp: /tmp is not a place for artifacts"),
                          ("/run/x", "/run/x: /run is not a place for artifacts"),
                          ("//proc", "/proc: /proc is not a place for artifacts")):
        pinned = CommittedDeployment(3, stored(path), IMAGES, 0.0).pinned()
        assert set(pinned.modules) == {"other"}, path
        reason = pinned.unloadable["app"]
        assert reason.startswith("stored deployment 3: module app is not accepted by this release: "), reason
        assert problem in reason and f"artifact {MODEL} at {path}" in reason, reason


def test_a_document_that_does_not_load_at_all_names_every_module() -> None:
    pinned = pin_what_loads(4, stored("/models", unknown_key=1), IMAGES)
    assert pinned.modules == {} and set(pinned.unloadable) == {"app", "other"}
    assert "unknown_key: unknown field" in pinned.unloadable["other"], pinned.unloadable


def test_the_planner_leaves_an_unloadable_module_s_container_as_it_is() -> None:
    pinned = CommittedDeployment(3, stored("/tmp"), IMAGES, 0.0).pinned()
    other = pinned.modules["other"]
    for state in ("running", "exited", "created"):
        observed = [container("id-app", "app", "old-hash", state), container("id-other", "other", other.spec_hash)]
        assert plan(pinned, observed, pinned.images, {}, 10.0, SETTINGS).empty, state
    # without the unloadable mark, the same container would be removed as "no longer in the deployment"
    loaded_only = pin_what_loads(3, {"modules": {"other": stored()["modules"]["other"]}}, IMAGES)
    observed = [container("id-app", "app", "old-hash"), container("id-other", "other", other.spec_hash)]
    assert [type(a).__name__ for a in plan(loaded_only, observed, pinned.images, {}, 10.0, SETTINGS).actions] \
        == ["Stop", "Remove"]


def test_the_report_shows_the_unloadable_module_with_its_reason() -> None:
    pinned = CommittedDeployment(3, stored("/tmp"), IMAGES, 0.0).pinned()
    observed = [container("id-app-0123456789", "app", "old-hash", started_at=5.0)]
    report = modules_report(pinned, observed, {}, plan(pinned, observed, set(), {}, 0.0, SETTINGS), {}, DEVICE, 10.0)
    app = report["app"]
    assert app["runtimeStatus"] == "unloadable" and app["error"] == pinned.unloadable["app"]
    assert app["containerId"] == "id-app-01234" and app["containerState"] == "running"
    assert report["other"]["runtimeStatus"] == "pending"
    json.dumps(report)  # what the twin publishes
