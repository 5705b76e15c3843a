"""DesiredStateManager: the room that owns a desired document from bytes to pinned deployment.

    twin (transport) ─ bytes ─► submit(): admission.admit()  ──refused──► lastRefused (memory only)
                                   │ admitted: status row "verifying"; a newer document supersedes
                                   ▼           (cancels) the one still verifying
                               run(): pin every module image (the image verifier, retried with
                                   │   backoff while the registry is unreachable) ──► rejected(code, module)
                                   ▼
                               DesiredStore.commit(): ONE transaction: accepted document, current
                                   │   deployment, key rotation, status "activating"
                                   ▼
                               reconciler.activate(pinned deployment) ─► probation ─► good | failed | rolled_back
                                                                          (reported back through StatusSink)

It reports the `deployment` section of the reported state (status.py), the one place the device
says which version runs and what became of each. Refused input (unsigned, replayed, too large,
...) changes no version, key, counter or stored byte: it is logged and reported as `lastRefused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edge_agent.artifacts.pinning import pin_artifact_refs
from edge_agent.artifacts.placement import ArtifactDirs, ArtifactFailed
from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.control import CommandError, ControlServer
from edge_agent.deployment.manifest import AGENT_RELEASE, Artifact, Deployment, artifact_slot, validate_deployment
from edge_agent.deployment.store import DeploymentStore, StoredDeployment
from edge_agent.desired.admission import Admitted, Decision, DocumentTrust, Duplicate, History, Refused, admit
from edge_agent.desired.status import Refusal, VersionStatus, advance, deployment_section
from edge_agent.desired.store import DesiredStore
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.trust.passthrough import RegistryUnreachable
from edge_shared.document import Limits
from edge_shared.image_ref import parse_image_reference
from edge_shared.outcome import State
from edge_shared.protocol import desired_document
from edge_shared.retry import Retries
from edge_shared.rollout_claim import RolloutClaim, claim_of_envelope
from edge_shared.threads import run_blocking
from edge_shared.trust.api import ImageRejected, ImageVerifier
from edge_shared.trust.keys import KeyFileError, TrustedKey, load_public_key

log = get_logger(__name__)
PIN_RETRY = (2.0, 60.0)  # registry unreachable: first retry after, doubling up to (seconds)


class Reconciler(Protocol):
    def activate(self, deployment: StoredDeployment) -> None: ...


def document_trust(config: AgentConfig, rotated: tuple[TrustedKey, ...]) -> DocumentTrust:
    """[trust] as the gate applies it: a signed rotation's keys win while the config's are unchanged."""
    trust = config.trust
    keys = rotated or tuple(load_public_key(p) for p in trust.document_keys)
    return DocumentTrust(trust.document_mode, keys, trust.require_document_expiry)


class DesiredStateManager(BaseComponent):
    name = "desired"

    def __init__(
        self,
        config: AgentConfig,
        db: sqlite3.Connection,
        deployments: DeploymentStore,
        reported: ReportedState,
        verifier: ImageVerifier,
        *,
        control: ControlServer | None = None,
        clock: Callable[[], float] = time.time,
        artifacts: ArtifactDirs | None = None,
    ) -> None:
        self.reported = reported
        self.verifier = verifier
        self.artifacts = artifacts
        self.clock = clock
        self.store = DesiredStore(db, deployments)
        self.deployments = deployments
        self.reconciler: Reconciler | None = None
        self.statuses: dict[int, VersionStatus] = {}
        self.last_refused: Refusal | None = None
        self.current: int | None = None
        self.last_known_good: int | None = None
        self.error: str | None = None
        self.retries = Retries(*PIN_RETRY)
        self._pending: tuple[Admitted, bytes] | None = None
        self._arrived = asyncio.Event()
        self._pin_task: asyncio.Task[None] | None = None
        self._configure(config)
        if control is not None:
            control.register("deploy", self._cmd_deploy)

    def _configure(self, config: AgentConfig) -> None:
        """Raises KeyFileError/OSError when a configured document key cannot be read."""
        config_keys = tuple(load_public_key(p) for p in config.trust.document_keys)
        if self.store.reset_keys_if_config_changed(config_keys):
            log.info("document keys from the config are in force", extra={"EVENT": "trust.document_keys_config"})
        self.config = config
        self.limits = Limits(config.twin.max_desired_bytes, config.twin.max_desired_depth)
        self.trust = document_trust(config, self.store.rotated_keys())

    def attach(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for status in self.store.versions():
            if status.state == State.VERIFYING:
                continue  # (written by an older release) a verification cut short: verified again
            self.statuses[status.version] = status
        self._adopt_older_state()
        current, lkg = self.deployments.get("current"), self.deployments.get("last_known_good")
        self.running(current.version if current else None, lkg.version if lkg else None)

    def _adopt_older_state(self) -> None:
        """A state.db from before per-version status: give the current deployment its row, so the
        replay check knows its version."""
        current = self.deployments.get("current")
        if current is None or current.version in self.statuses:
            return
        lkg = self.deployments.get("last_known_good")
        accepted = self.store.accepted()  # (state_schema.py moved an older twin_desired row here)
        digest = accepted[1] if accepted and accepted[0] == current.version else ""
        state = State.GOOD if lkg is not None and lkg.version == current.version else State.ACTIVATING
        self._put(VersionStatus(current.version, digest, state, current.activated_at))

    async def apply_config(self, config: AgentConfig) -> None:
        try:
            self._configure(config)
        except (KeyFileError, OSError) as exc:
            log.error("new [trust] document keys refused, keeping the previous ones: %s", exc,
                      extra={"EVENT": "trust.reload_failed"})
            return
        self._report()

    async def run(self) -> None:
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

    # ------------------------------------------------------------------ documents in

    def submit(self, raw: bytes, *, trust: DocumentTrust | None = None) -> Decision:
        """The twin hands over every payload of the desired topic. Synchronous: documents are
        judged one at a time, in arrival order; only image pinning runs later (in run())."""
        decision = admit(
            raw,
            limits=self.limits,
            trust=trust or self.trust,
            history=self._history(),
            now=self.clock(),
            validate=self.validate,
        )
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
        if not self.statuses:
            return History()
        newest = self.statuses[max(self.statuses)]
        return History(newest.version, newest.digest, self._rollout_holder())

    def _rollout_holder(self) -> RolloutClaim | None:
        """The rollout claim of the last admitted document: the one still verifying, else the
        accepted one (its stored bytes passed the gate, so their claim is read without a check)."""
        if self._pending is not None:
            return self._pending[0].rollout
        accepted = self.store.accepted()
        return claim_of_envelope(accepted[2]) if accepted else None

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
            self.current if self.current is not None else "none",
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
        self.retries.forget("pin")
        self.retries.forget("store")

    # ------------------------------------------------------------------ pinning and the commit

    async def pin_pending(self) -> None:
        """Pin and commit the pending document in the caller's task, without run() (tests that
        drive the pipeline step by step with their own clock)."""
        if self._pending is not None:
            await self._pin_and_commit(*self._pending)

    async def _pin_and_commit(self, admitted: Admitted, raw: bytes) -> None:
        version = admitted.version
        images: dict[str, str] = {}
        # The agent release is verified like a module image, under the same trust policy.
        targets = [(name, spec.image) for name, spec in sorted(admitted.deployment.modules.items())]
        if admitted.deployment.agent is not None:
            targets.append((AGENT_RELEASE, admitted.deployment.agent.image))
        for name, image in targets:
            while True:
                try:
                    verified = await self.verifier.verify(image)
                except (RegistryUnreachable, ImageRejected) as exc:
                    if isinstance(exc, ImageRejected) and exc.code != "registry_unreachable":
                        self._reject(admitted, name, exc)
                        return
                    await self._wait_for_registry(admitted, name, exc)
                    continue
                break
            recovered = self.retries.succeeded("pin")
            if recovered is not None:
                log.info("registry reachable again after %d failed attempts", recovered.attempts,
                         extra={"EVENT": "desired.registry_back", "DEPLOYMENT": str(version)})
            images[name] = f"{verified.repository}@{verified.digest}"
        pins: dict[tuple[str, int], str] = {}
        for name, spec in sorted(admitted.deployment.modules.items()):
            for index, artifact in enumerate(spec.artifacts):
                pinned = await self._pin_artifact(admitted, name, artifact)
                if pinned is None:
                    return
                pins[(name, index)] = pinned
        document = pin_artifact_refs(admitted.document, pins)
        while True:
            try:
                self._commit(admitted, raw, images, document)
                break
            except sqlite3.Error as exc:  # disk full, read-only filesystem: run nothing that is not stored
                await self._wait_for_store(admitted, exc)
        recovered = self.retries.succeeded("store")
        if recovered is not None:
            log.info("deployment %d stored after %d failed attempts", version, recovered.attempts,
                     extra={"EVENT": "desired.store_back", "DEPLOYMENT": str(version)})

    async def _pin_artifact(self, admitted: Admitted, module: str, artifact: Artifact) -> str | None:
        """Verify an artifact under [[trust.policy]] like an image, then download it (every digest
        checked) into its version directory, before anything is committed. The pinned reference,
        or None when the version was rejected."""
        what = f"artifact {artifact.ref} (at {artifact.path})"
        if artifact.confirm and not self.config.telemetry.enabled:
            self._reject_artifact(admitted, module, what, "artifact_confirm_unavailable",
                                  "confirm = true needs [telemetry] enabled (the module confirms on its telemetry "
                                  "socket); turn telemetry on or drop confirm")
            return None
        while True:
            try:
                verified = await self.verifier.verify(artifact.ref)
            except (RegistryUnreachable, ImageRejected) as exc:
                if isinstance(exc, ImageRejected) and exc.code != "registry_unreachable":
                    self._reject_artifact(admitted, module, what, f"artifact_{exc.code}", exc.description)
                    return None
                await self._wait_for_registry(admitted, module, exc)
                continue
            break
        self.retries.succeeded("pin")
        _, tag, _ = parse_image_reference(artifact.ref)
        pinned = f"{verified.repository}{':' + tag if tag else ''}@{verified.digest}"
        if self.artifacts is None:
            return pinned
        while True:
            try:
                await run_blocking(self.artifacts.fetch, module, artifact_slot(artifact.path),
                                   f"{verified.repository}@{verified.digest}", name="artifact fetch")
            except ArtifactFailed as exc:
                if exc.code != "artifact_unreachable":
                    self._reject_artifact(admitted, module, what, exc.code, exc.description)
                    return None
                await self._wait_for_registry(admitted, module, exc)
                continue
            return pinned

    def _reject_artifact(self, admitted: Admitted, module: str, what: str, code: str, description: str) -> None:
        self._pending = None
        self.retries.forget("pin")
        self._transition(admitted.version, State.REJECTED, code=code, module=module,
                         description=f"{what}: {description}")
        log.error("deployment %d rejected: module %s: %s: %s: %s (keeping version %s)", admitted.version,
                  module, what, code, description, self.current,
                  extra={"EVENT": "deployment.artifact_rejected", "DEPLOYMENT": str(admitted.version),
                         "MODULE": module, "CODE": code})

    async def _wait_for_registry(self, admitted: Admitted, module: str, exc: Exception) -> None:
        failure, news = self.retries.failed("pin", str(exc), self.clock())
        description = (f"module {module}: cannot resolve its image yet ({exc}); "
                       f"attempt {failure.attempts}, next in {failure.delay:.0f} s")
        self._transition(admitted.version, State.VERIFYING, module=module, description=description)
        (log.warning if news else log.debug)(
            "deployment %d: %s", admitted.version, description,
            extra={"EVENT": "desired.registry_retry", "DEPLOYMENT": str(admitted.version), "MODULE": module},
        )
        await asyncio.sleep(failure.delay)

    async def _wait_for_store(self, admitted: Admitted, exc: sqlite3.Error) -> None:
        """The document cannot be stored: it is not applied, and the commit is tried again (with
        backoff) until it succeeds or a newer document supersedes this one; it is never lost."""
        failure, news = self.retries.failed("store", str(exc), self.clock())
        description = (f"images verified; cannot store the document ({exc}); "
                       f"attempt {failure.attempts}, next in {failure.delay:.0f} s")
        self._transition(admitted.version, State.VERIFYING, code="store_failed", description=description)
        (log.error if news else log.debug)(
            "deployment %d not applied: %s", admitted.version, description,
            extra={"EVENT": "desired.store_failed", "DEPLOYMENT": str(admitted.version)},
        )
        await asyncio.sleep(failure.delay)

    def _reject(self, admitted: Admitted, module: str, exc: ImageRejected) -> None:
        self._pending = None
        self.retries.forget("pin")
        self._transition(admitted.version, State.REJECTED, code=exc.code, module=module,
                         description=f"image {exc.reference}: {exc.description}")
        log.error("deployment %d rejected: module %s: image %s: %s: %s (keeping version %s)", admitted.version,
                  module, exc.reference, exc.code, exc.description, self.current,
                  extra={"EVENT": "deployment.image_rejected", "DEPLOYMENT": str(admitted.version),
                         "MODULE": module, "CODE": exc.code})

    def _commit(
        self, admitted: Admitted, raw: bytes, images: dict[str, str], document: Mapping[str, Any] | None = None
    ) -> None:
        now = self.clock()
        version = admitted.version
        stored = StoredDeployment(version, dict(document if document is not None else admitted.document), images, now)
        rows = []
        activating = advance(self.statuses[version], State.ACTIVATING, now, description="starting its modules")
        if activating is not None:
            rows.append(activating)
        # Every earlier version not yet good (the current one on probation, or one committed but
        # never taken by the reconciler) is replaced by this one.
        for other in list(self.statuses.values()):
            if other.version != version and other.state in (State.ACTIVATING, State.PROBATION):
                replaced = advance(other, State.SUPERSEDED, now, description=f"replaced by version {version}")
                if replaced is not None:
                    rows.append(replaced)
        self.store.commit(raw, stored, admitted.digest, rows, admitted.new_keys)  # raises sqlite3.Error
        self._pending = None
        for row in rows:
            self.statuses[row.version] = row
        if admitted.new_keys:
            self.trust = document_trust(self.config, self.store.rotated_keys())
            log.warning("document keys rotated by version %d (signed by %s): now %s", version, admitted.signer,
                        ", ".join(k.short_id for k in admitted.new_keys),
                        extra={"EVENT": "trust.document_keys_rotated", "DEPLOYMENT": str(version)})
        log.info("deployment %d accepted: %s", version,
                 ", ".join(f"{m}={i}" for m, i in sorted(images.items())) or "no modules",
                 extra={"EVENT": "deployment.accepted", "DEPLOYMENT": str(version)})
        self._report()
        if self.reconciler is not None:
            self.reconciler.activate(stored)

    # ------------------------------------------------------------------ status (StatusSink)

    def running(self, current: int | None, last_known_good: int | None) -> None:
        self.current, self.last_known_good = current, last_known_good
        self._report()

    def outcome(
        self, version: int, state: State, *, code: str | None = None, module: str | None = None,
        description: str = "",
    ) -> None:
        self._transition(version, state, code=code, module=module, description=description)

    def runtime_error(self, error: str | None) -> None:
        if error != self.error:
            self.error = error
            self._report()

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

    def _put(self, status: VersionStatus) -> None:
        self.statuses[status.version] = status
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
        self.reported.set(
            "deployment",
            deployment_section(
                current=self.current,
                last_known_good=self.last_known_good,
                versions=self.statuses.values(),
                last_refused=self.last_refused,
                max_document_bytes=self.limits.max_bytes,
                document_mode=self.trust.mode,
                error=self.error,
            ),
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
