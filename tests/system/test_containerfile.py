"""The top-level Containerfile builds with the local base and runs as a non-root user."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import REPO_ROOT, podman, run_script, unique_name


@pytest.fixture(scope="module")
def agent_image(base_image: str) -> Iterator[str]:
    image = f"localhost/{unique_name('image')}:test"
    # The way the Containerfile is meant to be built: a host-made wheelhouse in a fresh context,
    # no network in the build (scripts/build-agent-image.sh).
    run_script("build-agent-image.sh", image, "--base", base_image)
    try:
        yield image
    finally:
        podman("rmi", "-f", image, check=False)


def run_in(image: str, *args: str, entrypoint: str | None = None) -> str:
    name = unique_name("run")
    extra = ["--entrypoint", entrypoint] if entrypoint else []
    try:
        return podman("run", "--name", name, *extra, image, *args, timeout=120).stdout
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_version_runs_as_non_root(agent_image: str) -> None:
    expected = tomllib.loads(Path(REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    uid = int(run_in(agent_image, "-u", entrypoint="id").strip())
    assert uid != 0
    assert run_in(agent_image, "version").strip() == f"edge-agent {expected}"
    doc = json.loads(run_in(agent_image, "version", "--json"))
    assert doc["version"] == expected


def test_runtime_stage_holds_only_what_runs(agent_image: str) -> None:
    listing = run_in(
        agent_image, "-c",
        "ls /opt/edge-agent/bin; test -e /wheels && echo HAS_WHEELS; test -d /src && echo HAS_SRC;"
        " ls /opt/edge-agent/lib/python3*/site-packages | sed -n 's/^\\(edgectl\\|nacl\\)$/FLEET:&/p';"
        " command -v gcc || true; id -gn; stat -c '%U %a' /var/lib/edge-agent",
        entrypoint="sh",
    ).split()  # fmt: skip
    # The device's image: the agent and the shared leaf, no fleet code (edgectl) or fleet dependency.
    assert "edge-agent" in listing and "edgectl" not in listing
    assert not [item for item in listing if item.startswith("FLEET:")], listing
    assert "pip" not in listing and "HAS_WHEELS" not in listing and "HAS_SRC" not in listing
    assert not any(item.endswith("/gcc") for item in listing)
    assert listing[-3:] == ["edge-agent", "edge-agent", "700"], listing
