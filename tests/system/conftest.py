"""Shared fixtures for the system tests: podman environment, images, wheelhouse, and a
booted systemd container.

The images are built by the project's own scripts when missing (idempotent), so a fresh CI
machine needs nothing but the apt packages scripts/install-deps.sh installs. Every container a test
starts is removed by a fixture finalizer, also when the test fails.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devinfra.podman import PodmanService

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts"
BASE_IMAGE = "localhost/edge-base:bookworm"
SYSTEMD_IMAGE = "localhost/edge-systemd:bookworm"
CONTAINER_PREFIX = "sys-test-"


def _podman_env() -> dict[str, str]:
    """The environment scripts/podman-env.sh sets up (runc + lowered ulimits on dev/CI)."""
    out = subprocess.run(
        ["bash", "-c", f". {shlex.quote(str(SCRIPTS / 'podman-env.sh'))} && echo $CONTAINERS_CONF"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {**os.environ, "CONTAINERS_CONF": out}


PODMAN_ENV = _podman_env()


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run podman with the test environment; raise with podman's stderr on failure."""
    proc = subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_script(name: str, *args: str, timeout: float = 900) -> str:
    proc = subprocess.run(
        ["bash", str(SCRIPTS / name), *args],
        env=PODMAN_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def unique_name(kind: str) -> str:
    return f"{CONTAINER_PREFIX}{kind}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", name="podman")
def podman_fixture():  # type: ignore[no-untyped-def]
    """The podman() helper, for test modules (they don't import conftest)."""
    return podman


@pytest.fixture(scope="session")
def base_image() -> str:
    run_script("build-base-image.sh", BASE_IMAGE)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def systemd_image(base_image: str) -> str:
    run_script("build-systemd-image.sh", SYSTEMD_IMAGE)
    return SYSTEMD_IMAGE


@pytest.fixture(scope="session")
def project_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge-agent wheel built from this checkout (no dependencies)."""
    out = tmp_path_factory.mktemp("wheel")
    run_script("build-wheel.sh", str(out))
    (wheel,) = out.glob("edge_agent-*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """edge-agent plus all its runtime dependencies as wheels, built on the host.

    Containers install from it offline (`pip install --no-index`): no PyPI access or CA
    bundle is needed inside, and the host's pip cache makes rebuilds fast. Host and image
    are both CPython 3.11 on glibc 2.36 (bookworm), so the wheels fit.
    """
    out = tmp_path_factory.mktemp("wheelhouse")
    run_script("build-wheel.sh", str(out), "--with-deps")
    assert list(out.glob("edge_agent-*.whl")), f"no edge-agent wheel in {out}"
    return out


def wait_for(what: str, predicate, timeout: float = 30, interval: float = 0.5):  # type: ignore[no-untyped-def]
    """Poll predicate() until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def container_podman_service(work: Path) -> PodmanService:
    """A podman service of the test's own whose socket (work/podman/podman.sock) an agent running
    as a non-root user in a test container can use; mounted there at /run/edge-test-podman."""
    sock_dir = work / "podman"
    sock_dir.mkdir()
    sock_dir.chmod(0o755)
    service = PodmanService(sock_dir).start()
    service.socket_path.chmod(0o666)
    return service


def container_agent_config(device_id: str, prefix: str, broker_port: int, registry_host: str, extra: str = "") -> str:
    """The config of an agent in a test container with host networking: the test's broker and
    registry on loopback, the host's podman service socket mounted at /run/edge-test-podman, the
    fleet's keys under /etc/edge-agent/keys. `extra` goes at the top (e.g. a [state] section)."""
    return (
        f'[device]\nid = "{device_id}"\n'
        + extra
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\ntopic_prefix = "{prefix}"\n'
        "reconnect_max_delay_s = 2\nkeepalive_s = 5\n"
        "[twin]\nreport_min_interval_s = 0.2\n"
        '[podman]\nsocket = "unix:///run/edge-test-podman/podman.sock"\nstop_grace_s = 2\n'
        "[attestation]\nenabled = false\n[telemetry]\nenabled = false\n"
        '[trust]\ndocument_keys = ["/etc/edge-agent/keys/fleet.pub"]\n'
        f'insecure_registries = ["{registry_host}"]\n'
        f'[[trust.policy]]\nscope = "{registry_host}"\nmode = "enforce"\nkeys = ["/etc/edge-agent/keys/image.pub"]\n'
        f'[deployment]\ncontainer_prefix = "{device_id}-"\nstabilisation_window_s = 2\npoll_interval_s = 5\n'
    )


@dataclass
class SystemdContainer:
    """A running container with systemd as PID 1."""

    name: str

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, "sh", "-c", script, check=check, timeout=timeout)

    def out(self, script: str, timeout: float = 120) -> str:
        return self.sh(script, timeout=timeout).stdout

    def show(self, unit: str, *props: str) -> dict[str, str]:
        text = self.out(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def wait_for(self, what: str, predicate, timeout: float = 30, interval: float = 0.5):  # type: ignore[no-untyped-def]
        return wait_for(what, predicate, timeout, interval)


@pytest.fixture(scope="module")
def systemd_container(systemd_image: str, wheelhouse: Path) -> Iterator[SystemdContainer]:
    """Boot the systemd image with the wheelhouse and this checkout's systemd/ and config/
    folders mounted read-only.

    CAP_SYS_ADMIN: systemd needs it to build the unit's mount namespaces (ProtectSystem=,
    PrivateTmp=, ...). Without it systemd, seeing a container, silently skips them, and the
    test would not exercise the hardening the unit ships with.
    """
    name = unique_name("systemd")
    podman(
        "run", "-d", "--name", name,
        "--systemd=always", "--cap-add", "SYS_ADMIN",
        "-v", f"{wheelhouse}:/wheels:ro",
        "-v", f"{REPO_ROOT / 'systemd'}:/src/systemd:ro",
        "-v", f"{REPO_ROOT / 'config'}:/src/config:ro",
        "-v", f"{Path(__file__).parent / 'sandbox_check.py'}:/src/sandbox_check.py:ro",
        systemd_image, "/sbin/init",
    )  # fmt: skip
    try:
        box = SystemdContainer(name)
        box.wait_for(
            "systemd to finish booting",
            lambda: box.sh("systemctl is-system-running --wait", check=False).stdout.strip() in ("running", "degraded"),
            timeout=60,
        )
        yield box
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
