"""The reconciler: one pass from (committed deployment, observed containers) to a PassResult.

    run_pass(committed, last_known_good_version):
        observe containers ─► settle restart counters ─► judge (pure: rollback.judge + artifacts)
        ─► a verdict that moves `current` (a failure with a version to return to): return now
        ─► place artifacts ─► plan (pure) ─► execute ─► observe again ─► PassResult

It never writes the device's deployment state and never calls the desired-state owner: the owner
(edge_agent/desired/manager.py) asks for a pass and applies what it returns (verdict, the modules
report, the runtime error) as one checked transition. It keeps only operational memory (failure
backoff per cause, what it last observed) and the restart counters (deployment/store.py).

Failures back off per cause (edge_shared/retry.py): a podman that does not answer, a module whose
action failed. A failing cause is not tried again before its time, whatever wakes the loop, and a
persistent failure is logged once per change, not once per attempt.

Agent restarts never restart modules: containers with our labels and spec hash are adopted as
they are. At boot the committed deployment runs from local images with no network.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.control import CommandError, ControlServer
from edge_agent.deployment.actions import Create, Plan, Start, action_to_dict
from edge_agent.deployment.executor import Executor, ExecutorSettings
from edge_agent.deployment.hooks import ArtifactHooks, ArtifactRefusal, ArtifactWait, ModuleHooks
from edge_agent.deployment.modules_report import container_for, iso, modules_report, runtime_unknown
from edge_agent.deployment.pass_causes import Cause, causes
from edge_agent.deployment.pinned import CommittedDeployment, NamingSettings, PinnedDeployment
from edge_agent.deployment.planner import PlannerSettings, plan
from edge_agent.deployment.restart_policy import BackoffSettings, RestartState, settle
from edge_agent.deployment.rollback import Failed, Good, Probation, ProbationSettings, Settled, Verdict, judge
from edge_agent.deployment.store import ReconcilerStore
from edge_agent.logs import get_logger
from edge_agent.runtime.api import ContainerRuntime, ObservedContainer, RuntimeFailure
from edge_agent.trust.origins import ImageOrigins
from edge_agent.trust.passthrough import PassthroughVerifier
from edge_shared.retry import Failure, Retries

log = get_logger(__name__)
FAILURE_RETRY_INITIAL_S = 2.0  # retry after a failed action: from, doubling to [podman] retry_max_s (per cause)
RUNTIME = "runtime"  # the retry cause "podman does not answer"
MODULE_ACTION_ATTEMPTS = 3  # failed creates/starts of one module before its version fails


@dataclass(frozen=True)
class PassResult:
    """What one pass found and did, for the owner to record.

    `version`: the committed version the pass worked on (None: nothing committed yet).
    `verdict`: what the pass concluded about it (None when podman did not answer).
    `modules`: the reported `modules` section. `runtime_error`: podman does not answer (or None).
    `wake_at`: when to look again at the latest. `again`: look again at once (something changed).
    """

    version: int | None
    verdict: Verdict | None
    modules: dict[str, Any] | None = None
    runtime_error: str | None = None
    wake_at: float | None = None
    again: bool = False
    acted: tuple[str, ...] = field(default=())
    why: Mapping[str, Cause] = field(default_factory=dict)  # module -> why it was acted on (pass_causes.py)


class Reconciler:
    def __init__(
        self,
        config: AgentConfig,
        store: ReconcilerStore,
        runtime: ContainerRuntime,
        *,
        control: ControlServer | None = None,
        clock: Callable[[], float] = time.time,
        hooks: Sequence[ModuleHooks] = (),
        artifacts: ArtifactHooks | None = None,
        origins: ImageOrigins | None = None,
    ) -> None:
        # Artifacts are mounted like the other hooks' additions; they are placed by every pass.
        self.artifacts = artifacts
        self.hooks = tuple(hooks) + ((artifacts,) if artifacts is not None else ())
        self.origins = origins  # which multi-arch index a pinned platform digest came from
        self.store = store
        self.runtime = runtime
        self.clock = clock
        self.retries = Retries(FAILURE_RETRY_INITIAL_S, config.podman.retry_max_s)
        self.configure(config)
        self.lock = asyncio.Lock()
        self.module_errors: dict[str, str] = {}
        self.observed: list[ObservedContainer] = []
        self.pinned: PinnedDeployment | None = None  # what the last pass worked on
        self.last_plan = Plan()
        self.last_modules: dict[str, Any] = {}
        self.busy_since: float | None = None
        self._known_images: set[str] = set()
        # Running containers (id, started at) the hooks were told of in this agent run.
        self._hooked: set[tuple[str, float | None]] = set()
        self._failed_reported: set[str] = set()  # modules whose "deployment failed" was logged
        # Modules whose last failed action was a create or start (the container's own spec is at
        # fault); a failed pull is the network's and waits for the apply timeout as before.
        self._container_failures: set[str] = set()
        if control is not None:
            control.register("plan", self._cmd_plan)
            control.register("restart", self._cmd_restart)

    def configure(self, config: AgentConfig) -> None:
        self.config = config
        # Plain HTTP for pulls only where [trust] allows it (loopback registries).
        self.passthrough = PassthroughVerifier(config.trust.insecure_registries)
        d, p = config.deployment, config.podman
        self.retries.cap_s = p.retry_max_s
        self.device_id = config.device.id
        self.naming = NamingSettings(config.device.id, d.container_prefix, p.stop_grace_s)
        self.backoff = BackoffSettings(d.backoff_initial_s, d.backoff_max_s, d.backoff_reset_s)
        self.planner_settings = PlannerSettings(self.naming, self.backoff)
        self.probation = ProbationSettings(d.stabilisation_window_s, d.apply_timeout_s)
        self.executor = Executor(
            self.runtime,
            self.store,
            ExecutorSettings(p.pull_timeout_s, p.pull_retries),
            self.passthrough.is_insecure,
            self.clock,
            hooks=self.hooks,
            device_id=config.device.id,
        )

    def stalled(self) -> str | None:
        # Pulls can legitimately take pull_timeout_s (times retries); past that we are stuck.
        limit = self.config.podman.pull_timeout_s * (2 + self.config.podman.pull_retries) + 120
        if self.busy_since is not None and self.clock() - self.busy_since > limit:
            return f"a reconcile pass has been running for {self.clock() - self.busy_since:.0f} s"
        return None

    # ------------------------------------------------------------------ one pass

    async def run_pass(
        self, committed: CommittedDeployment | None, last_known_good: int | None,
        still_current: Callable[[], bool] = lambda: True,
    ) -> PassResult:
        """One observe-judge-plan-execute pass over `committed`; writes no deployment state.
        `still_current()` is asked before each container action: a deployment replaced while the
        pass ran is not acted on further (the owner's next pass takes the new one)."""
        async with self.lock:
            now = self.clock()
            version = committed.version if committed is not None else None
            failure = self.retries.get(RUNTIME)
            if failure is not None and not self.retries.due(RUNTIME, now):
                # podman failed: not before its backoff is over
                return PassResult(version, None, runtime_error=_runtime_error(failure), wake_at=failure.next_at)
            self.busy_since = now
            try:
                result = await self._pass(committed, last_known_good, still_current)
            except RuntimeFailure as exc:
                failure, news = self.retries.failed(RUNTIME, str(exc), self.clock())
                (log.error if news else log.debug)(
                    "reconcile failed: %s (attempt %d; next in %.0f s)", exc, failure.attempts, failure.delay,
                    extra={"EVENT": "deployment.reconcile_failed"},
                )
                return PassResult(version, None, runtime_error=_runtime_error(failure), wake_at=failure.next_at,
                                  modules=runtime_unknown(self.last_modules, str(exc)))
            finally:
                self.busy_since = None
            recovered = self.retries.succeeded(RUNTIME)
            if recovered is not None:
                log.info("podman answers again after %d failed attempts over %.0f s", recovered.attempts,
                         self.clock() - recovered.since, extra={"EVENT": "deployment.runtime_back"})
            return result

    async def _pass(
        self, committed: CommittedDeployment | None, last_known_good: int | None, still_current: Callable[[], bool]
    ) -> PassResult:
        if committed is None:
            # Nothing committed yet (a fresh device): leave every container alone rather than
            # "converge" to nothing.
            self.pinned = None
            return PassResult(None, None)
        pinned = committed.pinned()
        if self.pinned is None or self.pinned.version != pinned.version:
            self.module_errors.clear()
            self._container_failures.clear()
            self.retries.forget("module:")
            self._failed_reported.clear()
            for module, reason in sorted(pinned.unloadable.items()):
                log.error("%s", reason, extra={"EVENT": "deployment.module_unloadable", "MODULE": module,
                                               "DEPLOYMENT": str(pinned.version)})
        self.pinned = pinned
        now = self.clock()
        wake: list[float] = []
        self.observed = await self.runtime.list_containers(self.device_id)
        await self._adopt(pinned)
        restarts = self._settle_restarts(pinned, now)
        verdict = self._judge(committed, pinned, last_known_good, restarts, now)
        if isinstance(verdict, Probation) and verdict.until is not None:
            wake.append(verdict.until)
        if isinstance(verdict, Failed) and last_known_good is not None and last_known_good != pinned.version:
            # The owner rolls back; acting on the failed version first would only restart it.
            return PassResult(pinned.version, verdict, again=True)

        # Artifacts are in place before a container that mounts them is created, and a new version
        # is switched in under a running container (no action in the plan for that).
        artifact_errors = await self.artifacts.place(pinned) if self.artifacts is not None else {}
        for module, error in artifact_errors.items():
            if self.module_errors.get(module) != error:
                log.error("%s: %s", module, error, extra={"EVENT": "artifact.place_failed", "MODULE": module})
            self.module_errors[module] = error
        images = await self._local_images(pinned)
        current_plan = plan(pinned, self.observed, images, restarts, now, self.planner_settings)
        self.last_plan = current_plan
        acted = tuple(sorted({a.module for a in current_plan.actions}))
        why = causes(current_plan, self.observed, pinned, self.device_id)
        if current_plan.wake_at is not None:
            wake.append(current_plan.wake_at)
        # A module whose last action failed is not tried again before its backoff is over.
        runnable = Plan(tuple(a for a in current_plan.actions if self.retries.due(f"module:{a.module}", now)
                              and not (a.module in artifact_errors and isinstance(a, Create | Start))),
                        current_plan.waits)
        again = False
        if not runnable.empty:
            result = await self.executor.execute(runnable, pinned.version, still_current)
            for module in {a.module for a in result.done} - set(result.failed):
                self.module_errors.pop(module, None)
                recovered = self.retries.succeeded(f"module:{module}")
                if recovered is not None:
                    log.info("%s: recovered after %d failed attempts", module, recovered.attempts,
                             extra={"EVENT": "module.recovered", "MODULE": module})
            self.module_errors.update(result.failed)
            for module, action in result.failed_action.items():
                if isinstance(action, Create | Start):
                    self._container_failures.add(module)
                else:
                    self._container_failures.discard(module)
            for module in {a.module for a in result.done} - set(result.failed):
                self._container_failures.discard(module)
            for module, error in result.failed.items():
                failure, news = self.retries.failed(f"module:{module}", error, self.clock())
                (log.error if news else log.debug)(
                    "%s: %s (attempt %d; next in %.0f s)", module, error, failure.attempts, failure.delay,
                    extra={"EVENT": "module.action_failed", "MODULE": module, "DEPLOYMENT": str(pinned.version)},
                )
            if result.failed:
                self._known_images.clear()  # an image may have been removed behind our back
            else:
                again = True  # look again at once: the next plan should be empty
            self.observed = await self.runtime.list_containers(self.device_id)
            for module in {a.module for a in result.done if isinstance(a, Start)}:
                started = container_for(self.observed, pinned, module, self.device_id)
                if started is not None:  # the executor ran the hooks before this start
                    self._hooked.add(_run_key(started))
        module_retry = min((f.next_at for c, f in self.retries.causes().items() if c.startswith("module:")),
                           default=None)
        if module_retry is not None:
            wake.append(module_retry)
        if isinstance(verdict, Failed):
            self._log_failed_in_place(pinned.version, verdict)
        self.last_modules = modules_report(
            pinned, self.observed, self.store.restarts(), current_plan, self.module_errors, self.device_id,
            self.clock(), artifacts=self.artifacts, origins=self.origins,
        )
        return PassResult(pinned.version, verdict, modules=self.last_modules, wake_at=min(wake, default=None),
                          again=again, acted=acted, why=why)

    async def _adopt(self, pinned: PinnedDeployment) -> None:
        """Tell the hooks of every running container of `pinned` they were not told of in this
        agent run, as if it were being started: a container adopted after an agent restart gets
        back what a start sets up (its telemetry socket, its image measurement). Hooks are
        idempotent, so a container this run started is only confirmed again."""
        for module in sorted(pinned.modules):
            container = container_for(self.observed, pinned, module, self.device_id)
            if container is None or container.state != "running" or _run_key(container) in self._hooked:
                continue
            for hook in self.hooks:
                try:
                    await hook.before_start(module, container.image, pinned.version)
                except Exception as exc:  # one hook's failure must not keep the module from being adopted
                    log.error("%s: restoring what a start sets up failed: %s", module, exc,
                              extra={"EVENT": "module.adopt_hook_failed", "MODULE": module})
            self._hooked.add(_run_key(container))
            log.info("%s: adopted running container %s", module, container.name,
                     extra={"EVENT": "module.adopted", "MODULE": module, "DEPLOYMENT": str(pinned.version)})

    def _settle_restarts(self, pinned: PinnedDeployment, now: float) -> dict[str, RestartState]:
        restarts = self.store.restarts()
        for module, state in restarts.items():
            container = container_for(self.observed, pinned, module, self.device_id)
            settled = settle(state, container, now, self.backoff)
            if settled != state:
                self.store.set_restart(module, settled)
                restarts[module] = settled
                log.info("%s: up for %.0f s, restart backoff reset", module, self.backoff.reset_after_s,
                         extra={"EVENT": "module.backoff_reset", "MODULE": module})
        return restarts

    def _judge(
        self, committed: CommittedDeployment, pinned: PinnedDeployment, last_known_good: int | None,
        restarts: Mapping[str, RestartState], now: float,
    ) -> Verdict:
        verdict = judge(pinned, last_known_good, committed.activated_at, self.observed, restarts, now,
                        self.device_id, self.probation)
        if pinned.unloadable and isinstance(verdict, Good | Probation):
            # never "good" with a module this release cannot run (a settled version stays settled:
            # there is nothing better to return to)
            module, reason = min(pinned.unloadable.items())
            return Failed(module, reason, code="module_unloadable")
        if self.artifacts is not None and isinstance(verdict, Good | Probation):
            verdict = self._judge_artifacts(committed, pinned, verdict, now)
        if isinstance(verdict, Probation):
            verdict = self._judge_action_failures(pinned, verdict)
        return verdict

    def _judge_action_failures(self, pinned: PinnedDeployment, verdict: Probation) -> Verdict:
        """A module whose container cannot be created or started (or whose artifact cannot be
        placed, or pulled) is the version's reason at once, not "not started yet" until the apply
        timeout; after MODULE_ACTION_ATTEMPTS failed creates or starts (retried with backoff: a
        podman hiccup heals) the version fails, so a device with a last-known-good one returns to
        it within seconds. A failing pull keeps waiting (the network may come back)."""
        for module in pinned.ordered():
            error = self.module_errors.get(module.name)
            if error is None:
                continue
            failure = self.retries.get(f"module:{module.name}")
            attempts = failure.attempts if failure is not None else 0
            if attempts >= MODULE_ACTION_ATTEMPTS and module.name in self._container_failures:
                return Failed(module.name, f"{error} ({attempts} attempts)", code="module_action_failed")
            return Probation(verdict.until, f"{module.name}: {error}" + (f" (attempt {attempts}, retrying)"
                                                                       if attempts else ""))
        return verdict

    def _judge_artifacts(
        self, committed: CommittedDeployment, pinned: PinnedDeployment, verdict: Good | Probation, now: float
    ) -> Verdict:
        """A module that refuses its artifact fails the deployment like a crash; one that has not
        confirmed it yet keeps the deployment on probation (up to the apply timeout)."""
        assert self.artifacts is not None
        said = self.artifacts.verdict(pinned)
        if isinstance(said, ArtifactRefusal):
            return Failed(said.module, said.reason, code="artifact_refused")
        if isinstance(said, ArtifactWait):
            if now >= committed.activated_at + self.probation.apply_timeout_s:
                return Failed(said.module, f"did not confirm its artifact within {self.probation.apply_timeout_s:g} s "
                                           f"({said.reason})", code="artifact_not_confirmed")
            if isinstance(verdict, Good) or verdict.until is not None:
                return Probation(None, said.reason)
        return verdict

    def _log_failed_in_place(self, version: int, failure: Failed) -> None:
        if failure.module in self._failed_reported:
            return
        self._failed_reported.add(failure.module)
        log.error("deployment %d failed (module %s: %s) and there is no last-known-good deployment to return "
                  "to; keeping it running under its restart policies", version, failure.module, failure.reason,
                  extra={"EVENT": "deployment.failed", "DEPLOYMENT": str(version), "MODULE": failure.module})

    async def _local_images(self, pinned: PinnedDeployment) -> set[str]:
        for image in pinned.images - self._known_images:
            if await self.runtime.image_exists(image):
                self._known_images.add(image)
        return self._known_images & pinned.images

    def forget_images(self, images: Sequence[str]) -> None:
        self._known_images.difference_update(images)

    # ------------------------------------------------------------------ control commands (CLI)

    async def _cmd_plan(self, args: dict[str, Any]) -> dict[str, Any]:
        """What the next reconcile would do, without doing it (edge-agent plan --dry-run)."""
        async with self.lock:
            now = self.clock()
            pinned = self.pinned
            observed = await self.runtime.list_containers(self.device_id)
            images = set()
            for image in pinned.images if pinned else ():
                if await self.runtime.image_exists(image):
                    images.add(image)
            p = plan(pinned, observed, images, self.store.restarts(), now, self.planner_settings)
        return {
            "deployment": pinned.version if pinned else None,
            "actions": [action_to_dict(a) for a in p.actions],
            "waits": [{**asdict(w), "in_s": round(w.until - now, 1)} for w in p.waits],
        }

    async def _cmd_restart(self, args: dict[str, Any]) -> dict[str, Any]:
        module = str(args.get("module", ""))
        async with self.lock:
            pinned = self.pinned
            if pinned is None or module not in pinned.modules:
                known = ", ".join(sorted(pinned.modules)) if pinned else "none"
                raise CommandError(f"no module {module!r} in the current deployment (modules: {known})")
            if pinned.modules[module].spec.status != "running":
                raise CommandError(f"module {module!r} is desired stopped; change the deployment to run it")
            self.observed = await self.runtime.list_containers(self.device_id)
            c = container_for(self.observed, pinned, module, self.device_id)
            if c is None:
                raise CommandError(f"module {module!r} has no container yet")
            grace = pinned.modules[module].spec.stop_grace or self.naming.default_stop_grace_s
            if c.state == "running":
                await self.runtime.stop(c.id, grace)
            await self.runtime.start(c.id)
            log.info("%s restarted by operator", module, extra={"EVENT": "module.restart_manual", "MODULE": module})
        return {"module": module, "container": c.id[:12], "restarted": True}


def _runtime_error(failure: Failure) -> str:
    return (f"{failure.error} (since {iso(failure.since)}, {failure.attempts} attempts; "
            f"next at {iso(failure.next_at)})")


__all__ = ["Failed", "Good", "PassResult", "Probation", "Reconciler", "Settled", "Verdict"]


def _run_key(container: ObservedContainer) -> tuple[str, float | None]:
    """One run of one container: a restart (new started_at) is a start the executor's hooks see."""
    return container.id, container.started_at
