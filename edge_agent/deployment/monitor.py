"""What wakes the reconciler besides its timer: podman's event stream (a container started,
died, was removed) and the modules' healthchecks. The monitor only says "look again"
(`wake()`); the pass decides what it means."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from edge_agent.deployment.pinned import PinnedDeployment
from edge_agent.logs import get_logger
from edge_agent.runtime.api import ContainerRuntime, ObservedContainer, RuntimeFailure
from edge_shared.retry import Retries

log = get_logger(__name__)
HEALTH_IDLE_S = 30.0  # the longest sleep between looks: a wall-clock step cannot hold checks back longer
HEALTH_MIN_S = 0.05
EVENTS_RETRY_S = (1.0, 30.0)  # reconnecting the event stream: from, doubling to


class Monitor:
    def __init__(
        self,
        runtime: ContainerRuntime,
        device_id: Callable[[], str],
        seen: Callable[[], tuple[PinnedDeployment | None, list[ObservedContainer]]],
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.device_id = device_id
        self.seen = seen  # what the last pass worked on and observed
        self.wake = wake
        self.clock = clock
        self._health: dict[str, str] = {}
        self._next_check: dict[str, float] = {}
        self._looked = asyncio.Event()

    def looked(self) -> None:
        """A pass has observed the containers again: there may be new ones to check."""
        self._looked.set()

    async def watch_events(self) -> None:
        events = Retries(*EVENTS_RETRY_S)  # logged once per change
        while True:
            try:
                async for event in self.runtime.events(self.device_id()):
                    if events.succeeded("events") is not None:
                        log.info("podman event stream back", extra={"EVENT": "runtime.events_back"})
                    log.debug("podman event %s %s", event.action, event.name,
                              extra={"EVENT": "runtime.event", "MODULE": event.module})
                    self.wake()
                failure, news = events.failed("events", "the stream ended", self.clock())
            except RuntimeFailure as exc:
                failure, news = events.failed("events", str(exc), self.clock())
            (log.warning if news else log.debug)(
                "podman event stream: %s; reconnecting in %.0f s", failure.error, failure.delay,
                extra={"EVENT": "runtime.events_lost"},
            )
            self.wake()  # events may have been missed: look again
            await asyncio.sleep(failure.delay)

    async def watch_health(self) -> None:
        """Run container healthchecks on their interval (podman relies on systemd timers for this,
        which a device without a systemd-managed podman lacks); a changed result wakes the pass.
        Between checks it sleeps until the next one is due or a pass has looked again, so a device
        without healthchecks does not wake for them (battery)."""
        while True:
            self._looked.clear()
            due = await self.check_health()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(health_sleep(due, self.clock())):
                    await self._looked.wait()

    async def check_health(self) -> float | None:
        """Run the checks that are due; return when the next one is due (None: no container has one)."""
        pinned, observed = self.seen()
        if pinned is None:
            return None
        now = self.clock()
        due: float | None = None
        checked: set[str] = set()
        for c in list(observed):
            module = pinned.modules.get(c.module or "")
            if (c.state != "running" or module is None or module.spec.healthcheck is None
                    or c.spec_hash != module.spec_hash):
                continue
            checked.add(c.id)
            if now >= self._next_check.get(c.id, 0.0):
                self._next_check[c.id] = now + module.spec.healthcheck.interval
                try:
                    health: str | None = await self.runtime.healthcheck(c.id)
                except RuntimeFailure:
                    health = None  # the container went away; the event stream says so
                if health is not None and self._health.get(c.id) != health:
                    self._health[c.id] = health
                    self.wake()
            next_check = self._next_check[c.id]
            due = next_check if due is None else min(due, next_check)
        for gone in set(self._next_check) - checked:  # containers removed or replaced
            self._next_check.pop(gone, None)
            self._health.pop(gone, None)
        return due


def health_sleep(due: float | None, now: float) -> float:
    """How long the health watch may sleep: until the next check is due, never past HEALTH_IDLE_S."""
    if due is None:
        return HEALTH_IDLE_S
    return min(HEALTH_IDLE_S, max(HEALTH_MIN_S, due - now))
