"""Session fixtures for the real components. Each is started by the test session and stopped
at its end, also on failure. Nothing is skipped when a component is missing: the fixture fails."""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from devinfra.mosquitto import Mosquitto
from devinfra.podman import PodmanService, ensure_busybox_image, use_dev_containers_conf
from devinfra.registry import Registry

REPO_ROOT = Path(__file__).resolve().parent.parent

# No example database: it would be written into the repository tree (.hypothesis/), and tests
# must not change the environment they run in. Failing examples are printed instead.
settings.register_profile("edge-agent", database=None)
settings.load_profile("edge-agent")
# Hypothesis also caches constants it collects under its home directory (.hypothesis/ in the
# current directory by default): keep that out of the tree too.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="edge-hypothesis-")
set_hypothesis_home_dir(Path(_HYPOTHESIS_HOME))
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)


# The whole suite (scripts/test) runs on two pytest-xdist workers (`-n 2 --dist loadgroup`): most of
# its time is spent waiting for podman, brokers, systemd containers and emulated arm64 code, not on a
# CPU. A test module is the unit a worker takes (its module fixtures are set up once), except:
# modules that share something fixed on the machine run on one worker, one after another.
SHARED_ON_THE_MACHINE = {
    # the README's commands: the quickstart's folder and the broker port 1883 of `scripts/run --agent-only`
    "tests/system/test_quickstart.py": "readme-commands",
    "tests/system/test_readme_commands.py": "readme-commands",
    "tests/system/test_readme_run.py": "readme-commands",
    # all of its images are removed at its session's end (remove_trust_test_images)
    "tests/integration/trust/": "trust",
    # agents that install agent releases collect every untagged release image and unpacking helper
    # in the store once an install is over (the store a device has is its own)
    "tests/system/test_self_update.py": "agent-releases",
    "tests/system/test_update_faults.py": "agent-releases",
}
# Modules that take over half a minute (scripts/test prints the 25 slowest tests), heaviest first:
# they are handed out first, so that the two workers finish at about the same time.
SLOW_MODULES = (
    "tests/pilot/test_pilot_arm64.py",
    "tests/system/test_self_update.py",
    "tests/system/test_update_faults.py",
    "tests/integration/powercut/test_update_guard_powercut.py",
    "tests/integration/desired/test_multiarch_images.py",
    "tests/system/test_quickstart.py",
    "tests/system/test_arm64_agent.py",
    "tests/integration/powercut/test_agent_writes_powercut.py",
    "tests/integration/identity/test_renewal.py",
    "tests/integration/telemetry/test_storage_writes_figure.py",
    "tests/integration/fleet/test_rollout.py",
    "tests/integration/deployment/test_podman_down.py",
    "tests/integration/deployment/test_state_owner.py",
    "tests/integration/desired/test_state_db_migration.py",
    "tests/explorer/test_explorer.py",
)


def xdist_group(path: str) -> str:
    """The group a test module runs in: its own, or the one it shares with modules it must not overlap."""
    for prefix, group in SHARED_ON_THE_MACHINE.items():
        if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
            return group
    return path


def start_order(path: str) -> int:
    return SLOW_MODULES.index(path) if path in SLOW_MODULES else len(SLOW_MODULES)


def shared_out_by_groups(config: pytest.Config) -> bool:
    # Collection runs in the workers, where xdist sets `dist` to "no" and `loadgroup` to whether the
    # run is shared out by groups.
    return bool(getattr(config.option, "loadgroup", False))


def module_path(item: pytest.Item) -> str:
    return item.path.relative_to(REPO_ROOT).as_posix()


def pytest_itemcollected(item: pytest.Item) -> None:
    # Marked as each test is collected: xdist reads the marks in its own pytest_collection_modifyitems.
    if shared_out_by_groups(item.config):
        item.add_marker(pytest.mark.xdist_group(xdist_group(module_path(item))))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not shared_out_by_groups(config):
        return
    # A group's modules next to each other, the slow groups first; the order inside a module stays.
    first: dict[str, int] = {}
    for item in items:
        group = xdist_group(module_path(item))
        first[group] = min(first.get(group, len(SLOW_MODULES)), start_order(module_path(item)))
    items.sort(key=lambda item: first[xdist_group(module_path(item))])


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

