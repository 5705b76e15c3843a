"""The reconciler's side of module artifacts: place what the current deployment pins (download
if missing, atomic switch), mount each artifact directory read-only into its module's container
(a ModuleHooks), remember what each module reports it uses, and judge that for the deployment.

A changed artifact never changes the container (manifest.ModuleSpec.spec_hash leaves the
artifact version out): the switch of `current` is all a new model takes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge_agent.artifacts.confirm import (
    STREAM,
    Confirmation,
    ModuleRefused,
    ModuleReport,
    ReportError,
    Waiting,
    confirmation,
    parse_report,
)
from edge_agent.artifacts.placement import PREVIOUS, ArtifactDirs, ArtifactFailed
from edge_agent.deployment.hooks import ArtifactRefusal, ArtifactWait
from edge_agent.deployment.pinned import PinnedDeployment, PinnedModule
from edge_agent.logs import get_logger
from edge_agent.runtime.api import ContainerRequest, MountRequest
from edge_shared.image_ref import parse_image_reference
from edge_shared.spec import Artifact, artifact_slot
from edge_shared.threads import run_blocking

log = get_logger(__name__)


def pinned_digest(artifact: Artifact) -> str:
    digest = parse_image_reference(artifact.ref)[2]
    if digest is None:  # the desired-state owner pins every artifact before it commits
        raise ArtifactFailed("artifact_invalid", f"{artifact.ref}: not pinned to a digest")
    return digest


class ModuleArtifacts:
    def __init__(self, dirs: ArtifactDirs, clock: Callable[[], float] = time.time) -> None:
        self.dirs = dirs
        self.clock = clock
        self.pinned: PinnedDeployment | None = None
        self.reports: dict[str, ModuleReport] = {}
        self.on_report: Callable[[], None] = lambda: None  # the reconciler's wake-up

    # ------------------------------------------------------------------ placing

    async def place(self, pinned: PinnedDeployment | None) -> dict[str, str]:
        """Make every module's `current` the pinned version. Returns module -> error for the
        modules whose artifacts could not be placed (their containers are not created or started)."""
        self.pinned = pinned
        errors: dict[str, str] = {}
        for module in pinned.ordered() if pinned is not None else []:
            for artifact in module.spec.artifacts:
                slot = artifact_slot(artifact.path)
                try:
                    digest = pinned_digest(artifact)
                    if self.dirs.link(module.name, slot) == digest:
                        continue
                    repository = parse_image_reference(artifact.ref)[0]
                    await run_blocking(
                        self.dirs.fetch, module.name, slot, f"{repository}@{digest}", name="artifact fetch"
                    )
                    placed = await run_blocking(self.dirs.switch, module.name, slot, digest, name="artifact switch")
                    if placed.previous is not None and self._refused(module.name, slot, placed.previous):
                        # switched back from a model the module refused: it goes at once, not at
                        # the next good deployment's collection
                        await run_blocking(self.dirs.discard, module.name, slot, placed.previous,
                                           name="artifact discard")
                except ArtifactFailed as exc:
                    errors[module.name] = f"artifact {artifact.ref} at {artifact.path}: {exc.code}: {exc.description}"
                    break
        return errors

    async def collect(self, keep_from: Sequence[PinnedDeployment], fetched: set[tuple[str, str, str]]) -> None:
        """Remove artifact versions that none of these deployments (current, last-known-good)
        pins and that the version being verified did not download (`fetched`: module, slot,
        digest), other than each slot's current and previous. Off the event loop: a model can be
        hundreds of MiB."""
        await run_blocking(self._collect, keep_from, fetched, name="artifact collection")

    def _collect(self, keep_from: Sequence[PinnedDeployment], fetched: set[tuple[str, str, str]]) -> None:
        keep: dict[tuple[str, str], set[str]] = {}
        for module_name, slot, digest in fetched:
            keep.setdefault((module_name, slot), set()).add(digest)
        for deployment in keep_from:
            for module in deployment.modules.values():
                for artifact in module.spec.artifacts:
                    key = (module.name, artifact_slot(artifact.path))
                    keep.setdefault(key, set()).add(pinned_digest(artifact))
        for (name, slot), digests in keep.items():
            self.dirs.collect(name, slot, digests)

    def _refused(self, module: str, slot: str, digest: str) -> bool:
        """The module said it refuses a layer of version `digest`."""
        report = self.reports.get(module)
        contents = self.dirs.contents(module, slot, digest)
        return report is not None and contents is not None and bool(contents.layer_digests & set(report.refused))

    # ------------------------------------------------------------------ ModuleHooks

    async def before_create(self, module: str, request: ContainerRequest) -> ContainerRequest:
        spec = self.pinned.modules.get(module) if self.pinned is not None else None
        if spec is None or not spec.spec.artifacts:
            return request
        mounts = [
            MountRequest(str(self.dirs.ensure_slot(module, artifact_slot(a.path))), a.path, read_only=True)
            for a in spec.spec.artifacts
        ]
        return dataclasses.replace(request, mounts=(*request.mounts, *mounts))

    async def before_start(self, module: str, image: str, deployment: int | None) -> None:
        return None

    async def after_remove(self, module: str) -> None:
        self.reports.pop(module, None)
        await run_blocking(self.dirs.forget_module, module, name="artifact cleanup")

    # ------------------------------------------------------------------ what modules say

    def observe(self, module: str, stream: str, payload: bytes) -> None:
        """Every telemetry record a module sends passes here; `module.artifacts` ones are kept."""
        if stream != STREAM:
            return
        try:
            report = parse_report(payload, self.clock())
        except ReportError as exc:
            log.warning(
                "module %s: unusable %s report: %s",
                module,
                STREAM,
                exc,
                extra={"EVENT": "artifact.bad_report", "MODULE": module},
            )
            return
        old = self.reports.get(module)
        self.reports[module] = report
        if old is None or (old.using, dict(old.refused)) != (report.using, dict(report.refused)):
            using = ", ".join(d[:19] for d in sorted(report.using)) or "nothing"
            log.info(
                "module %s reports using %s%s",
                module,
                using,
                "".join(f"; refused {d[:19]}: {r}" for d, r in sorted(report.refused.items())),
                extra={"EVENT": "artifact.module_report", "MODULE": module},
            )
            self.on_report()

    def confirmations(self, module: PinnedModule) -> list[tuple[Artifact, Confirmation]]:
        out = []
        for artifact in module.spec.artifacts:
            if not artifact.confirm:
                continue
            slot = artifact_slot(artifact.path)
            contents = self.dirs.contents(module.name, slot, pinned_digest(artifact))
            layers = contents.layer_digests if contents is not None else frozenset()
            what = f"artifact {artifact.ref} at {artifact.path}"
            out.append((artifact, confirmation(what, layers, self.reports.get(module.name))))
        return out

    def verdict(self, pinned: PinnedDeployment) -> ArtifactRefusal | ArtifactWait | None:
        """A module's refusal, or the first module not confirmed yet; None when all confirmed."""
        waiting: ArtifactWait | None = None
        for module in pinned.ordered():
            if module.spec.status != "running":
                continue
            for artifact, c in self.confirmations(module):
                if isinstance(c, ModuleRefused):
                    return ArtifactRefusal(
                        module.name, f"refused artifact {artifact.ref} (layer {c.digest[:19]}): {c.reason}"
                    )
                if isinstance(c, Waiting) and waiting is None:
                    waiting = ArtifactWait(module.name, f"{module.name}: {c.reason}")
        return waiting

    # ------------------------------------------------------------------ reported state

    def report(self, module: PinnedModule) -> dict[str, Any]:
        """modules.<name>.artifacts in the reported state."""
        entries: dict[str, Any] = {}
        for artifact in module.spec.artifacts:
            slot = artifact_slot(artifact.path)
            digest = pinned_digest(artifact)
            contents = self.dirs.contents(module.name, slot, digest)
            entry: dict[str, Any] = {
                "ref": artifact.ref,
                "digest": digest,
                "placed": self.dirs.link(module.name, slot),
                "previous": self.dirs.link(module.name, slot, PREVIOUS),
                "layers": sorted(contents.layer_digests) if contents is not None else [],
            }
            report = self.reports.get(module.name)
            if artifact.confirm or report is not None:
                c = confirmation(
                    f"artifact {artifact.ref}", contents.layer_digests if contents else frozenset(), report
                )
                entry["module"] = (
                    "confirmed"
                    if not isinstance(c, Waiting | ModuleRefused)
                    else "refused"
                    if isinstance(c, ModuleRefused)
                    else "waiting"
                )
                if isinstance(c, ModuleRefused):
                    entry["refusedReason"] = c.reason
            entries[artifact.path] = entry
        return entries

    def module_uses(self, module: str) -> dict[str, Any] | None:
        report = self.reports.get(module)
        if report is None:
            return None
        return {
            "using": sorted(report.using),
            "refused": [{"digest": d, "reason": r} for d, r in sorted(report.refused.items())],
        }
