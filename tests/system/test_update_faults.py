"""A real self-update meets the faults a battery-powered device sees: the whole device (the systemd
container) SIGKILLed at five points of an update and booted again OFFLINE (no broker), a module that
crashes while the new release soaks, and a full disk while the guard starts a trial.

Everything is real, as in test_self_update.py (whose fixtures and helpers this reuses): systemd as
PID 1, the unit and the guard as docs/operations.md installs them, mosquitto, the OCI registry with
signed release images, and the podman service the device uses (on the host, socket mounted in).

Stopping at a point. The factory install (0.1.0) and the release (0.1.1) are test builds of this
checkout with one addition, edge_agent/test_break.py (with_break_points below): at a named point the
agent waits while /edge-test-break/point names it (a folder the test writes from the host, even
while the device is down), after saying so in the journal. The guard on the device is the
project's guard with one line added at each of its points (guard_with_break_points), which
writes a `reached-<point>` file there.
Held at a point, nothing after it has run and everything before it has finished, which is what a
power cut at that instant leaves (unsynced writes aside: tests/integration/powercut/ cuts those);
the SIGKILL of the container then kills the held process with all the others, like a power cut.
Everything else in the builds and the guard is unchanged (each insertion is checked to apply once).

The device keeps one container across the points: between them it is reset by hand to "the
factory install runs" (pointer, trial, request, watch, outcome and bad/ cleared; the installed
release kept where the next point starts from it), which is what an update that never happened
leaves. Modules run in the host's podman service, so they survive the kills (a real power cut would
stop them too; their restart after a boot is tested elsewhere).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devinfra.mosquitto import Mosquitto
from devinfra.registry import Registry
from edge_agent.runtime.api import LABEL_HELPER, RELEASE_IMAGE_LABEL
from tests.system.conftest import REPO_ROOT, SCRIPTS, SystemdContainer, container_podman_service, podman, unique_name
from tests.system.test_self_update import (  # noqa: F401 (keys, module_image: fixtures used here)
    STATE,
    UNIT,
    Device,
    Keys,
    agent_config,
    agent_wheel,
    document,
    edgectl,
    install_script,
    keys,
    module_image,
    must,
    replace_once,
    update_section,
)

FACTORY = "0.1.0"  # the version of this checkout (pyproject.toml): the factory install
NEW = "0.1.1"
WINDOW_S = 90
SOAK_S = 15
MAX_STARTS = 3
AGENT_DIR = f"{STATE}/agent"
BREAK_DIR = "/edge-test-break"

TEST_BREAK_MODULE = '''"""Test build only: hold the agent at a named point while /edge-test-break/point names it."""
import asyncio
import sys
import time
from pathlib import Path

POINT = Path("/edge-test-break/point")


def _named(name):
    try:
        return POINT.read_text().strip() == name
    except OSError:
        return False


def _say(name):
    print(f"test break point reached: {name}", file=sys.stderr, flush=True)


def hold(name):
    if _named(name):
        _say(name)
        while _named(name):
            time.sleep(0.1)


async def hold_async(name):
    if _named(name):
        _say(name)
        while _named(name):
            await asyncio.sleep(0.1)  # the event loop, and the watchdog pings, go on
'''


def with_break_points(pkg: Path) -> None:
    (pkg / "test_break.py").write_text(TEST_BREAK_MODULE)
    # (a) unpacked: the release's wheels are out of the image, its helper container not yet removed.
    anchor = " " * 24 + "archive.extractall(dest, members=_plain_members(archive, what))  # noqa: S202 (checked)\n"
    replace_once(pkg / "runtime" / "podman.py", anchor,
                 anchor + "                    __import__('edge_agent.test_break').test_break.hold('unpacked')\n")
    # (b) installed: the release's venv is complete and marked; nothing requested, image not removed.
    anchor = " " * 16 + 'await run_blocking(installer.install, self.files, action.version, wheels, '
    anchor += 'name="agent install")\n'
    replace_once(pkg / "selfupdate" / "component.py", anchor,
                 anchor + "            await __import__('edge_agent.test_break').test_break.hold_async('installed')\n")
    # soak: the release on trial is connected and its first pass was clean; it has not confirmed.
    anchor = "        if self.soak.seconds > 0:\n"
    replace_once(pkg / "selfupdate" / "component.py", anchor,
                 "        await __import__('edge_agent.test_break').test_break.hold_async('soak')\n" + anchor)


GUARD_HOLD = f"""
test_hold() {{  # test build only: hold while {BREAK_DIR}/point names $1
    while [ "$(cat {BREAK_DIR}/point 2>/dev/null)" = "$1" ]; do
        [ -e "{BREAK_DIR}/reached-$1" ] || : > "{BREAK_DIR}/reached-$1"
        sleep 0.1
    done
}}
"""


def guard_with_break_points(out: Path) -> Path:
    guard = out / "update-guard"
    shutil.copy2(REPO_ROOT / "systemd" / "edge-agent-update-guard", guard)
    replace_once(guard, "set -eu\n", "set -eu\n" + GUARD_HOLD)
    # state-copy: a request is being taken up; the state copy not yet begun (the disk-full test).
    anchor = "    save_state\n    started=$(now)\n"
    replace_once(guard, anchor, "    test_hold state-copy\n" + anchor)
    # (c) trial written: the trial is synced, the request not yet dropped, the pointer not switched.
    anchor = '    write_trial "$version" "$current" 1 "$started" 0\n    remove "$DIR/request"\n'
    replace_once(guard, anchor, '    write_trial "$version" "$current" 1 "$started" 0\n    test_hold trial-written\n'
                 '    remove "$DIR/request"\n')
    # (d) switched: the pointer names the release; the check timer not started, the unit not started.
    anchor = '    point_to "$release"\n    start_timer\n    log "trial of $version: start 1 of'
    replace_once(guard, anchor, '    point_to "$release"\n    test_hold switched\n    start_timer\n'
                 '    log "trial of $version: start 1 of')
    guard.chmod(0o755)
    return guard


@pytest.fixture(scope="module")
def builds(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, registry: Registry, keys: Keys  # noqa: F811
) -> dict[str, Any]:
    """The factory wheelhouse (0.1.0 with break points) and the signed release image of 0.1.1."""
    out = tmp_path_factory.mktemp("fault-builds")
    factory = out / "factory-house"
    shutil.copytree(wheelhouse, factory, ignore=shutil.ignore_patterns("edge_agent-*"))
    shutil.copy2(agent_wheel(out, FACTORY, with_break_points), factory)
    house = out / f"house-{NEW}" / "x86_64-cp311"
    shutil.copytree(wheelhouse, house, ignore=shutil.ignore_patterns("edge_agent-*"))
    shutil.copy2(agent_wheel(out, NEW, with_break_points), house)
    repo = f"{registry.host}/fault-{uuid.uuid4().hex[:6]}/edge-agent-release"
    ref = f"{repo}:{NEW}"
    must(subprocess.run(
        ["bash", str(SCRIPTS / "build-release.sh"), "--version", NEW, "--image", ref, "--wheelhouse", str(house),
         "--insecure-registry"],
        capture_output=True, text=True, timeout=600,
    ))  # fmt: skip
    must(edgectl("sign-image", ref, "--key", str(keys.image_key), "--insecure-registry", registry.host))
    return {"factory": factory, "ref": ref, "repo": repo, "guard": guard_with_break_points(out)}


INSTALL = install_script("/work/update-guard", WINDOW_S, SOAK_S, MAX_STARTS)


@dataclass
class Faulty:
    """The device, with the means to hold it at a point, cut its power and take its network."""

    device: Device
    breaks: Path  # on the host; /edge-test-break in the device
    repo: str  # the release images' repository
    ref: str

    @property
    def box(self) -> SystemdContainer:
        return self.device.box

    def hold_at(self, point: str | None) -> None:
        target = self.breaks / "point"
        if point is None:
            target.unlink(missing_ok=True)
        else:
            (self.breaks / f"reached-{point}").unlink(missing_ok=True)
            target.write_text(point + "\n")

    def agent_log(self) -> str:
        return self.box.sh(f"journalctl -u {UNIT} --no-pager -o cat", check=False).stdout

    def wait_held(self, point: str, seen_before: int) -> None:
        """The agent (journal) or the guard (reached- file) is held at `point`."""
        line = f"test break point reached: {point}"
        self.box.wait_for(
            f"the update to reach {point}",
            lambda: (self.breaks / f"reached-{point}").exists() or self.agent_log().count(line) > seen_before,
            timeout=300,
        )

    def cut_power(self) -> None:
        podman("kill", "--signal", "KILL", self.box.name)
        podman("wait", self.box.name, timeout=60)

    def boot(self) -> None:
        podman("start", self.box.name)
        self.box.wait_for(
            "systemd to boot again",
            lambda: self.box.sh("systemctl is-system-running --wait", check=False).stdout.strip()
            in ("running", "degraded"),
            timeout=120,
        )

    def running_version(self) -> str | None:
        """The version the agent process systemd runs now says it is (its start line), once READY."""
        show = self.box.show(UNIT, "ActiveState", "InvocationID")
        if show.get("ActiveState") != "active" or not show.get("InvocationID"):
            return None
        said = self.box.sh(f"journalctl _SYSTEMD_INVOCATION_ID={show['InvocationID']} --no-pager -o cat "
                           "| grep -o 'edge-agent [^ ]* started' | tail -n 1", check=False).stdout.split()
        return said[1] if len(said) == 3 else None

    def wait_running(self, version: str) -> None:
        self.box.wait_for(f"agent {version} to run", lambda: self.running_version() == version, timeout=180)

    def file(self, name: str) -> str | None:
        proc = self.box.sh(f"cat {AGENT_DIR}/{name}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def trial(self) -> dict[str, str]:
        text = self.file("trial") or ""
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def installed(self) -> bool:
        return self.box.sh(f"test -f {AGENT_DIR}/releases/{NEW}/.edge-agent-release", check=False).returncode == 0

    def leftovers(self) -> tuple[list[str], list[str]]:
        """What an update can leak into the podman the device uses: its containers (modules, helper
        containers) and the release images pulled from this test's repository."""
        containers = sorted(
            podman("ps", "-a", "-q", "--no-trunc", "--filter", f"label={label}").stdout.split()
            for label in (LABEL_HELPER, f"edge-agent.device={self.device.id}")
        )
        images = []
        labelled = podman("images", "-a", "-q", "--no-trunc", "--filter", f"label={RELEASE_IMAGE_LABEL}").stdout
        for image_id in labelled.split():
            proc = podman("image", "inspect", "--format", "{{json .RepoDigests}} {{json .RepoTags}}", image_id,
                          check=False)
            if self.repo in proc.stdout:
                images.append(image_id)
        return [c for group in containers for c in group], sorted(set(images))

    def wait_no_leftovers(self, before: tuple[list[str], list[str]]) -> None:
        self.box.wait_for("podman to hold what it held before the update", lambda: self.leftovers() == before,
                          timeout=120)

    def reset_to_factory(self, *, keep_release: bool, start: bool) -> None:
        """As if no update ever happened: the factory install runs (the release kept installed or not)."""
        drop = "" if keep_release else f"rm -rf {AGENT_DIR}/releases/{NEW}"
        self.box.sh(f"""set -e
systemctl stop {UNIT} edge-agent-update-check.timer edge-agent-update-check.service
cd {AGENT_DIR}
rm -f trial request watch outcome.json trial-note
rm -rf bad state-before-update
{drop}
ln -sfn /opt/edge-agent current.tmp && chown -h edge-agent:edge-agent current.tmp && mv -T current.tmp current
""")
        if start:
            self.box.sh(f"systemctl start {UNIT}", timeout=180)


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory,
    systemd_image: str,
    builds: dict[str, Any],
    registry: Registry,
    keys: Keys,  # noqa: F811
) -> Iterator[Faulty]:
    work = tmp_path_factory.mktemp("update-faults")
    work.chmod(0o755)
    breaks = work / "break"
    breaks.mkdir()
    broker = Mosquitto(work / "mosquitto").start()
    service = container_podman_service(work)
    device_id = f"uf-{uuid.uuid4().hex[:8]}"
    prefix = f"edge-{device_id}"
    (work / "config.toml").write_text(agent_config(device_id, prefix, broker, registry))
    shutil.copy2(keys.fleet_pub, work / "fleet.pub")
    shutil.copy2(keys.image_pub, work / "image.pub")
    shutil.copy2(builds["guard"], work / "update-guard")
    name = unique_name("update-faults")
    box = SystemdContainer(name)
    try:
        podman(
            "run", "-d", "--name", name, "--network", "host",
            "--systemd=always", "--cap-add", "SYS_ADMIN",
            "-v", f"{builds['factory']}:/wheels:ro",
            "-v", f"{REPO_ROOT / 'systemd'}:/src/systemd:ro",
            "-v", f"{work}:/work:ro",
            "-v", f"{breaks}:{BREAK_DIR}",
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
        yield Faulty(Device(box, broker, device_id, prefix), breaks, builds["repo"], builds["ref"])
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
        ids = podman("ps", "-a", "-q", "--filter", f"label=edge-agent.device={device_id}", check=False).stdout.split()
        if ids:
            podman("rm", "-f", "-t", "0", *ids, check=False)
        service.stop()
        broker.stop()


@pytest.fixture(scope="module")
def app(
    faulty: Faulty, module_image: str, keys: Keys, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
) -> tuple[str, str]:
    """The device runs module `app` on the factory install: (container id, started at)."""
    must(faulty.device.deploy(document(module_image, None), keys, tmp_path_factory.mktemp("docs")))
    faulty.device.wait_reported(
        "the module to run",
        lambda r: (r.get("modules") or {}).get("app", {}).get("runtimeStatus") == "running",
        timeout=120,
    )
    modules = faulty.device.modules()
    assert set(modules) == {"app"}, modules
    return modules["app"]


def last_update(reported: dict[str, Any]) -> dict[str, Any]:
    return update_section(reported).get("last") or {}


# ---------------------------------------------------------------- the tests, in order


def test_killed_at_five_points_of_an_update_and_booted_offline(
    faulty: Faulty, app: tuple[str, str], module_image: str, keys: Keys, tmp_path: Path  # noqa: F811
) -> None:
    device = faulty.device
    faulty.wait_running(FACTORY)
    before = faulty.leftovers()
    assert before[0] == [app[0]] and before[1] == [], before  # the module's container; no release image

    def offline_boot() -> None:
        faulty.cut_power()
        faulty.hold_at(None)  # the next boot runs through every point
        device.broker.stop()  # and no broker is reachable during it
        faulty.boot()

    # (a) Killed right after the release's wheels were unpacked (helper container still there, image
    # pulled). Right: the factory install, which ran: nothing was installed or asked for. Offline, it
    # finishes installing (the registry is not the broker) but does not switch: a trial can only
    # confirm connected. Its helper container and the release image are collected.
    faulty.hold_at("unpacked")
    must(device.deploy(document(module_image, {"version": NEW, "image": faulty.ref}), keys, tmp_path))
    faulty.wait_held("unpacked", 0)
    assert len(faulty.leftovers()[0]) == 2 and faulty.leftovers()[1], faulty.leftovers()  # the helper, the image
    offline_boot()
    faulty.wait_running(FACTORY)
    faulty.box.wait_for("the release to be installed offline", faulty.installed, timeout=300)
    faulty.wait_no_leftovers(before)
    assert faulty.file("request") is None and faulty.file("trial") is None
    assert faulty.box.out(f"readlink {AGENT_DIR}/current").strip() == "/opt/edge-agent"

    # (b) Killed right after the release was installed (marked complete; not yet asked for, its image
    # not yet removed). Right: the factory install; offline it waits for the broker to switch.
    faulty.reset_to_factory(keep_release=False, start=False)
    faulty.hold_at("installed")
    seen = faulty.agent_log().count("test break point reached: installed")
    faulty.box.sh(f"systemctl start {UNIT}", timeout=180)  # still offline: installing needs no broker
    faulty.wait_held("installed", seen)
    offline_boot()
    faulty.wait_running(FACTORY)
    faulty.wait_no_leftovers(before)
    assert faulty.installed()
    assert faulty.file("request") is None and faulty.file("trial") is None
    assert faulty.box.out(f"readlink {AGENT_DIR}/current").strip() == "/opt/edge-agent"

    # (c) Killed right after the guard wrote the trial (request not yet dropped, pointer not yet
    # switched). Right: the release, on trial: the trial is the guard's record that the switch was
    # decided, so the next start finishes it (start 1) and drops the request.
    faulty.hold_at("trial-written")
    device.broker.start()  # online: the factory install asks for the switch
    faulty.wait_held("trial-written", 0)
    assert faulty.file("request") is not None
    offline_boot()
    faulty.wait_running(NEW)
    assert faulty.file("request") is None
    trial = faulty.trial()
    assert (trial.get("version"), trial.get("previous"), trial.get("starts")) == (NEW, "/opt/edge-agent", "1"), trial
    faulty.wait_no_leftovers(before)

    # (d) Killed right after the switch (timer not started, the release not started). Right: the
    # release, on trial; the cut start counts (start 2). The request went before the switch.
    faulty.reset_to_factory(keep_release=True, start=False)
    faulty.hold_at("switched")
    device.broker.start()
    faulty.box.sh(f"systemctl start {UNIT}", timeout=180)
    faulty.wait_held("switched", 0)
    assert faulty.file("request") is None and faulty.trial().get("starts") == "1"
    offline_boot()
    faulty.wait_running(NEW)
    assert faulty.file("request") is None
    trial = faulty.trial()
    assert (trial.get("version"), trial.get("previous"), trial.get("starts")) == (NEW, "/opt/edge-agent", "2"), trial
    faulty.wait_no_leftovers(before)

    # (e) Killed right after the first start of the release (READY, on trial). Right: the release,
    # start 2 of its trial. Online again, it confirms: the update ends as if never cut.
    faulty.reset_to_factory(keep_release=True, start=False)
    device.broker.start()
    faulty.box.sh(f"systemctl start {UNIT}", timeout=180)
    faulty.wait_running(NEW)
    offline_boot()
    faulty.wait_running(NEW)
    assert faulty.file("request") is None
    trial = faulty.trial()
    assert (trial.get("version"), trial.get("previous"), trial.get("starts")) == (NEW, "/opt/edge-agent", "2"), trial
    faulty.wait_no_leftovers(before)
    device.broker.start()
    reported = device.wait_reported(
        f"agent {NEW} to confirm once online",
        lambda r: update_section(r).get("running") == NEW and last_update(r).get("result") == "succeeded",
        timeout=300,
    )
    last = last_update(reported)
    assert (last["previous"], last["reason"]) == ("factory", "confirmed after 2 start(s)"), last
    assert faulty.file("trial") is None and faulty.file("request") is None
    assert faulty.leftovers() == before
    assert device.modules() == {"app": app}, "a module was re-created or restarted by the update"


def test_a_module_that_crashes_once_while_the_release_soaks_does_not_fail_it(
    faulty: Faulty, app: tuple[str, str]
) -> None:
    """The module's crash is the module's: its restart policy restarts it, and the healthy release
    confirms (the soak judges the agent: connected, alive, not the modules' luck)."""
    device = faulty.device
    faulty.reset_to_factory(keep_release=True, start=True)  # the factory install switches to 0.1.1 again
    device.wait_reported(
        f"agent {NEW} to run its soak",
        lambda r: update_section(r).get("running") == NEW and "running its soak" in update_section(r).get("detail", ""),
        timeout=300,
    )
    (container, _) = device.modules()["app"]
    podman("kill", "--signal", "KILL", container)  # the crash: exit 137
    reported = device.wait_reported(
        f"agent {NEW} to confirm",
        lambda r: update_section(r).get("running") == NEW and last_update(r).get("result") == "succeeded",
        timeout=300,
    )
    assert last_update(reported)["reason"] == "confirmed after 1 start(s)", last_update(reported)
    device.wait_reported(
        "the module to run again",
        lambda r: (r.get("modules") or {}).get("app", {}).get("runtimeStatus") == "running",
        timeout=120,
    )
    assert device.modules()["app"] != app, "the module's crash went unseen"  # restarted (or re-created)
    assert faulty.box.out(f"readlink {AGENT_DIR}/current").strip() == f"{AGENT_DIR}/releases/{NEW}"


def deploy_signed(
    faulty: Faulty, doc: dict[str, Any], key: Path, tmp: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`edgectl deploy --wait` of `doc` signed by `key`, with `extra` flags (--version, --rotate-to)."""
    device = faulty.device
    path = tmp / f"deployment-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(doc))
    return edgectl("deploy", *device.flags(), device.id, str(path), "--key", str(key), *extra,
                   "--wait", "120", "--until", "accepted", timeout=180)


def highest_version(reported: dict[str, Any]) -> int:
    return int((reported.get("deployment") or {}).get("highestVersion") or 0)


def test_a_key_rotation_during_a_trial_outlives_its_roll_back(
    faulty: Faulty, app: tuple[str, str], module_image: str, keys: Keys, tmp_path: Path  # noqa: F811
) -> None:
    """While 0.1.1 is on trial a signed document rotates the document keys; then the trial fails (its
    process killed at every start, as the watchdog or the OOM killer would) and the guard rolls back,
    restoring the state.db of before the trial. The rotated key is still the one trusted and the
    versions accepted during the trial are still refused as replays (document-trust.json): with the
    restored state.db alone, the old key and those versions would be accepted again."""
    device = faulty.device
    must(edgectl("keygen", "--output-key-prefix", str(tmp_path / "rotated")))
    rotated_key, rotated_pub = tmp_path / "rotated.key", tmp_path / "rotated.pub"
    doc = document(module_image, {"version": NEW, "image": faulty.ref})
    faulty.hold_at("soak")  # on trial, connected, first pass clean: held before it could confirm
    seen = faulty.agent_log().count("test break point reached: soak")
    faulty.reset_to_factory(keep_release=True, start=True)
    faulty.wait_held("soak", seen)
    floor_before = highest_version(device.reported())
    proc = deploy_signed(faulty, doc, keys.fleet_key, tmp_path, "--rotate-to", str(rotated_pub))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rotation = highest_version(device.reported())
    assert rotation > floor_before and faulty.trial().get("version") == NEW
    # The trial fails: killed at each of its starts until the guard gives up on it.
    killed: set[str] = set()
    deadline = time.monotonic() + 300
    while faulty.running_version() != FACTORY:
        assert time.monotonic() < deadline, f"no roll-back after {len(killed)} kills:\n{faulty.agent_log()[-3000:]}"
        invocation = faulty.box.show(UNIT, "InvocationID", "ActiveState")
        if invocation.get("ActiveState") == "active" and invocation["InvocationID"] not in killed \
                and faulty.running_version() == NEW:
            killed.add(invocation["InvocationID"])
            faulty.box.sh(f"systemctl kill --kill-whom=main --signal=KILL {UNIT}", check=False)
        assert len(killed) <= MAX_STARTS, f"killed {len(killed)} starts and no roll-back:\n{faulty.agent_log()[-3000:]}"
        time.sleep(0.5)
    faulty.hold_at(None)
    reported = device.wait_reported(
        "the roll-back to be reported",
        lambda r: update_section(r).get("running") == FACTORY and last_update(r).get("result") == "rolled_back",
        timeout=120,
    )
    assert last_update(reported)["version"] == NEW, last_update(reported)
    # The device tells the fleet the newest version it took (the floor), though state.db went back.
    assert highest_version(reported) == rotation, reported.get("deployment")
    # The retired key, with the version the trial accepted: refused (state.db alone would accept it).
    proc = deploy_signed(faulty, doc, keys.fleet_key, tmp_path, "--version", str(rotation))
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1 and ("replayed" in said or "untrusted_key" in said), said
    # The rotated key, with that version again: a replay.
    proc = deploy_signed(faulty, doc, rotated_key, tmp_path, "--version", str(rotation))
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "replayed" in said, said
    # The rotated key, with the next version as edgectl picks it from what the device reports:
    # accepted (state.db alone trusts only the retired key, and reports a lower newest version).
    proc = deploy_signed(faulty, doc, rotated_key, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert highest_version(device.reported()) == rotation + 1


def test_a_full_disk_while_the_guard_starts_a_trial_still_starts_the_agent(faulty: Faulty) -> None:
    """The state folder on a small filesystem (a tmpfs mounted over it, as a small SD card partition),
    filled while the guard holds before its copy of state.db, leaving less room than that copy needs:
    the copy fails with ENOSPC. The guard drops the request with the reason reported, the agent starts
    on the release it ran, and it does not ask again at once (each ask restarts it). The filler goes
    once the guard has reported (the subject is the guard: an agent that cannot write its own
    database on a full disk is another matter)."""
    device = faulty.device
    box = faulty.box
    faulty.reset_to_factory(keep_release=True, start=False)
    box.sh(f"""set -e
cp -a {STATE} {STATE}.disk
used=$(du -sk {STATE}.disk | cut -f1)
mount -t tmpfs -o size=$((used + 4096))k tmpfs {STATE}
chown --reference={STATE}.disk {STATE}
chmod --reference={STATE}.disk {STATE}
cp -a {STATE}.disk/. {STATE}/
""")
    guard_failures = faulty.agent_log().count("edge-agent-update-guard: start failed")
    faulty.hold_at("state-copy")
    box.sh(f"systemctl start {UNIT}", timeout=180)  # the factory install asks for 0.1.1 and restarts
    faulty.wait_held("state-copy", 0)
    size = int(box.out(f"stat -c %s {STATE}/state.db").strip())
    slack = 16 * 1024
    assert size > 2 * slack, f"state.db ({size} bytes) is smaller than twice this test's slack"
    box.sh(f"fallocate -l $(( $(df --output=avail -B1 {STATE} | tail -n 1) - {slack} )) {STATE}/filler")
    faulty.hold_at(None)
    box.wait_for("the guard to report its failure", lambda: '"failed"' in (faulty.file("outcome.json") or ""),
                 timeout=120)
    box.sh(f"rm -f {STATE}/filler")
    reported = device.wait_reported(
        "the guard's failure to be reported",
        # (right after the start it may say it waits for the broker first, before it has connected)
        lambda r: last_update(r).get("result") == "failed" and update_section(r).get("state") == "waiting"
        and "could not start its trial" in (update_section(r).get("detail") or ""),
        timeout=300,
    )
    last = last_update(reported)
    assert last["version"] == NEW and "could not start the trial" in last["reason"], last
    assert "No space left on device" in last["reason"], last
    assert "could not start its trial" in update_section(reported)["detail"], update_section(reported)
    assert update_section(reported)["running"] == FACTORY
    faulty.wait_running(FACTORY)
    assert faulty.file("request") is None and faulty.file("trial") is None
    assert box.sh(f"test -e {AGENT_DIR}/state-before-update.tmp", check=False).returncode != 0
    assert box.out(f"readlink {AGENT_DIR}/current").strip() == "/opt/edge-agent"
    # One failure: the agent waits before it asks again (it would restart every few seconds).
    assert faulty.agent_log().count("edge-agent-update-guard: start failed") == guard_failures + 1
    assert json.loads(faulty.file("outcome.json") or "{}").get("at") == last["at"]
