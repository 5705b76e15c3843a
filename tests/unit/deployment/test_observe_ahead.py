"""Reconciler.observe_ahead: the containers listed while a deployment is verified, used by the
pass after its commit only when no pass or command ran in between and the observation is young;
never an action before the pass. Over the in-memory runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.deployment import reconciler
from edge_agent.runtime.api import LABEL_DEVICE, LABEL_MODULE, ContainerRequest
from tests.fakes.runtime import FakeRuntime
from tests.unit.deployment.test_component import doc, make, settle


async def ahead(pipe_reconciler: reconciler.Reconciler) -> None:
    pipe_reconciler.observe_ahead()
    task = pipe_reconciler._ahead_task
    assert task is not None
    await task


def running(rt: FakeRuntime, name: str) -> bool:
    return any(c.name == name and c.state == "running" for c in rt.containers.values())


async def test_the_pass_after_the_commit_starts_from_the_observation_taken_ahead(tmp_path: Path) -> None:
    pipe, rt, _, reported = make(tmp_path)
    await pipe.start()
    await ahead(pipe.reconciler)
    assert rt.list_calls == 1 and rt.calls == []  # observed, nothing done
    await pipe.deploy(1, doc(a={}))
    await pipe.reconcile()
    # the pass listed once, after its actions (the observation before them was the one ahead)
    assert rt.list_calls == 2
    assert [c[0] for c in rt.calls] == ["pull", "create", "start"]
    assert reported.get("modules")["a"]["runtimeStatus"] == "running"


async def test_only_the_first_pass_after_it_may_use_it(tmp_path: Path) -> None:
    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    await ahead(pipe.reconciler)
    calls = rt.list_calls
    await pipe.reconcile()  # nothing to do: its observation is the one ahead
    assert rt.list_calls == calls
    rt.exit("a", 1)
    await pipe.reconcile()  # lists again, and so sees the exit
    assert rt.list_calls == calls + 1
    assert pipe.reported.get("modules")["a"]["runtimeStatus"] == "backoff"  # the exit, waiting to restart


async def test_an_old_observation_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    await ahead(pipe.reconciler)
    rt.exit("a", 1)
    monkeypatch.setattr(reconciler, "AHEAD_MAX_AGE_S", -1.0)  # any observation is too old
    calls = rt.list_calls
    await pipe.reconcile()
    assert rt.list_calls > calls
    assert ("start", "edge-a") in rt.calls[-1:]  # the exit was seen: the module is restarted


async def test_an_observation_asked_for_during_a_pass_is_taken_after_it(tmp_path: Path) -> None:
    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    async with pipe.reconciler.lock:  # as a pass holds it, and creates a container meanwhile
        pipe.reconciler.observe_ahead()
        image = next(iter(rt.registry))
        rt.images.add(image)
        await rt.create(ContainerRequest("edge-a", image, {LABEL_DEVICE: "unit-dev", LABEL_MODULE: "a"}))
        await asyncio.sleep(0)
        assert rt.list_calls == 0  # the observation waits for the lock
    task = pipe.reconciler._ahead_task
    assert task is not None
    await task
    taken = pipe.reconciler._ahead
    assert taken is not None and [c.name for c in taken.observed] == ["edge-a"]


async def test_a_restart_command_drops_the_observation(tmp_path: Path) -> None:
    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    await settle(pipe)
    await ahead(pipe.reconciler)
    await pipe.reconciler._cmd_restart({"module": "a"})
    calls = rt.list_calls
    await pipe.reconcile()  # observes after the restart, not before it
    assert rt.list_calls == calls + 1


async def test_a_failed_observation_ahead_leaves_the_pass_to_observe_and_report(tmp_path: Path) -> None:
    pipe, rt, clock, _ = make(tmp_path)
    await pipe.start()
    await pipe.deploy(1, doc(a={}))
    rt.down = True
    await ahead(pipe.reconciler)
    assert pipe.reconciler._ahead is None
    result = await pipe.reconcile()
    assert result.runtime_error is not None and "fake runtime is down" in result.runtime_error
    rt.down = False
    clock.now += reconciler.FAILURE_RETRY_INITIAL_S
    await settle(pipe)
    assert running(rt, "edge-a")


async def test_no_observation_ahead_while_podman_is_in_its_backoff(tmp_path: Path) -> None:
    pipe, rt, _, _ = make(tmp_path)
    await pipe.start()
    rt.down = True
    await pipe.deploy(1, doc(a={}))
    assert (await pipe.reconcile()).runtime_error is not None
    calls = rt.list_calls
    pipe.reconciler.observe_ahead()
    assert pipe.reconciler._ahead_task is None and rt.list_calls == calls
