"""The device side on linux/arm64 (a Raspberry Pi 4), under qemu-user emulation: the agent image
built for arm64 by scripts/build-agent-image.sh (the Containerfile on the debootstrapped arm64
Debian base; the agent installed from the aarch64 wheelhouse of scripts/build-wheel.sh
--platform aarch64, with no network in the build) runs `edge-agent check`, accepts a signed
deployment of an arm64 module and starts it, then boots offline (broker and registry gone, the
module's container removed) from the stored deployment and starts the module again.

All real: a mosquitto broker, an OCI registry with a cosign-signed multi-arch image (its arm64
entry an arm64 busybox), and a podman service on the host whose socket is mounted into the agent's
container (the agent runs podman's API, so its module runs next to it on the host, emulated too).
The agent's container shares the host's network to reach them on loopback. Python under qemu is
several times slower than native: timeouts are generous, and nothing here is timed.

Last, the venv install the way docs/operations.md tells a Pi's operator (the aarch64 wheelhouse,
`pip install --no-index`) under a real systemd, PID 1 of an emulated arm64 container: the first of
tests/system/test_systemd_service.py's checks, run unchanged against it.

The arm64 agent image is kept in podman's store (tag AGENT_IMAGE); the build script skips it when
its content label matches, so only the first run on a machine pays for the emulated build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent_image import agent_image_name, ensure_agent_image
from devinfra.base_image import ensure_base_image
from devinfra.mosquitto import Mosquitto
from devinfra.multiarch import MultiArch, arm64_busybox, build_multiarch
from devinfra.registry import Registry
from tests.system import test_systemd_service as systemd_tests
from tests.system.conftest import (
    REPO_ROOT,
    SystemdContainer,
    container_agent_config,
    container_podman_service,
    podman,
    run_script,
    unique_name,
    wait_for,
)

AGENT_IMAGE = agent_image_name("arm64")
AGENT_UID = 10001  # the Containerfile's edge-agent user
PASSPHRASE = "arm64 test passphrase"
SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}
SLOW = 600  # seconds: anything the emulated agent does


def edgectl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE}
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env,
    )  # fmt: skip


def must(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def arm64_agent_image() -> str:
    ensure_agent_image("arm64")
    arch = podman("image", "inspect", "--format", "{{.Architecture}}", AGENT_IMAGE).stdout.strip()
    assert arch == "arm64", f"{AGENT_IMAGE} is {arch}"
    return AGENT_IMAGE


def agent_config(device_id: str, prefix: str, broker: Mosquitto, registry: Registry) -> str:
    return container_agent_config(device_id, prefix, broker.port, registry.host,
                                  '[state]\ndir = "/var/lib/edge-agent"\n[logging]\nlevel = "info"\nformat = "text"\n')


@dataclass
class Arm64Device:
    """The arm64 agent's container and everything around it."""

    id: str
    prefix: str
    name: str  # the agent's container
    image: str
    work: Path
    broker: Mosquitto
    registry: Registry

    def mounts(self) -> list[str]:
        return [
            "-v", f"{self.work / 'etc'}:/etc/edge-agent:ro",
            "-v", f"{self.work / 'state'}:/var/lib/edge-agent",
            "-v", f"{self.work / 'podman'}:/run/edge-test-podman",
        ]  # fmt: skip

    def run(
        self, *args: str, entrypoint: str | None = None, network: str = "none", mounts: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A one-off arm64 container of the agent image (`podman run --rm`)."""
        extra = ["--entrypoint", entrypoint] if entrypoint else []
        extra += self.mounts() if mounts else []
        return podman(
            "run", "--rm", "--platform", "linux/arm64", "--network", network, *extra, self.image, *args,
            check=check, timeout=SLOW,
        )  # fmt: skip

    def agent(self, *args: str, timeout: float = SLOW) -> subprocess.CompletedProcess[str]:
        """`edge-agent ARGS` in the running agent's container (an arm64 process, emulated)."""
        return podman("exec", self.name, "edge-agent", *args, check=False, timeout=timeout)

    def status(self) -> dict[str, Any]:
        proc = self.agent("status", "--json")
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def containers(self) -> dict[str, tuple[str, str, bool]]:
        """module -> (container id, image, running), from podman itself."""
        ids = podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label=edge-agent.device={self.id}").stdout.split()
        out = {}
        for cid in ids:
            doc = json.loads(podman("inspect", cid).stdout)[0]
            out[doc["Config"]["Labels"]["edge-agent.module"]] = (doc["Id"], doc["ImageName"], doc["State"]["Running"])
        return out

    def deploy(self, image: str, keys: Path) -> subprocess.CompletedProcess[str]:
        doc = self.work / f"deployment-{uuid.uuid4().hex[:6]}.json"
        doc.write_text(json.dumps({"modules": {"app": {"image": image, **SLEEP}}}))
        return edgectl(
            "deploy", "--broker", "127.0.0.1", "--port", str(self.broker.port), "--prefix", self.prefix,
            self.id, str(doc), "--key", str(keys / "fleet.key"), "--wait", str(SLOW), "--until", "running",
            timeout=SLOW + 60,
        )  # fmt: skip


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("arm64-keys")
    for name in ("image", "fleet"):
        must(edgectl("keygen", "--output-key-prefix", str(d / name)))
    return d


@pytest.fixture(scope="module")
def device(
    tmp_path_factory: pytest.TempPathFactory, arm64_agent_image: str, keys: Path, podman_env: Path
) -> Iterator[Arm64Device]:
    work = tmp_path_factory.mktemp("arm64-device")
    work.chmod(0o755)
    broker = Mosquitto(work / "mosquitto").start()
    registry = Registry(work / "registry").start()  # the test's own: it goes away for the offline boot
    service = container_podman_service(work)  # the device's podman, usable by the agent's user
    device_id = f"a64-{uuid.uuid4().hex[:8]}"
    etc = work / "etc"
    (etc / "keys").mkdir(parents=True)
    (etc / "config.toml").write_text(agent_config(device_id, f"edge-{device_id}", broker, registry))
    for name in ("fleet.pub", "image.pub"):
        (etc / "keys" / name).write_bytes((keys / name).read_bytes())
    for path in (etc, etc / "keys"):
        path.chmod(0o755)
    state = work / "state"
    state.mkdir(mode=0o700)
    os.chown(state, AGENT_UID, AGENT_UID)
    dev = Arm64Device(device_id, f"edge-{device_id}", unique_name("arm64-agent"), arm64_agent_image, work, broker,
                      registry)  # fmt: skip
    try:
        yield dev
    finally:
        podman("rm", "-f", "-t", "0", dev.name, check=False)
        ids = podman("ps", "-a", "-q", "--filter", f"label=edge-agent.device={device_id}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)
        listing = podman("images", "--format", "{{.ID}} {{.Repository}}", check=False).stdout.splitlines()
        for image_id in {line.split()[0] for line in listing if f"/{device_id}/" in line}:
            podman("rmi", "-f", image_id, check=False)
        service.stop()
        registry.stop()
        broker.stop()


@pytest.fixture(scope="module")
def module_image(device: Arm64Device, keys: Path, busybox_image: str) -> MultiArch:
    """A cosign-signed index of an amd64 busybox and an arm64 busybox: the arm64 agent must pick
    the arm64 entry by itself (its config names no platform: the default is the machine's)."""
    host = device.registry.host
    image = build_multiarch(host, f"{device.id}/app", "1", busybox_image, arm64_busybox=arm64_busybox(),
                            local_prefix=f"localhost/{device.id}-app")  # fmt: skip
    must(edgectl("sign-image", image.reference, "--key", str(keys / "image.key"), "--insecure-registry", host))
    return image


def test_arm64_image_holds_the_agent_installed_offline_and_check_passes(device: Arm64Device) -> None:
    assert device.run("-m", entrypoint="uname").stdout.strip() == "aarch64"
    version = json.loads(device.run("version", "--json").stdout)
    assert version["arch"] == "aarch64" and version["python"].startswith("3.11."), version
    # The compiled dependencies are aarch64 wheels, and they load.
    loaded = device.run(
        "-c",
        "import importlib.util, platform, cryptography.hazmat.bindings._rust, pydantic_core;"
        " print(platform.machine(), importlib.util.find_spec('pip') is None)",
        entrypoint="/opt/edge-agent/bin/python",
    ).stdout.split()
    assert loaded == ["aarch64", "True"], loaded  # and the runtime has no installer

    check = device.run("check", "--config", "/etc/edge-agent/config.toml", network="host", mounts=True, check=False)
    print(f"\n--- edge-agent check (arm64, emulated) ---\n{check.stdout}{check.stderr}")
    assert check.returncode == 0, check.stdout + check.stderr
    lines = check.stdout.splitlines()
    for name in ("config valid", "state dir writable", "broker", "podman"):
        assert any(line.startswith("PASS") and name in line for line in lines), (name, check.stdout)
    assert " 0 failed" in check.stdout


def test_arm64_agent_starts_a_signed_arm64_module_then_boots_offline_and_starts_it_again(
    device: Arm64Device, module_image: MultiArch, keys: Path
) -> None:
    podman(
        "run",
        "-d",
        "--platform",
        "linux/arm64",
        "--name",
        device.name,
        "--network",
        "host",
        *device.mounts(),
        device.image,
    )
    wait_for("the agent to answer `edge-agent status`", device.status, SLOW, interval=5)

    deployed = device.deploy(module_image.reference, keys)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr + device.logs()[-4000:]
    first = device.containers()["app"]
    assert first[2] and first[1] == module_image.pinned("arm64"), first
    assert podman("exec", first[0], "uname", "-m").stdout.strip() == "aarch64"
    entry = device.status()["reported"]["modules"]["app"]
    assert (entry["runtimeStatus"], entry["digest"], entry["platform"]) == (
        "running",
        module_image.digests["arm64"],
        "linux/arm64/v8",
    ), entry

    # Offline: the agent stops cleanly, the broker and the registry go away, the module's container
    # is removed; the agent starts again with only its stored deployment and the local image.
    podman("stop", "-t", "60", device.name, timeout=120)
    code = podman("inspect", "--format", "{{.State.ExitCode}}", device.name).stdout.strip()
    assert code == "0", device.logs()[-4000:]
    device.broker.stop()
    device.registry.stop()
    podman("rm", "-f", "-t", "0", first[0])
    assert "app" not in device.containers()
    earlier = len(device.logs())
    podman("start", device.name)

    def module_running_again() -> tuple[str, str, bool] | None:
        now = device.containers().get("app")
        return now if now and now[2] else None

    again = wait_for("the module to run again after the offline boot", module_running_again, SLOW, interval=2)
    assert again[0] != first[0] and again[1] == module_image.pinned("arm64"), (first, again)
    assert podman("exec", again[0], "uname", "-m").stdout.strip() == "aarch64"
    status = wait_for(
        "`edge-agent status` to report the module running",
        lambda: (
            (s := device.status())
            and s["reported"].get("modules", {}).get("app", {}).get("runtimeStatus") == "running"
            and s
        ),
        SLOW,
        interval=5,
    )
    entry = status["reported"]["modules"]["app"]
    assert (entry["digest"], entry["platform"]) == (module_image.digests["arm64"], "linux/arm64/v8"), entry
    boot = device.logs()[earlier:]
    assert "EVENT=deployment.loaded" in boot and "will be run" in boot, boot[-4000:]
    wait_for("the agent to try the unreachable broker", lambda: "EVENT=mqtt.retry" in device.logs(), SLOW, interval=2)
    human = device.agent("status")
    print(f"\n--- edge-agent status after the offline boot (arm64, emulated) ---\n{human.stdout}{human.stderr}")
    assert human.returncode == 0, human.stderr
    assert "app" in human.stdout


# ---------------------------------------------------------------- systemd as PID 1, arm64


@pytest.fixture(scope="module")
def aarch64_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("aarch64-cp311")
    run_script("build-wheel.sh", str(out), "--platform", "aarch64")
    wheels = sorted(p.name for p in out.glob("*.whl"))
    assert any(w.startswith("edge_agent-") for w in wheels), wheels
    compiled = [w for w in wheels if not w.endswith("-none-any.whl")]
    assert compiled and all("aarch64" in w for w in compiled), compiled
    return out


@pytest.fixture(scope="module")
def arm64_systemd(aarch64_wheelhouse: Path) -> Iterator[SystemdContainer]:
    """The systemd image for arm64 booted (emulated), the agent installed from the aarch64
    wheelhouse with the unit, as test_systemd_service.py's `agent` fixture does, and started."""
    ensure_base_image("arm64")
    run_script("build-systemd-image.sh", "--arch", "arm64", timeout=1800)
    name = unique_name("systemd-arm64")
    podman(
        "run", "-d", "--platform", "linux/arm64", "--name", name,
        "--systemd=always", "--cap-add", "SYS_ADMIN",
        "-v", f"{aarch64_wheelhouse}:/wheels:ro",
        "-v", f"{REPO_ROOT / 'systemd'}:/src/systemd:ro",
        "-v", f"{REPO_ROOT / 'config'}:/src/config:ro",
        "localhost/edge-systemd:bookworm-arm64", "/sbin/init",
    )  # fmt: skip
    box = SystemdContainer(name)
    try:
        # Under qemu-user, units that load credentials (systemd-sysusers, systemd-tmpfiles-setup)
        # fail at boot ("Failed to set up credentials: Invalid argument"): "degraded" is the best
        # an emulated boot gets. The install runs both tools itself.
        box.wait_for(
            "systemd to finish booting",
            lambda: box.sh("systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded"),
            timeout=SLOW,
            interval=2,
        )
        assert box.out("uname -m").strip() == "aarch64"
        box.sh(systemd_tests.INSTALL, timeout=SLOW)
        box.sh(f"systemctl start {systemd_tests.UNIT}", timeout=SLOW)
        yield box
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_arm64_agent_under_systemd_is_active_after_ready_and_hardened(arm64_systemd: SystemdContainer) -> None:
    version = json.loads(arm64_systemd.out("/opt/edge-agent/bin/edge-agent version --json", timeout=SLOW))
    assert version["arch"] == "aarch64", version
    systemd_tests.test_service_is_active_after_ready_and_hardened(arm64_systemd)


# ---------------------------------------------------------------- agent releases for Pis


def test_release_image_carries_an_aarch64_folder_made_from_the_same_agent_wheel(
    tmp_path: Path, wheelhouse: Path, registry: Registry
) -> None:
    """scripts/build-release.sh --platform aarch64: beside this machine's wheelhouse, a folder for
    Pis with the same edge-agent wheel and aarch64 wheels of its dependencies (downloaded here)."""
    house = tmp_path / "x86_64-cp311"
    house.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        (house / wheel.name).write_bytes(wheel.read_bytes())
    (agent_wheel,) = house.glob("edge_agent-*.whl")
    version = agent_wheel.name.split("-")[1]
    ref = f"{registry.host}/rel-{uuid.uuid4().hex[:6]}/edge-agent-release:{version}"
    digest = run_script(
        "build-release.sh", "--version", version, "--image", ref, "--wheelhouse", str(house),
        "--platform", "aarch64", "--insecure-registry",
    ).strip()  # fmt: skip
    assert digest.startswith("sha256:"), digest
    name = unique_name("release")
    podman("pull", "-q", "--tls-verify=false", ref)
    try:
        podman("create", "--name", name, ref, "none")
        podman("cp", f"{name}:/wheelhouse", str(tmp_path / "out"))
    finally:
        podman("rm", "-f", name, check=False)
        podman("rmi", "-f", ref, check=False)
    folders = {d.name: sorted(w.name for w in d.glob("*.whl")) for d in (tmp_path / "out").iterdir()}
    assert set(folders) == {"x86_64-cp311", "aarch64-cp311"}, folders
    pi = folders["aarch64-cp311"]
    assert (tmp_path / "out" / "aarch64-cp311" / agent_wheel.name).read_bytes() == agent_wheel.read_bytes()
    compiled = [w for w in pi if not w.endswith("-none-any.whl")]
    assert compiled and all("aarch64" in w for w in compiled), pi
    # the same distributions on both sides (only the platform tags differ)
    assert {w.split("-")[0] for w in pi} == {w.split("-")[0] for w in folders["x86_64-cp311"]}, folders


def test_aarch64_wheelhouse_names_a_dependency_that_has_no_wheel(tmp_path: Path) -> None:
    """A dependency with no aarch64 wheel on the index (tpm2-pytss ships only an sdist) makes
    build-wheel.sh --platform fail naming it; nothing is compiled or emulated instead."""
    src = tmp_path / "src"
    (src / "edge_agent").mkdir(parents=True)
    (src / "edge_agent" / "__init__.py").write_text("")
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "edge-agent"\nversion = "0.0.1"\ndependencies = ["tpm2-pytss>=2.3,<4"]\n'
    )
    built = tmp_path / "built"
    must(
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(built), str(src)],
            capture_output=True, text=True, timeout=300,
        )
    )  # fmt: skip
    (wheel,) = built.glob("edge_agent-0.0.1-*.whl")
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-wheel.sh"), str(tmp_path / "out"), "--platform", "aarch64",
         "--agent-wheel", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tpm2-pytss" in proc.stderr and "has no wheel for aarch64" in proc.stderr, proc.stderr
