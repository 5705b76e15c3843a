"""Carries out a Plan against a ContainerRuntime, one action at a time, in plan order.

A failed action skips the rest of that module's actions (the next reconcile plans again, after
that module's backoff) and is returned as the module's error, for the reported state and the log.
Pulls have a timeout and retries with backoff (edge_shared/retry.py); starts that are restarts
are counted for the restart backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge_agent.deployment.actions import Action, Create, Plan, Pull, Remove, Start, Stop
from edge_agent.deployment.hooks import ModuleHooks
from edge_agent.deployment.restart_policy import RestartState, record_restart
from edge_agent.deployment.store import ReconcilerStore
from edge_agent.logs import get_logger
from edge_agent.runtime.api import ContainerRuntime, RuntimeFailure
from edge_shared.retry import Backoff

log = get_logger(__name__)


@dataclass(frozen=True)
class ExecutorSettings:
    pull_timeout_s: float = 600.0
    pull_retries: int = 3
    pull_retry_max_wait_s: float = 30.0


@dataclass
class ExecutionResult:
    done: list[Action] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # module -> error
    failed_action: dict[str, Action] = field(default_factory=dict)  # module -> the action that failed


class Executor:
    def __init__(
        self,
        runtime: ContainerRuntime,
        store: ReconcilerStore,
        settings: ExecutorSettings,
        is_insecure: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
        hooks: Sequence[ModuleHooks] = (),
        device_id: str = "",
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.settings = settings
        self.is_insecure = is_insecure
        self.clock = clock
        self.hooks = tuple(hooks)
        self.device_id = device_id
        self._images: dict[str, str] = {}  # container name -> repository@digest it was created from

    async def execute(
        self, plan: Plan, deployment: int | None, proceed: Callable[[], bool] = lambda: True
    ) -> ExecutionResult:
        """Run the plan's actions in order. `proceed()` is asked before each one: when it says no
        (the deployment was replaced meanwhile), the rest is left to the next pass."""
        result = ExecutionResult()
        # A module removed and created again in one plan (a changed spec) keeps its hooks' state.
        recreated = {a.module for a in plan.actions if isinstance(a, Create)}
        for action in plan.actions:
            if not proceed():
                break
            if action.module in result.failed:
                continue
            extra = {"EVENT": f"module.{type(action).__name__.lower()}", "MODULE": action.module,
                     "DEPLOYMENT": str(deployment)}
            try:
                await self._do(action, deployment, recreated, proceed)
            except _Replaced:
                break
            except RuntimeFailure as exc:
                # Logged by the caller, once per change (a persistent failure is not one line per retry).
                result.failed[action.module] = f"{action.describe()} failed: {exc}"
                result.failed_action[action.module] = action
                continue
            log.info("%s: %s (%s)", action.module, action.describe(), action.reason, extra=extra)
            result.done.append(action)
        return result

    async def _do(
        self, action: Action, deployment: int | None, recreated: set[str], proceed: Callable[[], bool]
    ) -> None:
        rt = self.runtime
        if isinstance(action, Pull):
            await self._pull(action.image)
            self.store.note_pulled(action.image, self.clock())
        elif isinstance(action, Create):
            request = action.request
            for hook in self.hooks:
                try:
                    request = await hook.before_create(action.module, request)
                except (OSError, ValueError) as exc:
                    raise RuntimeFailure(f"preparing {request.name}: {exc}") from exc
            if not proceed():  # asked again after the hooks' awaits, right before the container exists
                raise _Replaced
            await rt.create(request)
            self._images[request.name] = request.image
        elif isinstance(action, Start):
            image = self._images.get(action.container) or await self._observed_image(action.container)
            for hook in self.hooks:
                await hook.before_start(action.module, image, deployment)
            if not proceed():  # asked again after the awaits above, right before the start
                raise _Replaced
            await rt.start(action.container)
            if action.is_restart:
                state = self.store.restarts().get(action.module, RestartState())
                self.store.set_restart(action.module, record_restart(state, self.clock()))
        elif isinstance(action, Stop):
            await rt.stop(action.container, action.grace_s)
        elif isinstance(action, Remove):
            await rt.remove(action.container)
            self._images.pop(action.container, None)
            if action.module not in recreated:
                for hook in self.hooks:
                    await hook.after_remove(action.module)

    async def _observed_image(self, container: str) -> str:
        """The image of a container this executor did not create (adopted after an agent restart),
        or one it refers to by id (a restart after a crash, a start retried by a later pass)."""
        for observed in await self.runtime.list_containers(self.device_id):
            if container in (observed.name, observed.id):
                return observed.image
        return ""

    async def _pull(self, image: str) -> None:
        s = self.settings
        backoff = Backoff(1.0, s.pull_retry_max_wait_s)
        for attempt in range(1 + s.pull_retries):
            try:
                async with asyncio.timeout(s.pull_timeout_s + 5):
                    await self.runtime.pull(image, insecure=self.is_insecure(image), timeout_s=s.pull_timeout_s)
                return
            except TimeoutError:
                failure = RuntimeFailure(f"pull {image}: no result within {s.pull_timeout_s:g} s")
            except RuntimeFailure as exc:
                failure = exc
            if attempt == s.pull_retries:
                raise failure
            await asyncio.sleep(backoff.next())

class _Replaced(Exception):
    """The deployment was replaced while the plan ran: the rest is left to the next pass."""
