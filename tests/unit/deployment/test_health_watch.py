"""The health watch runs each module's healthcheck when it is due and otherwise sleeps: a device
without healthchecks does not wake for them, and a pass that observes new containers wakes it."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.deployment.monitor import HEALTH_IDLE_S, HEALTH_MIN_S, Monitor, health_sleep
from edge_agent.deployment.pinned import PinnedDeployment
from edge_agent.runtime.api import Health, ObservedContainer, RuntimeFailure

from .helpers import container, deployment

CHECK = {"healthcheck": {"command": ["/bin/check"], "interval": 10}}


class Runtime:
    """Only what the monitor calls: healthcheck, with a result per container and a log of calls."""

    def __init__(self) -> None:
        self.health: dict[str, Health] = {}
        self.checked: list[str] = []

    async def healthcheck(self, container: str) -> Health:
        self.checked.append(container)
        if container not in self.health:
            raise RuntimeFailure(f"no such container {container}")
        return self.health[container]


class Seen:
    def __init__(self) -> None:
        self.pinned: PinnedDeployment | None = None
        self.observed: list[ObservedContainer] = []

    def __call__(self) -> tuple[PinnedDeployment | None, list[ObservedContainer]]:
        return self.pinned, self.observed


def make(now: list[float]) -> tuple[Monitor, Runtime, Seen, list[int]]:
    runtime, seen, wakes = Runtime(), Seen(), [0]

    def wake() -> None:
        wakes[0] += 1

    monitor = Monitor(runtime, lambda: "dev-1", seen, wake, clock=lambda: now[0])  # type: ignore[arg-type]
    return monitor, runtime, seen, wakes


@pytest.mark.parametrize(("due", "now", "sleep"), [
    (None, 100.0, HEALTH_IDLE_S),  # nothing to check: only a pass wakes it
    (110.0, 100.0, 10.0),
    (100.0, 100.0, HEALTH_MIN_S),  # due now: a short pause, never a busy loop
    (90.0, 100.0, HEALTH_MIN_S),
    (100.0 + 3600, 100.0, HEALTH_IDLE_S),  # a wall-clock step back cannot hold checks for an hour
])
def test_the_watch_sleeps_until_the_next_check_is_due(due: float | None, now: float, sleep: float) -> None:
    assert health_sleep(due, now) == sleep


async def test_without_healthchecks_nothing_is_checked_and_nothing_is_due() -> None:
    now = [1000.0]
    monitor, runtime, seen, wakes = make(now)
    assert await monitor.check_health() is None  # no deployment yet
    d = deployment(1, {"app": {}})
    seen.pinned, seen.observed = d, [container("c1", "app", d.modules["app"].spec_hash)]
    assert await monitor.check_health() is None
    assert runtime.checked == [] and wakes == [0]


async def test_checks_run_when_due_and_a_change_wakes_the_pass() -> None:
    now = [1000.0]
    monitor, runtime, seen, wakes = make(now)
    d = deployment(1, {"app": CHECK, "web": {"healthcheck": {"command": ["/bin/c"], "interval": 3}}})
    seen.pinned = d
    seen.observed = [container("c1", "app", d.modules["app"].spec_hash),
                     container("c2", "web", d.modules["web"].spec_hash)]
    runtime.health = {"c1": "healthy", "c2": "starting"}
    assert await monitor.check_health() == 1003.0  # the sooner of the two
    assert sorted(runtime.checked) == ["c1", "c2"] and wakes == [2]  # two first results
    now[0] = 1002.0
    assert await monitor.check_health() == 1003.0  # nothing due yet
    assert len(runtime.checked) == 2
    now[0] = 1003.0
    runtime.health["c2"] = "healthy"
    assert await monitor.check_health() == 1006.0
    assert runtime.checked[2:] == ["c2"] and wakes == [3]
    now[0] = 1006.0
    assert await monitor.check_health() == 1009.0
    assert wakes == [3]  # the same result does not wake the pass


async def test_a_container_that_went_away_is_forgotten() -> None:
    now = [1000.0]
    monitor, runtime, seen, wakes = make(now)
    d = deployment(1, {"app": CHECK})
    seen.pinned, seen.observed = d, [container("c1", "app", d.modules["app"].spec_hash)]
    assert await monitor.check_health() == 1010.0  # the check failed (no such container), still scheduled
    seen.observed = [container("c9", "app", d.modules["app"].spec_hash)]  # replaced
    runtime.health = {"c9": "healthy"}
    assert await monitor.check_health() == 1010.0
    assert runtime.checked == ["c1", "c9"] and wakes == [1]
    seen.observed = []
    assert await monitor.check_health() is None


async def test_a_pass_that_observes_a_new_container_wakes_the_watch() -> None:
    now = [1000.0]
    monitor, runtime, seen, _ = make(now)
    watch = asyncio.create_task(monitor.watch_health())
    try:
        await asyncio.sleep(0)  # the watch looked once, found nothing and sleeps HEALTH_IDLE_S
        d = deployment(1, {"app": CHECK})
        seen.pinned, seen.observed = d, [container("c1", "app", d.modules["app"].spec_hash)]
        runtime.health = {"c1": "healthy"}
        monitor.looked()
        async with asyncio.timeout(HEALTH_IDLE_S / 2):  # far sooner than the idle sleep would end
            while runtime.checked != ["c1"]:
                await asyncio.sleep(0.01)
    finally:
        watch.cancel()
