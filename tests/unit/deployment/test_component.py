"""DeploymentComponent over the in-memory runtime, with a hand-driven clock: probation, rollback,
bad versions, restart counting, reported state, adoption, image GC."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import parse_config
from edge_agent.deployment.component import DeploymentComponent
from edge_agent.deployment.store import DeploymentStore
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import ContainerRequest, MountRequest
from edge_agent.runtime.fake import FakeRuntime
from edge_agent.store import open_state_db
from edge_agent.trust.api import ImageRejected, VerifiedImage
from edge_agent.twin.events import DesiredRejected, DesiredState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeVerifier:
    async def verify(self, reference: str) -> VerifiedImage:
        if "evil" in reference:
            raise ImageRejected(reference, "unsigned", "no signature")
        repo = reference.rsplit(":", 1)[0]
        return VerifiedImage(reference, repo, "sha256:" + hashlib.sha256(reference.encode()).hexdigest(), "off", None)


CONFIG = """
[device]
id = "unit-dev"
[podman]
pull_retries = 1
[deployment]
stabilisation_window_s = 30
backoff_initial_s = 1
backoff_max_s = 8
backoff_reset_s = 60
"""


def make(tmp_path: Path, runtime: FakeRuntime | None = None, clock: Clock | None = None) -> tuple[
        DeploymentComponent, FakeRuntime, Clock, ReportedState]:
    clock = clock or Clock()
    runtime = runtime or FakeRuntime(clock=clock)
    reported = ReportedState()
    db = open_state_db(tmp_path / "state")
    comp = DeploymentComponent(parse_config(CONFIG), DeploymentStore(db), reported, runtime, FakeVerifier(),
                               clock=clock)
    for ref in ("reg.local:5000/a:1", "reg.local:5000/a:2", "reg.local:5000/b:1", "reg.local:5000/crash:1"):
        runtime.registry.add(f"{ref.rsplit(':', 1)[0]}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}")
    return comp, runtime, clock, reported


def doc(**modules: dict[str, Any]) -> dict[str, Any]:
    return {"modules": {name: {"image": f"reg.local:5000/{spec.pop('img', name + ':1')}", **spec}
                        for name, spec in modules.items()}}


async def settle(comp: DeploymentComponent, passes: int = 4) -> None:
    for _ in range(passes):
        await comp.reconcile()


async def test_deploy_converges_reports_and_becomes_good(tmp_path: Path) -> None:
    comp, rt, clock, reported = make(tmp_path)
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={"startupOrder": 1}, b={"startupOrder": 0})))
    await settle(comp)
    assert [c for c in rt.calls if c[0] == "start"] == [("start", "edge-b"), ("start", "edge-a")]
    mods = reported.get("modules")
    assert mods["a"]["runtimeStatus"] == "running" and mods["a"]["digest"].startswith("sha256:")
    assert reported.get("deployment")["status"] == "probation"
    clock.now += 31
    await settle(comp, 1)
    dep = reported.get("deployment")
    assert dep["status"] == "good" and dep["lastKnownGood"] == 1


async def test_bad_deployment_rolls_back_and_is_not_retried(tmp_path: Path) -> None:
    comp, rt, clock, reported = make(tmp_path)
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={})))
    await settle(comp)
    clock.now += 31
    await settle(comp)
    await comp.desired(DesiredState(2, doc(a={"img": "a:2"})))
    await settle(comp)
    clock.now += 5
    rt.exit("a", 7)
    await settle(comp)
    dep = reported.get("deployment")
    assert dep["status"] == "rolled_back" and dep["current"] == 1
    assert dep["rollback"]["exitCode"] == 7 and dep["rollback"]["module"] == "a"
    running = [c for c in rt.containers.values() if c.state == "running"]
    assert len(running) == 1 and running[0].image.endswith(hashlib.sha256(b"reg.local:5000/a:1").hexdigest())
    # The same bad version again is not applied; a newer one is.
    await comp.desired(DesiredState(2, doc(a={"img": "a:2"})))
    assert comp.pending is None and reported.get("deployment")["lastReceived"]["status"] == "skipped"
    await comp.desired(DesiredState(3, doc(a={"img": "a:2"})))
    assert comp.pending is not None


async def test_crash_loop_backs_off_and_never_gives_up(tmp_path: Path) -> None:
    comp, rt, clock, reported = make(tmp_path)
    await comp.start()
    await comp.desired(DesiredState(1, doc(crash={})))
    await settle(comp)
    delays = []
    for _ in range(8):
        rt.exit("crash", 1)
        exited = clock.now
        await comp.reconcile()
        while reported.get("modules")["crash"]["runtimeStatus"] == "backoff":
            clock.now += 0.5
            await comp.reconcile()
        delays.append(clock.now - exited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert reported.get("modules")["crash"]["restartCount"] == 8
    # Up for the reset period: backoff starts over.
    clock.now += 61
    await comp.reconcile()
    rt.exit("crash", 1)
    await comp.reconcile()
    assert comp.last_plan.waits[0].until == pytest.approx(clock.now + 1.0)


async def test_agent_restart_adopts_running_containers(tmp_path: Path) -> None:
    comp, rt, clock, _ = make(tmp_path)
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={}, b={})))
    await settle(comp)
    before = {c.id: c.started_at for c in rt.containers.values()}
    rt.calls.clear()
    comp2, _, _, reported2 = make(tmp_path, rt, clock)
    await comp2.start()
    await settle(comp2)
    assert rt.calls == [] and {c.id: c.started_at for c in rt.containers.values()} == before
    assert reported2.get("modules")["a"]["runtimeStatus"] == "running"


async def test_invalid_and_rejected_deployments_keep_the_current_one(tmp_path: Path) -> None:
    comp, _rt, _, reported = make(tmp_path)
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={})))
    await settle(comp)
    with pytest.raises(DesiredRejected, match="module 'a': restartPolicy: got 'sometimes'"):
        await comp.desired(DesiredState(2, doc(a={"restartPolicy": "sometimes"})))
    await comp.desired(DesiredState(3, doc(a={"img": "evil:1"})))
    await settle(comp)
    dep = reported.get("deployment")
    assert dep["current"] == 1 and dep["lastReceived"]["status"] == "rejected"
    assert "unsigned" in dep["lastReceived"]["description"]
    assert reported.get("modules")["a"]["runtimeStatus"] == "running"


async def test_image_gc_keeps_current_and_last_known_good(tmp_path: Path) -> None:
    comp, rt, clock, _ = make(tmp_path)
    await comp.start()
    for version, img in ((1, "a:1"), (2, "a:2"), (3, "b:1")):
        await comp.desired(DesiredState(version, {"modules": {"a": {"image": f"reg.local:5000/{img}"}}}))
        await settle(comp)
        if version < 3:
            clock.now += 31
            await settle(comp)
    await comp.collect_images()
    # 3 is on probation, 2 is last-known-good: only a:1 goes.
    a1, _a2, b1 = (hashlib.sha256(f"reg.local:5000/{i}".encode()).hexdigest() for i in ("a:1", "a:2", "b:1"))
    assert [c[1] for c in rt.calls if c[0] == "rmi"] == [f"reg.local:5000/a@sha256:{a1}"]
    clock.now += 31
    await settle(comp)
    await comp.collect_images()
    assert rt.images == {f"reg.local:5000/b@sha256:{b1}"}


async def test_plan_control_command_is_a_dry_run(tmp_path: Path) -> None:
    comp, rt, _, _ = make(tmp_path)
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={})))
    await comp.reconcile()
    rt.exit("a", 1)
    calls = list(rt.calls)
    result = await comp._cmd_plan({})
    assert rt.calls == calls
    assert result["waits"] and result["waits"][0]["module"] == "a"


async def test_failed_pull_is_retried_then_reported_and_others_proceed(tmp_path: Path) -> None:
    comp, rt, _, reported = make(tmp_path)
    await comp.start()
    # "a:9" resolves but is not in the registry: every pull attempt fails.
    await comp.desired(DesiredState(1, doc(a={"img": "a:9"}, b={})))
    await comp.reconcile()
    pulls = [c for c in rt.calls if c[0] == "pull" and "/a@" in c[1]]
    assert len(pulls) == 1 + comp.config.podman.pull_retries
    mods = reported.get("modules")
    assert mods["a"]["runtimeStatus"] == "failed" and "not found" in mods["a"]["statusDescription"]
    assert mods["b"]["runtimeStatus"] == "running"


async def test_without_any_deployment_existing_containers_are_left_alone(tmp_path: Path) -> None:
    comp, rt, clock, _ = make(tmp_path)
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={})))
    await settle(comp)
    # state.db lost (new state dir), containers still there: nothing is stopped or removed
    # until a deployment is handed over again.
    fresh, _, _, _ = make(tmp_path / "other", rt, clock)
    await fresh.start()
    rt.calls.clear()
    await settle(fresh)
    assert rt.calls == [] and len(rt.containers) == 1


class RecordingHooks:
    """ModuleHooks that record what the executor asked, and add a mount like telemetry does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def before_create(self, module: str, request: ContainerRequest) -> ContainerRequest:
        self.calls.append(("before_create", module, request.image))
        return dataclasses.replace(request, mounts=(*request.mounts, MountRequest("/host/x", "/run/x", True)))

    async def before_start(self, module: str, image: str, deployment: int | None) -> None:
        self.calls.append(("before_start", module, f"{image} v{deployment}"))

    async def after_remove(self, module: str) -> None:
        self.calls.append(("after_remove", module, ""))


def make_with_hooks(tmp_path: Path) -> tuple[DeploymentComponent, FakeRuntime, Clock, RecordingHooks]:
    clock = Clock()
    runtime = FakeRuntime(clock=clock)
    hooks = RecordingHooks()
    db = open_state_db(tmp_path / "state")
    comp = DeploymentComponent(parse_config(CONFIG), DeploymentStore(db), ReportedState(), runtime, FakeVerifier(),
                               clock=clock, hooks=[hooks])
    return comp, runtime, clock, hooks


async def test_module_hooks_around_create_start_and_removal(tmp_path: Path) -> None:
    comp, runtime, _, hooks = make_with_hooks(tmp_path)
    for ref in ("reg.local:5000/a:1", "reg.local:5000/a:2", "reg.local:5000/b:1"):
        runtime.registry.add(f"{ref.rsplit(':', 1)[0]}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}")
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={}, b={})))
    await settle(comp)
    kinds = [(k, m) for k, m, _ in hooks.calls]
    assert sorted(kinds) == sorted([("before_create", "a"), ("before_start", "a"),
                                    ("before_create", "b"), ("before_start", "b")])
    # The hook's mount is in what was created; the start hook got the pinned image and version.
    assert all(k != "before_start" or ("@sha256:" in info and info.endswith(" v1")) for k, _, info in hooks.calls)
    created = list(runtime.requests.values())
    assert len(created) == 2 and all(any(m.target == "/run/x" for m in r.mounts) for r in created)

    # a changes (re-created: keeps its hook state, no after_remove); b leaves (after_remove).
    hooks.calls.clear()
    await comp.desired(DesiredState(2, doc(a={"img": "a:2"})))
    await settle(comp)
    assert ("after_remove", "b", "") in hooks.calls
    assert not any(k == "after_remove" and m == "a" for k, m, _ in hooks.calls)
    assert ("before_create", "a") in [(k, m) for k, m, _ in hooks.calls]


async def test_start_hook_gets_the_pinned_image_when_a_crashed_module_is_restarted(tmp_path: Path) -> None:
    # Restarts (and starts retried by a later pass) name the container by id, not by name: the
    # hook must still get the image, or the attestation measurement fails on every restart.
    comp, runtime, clock, hooks = make_with_hooks(tmp_path)
    runtime.registry.add(f"reg.local:5000/a@sha256:{hashlib.sha256(b'reg.local:5000/a:1').hexdigest()}")
    await comp.start()
    await comp.desired(DesiredState(1, doc(a={"restartPolicy": "always"})))
    await settle(comp)
    hooks.calls.clear()
    runtime.exit("a", 1)
    clock.now += 60
    await settle(comp)
    starts = [info for kind, module, info in hooks.calls if kind == "before_start" and module == "a"]
    assert starts, hooks.calls
    assert all("reg.local:5000/a@sha256:" in info for info in starts), starts


async def test_local_deploy_is_refused_unless_switched_on(tmp_path: Path) -> None:
    from edge_agent.control import CommandError

    comp, rt, _, _ = make(tmp_path)
    await comp.start()
    with pytest.raises(CommandError, match=r"deployment\.local_deploy = false"):
        await comp._cmd_deploy({"version": 1, "deployment": doc(a={})})
    assert comp.pending is None and not rt.calls
