"""DeploymentComponent: the reconciler. Keeps the device running exactly what the current,
already pinned and committed deployment says (desired/manager.py verified and stored it).

The loop (imperative shell around the pure planner, restart policy and rollback judge):

    activate(pinned deployment) ─► taken at the start of the next pass (newest wins)
    podman events / healthcheck results / timers ─► reconcile:
        observe containers ─► settle restart counters ─► judge probation (good / rollback)
        ─► plan ─► execute ─► report modules; tell the desired-state room each version's outcome

Failures back off per cause (shared/edge_shared/retry.py): a podman that does not answer, a module whose
action failed. Whatever wakes the loop, a failing cause is not tried again before its time, and
a persistent failure is logged once per change, not once per attempt.

Agent restarts never restart modules: containers with our labels and spec hash are adopted as
they are. At boot the stored (pinned) deployment runs from local images with no network.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from edge_agent.artifacts.modules import ArtifactRefusal, ArtifactWait, ModuleArtifacts
from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.control import CommandError, ControlServer
from edge_agent.deployment.actions import Create, Plan, Start, action_to_dict
from edge_agent.deployment.desired import DesiredDeployment, NamingSettings
from edge_agent.deployment.executor import Executor, ExecutorSettings
from edge_agent.deployment.hooks import ModuleHooks
from edge_agent.deployment.planner import PlannerSettings, plan
from edge_agent.deployment.restart_policy import BackoffSettings, RestartState, settle
from edge_agent.deployment.rollback import Failed, Good, Probation, ProbationSettings, Verdict, judge
from edge_agent.deployment.store import DeploymentStore, StoredDeployment
from edge_agent.desired.status import StatusSink
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import ContainerRuntime, ObservedContainer, RuntimeFailure
from edge_agent.trust.origins import ImageOrigins
from edge_agent.trust.passthrough import PassthroughVerifier
from edge_shared.outcome import State
from edge_shared.retry import Retries

log = get_logger(__name__)
HEALTH_TICK_S = 0.25
FAILURE_RETRY_S = (2.0, 60.0)  # retry after a failed action: from, doubling to (per cause)
RUNTIME = "runtime"  # the retry cause "podman does not answer"


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class PassReports:
    """The StatusSink as the reconciler uses it: during a pass, what it tells the desired-state room
    is held and delivered at the end, together with the modules' report, so the fleet never sees
    "rolled back" or "good" before the containers that make it true were acted on."""

    def __init__(self, sink: StatusSink) -> None:
        self.sink = sink
        self._held: list[Callable[[], None]] | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._held = []
        try:
            yield
        finally:
            held, self._held = self._held, None
            for deliver in held:
                deliver()

    def _send(self, deliver: Callable[[], None]) -> None:
        if self._held is None:
            deliver()
        else:
            self._held.append(deliver)

    def running(self, current: int | None, last_known_good: int | None) -> None:
        self._send(lambda: self.sink.running(current, last_known_good))

    def outcome(
        self, version: int, state: State, *, code: str | None = None, module: str | None = None,
        description: str = "",
    ) -> None:
        self._send(lambda: self.sink.outcome(version, state, code=code, module=module, description=description))

    def runtime_error(self, error: str | None) -> None:
        self._send(lambda: self.sink.runtime_error(error))


class DeploymentComponent(BaseComponent):
    name = "deployment"

    def __init__(
        self,
        config: AgentConfig,
        store: DeploymentStore,
        reported: ReportedState,
        runtime: ContainerRuntime,
        status: StatusSink,
        control: ControlServer | None = None,
        clock: Callable[[], float] = time.time,
        hooks: Sequence[ModuleHooks] = (),
        artifacts: ModuleArtifacts | None = None,
        origins: ImageOrigins | None = None,
    ) -> None:
        # Artifacts are mounted like the other hooks' additions; they are placed by every pass.
        self.artifacts = artifacts
        self.hooks = tuple(hooks) + ((artifacts,) if artifacts is not None else ())
        self.origins = origins  # which multi-arch index a pinned platform digest came from
        self.store = store
        self.reported = reported
        self.runtime = runtime
        self.clock = clock
        self.status = PassReports(status)
        self._configure(config)
        self.current: StoredDeployment | None = None
        self.lkg: StoredDeployment | None = None
        self.incoming: StoredDeployment | None = None  # committed, taken at the next pass
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.module_errors: dict[str, str] = {}
        self.retries = Retries(*FAILURE_RETRY_S)
        self.observed: list[ObservedContainer] = []
        self.last_plan = Plan()
        # The first pass after start: which modules it had to act on (an agent update on trial
        # confirms only if it adopted every module as it found it).
        self._first_pass = asyncio.Event()
        self.first_pass_acted: tuple[str, ...] = ()
        self._known_images: set[str] = set()
        self._health: dict[str, str] = {}
        self._next_check: dict[str, float] = {}
        self._busy_since: float | None = None
        self._failed_reported: set[str] = set()  # modules whose "deployment failed" was logged
        self._tasks: set[asyncio.Task[Any]] = set()
        if artifacts is not None:
            artifacts.on_report = self.wake.set  # a module confirmed or refused an artifact
        if control is not None:
            control.register("plan", self._cmd_plan)
            control.register("restart", self._cmd_restart)

    def _configure(self, config: AgentConfig) -> None:
        self.config = config
        # Plain HTTP for pulls only where [trust] allows it (loopback registries).
        self.passthrough = PassthroughVerifier(config.trust.insecure_registries)
        d, p = config.deployment, config.podman
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

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.current = self.store.get("current")
        self.lkg = self.store.get("last_known_good")
        if self.current is not None:
            log.info(
                "stored deployment %d will be run (last known good: %s)",
                self.current.version,
                self.lkg.version if self.lkg else "none",
                extra={"EVENT": "deployment.loaded", "DEPLOYMENT": str(self.current.version)},
            )
        self._tell_running()

    async def apply_config(self, config: AgentConfig) -> None:
        self._configure(config)
        self.wake.set()

    def stalled(self) -> str | None:
        # Pulls can legitimately take pull_timeout_s (times retries); past that we are stuck.
        limit = self.config.podman.pull_timeout_s * (2 + self.config.podman.pull_retries) + 120
        if self._busy_since is not None and self.clock() - self._busy_since > limit:
            return f"a reconcile pass has been running for {self.clock() - self._busy_since:.0f} s"
        return None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_events(), name="deployment-events")
                tg.create_task(self._watch_health(), name="deployment-health")
                tg.create_task(self._reconcile_forever(), name="deployment-reconcile")
        finally:
            await self.runtime.close()

    # ------------------------------------------------------------------ the committed deployment

    async def first_pass_done(self) -> tuple[str, ...]:
        """Wait for the first completed pass; the modules it acted on."""
        await self._first_pass.wait()
        return self.first_pass_acted

    def activate(self, deployment: StoredDeployment) -> None:
        """A pinned deployment the desired-state room committed as current. Taken at the start of
        the next pass, never in the middle of one; a newer one handed over before that wins."""
        self.incoming = deployment
        self.wake.set()

    def _take_incoming(self) -> None:
        incoming, self.incoming = self.incoming, None
        if incoming is None:
            return
        if self.current is not None and self.current.version == incoming.version:
            self.current = incoming
            return
        self.current = incoming
        self.module_errors.clear()
        self.retries.forget("module:")
        log.info("deployment %d activated: %s", incoming.version,
                 ", ".join(f"{m}={i}" for m, i in sorted(incoming.images.items())) or "no modules",
                 extra={"EVENT": "deployment.activated", "DEPLOYMENT": str(incoming.version)})
        self._tell_running()

    def _tell_running(self) -> None:
        self.status.running(self.current.version if self.current else None, self.lkg.version if self.lkg else None)

    # ------------------------------------------------------------------ loops

    async def _reconcile_forever(self) -> None:
        while True:
            self.wake.clear()
            wake_at = await self.reconcile()
            timeout = self.config.deployment.poll_interval_s
            if wake_at is not None:
                timeout = max(0.05, min(timeout, wake_at - self.clock()))
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives just as the event is set, and then the component never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def _watch_events(self) -> None:
        events = Retries(1.0, 30.0)  # its own backoff: reconnecting the stream, logged once per change
        while True:
            try:
                async for event in self.runtime.events(self.device_id):
                    if events.succeeded("events") is not None:
                        log.info("podman event stream back", extra={"EVENT": "runtime.events_back"})
                    log.debug("podman event %s %s", event.action, event.name,
                              extra={"EVENT": "runtime.event", "MODULE": event.module})
                    self.wake.set()
                failure, news = events.failed("events", "the stream ended", self.clock())
            except RuntimeFailure as exc:
                failure, news = events.failed("events", str(exc), self.clock())
            (log.warning if news else log.debug)(
                "podman event stream: %s; reconnecting in %.0f s", failure.error, failure.delay,
                extra={"EVENT": "runtime.events_lost"},
            )
            self.wake.set()  # events may have been missed: look again
            await asyncio.sleep(failure.delay)

    async def _watch_health(self) -> None:
        """Run container healthchecks on their interval (podman relies on systemd timers for this,
        which a device without a systemd-managed podman lacks); a changed result wakes the loop."""
        while True:
            await asyncio.sleep(HEALTH_TICK_S)
            desired = self._desired_now()
            if desired is None:
                continue
            now = self.clock()
            for c in list(self.observed):
                module = desired.modules.get(c.module or "")
                if (c.state != "running" or module is None or module.spec.healthcheck is None
                        or c.spec_hash != module.spec_hash):
                    continue
                if now < self._next_check.get(c.id, 0.0):
                    continue
                self._next_check[c.id] = now + module.spec.healthcheck.interval
                try:
                    health = await self.runtime.healthcheck(c.id)
                except RuntimeFailure:
                    continue  # the container went away; the event stream says so
                if self._health.get(c.id) != health:
                    self._health[c.id] = health
                    self.wake.set()

    def _desired_now(self) -> DesiredDeployment | None:
        return self.current.desired() if self.current is not None else None

    # ------------------------------------------------------------------ one pass

    async def reconcile(self) -> float | None:
        """One observe-judge-plan-execute-report pass. Returns when to look again (or None)."""
        async with self.lock:
            now = self.clock()
            if not self.retries.due(RUNTIME, now):
                return self.retries.next_at()  # podman failed: not before its backoff is over
            self._busy_since = now
            try:
                with self.status.held():
                    wake_at = await self._reconcile()
            except RuntimeFailure as exc:
                failure, news = self.retries.failed(RUNTIME, str(exc), self.clock())
                (log.error if news else log.debug)(
                    "reconcile failed: %s (attempt %d; next in %.0f s)", exc, failure.attempts, failure.delay,
                    extra={"EVENT": "deployment.reconcile_failed"},
                )
                self.status.runtime_error(f"{exc} (since {iso(failure.since)}, {failure.attempts} attempts)")
                self._report_unknown(str(exc))
                return failure.next_at
            finally:
                self._busy_since = None
            recovered = self.retries.succeeded(RUNTIME)
            if recovered is not None:
                log.info("podman answers again after %d failed attempts over %.0f s", recovered.attempts,
                         self.clock() - recovered.since, extra={"EVENT": "deployment.runtime_back"})
                self.status.runtime_error(None)
            return wake_at

    async def _reconcile(self) -> float | None:
        self._take_incoming()
        wake: list[float] = []
        if self.current is None:
            # No deployment accepted yet (a fresh device): leave every container alone rather
            # than "converge" to nothing.
            self._first_pass.set()
            return None
        now = self.clock()
        self.observed = await self.runtime.list_containers(self.device_id)
        desired = self._desired_now()
        restarts = self._settle_restarts(desired, now)

        if desired is not None:
            verdict = self._judge(desired, restarts, now)
            if isinstance(verdict, Probation) and verdict.until is not None:
                wake.append(verdict.until)
            if isinstance(verdict, Failed) and self._rollback(verdict):
                desired = self._desired_now()
                restarts = {}

        # Artifacts are in place before a container that mounts them is created, and a new version
        # is switched in under a running container (no action in the plan for that).
        artifact_errors = await self.artifacts.place(desired) if self.artifacts is not None else {}
        for module, error in artifact_errors.items():
            if self.module_errors.get(module) != error:
                log.error("%s: %s", module, error, extra={"EVENT": "artifact.place_failed", "MODULE": module})
            self.module_errors[module] = error
        images = await self._local_images(desired)
        current_plan = plan(desired, self.observed, images, restarts, now, self.planner_settings)
        self.last_plan = current_plan
        if not self._first_pass.is_set():
            self.first_pass_acted = tuple(sorted({a.module for a in current_plan.actions}))
            self._first_pass.set()
        if current_plan.wake_at is not None:
            wake.append(current_plan.wake_at)
        # A module whose last action failed is not tried again before its backoff is over.
        runnable = Plan(tuple(a for a in current_plan.actions if self.retries.due(f"module:{a.module}", now)
                              and not (a.module in artifact_errors and isinstance(a, Create | Start))),
                        current_plan.waits)
        if not runnable.empty:
            version = desired.version if desired else None
            result = await self.executor.execute(runnable, version)
            for module in {a.module for a in result.done} - set(result.failed):
                self.module_errors.pop(module, None)
                recovered = self.retries.succeeded(f"module:{module}")
                if recovered is not None:
                    log.info("%s: recovered after %d failed attempts", module, recovered.attempts,
                             extra={"EVENT": "module.recovered", "MODULE": module})
            self.module_errors.update(result.failed)
            for module, error in result.failed.items():
                failure, news = self.retries.failed(f"module:{module}", error, self.clock())
                (log.error if news else log.debug)(
                    "%s: %s (attempt %d; next in %.0f s)", module, error, failure.attempts, failure.delay,
                    extra={"EVENT": "module.action_failed", "MODULE": module, "DEPLOYMENT": str(version)},
                )
            if result.failed:
                self._known_images.clear()  # an image may have been removed behind our back
            else:
                self.wake.set()  # look again at once: the next plan should be empty
            self.observed = await self.runtime.list_containers(self.device_id)
        module_retry = min((f.next_at for c, f in self.retries.causes().items() if c.startswith("module:")),
                           default=None)
        if module_retry is not None:
            wake.append(module_retry)
        self._report_modules(desired, self.store.restarts(), current_plan)
        return min(wake, default=None)

    def _settle_restarts(self, desired: DesiredDeployment | None, now: float) -> dict[str, RestartState]:
        restarts = self.store.restarts()
        for module, state in restarts.items():
            container = self._container_for(desired, module)
            settled = settle(state, container, now, self.backoff)
            if settled != state:
                self.store.set_restart(module, settled)
                restarts[module] = settled
                log.info("%s: up for %.0f s, restart backoff reset", module, self.backoff.reset_after_s,
                         extra={"EVENT": "module.backoff_reset", "MODULE": module})
        return restarts

    def _container_for(self, desired: DesiredDeployment | None, module: str) -> ObservedContainer | None:
        want = desired.modules.get(module) if desired else None
        for c in self.observed:
            if c.owned_by(self.device_id) and c.module == module and (want is None or c.spec_hash == want.spec_hash):
                return c
        return None

    def _judge(self, desired: DesiredDeployment, restarts: Mapping[str, RestartState], now: float) -> Verdict:
        assert self.current is not None
        lkg_version = self.lkg.version if self.lkg else None
        verdict = judge(desired, lkg_version, self.current.activated_at, self.observed, restarts, now,
                        self.device_id, self.probation)
        if self.artifacts is not None and isinstance(verdict, Good | Probation):
            verdict = self._judge_artifacts(desired, verdict, now)
        version = desired.version
        if isinstance(verdict, Good):
            self.lkg = self.current
            self.store.put("last_known_good", self.current)
            self.status.outcome(version, State.GOOD, description=f"every module ran for {self.probation.window_s:g} s")
            self._tell_running()
            log.info("deployment %d is good: every module ran for %g s", version, self.probation.window_s,
                     extra={"EVENT": "deployment.good", "DEPLOYMENT": str(version)})
            self._schedule_gc()
            if self.artifacts is not None:
                self.artifacts.collect([desired])
        elif isinstance(verdict, Probation) and verdict.until is not None:
            self.status.outcome(version, State.PROBATION,
                                description=f"every module runs; good at {iso(verdict.until)} if it stays so")
        elif isinstance(verdict, Probation):
            self.status.outcome(version, State.ACTIVATING, description=verdict.reason)
        return verdict

    def _judge_artifacts(self, desired: DesiredDeployment, verdict: Good | Probation, now: float) -> Verdict:
        """A module that refuses its artifact fails the deployment like a crash; one that has not
        confirmed it yet keeps the deployment on probation (up to the apply timeout)."""
        assert self.artifacts is not None and self.current is not None
        said = self.artifacts.verdict(desired)
        if isinstance(said, ArtifactRefusal):
            return Failed(said.module, said.reason, code="artifact_refused")
        if isinstance(said, ArtifactWait):
            if now >= self.current.activated_at + self.probation.apply_timeout_s:
                return Failed(said.module, f"did not confirm its artifact within {self.probation.apply_timeout_s:g} s "
                                      f"({said.reason})", code="artifact_not_confirmed")
            if isinstance(verdict, Good) or verdict.until is not None:
                return Probation(None, said.reason)
        return verdict

    def _rollback(self, failure: Failed) -> bool:
        assert self.current is not None
        bad = self.current
        reason = f"module {failure.module}: {failure.reason}"
        if self.lkg is None or self.lkg.version == bad.version:
            if failure.module not in self._failed_reported:
                self._failed_reported.add(failure.module)
                log.error("deployment %d failed (%s) and there is no last-known-good deployment to return to; "
                          "keeping it running under its restart policies", bad.version, reason,
                          extra={"EVENT": "deployment.failed", "DEPLOYMENT": str(bad.version),
                                 "MODULE": failure.module})
            self.status.outcome(bad.version, State.FAILED, code=failure.code, module=failure.module,
                                description=f"{failure.reason}; no earlier good version to return to, "
                                            "kept running under its restart policies")
            return False
        self.store.mark_bad(bad.version, reason, self.clock())
        back = StoredDeployment(self.lkg.version, self.lkg.document, self.lkg.images, self.clock())
        self.store.activate(back)
        self.current = back
        self.lkg = back
        self.store.put("last_known_good", back)
        self.status.outcome(bad.version, State.ROLLED_BACK, code=failure.code, module=failure.module,
                            description=f"{failure.reason}; version {back.version} runs again")
        self._tell_running()
        log.error("deployment %d failed (%s): rolling back to %d", bad.version, reason, back.version,
                  extra={"EVENT": "deployment.rollback", "DEPLOYMENT": str(bad.version), "MODULE": failure.module})
        return True

    async def _local_images(self, desired: DesiredDeployment | None) -> set[str]:
        if desired is None:
            return set()
        for image in desired.images - self._known_images:
            if await self.runtime.image_exists(image):
                self._known_images.add(image)
        return self._known_images & desired.images

    def _schedule_gc(self) -> None:
        if self.config.deployment.image_gc:
            task = asyncio.get_running_loop().create_task(self.collect_images())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def collect_images(self) -> list[str]:
        """Remove images the agent pulled that neither the current nor the last-known-good
        deployment uses (an image still used by a container is kept for later)."""
        keep = set(self.current.images.values() if self.current else ()) | set(
            self.lkg.images.values() if self.lkg else ()
        )
        removed = []
        for image in sorted(self.store.pulled_images() - keep):
            try:
                if await self.runtime.remove_image(image):
                    removed.append(image)
                    self.store.forget_pulled(image)
                    self._known_images.discard(image)
                    log.info("removed unused image %s", image, extra={"EVENT": "image.removed"})
            except RuntimeFailure as exc:
                log.warning("could not remove image %s: %s", image, exc, extra={"EVENT": "image.gc_failed"})
        return removed

    # ------------------------------------------------------------------ reported state

    def _report_modules(
        self, desired: DesiredDeployment | None, restarts: Mapping[str, RestartState], current_plan: Plan
    ) -> None:
        waits = {w.module: w for w in current_plan.waits}
        modules: dict[str, Any] = {}
        for m in desired.ordered() if desired else []:
            c = self._container_for(desired, m.name)
            restart = restarts.get(m.name, RestartState())
            entry: dict[str, Any] = {
                "image": m.spec.image,
                "digest": m.image.split("@", 1)[1],
                **self._origin(m.image),
                "desiredStatus": m.spec.status,
                "restartPolicy": m.spec.restart_policy,
                "restartCount": restart.total,
                "lastRestartTime": iso(restart.last_restart_at),
            }
            status, description = self._module_status(m.name, m.spec.status, c, waits.get(m.name))
            entry.update(runtimeStatus=status, statusDescription=description)
            if c is not None:
                entry.update(
                    containerId=c.id[:12],
                    exitCode=c.exit_code,
                    startTime=iso(c.started_at),
                    lastExitTime=iso(c.finished_at),
                    health=c.health,
                )
            if self.artifacts is not None and m.spec.artifacts:
                entry["artifacts"] = self.artifacts.report(m)
                uses = self.artifacts.module_uses(m.name)
                if uses is not None:
                    entry["moduleReport"] = uses
            modules[m.name] = entry
        self.reported.set("modules", modules)

    def _origin(self, image: str) -> dict[str, str]:
        """indexDigest and platform when the pinned digest was picked from a multi-arch index."""
        origin = self.origins.lookup(image) if self.origins is not None else None
        return {"indexDigest": origin.index_digest, "platform": origin.platform} if origin else {}

    def _report_unknown(self, error: str) -> None:
        """Podman does not answer: what the modules do is unknown, and the report says so rather
        than repeat what was last seen."""
        modules = self.reported.get("modules") or {}
        for entry in modules.values():
            if entry.get("runtimeStatus") != "unknown":
                entry["statusDescription"] = (f"podman does not answer ({error}); "
                                              f"last seen {entry.get('runtimeStatus')}")
                entry["runtimeStatus"] = "unknown"
        self.reported.set("modules", modules)

    def _module_status(self, name: str, desired_status: str, c: ObservedContainer | None, wait: Any) -> tuple[str, str]:
        error = self.module_errors.get(name)
        if c is None:
            return ("failed", error) if error else ("pending", "container not created yet")
        if c.state == "running":
            if c.health == "unhealthy":
                return "unhealthy", "healthcheck failing" + (f"; {wait.reason}" if wait else "")
            return "running", "running" + (f", health {c.health}" if c.health != "none" else "")
        if c.state == "exited":
            if wait is not None:
                due = max(0.0, wait.until - self.clock())
                return "backoff", f"exited with code {c.exit_code}; restarting in {due:.1f} s"
            if desired_status == "stopped":
                return "stopped", "stopped as desired"
            return ("stopped" if c.exit_code == 0 else "failed"), f"exited with code {c.exit_code}"
        if c.state == "created":
            return "stopped", error or ("created, not started" if desired_status == "running" else "stopped as desired")
        return c.state, error or c.state

    # ------------------------------------------------------------------ control commands (CLI)

    async def _cmd_plan(self, args: dict[str, Any]) -> dict[str, Any]:
        """What the next reconcile would do, without doing it (edge-agent plan --dry-run)."""
        async with self.lock:
            now = self.clock()
            desired = self._desired_now()
            observed = await self.runtime.list_containers(self.device_id)
            images = set()
            for image in desired.images if desired else ():
                if await self.runtime.image_exists(image):
                    images.add(image)
            p = plan(desired, observed, images, self.store.restarts(), now, self.planner_settings)
        return {
            "deployment": desired.version if desired else None,
            "pending": self.incoming.version if self.incoming else None,
            "actions": [action_to_dict(a) for a in p.actions],
            "waits": [{**asdict(w), "in_s": round(w.until - now, 1)} for w in p.waits],
        }

    async def _cmd_restart(self, args: dict[str, Any]) -> dict[str, Any]:
        module = str(args.get("module", ""))
        async with self.lock:
            desired = self._desired_now()
            if desired is None or module not in desired.modules:
                known = ", ".join(sorted(desired.modules)) if desired else "none"
                raise CommandError(f"no module {module!r} in the current deployment (modules: {known})")
            if desired.modules[module].spec.status != "running":
                raise CommandError(f"module {module!r} is desired stopped; change the deployment to run it")
            self.observed = await self.runtime.list_containers(self.device_id)
            c = self._container_for(desired, module)
            if c is None:
                raise CommandError(f"module {module!r} has no container yet")
            grace = desired.modules[module].spec.stop_grace or self.naming.default_stop_grace_s
            if c.state == "running":
                await self.runtime.stop(c.id, grace)
            await self.runtime.start(c.id)
            log.info("%s restarted by operator", module, extra={"EVENT": "module.restart_manual", "MODULE": module})
        self.wake.set()
        return {"module": module, "container": c.id[:12], "restarted": True}
