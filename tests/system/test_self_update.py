"""The agent updates itself, under a real systemd (PID 1 in a podman container), installed the way
docs/operations.md says: factory venv at /opt/edge-agent, the unit, the update guard and its
timer. Around it, all real: a mosquitto broker, the OCI registry with cosign-signed release and
module images, and a podman service (on the host; its socket is mounted into the container) that
runs the device's module. The container shares the host's network so the agent reaches them all
on loopback.

Releases are real wheels of this checkout with another version number (and, for the broken ones,
one deliberate fault), in release images built by scripts/build-release.sh and signed with
`edgectl sign-image`. The tests share one device and run in file order.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devinfra.mosquitto import Mosquitto
from devinfra.registry import Registry
from edge_shared.mqtt_config import MqttSection
from edge_shared.mqtt_params import broker_params
from edgectl.client import FleetClient
from tests.system.conftest import (
    REPO_ROOT,
    SCRIPTS,
    SystemdContainer,
    container_agent_config,
    container_podman_service,
    podman,
    unique_name,
)

UNIT = "edge-agent.service"
STATE = "/var/lib/edge-agent"
PASSPHRASE = "release test passphrase"
WINDOW_S = 45
SOAK_S = 5  # the release on trial confirms after running this long
MAX_STARTS = 2
SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}


def edgectl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGECTL_KEY_PASSWORD": PASSPHRASE}
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=env,
    )


def must(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# ---------------------------------------------------------------- releases


def agent_wheel(out: Path, version: str, fault: Callable[[Path], None] | None = None) -> Path:
    """A wheel of this checkout as `version`, with `fault` applied to its source."""
    src = out / f"src-{version}"
    shutil.copytree(REPO_ROOT / "edge_agent", src / "edge_agent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO_ROOT / "README.md", src / "README.md")
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    patched, changed = re.subn(r'(?m)^version = "[^"]+"$', f'version = "{version}"', pyproject, count=1)
    assert changed == 1, "pyproject.toml has no version line to change"
    (src / "pyproject.toml").write_text(patched)
    if fault is not None:
        fault(src / "edge_agent")
    wheels = out / f"wheels-{version}"
    must(
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(src)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    )
    (wheel,) = wheels.glob(f"edge_agent-{version}-*.whl")
    return wheel


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: the fault's anchor {old!r} is not there exactly once"
    path.write_text(text.replace(old, new))


def crashes_at_start(pkg: Path) -> None:
    replace_once(
        pkg / "daemon.py",
        "    async def run(self) -> int:\n",
        "    async def run(self) -> int:\n        raise RuntimeError('this release crashes at start')\n",
    )


def hangs_after_its_first_pass(pkg: Path) -> None:
    """Starts, connects, adopts the modules, then its event loop stops (a deadlock, a blocking call):
    the watchdog pings stop with it."""
    replace_once(
        pkg / "selfupdate" / "component.py",
        "            await self.sleep(self.soak.seconds)\n",
        "            __import__('time').sleep(3600)  # the fault: the loop, and its watchdog pings, stop\n",
    )


def cannot_reach_the_broker(pkg: Path) -> None:
    replace_once(
        pkg / "twin" / "session.py",
        "params = self.params.at(endpoint)",
        "params = self.params.at(type(endpoint)(endpoint.host, 1))  # dials a port nobody listens on",
    )


@dataclass
class Keys:
    image_key: Path
    image_pub: Path
    stranger_key: Path
    fleet_key: Path
    fleet_pub: Path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    for name in ("image", "stranger", "fleet"):
        must(edgectl("keygen", "--output-key-prefix", str(d / name)))
    return Keys(d / "image.key", d / "image.pub", d / "stranger.key", d / "fleet.key", d / "fleet.pub")


@pytest.fixture(scope="module")
def releases(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, registry: Registry, keys: Keys
) -> Iterator[dict[str, str]]:
    """version -> release image reference in the registry, signed (0.1.4 by a stranger's key)."""
    out = tmp_path_factory.mktemp("releases")
    faults: dict[str, Callable[[Path], None] | None] = {
        "0.1.1": None,
        "0.1.2": crashes_at_start,
        "0.1.3": cannot_reach_the_broker,
        "0.1.4": None,
        "0.1.5": None,
        "0.1.6": hangs_after_its_first_pass,
    }
    refs = {}
    run = uuid.uuid4().hex[:6]
    for version, fault in faults.items():
        house = out / f"house-{version}" / "x86_64-cp311"
        shutil.copytree(wheelhouse, house, ignore=shutil.ignore_patterns("edge_agent-*"))
        shutil.copy2(agent_wheel(out, version, fault), house)
        ref = f"{registry.host}/su-{run}/edge-agent-release:{version}"
        proc = subprocess.run(
            [
                "bash",
                str(SCRIPTS / "build-release.sh"),
                "--version",
                version,
                "--image",
                ref,
                "--wheelhouse",
                str(house),
                "--insecure-registry",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", must(proc).strip()), proc.stdout
        key = keys.stranger_key if version == "0.1.4" else keys.image_key
        must(edgectl("sign-image", ref, "--key", str(key), "--insecure-registry", registry.host))
        refs[version] = ref
    yield refs


# ---------------------------------------------------------------- the device


class Device:
    def __init__(self, box: SystemdContainer, broker: Mosquitto, device_id: str, prefix: str) -> None:
        self.box = box
        self.broker = broker
        self.id = device_id
        self.prefix = prefix

    def flags(self) -> list[str]:
        return ["--broker", "127.0.0.1", "--port", str(self.broker.port), "--prefix", self.prefix]

    def deploy(
        self, doc: dict[str, Any], keys: Keys, tmp: Path, *, until: str = "accepted", wait_s: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`edgectl deploy --wait --until`, as an operator runs it; its exit status is the caller's to judge."""
        path = tmp / f"deployment-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(doc))
        return edgectl(
            "deploy", *self.flags(), self.id, str(path), "--key", str(keys.fleet_key),
            "--wait", str(wait_s), "--until", until, timeout=wait_s + 60,
        )  # fmt: skip

    async def _reported(self) -> dict[str, Any]:
        section = MqttSection(host="127.0.0.1", port=self.broker.port, topic_prefix=self.prefix)
        async with FleetClient(broker_params(section, f"fleet-{uuid.uuid4().hex[:6]}"), self.prefix) as fleet:
            view = await fleet.view(self.id)
        return view.reported or {}

    def reported(self) -> dict[str, Any]:
        return asyncio.run(self._reported())

    def wait_reported(self, what: str, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.reported()
            if predicate(last):
                return last
            time.sleep(1)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; agentUpdate="
            f"{json.dumps(last.get('agentUpdate'))} deployment={json.dumps(last.get('deployment'))[:1500]}"
            f"\n--- journal ---\n{self.journal()}"
        )

    def journal(self, lines: int = 80) -> str:
        return self.box.sh(
            f"journalctl -u {UNIT} -u edge-agent-update-check.service -n {lines} --no-pager", check=False
        ).stdout

    def modules(self) -> dict[str, tuple[str, str]]:
        """module -> (container id, started at), from podman itself."""
        ids = podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label=edge-agent.device={self.id}").stdout.split()
        out = {}
        for cid in ids:
            doc = json.loads(podman("inspect", cid).stdout)[0]
            out[doc["Config"]["Labels"]["edge-agent.module"]] = (doc["Id"], doc["State"]["StartedAt"])
        return out

    def pointer(self) -> str:
        return self.box.out(f"readlink {STATE}/agent/current").strip()


def agent_config(device_id: str, prefix: str, broker: Mosquitto, registry: Registry) -> str:
    return container_agent_config(device_id, prefix, broker.port, registry.host, '[logging]\nlevel = "info"\n')


def install_script(guard: str, window_s: int, soak_s: int, max_starts: int) -> str:
    """The device's install of the agent from the wheelhouse, with `guard` as its update guard."""
    return f"""
    set -e
    python3 -m venv /opt/edge-agent
    /opt/edge-agent/bin/pip install --quiet --no-index --find-links /wheels edge-agent
    install -m 0644 /src/systemd/edge-agent.service /src/systemd/edge-agent-update-check.service \
        /src/systemd/edge-agent-update-check.timer /etc/systemd/system/
    install -D -m 0755 {guard} /usr/lib/edge-agent/update-guard
    install -D -m 0644 /src/systemd/edge-agent.sysusers.conf /etc/sysusers.d/edge-agent.conf
    install -D -m 0644 /src/systemd/edge-agent.tmpfiles.conf /etc/tmpfiles.d/edge-agent.conf
    systemd-sysusers
    systemd-tmpfiles --create /etc/tmpfiles.d/edge-agent.conf
    install -m 0640 -o root -g edge-agent /work/config.toml /etc/edge-agent/config.toml
    install -D -m 0644 /work/fleet.pub /etc/edge-agent/keys/fleet.pub
    install -D -m 0644 /work/image.pub /etc/edge-agent/keys/image.pub
    printf 'EDGE_AGENT_UPDATE_WINDOW_S={window_s}\\nEDGE_AGENT_UPDATE_MAX_STARTS={max_starts}\\n' \\
        > /etc/edge-agent/update.env
    printf 'EDGE_AGENT_UPDATE_SOAK_S={soak_s}\\n' >> /etc/edge-agent/update.env
    systemctl daemon-reload
    systemctl enable edge-agent.service
    """


INSTALL = install_script("/src/systemd/edge-agent-update-guard", WINDOW_S, SOAK_S, MAX_STARTS)


@pytest.fixture(scope="module")
def device(
    tmp_path_factory: pytest.TempPathFactory,
    systemd_image: str,
    wheelhouse: Path,
    registry: Registry,
    keys: Keys,
    busybox_image: str,
) -> Iterator[Device]:
    work = tmp_path_factory.mktemp("self-update")
    work.chmod(0o755)
    broker = Mosquitto(work / "mosquitto").start()
    service = container_podman_service(work)  # the device's podman, usable by the agent's user
    device_id = f"su-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-{device_id}"
    (work / "config.toml").write_text(agent_config(device_id, prefix, broker, registry))
    shutil.copy2(keys.fleet_pub, work / "fleet.pub")
    shutil.copy2(keys.image_pub, work / "image.pub")
    name = unique_name("selfupdate")
    box = SystemdContainer(name)
    try:
        podman(
            "run", "-d", "--name", name, "--network", "host",
            "--systemd=always", "--cap-add", "SYS_ADMIN",
            "-v", f"{wheelhouse}:/wheels:ro",
            "-v", f"{REPO_ROOT / 'systemd'}:/src/systemd:ro",
            "-v", f"{work}:/work:ro",
            "-v", f"{service.socket_path.parent}:/run/edge-test-podman",
            systemd_image, "/sbin/init",
        )  # fmt: skip
        box.wait_for(
            "systemd to finish booting",
            lambda: box.sh("systemctl is-system-running --wait", check=False).stdout.strip() in ("running", "degraded"),
            timeout=60,
        )
        box.sh(INSTALL, timeout=300)
        box.sh(f"systemctl start {UNIT}", timeout=150)
        yield Device(box, broker, device_id, prefix)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        ids = podman("ps", "-a", "-q", "--filter", f"label=edge-agent.device={device_id}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "--ignore", "-t", "0", *ids, check=False)
        service.stop()
        broker.stop()


@pytest.fixture(scope="module")
def module_image(registry: Registry, busybox_image: str, keys: Keys) -> str:
    ref = f"{registry.host}/su-{uuid.uuid4().hex[:6]}/app:1"
    podman("push", "-q", "--tls-verify=false", busybox_image, ref)
    must(edgectl("sign-image", ref, "--key", str(keys.image_key), "--insecure-registry", registry.host))
    return ref


def document(module_image: str, agent: dict[str, str] | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"modules": {"app": {"image": module_image, **SLEEP}}}
    if agent is not None:
        doc["agent"] = agent
    return doc


def update_section(reported: dict[str, Any]) -> dict[str, Any]:
    return reported.get("agentUpdate") or {}


def update_rolled_back(
    device: Device, releases: dict[str, str], module_image: str, keys: Keys, tmp: Path, version: str, timeout: float
) -> dict[str, Any]:
    """Deploy agent `version`, which must fail: edgectl --until good exits 1 naming the roll-back,
    and the device reports it, running 0.1.1 again. The reported `last` outcome."""
    proc = device.deploy(document(module_image, {"version": version, "image": releases[version]}), keys, tmp,
                         until="good", wait_s=timeout)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1 and f"agent {version} rolled_back" in said, said
    reported = device.wait_reported(
        f"release {version} to be rolled back",
        lambda r: (update_section(r).get("last") or {}).get("version") == version
        and update_section(r).get("running") == "0.1.1",
        timeout=timeout,
    )
    last: dict[str, Any] = update_section(reported)["last"]
    assert last["result"] == "rolled_back", last
    return last


# ---------------------------------------------------------------- the tests, in order


@pytest.fixture(scope="module")
def running_module(
    device: Device, module_image: str, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("docs")
    must(device.deploy(document(module_image, None), keys, tmp))
    device.wait_reported(
        "the module to run",
        lambda r: (r.get("modules") or {}).get("app", {}).get("runtimeStatus") == "running",
        timeout=120,
    )
    modules = device.modules()
    assert set(modules) == {"app"}, modules
    return modules["app"]


def test_update_to_the_next_release_keeps_modules_running(
    device: Device,
    releases: dict[str, str],
    running_module: tuple[str, str],
    module_image: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    assert update_section(device.reported()).get("running") == "0.1.0"
    assert device.pointer() == "/opt/edge-agent"
    # --until good waits for the agent release too: exit 0 only once 0.1.1 runs.
    proc = device.deploy(document(module_image, {"version": "0.1.1", "image": releases["0.1.1"]}), keys, tmp_path,
                         until="good", wait_s=420)
    assert proc.returncode == 0 and "agent 0.1.1 runs" in proc.stdout, proc.stdout + proc.stderr
    reported = device.wait_reported(
        "agent 0.1.1 to run and confirm",
        lambda r: (
            update_section(r).get("running") == "0.1.1"
            and (update_section(r).get("last") or {}).get("result") == "succeeded"
        ),
        timeout=420,
    )
    assert reported["agent"]["version"] == "0.1.1"
    assert update_section(reported)["last"]["previous"] == "factory"
    assert device.pointer() == f"{STATE}/agent/releases/0.1.1"
    assert device.modules() == {"app": running_module}, "the module was re-created or restarted by the update"
    assert "trial of 0.1.1: start 1 of 2" in device.journal(400)


def test_a_release_that_crashes_at_start_is_rolled_back(
    device: Device,
    releases: dict[str, str],
    running_module: tuple[str, str],
    module_image: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    last = update_rolled_back(device, releases, module_image, keys, tmp_path, "0.1.2", timeout=420)
    assert last["previous"] == "0.1.1" and "without confirming" in last["reason"], last
    # The agent does not try it again, and says why.
    reported = device.wait_reported(
        "0.1.2 refused as rolled back before", lambda r: update_section(r).get("state") == "refused", timeout=60
    )
    assert "rolled back before" in update_section(reported)["detail"]
    assert device.pointer() == f"{STATE}/agent/releases/0.1.1"
    assert device.modules() == {"app": running_module}
    assert "this release crashes at start" in device.journal(400)


def test_a_release_that_cannot_reach_the_broker_is_rolled_back(
    device: Device,
    releases: dict[str, str],
    running_module: tuple[str, str],
    module_image: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    last = update_rolled_back(device, releases, module_image, keys, tmp_path, "0.1.3", timeout=420 + WINDOW_S)
    assert f"not confirmed within {WINDOW_S}s" in last["reason"], last
    assert device.pointer() == f"{STATE}/agent/releases/0.1.1"
    assert device.modules() == {"app": running_module}


def test_a_release_that_hangs_after_its_first_seconds_is_rolled_back(
    device: Device,
    releases: dict[str, str],
    running_module: tuple[str, str],
    module_image: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    """It passes its start and first pass, then hangs during the soak: systemd's watchdog kills it,
    it never confirms, and the guard takes the device back (at the window or after max starts)."""
    last = update_rolled_back(device, releases, module_image, keys, tmp_path, "0.1.6", timeout=420 + WINDOW_S)
    assert last["previous"] == "0.1.1", last
    assert f"not confirmed within {WINDOW_S}s" in last["reason"] or "without confirming" in last["reason"], last
    journal = device.journal(600)
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert device.pointer() == f"{STATE}/agent/releases/0.1.1"
    assert device.modules() == {"app": running_module}


def test_a_release_signed_by_the_wrong_key_is_never_installed(
    device: Device,
    releases: dict[str, str],
    running_module: tuple[str, str],
    module_image: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    proc = device.deploy(document(module_image, {"version": "0.1.4", "image": releases["0.1.4"]}), keys, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "@agent" in proc.stdout + proc.stderr and "untrusted_key" in proc.stdout + proc.stderr, proc.stdout
    time.sleep(10)  # give a wrong install the time to start, if there were one
    reported = device.reported()
    assert update_section(reported)["running"] == "0.1.1" and update_section(reported)["wanted"] != "0.1.4"
    assert device.box.sh(f"test -e {STATE}/agent/releases/0.1.4", check=False).returncode != 0
    assert device.pointer() == f"{STATE}/agent/releases/0.1.1"
    assert device.modules() == {"app": running_module}


def test_power_cut_in_the_middle_of_an_update_comes_back_on_a_working_version(
    device: Device,
    releases: dict[str, str],
    running_module: tuple[str, str],
    module_image: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    must(device.deploy(document(module_image, {"version": "0.1.5", "image": releases["0.1.5"]}), keys, tmp_path))
    # Cut the power while the release is being installed: its folder exists, its marker not yet.
    device.box.wait_for(
        "the install of 0.1.5 to be under way",
        lambda: (
            device.box.sh(
                f"test -d {STATE}/agent/releases/0.1.5/bin && "
                f"test ! -e {STATE}/agent/releases/0.1.5/.edge-agent-release",
                check=False,
            ).returncode
            == 0
        ),
        timeout=300,
        interval=0.2,
    )
    podman("kill", "--signal", "KILL", device.box.name)
    podman("wait", device.box.name, timeout=60)
    podman("start", device.box.name)
    device.box.wait_for(
        "systemd to boot again",
        lambda: (
            device.box.sh("systemctl is-system-running --wait", check=False).stdout.strip() in ("running", "degraded")
        ),
        timeout=90,
    )
    # It comes back on the version that ran before, finishes the update, and 0.1.5 confirms.
    reported = device.wait_reported(
        "agent 0.1.5 to run and confirm after the power cut",
        lambda r: (
            update_section(r).get("running") == "0.1.5"
            and (update_section(r).get("last") or {}).get("result") == "succeeded"
        ),
        timeout=480,
    )
    assert update_section(reported)["last"]["previous"] == "0.1.1"
    assert device.modules() == {"app": running_module}


def test_power_cut_during_the_trial_comes_back_and_finishes_it(
    device: Device,
    releases: dict[str, str],
    running_module: tuple[str, str],
    module_image: str,
    keys: Keys,
    tmp_path: Path,
) -> None:
    # Back to 0.1.1, which is still installed (the running version and the new one are kept):
    # going back is an update like any other, with its own trial.
    must(device.deploy(document(module_image, {"version": "0.1.1", "image": releases["0.1.1"]}), keys, tmp_path))
    # Watch from inside (a poll from outside is too slow for a trial of a few seconds), cut the
    # power the moment the guard has switched.
    device.box.sh(f"until grep -qs version=0.1.1 {STATE}/agent/trial; do sleep 0.02; done", timeout=300)
    podman("kill", "--signal", "KILL", device.box.name)
    podman("wait", device.box.name, timeout=60)
    podman("start", device.box.name)
    reported = device.wait_reported(
        "agent 0.1.1 to confirm its trial after the power cut",
        lambda r: update_section(r).get("running") == "0.1.1"
        and (update_section(r).get("last") or {}).get("version") == "0.1.1",
        timeout=300,
    )
    last = update_section(reported)["last"]
    # The second start of the trial (the first was cut) is the one that confirmed.
    assert (last["result"], last["previous"], last["reason"]) == ("succeeded", "0.1.5", "confirmed after 2 start(s)")
    assert device.pointer() == f"{STATE}/agent/releases/0.1.1"
    assert device.modules() == {"app": running_module}
