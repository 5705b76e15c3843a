"""The reconciler (fed by the desired-state owner as the daemon wires them) over
the in-memory runtime, with a hand-driven clock: probation, rollback, per-version status, restart
counting, retry backoff, reported state, adoption, image GC."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
from pathlib import Path
from typing import Any

import pytest

from devinfra.pipeline import Pipeline
from edge_agent.config import parse_config
from edge_agent.desired.admission import Admitted, Duplicate, Refused
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import ContainerRequest, MountRequest, RuntimeFailure
from edge_agent.store import open_state_db
from edge_shared.trust.api import ImageRejected, VerifiedImage
from tests.fakes.runtime import FakeRuntime


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
        Pipeline, FakeRuntime, Clock, ReportedState]:
    clock = clock or Clock()
    runtime = runtime or FakeRuntime(clock=clock)
    reported = ReportedState()
    db = open_state_db(tmp_path / "state")
    pipe = Pipeline(parse_config(CONFIG), db, reported, runtime, FakeVerifier(), clock=clock)
    for ref in ("reg.local:5000/a:1", "reg.local:5000/a:2", "reg.local:5000/b:1", "reg.local:5000/crash:1"):
        runtime.registry.add(f"{ref.rsplit(':', 1)[0]}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}")
    return pipe, runtime, clock, reported


def doc(**modules: dict[str, Any]) -> dict[str, Any]:
    return {"modules": {name: {"image": f"reg.local:5000/{spec.pop('img', name + ':1')}", **spec}
                        for name, spec in modules.items()}}


async def settle(pipe: Pipeline, passes: int = 4) -> None:
    for _ in range(passes):
        await pipe.reconcile()


async def test_deploy_converges_reports_and_becomes_good(tmp_path: Path) -> None:
    pipe, rt, clock, reported = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={"startupOrder": 1}, b={"startupOrder": 0}))
    await settle(pipe)
    assert [c for c in rt.calls if c[0] == "start"] == [("start", "edge-b"), ("start", "edge-a")]
    mods = reported.get("modules")
    assert mods["a"]["runtimeStatus"] == "running" and mods["a"]["digest"].startswith("sha256:")
    assert pipe.state(1) == "probation" and pipe.section()["current"] == 1
    clock.now += 31
    await settle(pipe, 1)
    dep = pipe.section()
    assert pipe.state(1) == "good" and dep["lastKnownGood"] == 1 and dep["current"] == 1


async def test_a_committed_deployment_is_activating_until_its_modules_run(tmp_path: Path) -> None:
    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    assert pipe.section()["current"] is None
    decision = await pipe.deploy(1, doc(a={}))
    assert isinstance(decision, Admitted)
    # Committed (current on disk) but no container yet: its state says it is only activating.
    assert pipe.state(1) == "activating" and pipe.section()["current"] == 1
    assert pipe.manager.store.current() is not None and not rt.containers
    await settle(pipe)
    assert pipe.state(1) == "probation" and pipe.section()["current"] == 1


async def test_bad_deployment_rolls_back_and_is_not_retried(tmp_path: Path) -> None:
    pipe, rt, clock, _reported = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    clock.now += 31
    await settle(pipe)
    await pipe.deploy(2, doc(a={"img": "a:2"}))
    await settle(pipe)
    clock.now += 5
    rt.exit("a", 7)
    await settle(pipe)
    dep = pipe.section()
    assert dep["current"] == 1 and dep["lastKnownGood"] == 1
    v2 = dep["versions"]["2"]
    assert v2["state"] == "rolled_back" and v2["module"] == "a" and "exited with code 7" in v2["description"]
    assert dep["versions"]["1"]["state"] == "good"
    running = [c for c in rt.containers.values() if c.state == "running"]
    assert len(running) == 1 and running[0].image.endswith(hashlib.sha256(b"reg.local:5000/a:1").hexdigest())
    # The same bad version again is a duplicate; another document as version 2 is a replay;
    # a newer one is applied.
    assert isinstance(await pipe.deploy(2, doc(a={"img": "a:2"})), Duplicate)
    replay = await pipe.deploy(2, doc(a={"img": "a:1"}))
    assert isinstance(replay, Refused) and replay.code == "replayed"
    assert pipe.state(2) == "rolled_back" and pipe.section()["lastRefused"]["code"] == "replayed"
    assert isinstance(await pipe.deploy(3, doc(a={"img": "a:2"})), Admitted)
    assert pipe.state(3) == "activating"


async def test_crash_loop_backs_off_and_never_gives_up(tmp_path: Path) -> None:
    pipe, rt, clock, reported = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(crash={}))
    await settle(pipe)
    delays = []
    for _ in range(8):
        rt.exit("crash", 1)
        exited = clock.now
        await pipe.reconcile()
        while reported.get("modules")["crash"]["runtimeStatus"] == "backoff":
            clock.now += 0.5
            await pipe.reconcile()
        delays.append(clock.now - exited)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert reported.get("modules")["crash"]["restartCount"] == 8
    # Up for the reset period: backoff starts over.
    clock.now += 61
    await pipe.reconcile()
    rt.exit("crash", 1)
    await pipe.reconcile()
    assert pipe.reconciler.last_plan.waits[0].until == pytest.approx(clock.now + 1.0)


async def test_agent_restart_adopts_running_containers(tmp_path: Path) -> None:
    pipe, rt, clock, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}, b={}))
    await settle(pipe)
    before = {c.id: c.started_at for c in rt.containers.values()}
    rt.calls.clear()
    pipe2, _, _, reported2 = make(tmp_path, rt, clock)
    await pipe2.start()
    await settle(pipe2)
    assert rt.calls == [] and {c.id: c.started_at for c in rt.containers.values()} == before
    assert reported2.get("modules")["a"]["runtimeStatus"] == "running"


async def test_invalid_and_rejected_deployments_keep_the_current_one(tmp_path: Path) -> None:
    pipe, _rt, _, reported = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    invalid = await pipe.deploy(2, doc(a={"restartPolicy": "sometimes"}))
    assert isinstance(invalid, Refused) and invalid.code == "invalid_deployment"
    assert "module 'a': restartPolicy: got 'sometimes'" in invalid.description
    assert "2" not in pipe.section()["versions"]  # refused: no version row
    await pipe.deploy(3, doc(a={"img": "evil:1"}))
    await settle(pipe)
    dep = pipe.section()
    v3 = dep["versions"]["3"]
    assert dep["current"] == 1 and v3["state"] == "rejected" and v3["code"] == "unsigned" and v3["module"] == "a"
    assert pipe.manager.store.current().version == 1  # type: ignore[union-attr]
    assert reported.get("modules")["a"]["runtimeStatus"] == "running"


async def test_image_gc_keeps_current_and_last_known_good(tmp_path: Path) -> None:
    pipe, rt, clock, _ = make(tmp_path)
    await pipe.start()
    for version, img in ((1, "a:1"), (2, "a:2"), (3, "b:1")):
        await pipe.deploy(version, {"modules": {"a": {"image": f"reg.local:5000/{img}"}}})
        await settle(pipe)
        if version < 3:
            clock.now += 31
            await settle(pipe)
    await pipe.manager.collect_garbage()
    # 3 is on probation, 2 is last-known-good: only a:1 goes.
    a1, _a2, b1 = (hashlib.sha256(f"reg.local:5000/{i}".encode()).hexdigest() for i in ("a:1", "a:2", "b:1"))
    assert [c[1] for c in rt.calls if c[0] == "rmi"] == [f"reg.local:5000/a@sha256:{a1}"]
    clock.now += 31
    await settle(pipe)
    await pipe.manager.collect_garbage()
    assert rt.images == {f"reg.local:5000/b@sha256:{b1}"}


async def test_plan_control_command_is_a_dry_run(tmp_path: Path) -> None:
    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await pipe.reconcile()
    rt.exit("a", 1)
    calls = list(rt.calls)
    result = await pipe.reconciler._cmd_plan({})
    assert rt.calls == calls
    assert result["waits"] and result["waits"][0]["module"] == "a"


async def test_failed_pull_is_retried_then_reported_and_others_proceed(tmp_path: Path) -> None:
    pipe, rt, _, reported = make(tmp_path)
    await pipe.start()
    # "a:9" resolves but is not in the registry: every pull attempt fails.
    await pipe.deploy(1, doc(a={"img": "a:9"}, b={}))
    await pipe.reconcile()
    pulls = [c for c in rt.calls if c[0] == "pull" and "/a@" in c[1]]
    assert len(pulls) == 1 + pipe.reconciler.config.podman.pull_retries
    mods = reported.get("modules")
    assert mods["a"]["runtimeStatus"] == "failed" and "not found" in mods["a"]["statusDescription"]
    assert mods["b"]["runtimeStatus"] == "running"


async def test_without_any_deployment_existing_containers_are_left_alone(tmp_path: Path) -> None:
    pipe, rt, clock, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
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


def make_with_hooks(tmp_path: Path) -> tuple[Pipeline, FakeRuntime, Clock, RecordingHooks]:
    clock = Clock()
    runtime = FakeRuntime(clock=clock)
    hooks = RecordingHooks()
    db = open_state_db(tmp_path / "state")
    pipe = Pipeline(parse_config(CONFIG), db, ReportedState(), runtime, FakeVerifier(), clock=clock, hooks=[hooks])
    return pipe, runtime, clock, hooks


async def test_module_hooks_around_create_start_and_removal(tmp_path: Path) -> None:
    pipe, runtime, _, hooks = make_with_hooks(tmp_path)
    for ref in ("reg.local:5000/a:1", "reg.local:5000/a:2", "reg.local:5000/b:1"):
        runtime.registry.add(f"{ref.rsplit(':', 1)[0]}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}")
    await pipe.start()
    await pipe.deploy(1, doc(a={}, b={}))
    await settle(pipe)
    kinds = [(k, m) for k, m, _ in hooks.calls]
    assert sorted(kinds) == sorted([("before_create", "a"), ("before_start", "a"),
                                    ("before_create", "b"), ("before_start", "b")])
    # The hook's mount is in what was created; the start hook got the pinned image and version.
    assert all(k != "before_start" or ("@sha256:" in info and info.endswith(" v1")) for k, _, info in hooks.calls)
    created = list(runtime.requests.values())
    assert len(created) == 2 and all(any(m.target == "/run/x" for m in r.mounts) for r in created)

    # a changes (re-created: keeps its hook state, no after_remove); b leaves (after_remove).
    hooks.calls.clear()
    await pipe.deploy(2, doc(a={"img": "a:2"}))
    await settle(pipe)
    assert ("after_remove", "b", "") in hooks.calls
    assert not any(k == "after_remove" and m == "a" for k, m, _ in hooks.calls)
    assert ("before_create", "a") in [(k, m) for k, m, _ in hooks.calls]


async def test_start_hook_gets_the_pinned_image_when_a_crashed_module_is_restarted(tmp_path: Path) -> None:
    # Restarts (and starts retried by a later pass) name the container by id, not by name: the
    # hook must still get the image, or the attestation measurement fails on every restart.
    pipe, runtime, clock, hooks = make_with_hooks(tmp_path)
    runtime.registry.add(f"reg.local:5000/a@sha256:{hashlib.sha256(b'reg.local:5000/a:1').hexdigest()}")
    await pipe.start()
    await pipe.deploy(1, doc(a={"restartPolicy": "always"}))
    await settle(pipe)
    hooks.calls.clear()
    runtime.exit("a", 1)
    clock.now += 60
    await settle(pipe)
    starts = [info for kind, module, info in hooks.calls if kind == "before_start" and module == "a"]
    assert starts, hooks.calls
    assert all("reg.local:5000/a@sha256:" in info for info in starts), starts


async def test_local_deploy_is_refused_unless_switched_on(tmp_path: Path) -> None:
    from edge_agent.control import CommandError

    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    with pytest.raises(CommandError, match=r"deployment\.local_deploy = false"):
        await pipe.manager._cmd_deploy({"version": 1, "deployment": doc(a={})})
    assert pipe.section()["versions"] == {} and not rt.calls


async def test_podman_down_backs_off_to_the_cap_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe, rt, clock, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    rt.down = True
    attempts: list[float] = []
    caplog.set_level(logging.INFO)
    caplog.clear()
    wake = (await pipe.reconcile()).wake_at
    for _ in range(40):  # every wake-up (events, the poll) in between must not try again
        assert wake is not None
        calls = rt.list_calls
        clock.now = (clock.now + wake) / 2
        assert (await pipe.reconcile()).wake_at == wake and rt.list_calls == calls
        clock.now = wake
        attempts.append(clock.now)
        wake = (await pipe.reconcile()).wake_at
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    assert gaps[:5] == [4.0, 8.0, 16.0, 32.0, 60.0] and set(gaps[5:]) == {60.0}
    failed = [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]
    assert len(failed) == 1 and "reconcile failed" in failed[0].getMessage()
    assert "error" in pipe.section()
    assert pipe.reported.get("modules")["a"]["runtimeStatus"] == "unknown"  # not "running" from memory
    rt.down = False
    clock.now = wake
    await settle(pipe)
    assert "error" not in pipe.section()
    assert any("podman answers again" in r.getMessage() for r in caplog.records)
    assert reported_running(pipe)


def reported_running(pipe: Pipeline) -> bool:
    return (pipe.reported.get("modules") or {}).get("a", {}).get("runtimeStatus") == "running"


async def test_adopted_running_containers_get_the_start_hooks_once_after_an_agent_restart(tmp_path: Path) -> None:
    # What a start sets up (telemetry socket, image measurement) must come back for a container
    # the agent adopts after its own restart, which it neither creates nor starts.
    pipe, runtime, clock, hooks = make_with_hooks(tmp_path)
    runtime.registry.add(f"reg.local:5000/a@sha256:{hashlib.sha256(b'reg.local:5000/a:1').hexdigest()}")
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    assert [(k, m) for k, m, _ in hooks.calls] == [("before_create", "a"), ("before_start", "a")]
    hooks.calls.clear()
    await settle(pipe)
    assert hooks.calls == []  # a container this run started is not "adopted" again

    restarted_hooks = RecordingHooks()
    db = open_state_db(tmp_path / "state")
    restarted = Pipeline(parse_config(CONFIG), db, ReportedState(), runtime, FakeVerifier(), clock=clock,
                         hooks=[restarted_hooks])
    await restarted.start()
    runtime.calls.clear()
    await settle(restarted)
    await settle(restarted)
    assert [c for c in runtime.calls if c[0] in ("create", "start", "stop", "remove")] == []
    assert [(k, m) for k, m, _ in restarted_hooks.calls] == [("before_start", "a")]
    info = restarted_hooks.calls[0][2]
    assert info.startswith("reg.local:5000/a@sha256:") and info.endswith(" v1")

    # A crash and restart of the adopted container: the executor's start runs the hooks, once.
    restarted_hooks.calls.clear()
    runtime.exit("a", 1)
    clock.now += 60
    await settle(restarted)
    assert [(k, m) for k, m, _ in restarted_hooks.calls].count(("before_start", "a")) == 1


class RefusingRuntime(FakeRuntime):
    """podman refuses to create a container whose environment says so (like a duplicate mount
    destination): the create fails every time, the same way."""

    async def create(self, request: ContainerRequest) -> str:
        if request.env.get("REFUSE"):
            self.calls.append(("create", request.name))
            raise RuntimeFailure(f"create {request.name}: duplicate mount destination /control")
        return await super().create(request)


async def test_a_create_failure_is_the_versions_reason_at_once_and_fails_it_after_three_attempts(
    tmp_path: Path,
) -> None:
    clock = Clock()
    pipe, rt, clock, _ = make(tmp_path, RefusingRuntime(clock=clock), clock)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    clock.now += 31
    await settle(pipe)
    assert pipe.state(1) == "good"

    await pipe.deploy(2, doc(a={"env": {"REFUSE": "1"}}))
    await settle(pipe, 2)
    v2 = pipe.section()["versions"]["2"]
    assert v2["state"] == "activating", v2
    assert "duplicate mount destination /control" in v2["description"] and "attempt 1" in v2["description"], v2
    for _ in range(6):  # the retries' backoff (2 s, 4 s, ...), far below the apply timeout
        if pipe.state(2) != "activating":
            break
        clock.now += 10
        await settle(pipe, 2)
    v2 = pipe.section()["versions"]["2"]
    assert (v2["state"], v2["code"], v2["module"]) == ("rolled_back", "module_action_failed", "a"), v2
    assert "duplicate mount destination" in v2["description"] and "3 attempts" in v2["description"], v2
    assert pipe.section()["current"] == 1
    await settle(pipe)
    assert rt.containers and all(c.state == "running" for c in rt.containers.values())
    assert clock.now - 1031 < pipe.reconciler.probation.apply_timeout_s


async def test_a_failing_pull_keeps_waiting_for_the_network(tmp_path: Path) -> None:
    pipe, _, clock, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    clock.now += 31
    await settle(pipe)
    await pipe.deploy(2, doc(a={"img": "a:9"}))  # resolves, but no pull succeeds
    for _ in range(6):
        clock.now += 10
        await settle(pipe, 2)
    v2 = pipe.section()["versions"]["2"]
    assert v2["state"] == "activating" and "not found" in v2["description"], v2


async def test_a_version_on_probation_with_a_module_this_release_refuses_fails_and_rolls_back(
    tmp_path: Path
) -> None:
    """An older release committed version 2 (its artifact path /tmp was accepted then); this
    release boots while it is on probation: it is never "good", it fails with the module's
    reason and the last-known-good version runs again."""
    pipe, _, clock, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    clock.now += 31
    await settle(pipe)
    assert pipe.state(1) == "good"
    await pipe.deploy(2, doc(a={}, b={}))
    current = pipe.manager.current
    assert current is not None and current.version == 2
    stored = {"modules": {**current.document["modules"], "b": {
        **current.document["modules"]["b"],
        "artifacts": [{"ref": f"reg.local:5000/m:1@sha256:{'7' * 64}", "path": "/tmp"}]}}}
    pipe.manager.current = dataclasses.replace(current, document=stored)
    await settle(pipe)
    v2 = pipe.section()["versions"]["2"]
    assert (v2["state"], v2["code"], v2["module"]) == ("rolled_back", "module_unloadable", "b"), v2
    assert "/tmp: /tmp is not a place for artifacts" in v2["description"], v2
    assert f"artifact reg.local:5000/m:1@sha256:{'7' * 64} at /tmp" in v2["description"], v2
    assert pipe.section()["current"] == 1
