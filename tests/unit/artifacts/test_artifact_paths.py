"""Artifact paths: one spelling before any check, and no path that is or overlaps a reserved place
or a module mount target (podman refuses a duplicate destination only after the old container is
gone); refused at document validation with its own code."""

from __future__ import annotations

from typing import Any

import pytest

from edge_shared.document import DesiredRejected
from edge_shared.spec import (
    ARTIFACT_PATH_CODE,
    artifact_path_problem,
    normalise_container_path,
    validate_deployment,
)


@pytest.mark.parametrize(("raw", "normal"), [
    ("/models", "/models"),
    ("//models", "/models"),
    ("///models", "/models"),
    ("/models/", "/models"),
    ("/models//", "/models"),
    ("/models/.", "/models"),
    ("/a/../models", "/models"),
    ("/../models", "/models"),
    ("//control/sub/", "/control/sub"),
    ("/m/./n", "/m/n"),
])
def test_paths_are_normalised(raw: str, normal: str) -> None:
    assert normalise_container_path(raw) == normal


@pytest.mark.parametrize(("path", "mounts", "others", "expect"), [
    ("/models", [], [], None),
    ("/models", ["/data"], ["/weights"], None),
    ("/modelsx", ["/models"], [], None),  # a prefix of the name is not a parent
    ("/proc", [], [], "/proc is not a place"),
    ("/sys/x", [], [], "/sys is not a place"),
    ("/dev", [], [], "/dev is not a place"),
    ("/tmp", [], [], "/tmp is not a place"),
    ("/tmp/models", [], [], "/tmp is not a place"),
    ("/run", [], [], "/run is not a place"),
    ("/run/edge-agent", [], [], "/run is not a place"),
    ("/control", ["/control"], [], "overlaps the mount target /control"),
    ("/control/sub", ["/control"], [], "overlaps the mount target /control"),
    ("/control", ["/control/sub"], [], "overlaps the mount target /control/sub"),
    ("/control", ["//control/"], [], "overlaps the mount target //control/"),
    ("/models/a", [], ["/models"], "overlaps the artifact path /models"),
    ("/models", [], ["/models/a"], "overlaps the artifact path /models/a"),
])
def test_artifact_path_problems(path: str, mounts: list[str], others: list[str], expect: str | None) -> None:
    problem = artifact_path_problem(path, mounts, others)
    if expect is None:
        assert problem is None
    else:
        assert problem is not None and expect in problem and problem.startswith(path)


def doc(path: str, mounts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"modules": {"pilot": {
        "image": "reg.local:5000/pilot:1",
        "mounts": mounts if mounts is not None else [{"source": "/srv/control", "target": "/control"}],
        "artifacts": [{"ref": "reg.local:5000/models/pilot:1", "path": path}],
    }}}


@pytest.mark.parametrize(("path", "why"), [
    ("//control", "overlaps the mount target /control"),
    ("/control/", "overlaps the mount target /control"),
    ("/control/sub", "overlaps the mount target /control"),
    ("/x/../control", "overlaps the mount target /control"),
    ("/run", "/run is not a place"),
    ("/run/edge-agent", "/run is not a place"),
    ("/tmp", "/tmp is not a place"),
    ("//tmp/", "/tmp is not a place"),
    ("/proc", "/proc is not a place"),
    ("/sys", "/sys is not a place"),
    ("/dev/shm", "/dev is not a place"),
])
def test_bad_artifact_paths_are_refused_at_validation_with_their_code(path: str, why: str) -> None:
    with pytest.raises(DesiredRejected) as caught:
        validate_deployment(doc(path))
    assert caught.value.code == ARTIFACT_PATH_CODE
    assert why in str(caught.value) and "module 'pilot'" in str(caught.value)


def test_a_mount_target_spelled_with_a_double_slash_still_collides() -> None:
    with pytest.raises(DesiredRejected) as caught:
        validate_deployment(doc("/control", [{"source": "/srv/control", "target": "//control/"}]))
    assert caught.value.code == ARTIFACT_PATH_CODE


@pytest.mark.parametrize(("path", "stored"), [("/models", "/models"), ("//models/", "/models"),
                                              ("/a/../models", "/models")])
def test_good_paths_are_stored_normalised(path: str, stored: str) -> None:
    deployment = validate_deployment(doc(path))
    assert deployment.modules["pilot"].artifacts[0].path == stored


def test_other_problems_keep_the_generic_code() -> None:
    with pytest.raises(DesiredRejected) as caught:
        validate_deployment(doc("relative"))
    assert caught.value.code == "invalid_deployment"
