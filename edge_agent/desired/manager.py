"""DesiredStateManager: the one owner of the device's deployment state, from the bytes of a
desired document to what runs and what became of each version.

    twin (transport) ─ bytes ─► submit(): admission.admit()  ──refused──► lastRefused (memory only)
                                   │ admitted: status "verifying"; a newer document supersedes
                                   ▼           (cancels) the one still verifying
                               pin every image and artifact (trust; transient failures retried
                                   │   with backoff, reported as verifying + cause + next attempt)
                                   │   ──final verdict──► rejected(code, module)
                                   ▼
                               commit: ONE transition (accepted document, `current`, key rotation,
                                   │   status activating; earlier active versions superseded)
                                   ▼
    pass loop: result = reconciler.run_pass(current, last-known-good)  (deployment/reconciler.py)
               transitions.after_pass(result) ─► probation | good | failed | rolled_back
               reported `modules` and `deployment` sections

Every change of the durable state is a store.Transition computed by transitions.py and written by
StateStore.apply() in one transaction that checks the slots it replaces. The reconciler writes
none of it and calls nothing back: it returns a PassResult. At boot transitions.recover() finishes
or undoes what a crash interrupted.

It reports the `deployment` section of the reported state (status.py), the one place the device
says which version runs and what became of each. Refused input (unsigned, replayed, too large,
...) changes no version, key, counter or stored byte: it is logged and reported as `lastRefused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_agent.artifacts.pinning import pin_artifact_refs
from edge_agent.artifacts.placement import ArtifactDirs, ArtifactFailed
from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.control import CommandError, ControlServer
from edge_agent.deployment.images_gc import collect_images
from edge_agent.deployment.modules_report import iso
from edge_agent.deployment.monitor import Monitor
from edge_agent.deployment.pass_causes import Cause
from edge_agent.deployment.pinned import CommittedDeployment
from edge_agent.deployment.reconciler import PassResult, Reconciler
from edge_agent.deployment.rollback import Failed, Good
from edge_agent.desired import transitions, trust_floor
from edge_agent.desired.admission import (
    Admitted,
    Decision,
    DocumentTrust,
    Duplicate,
    ExpiryBasis,
    History,
    Refused,
    admit,
    expiry_basis,
)
from edge_agent.desired.status import (
    STORED_VERSIONS,
    Refusal,
    VersionStatus,
    advance,
    deployment_section,
    pruned,
)
from edge_agent.desired.store import Accepted, StaleTransition, StateStore, Transition
from edge_agent.identity.clock import CLOCK_FILE, ClockWatch, env_build_date
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.trust.passthrough import RegistryUnreachable
from edge_shared.document import Limits
from edge_shared.image_ref import parse_image_reference
from edge_shared.outcome import State
from edge_shared.protocol import desired_document
from edge_shared.retry import Retries
from edge_shared.rollout_claim import RolloutClaim, claim_of_envelope
from edge_shared.spec import AGENT_RELEASE, Artifact, Deployment, artifact_slot, validate_deployment
from edge_shared.threads import run_blocking
from edge_shared.trust.api import ImageRejected, ImageVerifier
from edge_shared.trust.keys import KeyFileError, TrustedKey, load_public_key, parse_public_key

log = get_logger(__name__)
PIN_RETRY = (2.0, 60.0)  # reaching or storing a document failed: first retry after, doubling up to (s)
# Causes that say nothing about the signed content, only about reaching or storing it: retried with
# backoff (the version stays `verifying` with the cause and the next attempt), never final.
TRANSIENT_CODES = frozenset({
    "registry_unreachable",  # network down, HTTP 429 and 5xx
    "manifest_truncated",  # the connection broke mid-body
    "artifact_unreachable",
    "artifact_io",  # disk full or read-only while downloading
})


def document_trust(config: AgentConfig, rotated: tuple[TrustedKey, ...]) -> DocumentTrust:
    """[trust] as the gate applies it: a signed rotation's keys win while the config's are unchanged."""
    trust = config.trust
    keys = rotated or tuple(load_public_key(p) for p in trust.document_keys)
    return DocumentTrust(trust.document_mode, keys, trust.require_document_expiry)


class PinFailure(Exception):
    def __init__(self, module: str | None, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.module = module
        self.code = code
        self.description = description


class TransientFailure(PinFailure):
    """Reaching or storing what a document names failed; tried again with backoff."""


class FinalVerdict(PinFailure):
    """The signed content itself is refused (signature, digest, policy, ...): the version is rejected."""


class DesiredStateManager(BaseComponent):
    name = "desired"

    def __init__(
        self,
        config: AgentConfig,
        db: sqlite3.Connection,
        reported: ReportedState,
        verifier: ImageVerifier,
        reconciler: Reconciler,
        *,
        control: ControlServer | None = None,
        clock: Callable[[], float] = time.time,
        artifacts: ArtifactDirs | None = None,
        clock_watch: ClockWatch | None = None,
    ) -> None:
        self.reported = reported
        # Is the wall clock right? Expiry is judged by it only when it is (a Pi has no real-time clock).
        self.clock_watch = clock_watch or ClockWatch(config.state.dir / CLOCK_FILE, build_date=env_build_date())
        self.verifier = verifier
        self.reconciler = reconciler
        self.artifacts = artifacts
        self.clock = clock
        self.store = StateStore(db)
        self.statuses: dict[int, VersionStatus] = {}
        self.current: CommittedDeployment | None = None
        self.last_known_good: CommittedDeployment | None = None
        self.last_refused: Refusal | None = None
        self.error: str | None = None
        self.retries = Retries(*PIN_RETRY)
        self.wake = asyncio.Event()  # look again: a commit, a podman event, a healthcheck
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # between retries (a simulation's own)
        self.monitor = Monitor(reconciler.runtime, lambda: reconciler.device_id,
                               lambda: (reconciler.pinned, reconciler.observed), self.wake.set, clock)
        self._pending: tuple[Admitted, bytes] | None = None
        self._accepted_claim: tuple[str, RolloutClaim | None] | None = None  # (digest, its rollout claim)
        self._fetching: set[tuple[str, str, str]] = set()  # (module, slot, digest) the pending version downloaded
        self._arrived = asyncio.Event()
        self._pin_task: asyncio.Task[None] | None = None
        self._first_pass = asyncio.Event()
        self.report_held = False  # a rollback waits for the pass that acts on it to be reported
        self._first_pass_why: Mapping[str, Cause] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.floor_file = config.state.dir / trust_floor.FILE_NAME
        self.floor: trust_floor.TrustFloor | None = None
        self._floor_due: trust_floor.TrustFloor | None = None  # newer than the file; its writer is on the way
        self._floor_writer: asyncio.Task[None] | None = None
        # The file's one writer thread, kept between writes: starting a thread per commit made the
        # event loop wait for the new thread to be scheduled, while the next document was due.
        self._floor_thread: ThreadPoolExecutor | None = None
        self._configure(config)
        if reconciler.artifacts is not None:
            reconciler.artifacts.on_report = self.wake.set  # a module confirmed or refused an artifact
        if control is not None:
            control.register("deploy", self._cmd_deploy)

    def _configure(self, config: AgentConfig) -> None:
        """Raises KeyFileError/OSError when a configured document key cannot be read."""
        config_keys = tuple(load_public_key(p) for p in config.trust.document_keys)
        if self.store.reset_keys_if_config_changed(config_keys):
            log.info("document keys from the config are in force", extra={"EVENT": "trust.document_keys_config"})
        self._restore_floor()
        self.config = config
        self.limits = Limits(config.twin.max_desired_bytes, config.twin.max_desired_depth,
                             config.twin.max_document_signatures)
        self.trust = document_trust(config, self.store.rotated_keys())

    def _restore_floor(self) -> None:
        """The replay floor and rotation an agent roll-back must not undo (trust_floor.py): put back
        what a restored state.db lost, and bring the file up to what state.db holds."""
        try:
            floor = trust_floor.read(self.floor_file)
        except (OSError, trust_floor.TrustFloorError) as exc:
            log.error("cannot read the replay floor kept across roll-backs (%s); state.db alone is used", exc,
                      extra={"EVENT": "trust.floor_unreadable"})
            floor = None
        config_fp = self.store.config_fingerprint() or ""
        restore = trust_floor.keys_to_restore(floor, config=config_fp, db_keys_version=self.store.keys_version())
        if restore is not None:
            version, pems = restore
            try:
                keys = tuple(parse_public_key(p.encode(), str(self.floor_file)) for p in pems)
            except KeyFileError as exc:  # the file is written whole; only a hand-edit gets here
                log.error("cannot put back the document keys kept across roll-backs (%s); state.db's are used", exc,
                          extra={"EVENT": "trust.floor_unreadable"})
            else:
                self.store.restore_keys(keys, version)
                log.warning("document keys rotated by version %d put back (state.db was older: an agent roll-back)",
                            version, extra={"EVENT": "trust.document_keys_restored", "DEPLOYMENT": str(version)})
        self.floor = floor
        accepted = self.store.accepted()
        if accepted is not None:
            self._raise_floor(accepted[0], accepted[1])

    def _raise_floor(self, version: int, digest: str, *, at_start: bool = True) -> None:
        """The file follows state.db. At start it is written at once; after a commit it is written
        by a thread of its own (_write_floors), so its two fsyncs and rename do not stall the event
        loop and the next document behind it. A failure to write it is logged; state.db holds the commit,
        only its protection against an agent roll-back is missing."""
        rotated = self.store.rotated_keys() if self.store.keys_version() is not None else ()
        new = trust_floor.merged(
            self.floor, version=version, digest=digest, config=self.store.config_fingerprint() or "",
            keys_version=self.store.keys_version() if rotated else None,
            keys=tuple(k.pem().decode() for k in rotated),
        )
        if new == self.floor:
            return
        self.floor = new  # in memory it holds either way
        if at_start and (self._floor_writer is None or self._floor_writer.done()):
            self._write_floor(new)  # (with a write under way, the writer takes it: one writer, in order)
            return
        self._floor_due = new
        if self._floor_writer is None or self._floor_writer.done():
            self._floor_writer = asyncio.get_running_loop().create_task(self._write_floors(), name="trust-floor")

    def _write_floor(self, floor: trust_floor.TrustFloor) -> None:
        try:
            trust_floor.write(self.floor_file, floor)
        except OSError as exc:
            log.error("cannot keep the replay floor across roll-backs (%s)", exc, extra={"EVENT": "trust.floor_failed"})

    async def _write_floors(self) -> None:
        """One writer, newest floor wins: commits that land while a write is under way are written
        together by the next one (the floor only moves forward, so the newest holds them all)."""
        while (floor := self._floor_due) is not None:
            self._floor_due = None
            if self._floor_thread is None:
                self._floor_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trust-floor")
            await asyncio.get_running_loop().run_in_executor(self._floor_thread, self._write_floor, floor)

    async def floor_written(self) -> None:
        """Wait until the file holds the newest floor (the stop waits for it too)."""
        while self._floor_writer is not None and not self._floor_writer.done():
            await asyncio.shield(self._floor_writer)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._load()
        accepted = self.store.accepted()
        digest = accepted[1] if accepted and self.current and accepted[0] == self.current.version else ""
        recovery = transitions.recover(self.statuses, self.current, self.last_known_good, digest, self.clock())
        if recovery is not None:
            for row in recovery.statuses:
                log.warning("version %d: %s at boot (%s)", row.version, row.state, row.description,
                            extra={"EVENT": "deployment.recovered", "DEPLOYMENT": str(row.version)})
            self._apply(recovery)
        if self.artifacts is not None:
            await run_blocking(self.artifacts.collect_staging, name="artifact staging collection")
        if self.current is not None:
            log.info(
                "stored deployment %d will be run (last known good: %s)", self.current.version,
                self.last_known_good.version if self.last_known_good else "none",
                extra={"EVENT": "deployment.loaded", "DEPLOYMENT": str(self.current.version)},
            )
        self._report()

    def _load(self) -> None:
        """Memory from the store (at start, and after a transition found the disk elsewhere)."""
        self.statuses = {s.version: s for s in self.store.versions() if s.state != State.VERIFYING}
        self.current = self.store.current()
        self.last_known_good = self.store.last_known_good()

    async def apply_config(self, config: AgentConfig) -> None:
        self.reconciler.configure(config)
        self.wake.set()
        try:
            self._configure(config)
        except (KeyFileError, OSError) as exc:
            log.error("new [trust] document keys refused, keeping the previous ones: %s", exc,
                      extra={"EVENT": "trust.reload_failed"})
            return
        self._report()

    def stalled(self) -> str | None:
        return self.reconciler.stalled()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pin_forever(), name="desired-pin")
                tg.create_task(self._reconcile_forever(), name="deployment-reconcile")
                tg.create_task(self.monitor.watch_events(), name="deployment-events")
                tg.create_task(self.monitor.watch_health(), name="deployment-health")
        finally:
            await self.floor_written()
            if self._floor_thread is not None:
                self._floor_thread.shutdown(wait=False)
                self._floor_thread = None
            await self.reconciler.runtime.close()

    async def first_pass_done(self) -> Mapping[str, Cause]:
        """Wait for the first completed pass; the modules it acted on and why (an agent update on
        trial confirms only if it adopted every module the same deployment made as it found it:
        deployment/pass_causes.py)."""
        await self._first_pass.wait()
        return self._first_pass_why

    # ------------------------------------------------------------------ the pass loop

    async def _reconcile_forever(self) -> None:
        while True:
            self.wake.clear()
            result = await self.reconcile()
            if result.again:
                continue
            timeout = self.config.deployment.poll_interval_s
            if result.wake_at is not None:
                timeout = max(0.05, min(timeout, result.wake_at - self.clock()))
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives just as the event is set, and then the component never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def reconcile(self) -> PassResult:
        """One pass over the current deployment, and what it means for the state."""
        committed = self.current
        lkg = self.last_known_good.version if self.last_known_good else None
        result = await self.reconciler.run_pass(committed, lkg, lambda: self.current is committed)
        self.monitor.looked()
        self.settle(result)
        return result

    def settle(self, result: PassResult) -> None:
        """Record a pass: its verdict as a checked transition, its reports. A rollback is reported
        together with the pass that acts on it (containers and artifacts of the version returned
        to), so the fleet never reads "rolled back" while the failed version's modules are what
        the device still reports running."""
        transition = transitions.after_pass(self.statuses, self.current, self.last_known_good, result,
                                            self.clock(), self.reconciler.probation.window_s)
        moves_current = transition is not None and transition.current is not None
        if moves_current:
            self.report_held = True
        if transition is not None:
            if self._apply(transition):
                self._log_verdict(result)
                if isinstance(result.verdict, Good | Failed):
                    self._schedule_gc()
            elif moves_current:
                self.report_held = False
        acted_on_current = self.current is not None and result.version == self.current.version and (
            result.modules is not None or result.runtime_error is not None)
        if self.report_held and not moves_current and acted_on_current:
            self.report_held = False
        if not self.report_held:
            if result.modules is not None:
                self.reported.set("modules", result.modules)
            self.error = result.runtime_error
            self._report()
        # The first pass that planned (podman answered, nothing to roll back first): what it acted on.
        completed = result.runtime_error is None and (result.version is None or result.modules is not None)
        if not self._first_pass.is_set() and completed:
            self._first_pass_why = result.why
            self._first_pass.set()
        if self.artifacts is not None and result.modules is not None:
            self._spawn(run_blocking(self.artifacts.collect_staging, name="artifact staging collection"))

    def _log_verdict(self, result: PassResult) -> None:
        version, verdict = result.version, result.verdict
        if isinstance(verdict, Good):
            log.info("deployment %s is good: every module ran for %g s", version,
                     self.reconciler.probation.window_s,
                     extra={"EVENT": "deployment.good", "DEPLOYMENT": str(version)})
        elif isinstance(verdict, Failed) and self.current is not None and self.current.version != version:
            log.error("deployment %s failed (module %s: %s): rolled back to %d", version, verdict.module,
                      verdict.reason, self.current.version,
                      extra={"EVENT": "deployment.rollback", "DEPLOYMENT": str(version), "MODULE": verdict.module})

    def _apply(self, transition: Transition) -> bool:
        """Write a transition and take it into memory; False when it was not written."""
        try:
            self.store.apply(transition)
        except StaleTransition as exc:  # memory and disk disagree: the disk is the truth
            log.error("state transition refused: %s", exc, extra={"EVENT": "deployment.stale_transition"})
            self._load()
            self.wake.set()
            return False
        except sqlite3.Error as exc:  # disk full, read-only: nothing changed; the next pass tries again
            log.error("cannot store the state (%s): %s", transition.why, exc,
                      extra={"EVENT": "desired.status_store_failed"})
            return False
        if transition.current is not None:
            self.current = transition.current
            self.wake.set()
        if transition.last_known_good is not None:
            self.last_known_good = transition.last_known_good
        self._remember(transition.statuses)
        self._report()
        return True

    # ------------------------------------------------------------------ garbage collection

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def keep_pinned(self) -> list[CommittedDeployment]:
        return [d for d in (self.current, self.last_known_good) if d is not None]

    def _schedule_gc(self) -> None:
        self._spawn(self.collect_garbage())

    async def collect_garbage(self) -> list[str]:
        """Remove images and artifact versions that neither `current`, last-known-good nor the
        version being verified names (downloads of the pending version are kept)."""
        keep = self.keep_pinned()
        removed: list[str] = []
        if self.config.deployment.image_gc:
            images = {i for d in keep for i in d.images.values()}
            removed = await collect_images(self.reconciler.runtime, self.reconciler.store, images)
            self.reconciler.forget_images(removed)
        if self.reconciler.artifacts is not None:
            await self.reconciler.artifacts.collect([d.pinned() for d in keep], set(self._fetching))
        return removed

    # ------------------------------------------------------------------ documents in

    def submit(self, raw: bytes, *, trust: DocumentTrust | None = None) -> Decision:
        """The twin hands over every payload of the desired topic. Synchronous: documents are
        judged one at a time, in arrival order; only image pinning runs later (in run())."""
        now = self.clock()
        trust = trust or self.trust
        # Only a signed document's expiry is judged: the clock's state (two files) is read for those.
        expiry = ExpiryBasis(now)
        if trust.mode == "enforce":
            clock, reference = self.clock_watch.expiry_reference(dt.datetime.fromtimestamp(now, dt.UTC))
            expiry = expiry_basis(clock.synchronised, clock.reason, reference)
        decision = admit(
            raw,
            limits=self.limits,
            trust=trust,
            history=self._history(),
            now=now,
            validate=self.validate,
            expiry=expiry,
        )
        if isinstance(decision, Admitted) and decision.expires is not None and expiry.clock:
            log.warning("version %d expires %s; %s", decision.version, decision.expires.isoformat(), expiry.clock,
                        extra={"EVENT": "deployment.expiry_unjudged", "DEPLOYMENT": str(decision.version)})
        if isinstance(decision, Refused):
            self._refuse(decision)
        elif isinstance(decision, Duplicate):
            log.debug("desired version %d received again; nothing to do", decision.version)
        else:
            self._admit(decision, raw)
        return decision

    def validate(self, raw: Mapping[str, Any]) -> Deployment:
        roots = [str(r) for r in self.config.deployment.allowed_mount_roots]
        return validate_deployment(raw, allowed_mount_roots=roots)

    def _history(self) -> History:
        floor = (self.floor.version, self.floor.digest) if self.floor is not None else None
        if not self.statuses:
            return History(floor=floor)
        newest = self.statuses[max(self.statuses)]
        return History(newest.version, newest.digest, self._rollout_holder(), floor)

    def _rollout_holder(self) -> RolloutClaim | None:
        """The rollout claim of the last admitted document: the one still verifying, else the
        accepted one (its stored bytes passed the gate, so their claim is read without a check)."""
        if self._pending is not None:
            return self._pending[0].rollout
        accepted = self.store.accepted()
        if accepted is None:
            return None
        if self._accepted_claim is None or self._accepted_claim[0] != accepted[1]:
            self._accepted_claim = (accepted[1], claim_of_envelope(accepted[2]))  # parsed once per document
        return self._accepted_claim[1]

    def _refuse(self, refused: Refused) -> None:
        if refused.code == "cleared":
            # The fleet removed the retained document (edgectl does, after the device refused it):
            # nothing to report, and the refusal the fleet is reading must stay.
            log.info("the retained desired document was removed; keeping version %s",
                     self.current if self.current is not None else "none", extra={"EVENT": "desired.cleared"})
            return
        self.last_refused = Refusal(refused.digest, refused.code, refused.description, self.clock(), refused.version)
        log.warning(
            "desired document%s refused: %s: %s (keeping version %s)",
            f" version {refused.version}" if refused.version is not None else " (not authenticated)",
            refused.code,
            refused.description,
            self.current.version if self.current is not None else "none",
            extra={"EVENT": "desired.refused", "CODE": refused.code, "DIGEST": refused.digest[:16]},
        )
        self._report()

    def _admit(self, admitted: Admitted, raw: bytes) -> None:
        if self._pending is not None:
            older = self._pending[0]
            self._drop_pending(older)
            self._transition(older.version, State.SUPERSEDED,
                             description=f"version {admitted.version} arrived before it was verified")
        self._put(VersionStatus(admitted.version, admitted.digest, State.VERIFYING, self.clock(),
                                description="verifying module images"))
        log.info(
            "desired version %d admitted (signed by %s): %d modules; verifying images",
            admitted.version,
            admitted.signer or "nobody: document_mode off",
            len(admitted.deployment.modules),
            extra={"EVENT": "desired.admitted", "DEPLOYMENT": str(admitted.version)},
        )
        self._pending = (admitted, raw)
        self._arrived.set()

    def _drop_pending(self, admitted: Admitted) -> None:
        if self._pending is not None and self._pending[0] is admitted:
            self._pending = None
            if self._pin_task is not None and not self._pin_task.done():
                self._pin_task.cancel()
        self._fetching.clear()
        self.retries.forget("pin")

    # ------------------------------------------------------------------ pinning and the commit

    async def _pin_forever(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            pending = self._pending
            if pending is None:
                continue
            task = asyncio.create_task(self._pin_and_commit(*pending), name=f"pin-{pending[0].version}")
            self._pin_task = task
            try:
                await asyncio.wait({task})  # submit() cancels it when a newer document arrives
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self._pin_task = None
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.error("pinning version %d failed unexpectedly: %s", pending[0].version, exc, exc_info=exc,
                          extra={"EVENT": "desired.internal_error", "DEPLOYMENT": str(pending[0].version)})
                self._drop_pending(pending[0])
                self._transition(pending[0].version, State.REJECTED, code="internal_error",
                                 description=f"{type(exc).__name__}: {exc}")

    async def pin_pending(self) -> None:
        """Pin and commit the pending document in the caller's task, without run() (tests that
        drive the pipeline step by step with their own clock)."""
        if self._pending is not None:
            await self._pin_and_commit(*self._pending)

    async def _pin_and_commit(self, admitted: Admitted, raw: bytes) -> None:
        """Every step is tried again, with backoff, until it succeeds, a final verdict rejects the
        version, or a newer document supersedes it (cancels this task)."""
        images: dict[str, str] = {}
        # The agent release is verified like a module image, under the same trust policy.
        targets = [(name, spec.image) for name, spec in sorted(admitted.deployment.modules.items())]
        if admitted.deployment.agent is not None:
            targets.append((AGENT_RELEASE, admitted.deployment.agent.image))
        for name, image in targets:
            pinned = await self._retrying(admitted, functools.partial(self._pin_image, name, image))
            if pinned is None:
                return
            images[name] = pinned
        pins: dict[tuple[str, int], str] = {}
        for name, spec in sorted(admitted.deployment.modules.items()):
            for index, artifact in enumerate(spec.artifacts):
                if artifact.confirm and not self.config.telemetry.enabled:
                    self._reject(admitted, name, "artifact_confirm_unavailable",
                                 f"artifact {artifact.ref} (at {artifact.path}): confirm = true needs [telemetry] "
                                 "enabled (the module confirms on its telemetry socket); turn telemetry on or "
                                 "drop confirm")
                    return
                ref = await self._retrying(admitted, functools.partial(self._pin_artifact, name, artifact))
                if ref is None:
                    return
                pins[(name, index)] = ref
        document = pin_artifact_refs(admitted.document, pins)
        await self._retrying(admitted, functools.partial(self._commit, admitted, raw, images, document))

    async def _retrying(self, admitted: Admitted, step: Callable[[], Any]) -> Any:
        """Run one pinning step: its result; None after a final verdict (the version is rejected)."""
        while True:
            try:
                result = await step()
            except FinalVerdict as exc:
                self._reject(admitted, exc.module, exc.code, exc.description)
                return None
            except TransientFailure as exc:
                await self._wait_and_retry(admitted, exc)
                continue
            recovered = self.retries.succeeded("pin")
            if recovered is not None:
                log.info("deployment %d: %s cleared after %d failed attempts", admitted.version, recovered.error,
                         recovered.attempts,
                         extra={"EVENT": "desired.retry_cleared", "DEPLOYMENT": str(admitted.version)})
            return result

    async def _pin_image(self, module: str, image: str) -> str:
        try:
            verified = await self.verifier.verify(image)
        except ImageRejected as exc:
            failure = TransientFailure if exc.code in TRANSIENT_CODES else FinalVerdict
            raise failure(module, exc.code, f"image {exc.reference}: {exc.description}") from None
        except RegistryUnreachable as exc:
            raise TransientFailure(module, "registry_unreachable", f"image {image}: {exc}") from None
        return f"{verified.repository}@{verified.digest}"

    async def _pin_artifact(self, module: str, artifact: Artifact) -> str:
        """Verify an artifact under [[trust.policy]] like an image, then download it (every digest
        checked) into its version directory, before anything is committed. The pinned reference."""
        what = f"artifact {artifact.ref} (at {artifact.path})"
        try:
            verified = await self.verifier.verify(artifact.ref)
        except RegistryUnreachable as exc:
            raise TransientFailure(module, "registry_unreachable", f"{what}: {exc}") from None
        except ImageRejected as exc:
            code = exc.code if exc.code in TRANSIENT_CODES else f"artifact_{exc.code}"
            if code in TRANSIENT_CODES:
                raise TransientFailure(module, code, f"{what}: {exc.description}") from None
            raise FinalVerdict(module, code, f"{what}: {exc.description}") from None
        _, tag, _ = parse_image_reference(artifact.ref)
        pinned = f"{verified.repository}{':' + tag if tag else ''}@{verified.digest}"
        if self.artifacts is None:
            return pinned
        slot = artifact_slot(artifact.path)
        self._fetching.add((module, slot, verified.digest))
        try:
            await run_blocking(self.artifacts.fetch, module, slot, f"{verified.repository}@{verified.digest}",
                               name="artifact fetch")
        except ArtifactFailed as exc:
            if exc.code in TRANSIENT_CODES:
                raise TransientFailure(module, exc.code, f"{what}: {exc.description}") from None
            raise FinalVerdict(module, exc.code, f"{what}: {exc.description}") from None
        return pinned

    async def _wait_and_retry(self, admitted: Admitted, exc: TransientFailure) -> None:
        failure, news = self.retries.failed("pin", str(exc), self.clock())
        where = f"module {exc.module}: " if exc.module else ""
        description = (f"{where}not verified yet, trying again ({exc.description}); attempt {failure.attempts}, "
                       f"next at {iso(failure.next_at)} (in {failure.delay:.1f} s)")
        self._transition(admitted.version, State.VERIFYING, code=exc.code, module=exc.module,
                         description=description)
        (log.warning if news else log.debug)(
            "deployment %d: %s: %s", admitted.version, exc.code, description,
            extra={"EVENT": "desired.retry", "DEPLOYMENT": str(admitted.version), "MODULE": exc.module or "",
                   "CODE": exc.code},
        )
        await self.sleep(failure.delay)

    def _reject(self, admitted: Admitted, module: str | None, code: str, description: str) -> None:
        self._pending = None
        self._fetching.clear()
        self.retries.forget("pin")
        self._transition(admitted.version, State.REJECTED, code=code, module=module, description=description)
        log.error("deployment %d rejected: module %s: %s: %s (keeping version %s)", admitted.version,
                  module, code, description, self.current.version if self.current else "none",
                  extra={"EVENT": "deployment.rejected", "DEPLOYMENT": str(admitted.version),
                         "MODULE": module or "", "CODE": code})

    async def _commit(
        self, admitted: Admitted, raw: bytes, images: dict[str, str], document: Mapping[str, Any]
    ) -> None:
        version = admitted.version
        committed = CommittedDeployment(version, dict(document), images, self.clock())
        transition = transitions.commit(
            self.statuses, self.current, self.last_known_good, committed,
            Accepted(raw, admitted.digest, tuple(admitted.new_keys or ())), self.statuses[version],
        )
        try:
            self.store.apply(transition)
        except StaleTransition:
            self._load()
            raise TransientFailure(None, "store_conflict", "the state changed while committing") from None
        except sqlite3.Error as exc:  # disk full, read-only filesystem: run nothing that is not stored
            raise TransientFailure(None, "store_failed",
                                   f"images verified; cannot store the document ({exc})") from None
        self._pending = None
        self._fetching.clear()
        self.current = committed
        self._raise_floor(version, admitted.digest, at_start=False)
        self._remember(transition.statuses)
        if admitted.new_keys:
            self.trust = document_trust(self.config, self.store.rotated_keys())
            log.warning("document keys rotated by version %d (signed by %s): now %s", version, admitted.signer,
                        ", ".join(k.short_id for k in admitted.new_keys),
                        extra={"EVENT": "trust.document_keys_rotated", "DEPLOYMENT": str(version)})
        log.info("deployment %d accepted: %s", version,
                 ", ".join(f"{m}={i}" for m, i in sorted(images.items())) or "no modules",
                 extra={"EVENT": "deployment.accepted", "DEPLOYMENT": str(version)})
        self._report()
        self.wake.set()

    # ------------------------------------------------------------------ status rows outside the slots

    def _transition(
        self, version: int, state: State, *, code: str | None = None, module: str | None = None,
        description: str = "",
    ) -> None:
        status = self.statuses.get(version)
        if status is None:
            return
        moved = advance(status, state, self.clock(), code=code, module=module, description=description)
        if moved is not None:
            self._put(moved)

    def _remember(self, rows: Iterable[VersionStatus]) -> None:
        """Rows into memory, which keeps what state.db keeps (status.pruned), so what each
        document costs (its report, the supersede scan) does not grow with the device's history."""
        for row in rows:
            self.statuses[row.version] = row
        if len(self.statuses) > STORED_VERSIONS:
            self.statuses = pruned(self.statuses, self.current.version if self.current else None,
                                   self.last_known_good.version if self.last_known_good else None)

    def _put(self, status: VersionStatus) -> None:
        """A row of a version that is not committed (verifying, rejected, superseded before commit)."""
        self._remember((status,))
        if status.state == State.VERIFYING:
            # Not stored: a restart forgets a verification in progress anyway (the broker delivers
            # the retained document again), and its retry progress is not worth a disk write.
            self._report()
            return
        try:
            self.store.put_status(status)
        except sqlite3.Error as exc:  # reported from memory; the next write tries again
            log.error("cannot store the status of version %d: %s", status.version, exc,
                      extra={"EVENT": "desired.status_store_failed", "DEPLOYMENT": str(status.version)})
        self._report()

    def _report(self) -> None:
        if self.report_held:
            return  # published with the pass that acts on the rollback (settle)
        self.reported.set(
            "deployment",
            deployment_section(
                current=self.current.version if self.current else None,
                last_known_good=self.last_known_good.version if self.last_known_good else None,
                versions=self.statuses.values(),
                last_refused=self.last_refused,
                max_document_bytes=self.limits.max_bytes,
                document_mode=self.trust.mode,
                error=self.error,
                floor=self.floor.version if self.floor is not None else None,
            ),
            handed_over=True,  # built here for this call
        )

    # ------------------------------------------------------------------ control command (CLI)

    async def _cmd_deploy(self, args: dict[str, Any]) -> dict[str, Any]:
        """A deployment handed over locally (edge-agent deploy; development and tests): it goes
        through the same gate, except the signature, so it must be switched on in the config."""
        if not self.config.deployment.local_deploy:
            raise CommandError(
                "local deploys are off (deployment.local_deploy = false): deployments come signed from the fleet"
            )
        try:
            version = int(args["version"])
            document = args["deployment"]
        except (KeyError, TypeError, ValueError):
            raise CommandError('deploy: expected {"version": int, "deployment": {...}}') from None
        raw = desired_document(version, document)
        decision = self.submit(raw, trust=DocumentTrust(mode="off"))
        if isinstance(decision, Refused):
            raise CommandError(f"{decision.code}: {decision.description}")
        return {"admitted": decision.version, "digest": getattr(decision, "digest", None)}
