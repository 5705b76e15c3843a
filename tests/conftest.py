"""Session fixtures for the real components. Each is started by the test session and stopped
at its end, also on failure. Nothing is skipped when a component is missing: the fixture fails."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import settings

from devinfra.mosquitto import Mosquitto
from devinfra.podman import PodmanService, ensure_busybox_image, use_dev_containers_conf
from devinfra.registry import Registry

REPO_ROOT = Path(__file__).resolve().parent.parent

# No example database: it would be written into the repository tree (.hypothesis/), and tests
# must not change the environment they run in. Failing examples are printed instead.
settings.register_profile("edge-agent", database=None)
settings.load_profile("edge-agent")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def podman_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev containers.conf (runc); must be set before any podman call in the session."""
    return use_dev_containers_conf(tmp_path_factory.mktemp("podman-conf"))


@pytest.fixture(scope="session")
def podman_service(podman_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanService]:
    service = PodmanService(tmp_path_factory.mktemp("podman-service")).start()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def busybox_image(podman_env: Path) -> str:
    return ensure_busybox_image()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield broker
    broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own, for tests that stop or restart it."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


def _dev_environment() -> dict[str, str]:
    """What the test session runs with: installed distributions and versions, where edge_agent
    comes from, and which console scripts exist in the interpreter's bin folder."""
    import edge_agent

    dists = {f"dist {d.metadata['Name']}": d.version for d in metadata.distributions() if d.metadata["Name"]}
    bin_dir = Path(sys.executable).parent
    scripts = {f"script {name}": str((bin_dir / name).exists()) for name in ("edge-agent", "edgectl", "edge-pilot")}
    return {**dists, **scripts, "edge_agent from": str(Path(edge_agent.__file__).resolve())}


@pytest.fixture(scope="session", autouse=True)
def dev_environment_unchanged() -> Iterator[None]:
    """No test may change the environment it runs in (the dev venv): checked for the whole session.
    (A `pip install --prefix` with this interpreter's pip once uninstalled the dev install.)"""
    before = _dev_environment()
    yield
    after = _dev_environment()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, "the test session changed its own environment: " + ", ".join(
        f"{k}: {before.get(k)} -> {after.get(k)}" for k in changed
    )

