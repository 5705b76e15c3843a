"""The desired-state owner and the reconciler wired as daemon.py wires them, for tests that hand
deployments over directly (no broker): documents go through the same gate (signatures off)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edge_agent.artifacts.modules import ModuleArtifacts
from edge_agent.artifacts.placement import ArtifactDirs
from edge_agent.config import AgentConfig
from edge_agent.deployment.hooks import ModuleHooks
from edge_agent.deployment.reconciler import PassResult, Reconciler
from edge_agent.deployment.store import ReconcilerStore
from edge_agent.desired.admission import Decision, DocumentTrust
from edge_agent.desired.manager import DesiredStateManager
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import ContainerRuntime
from edge_shared.protocol import desired_document
from edge_shared.trust.api import ImageVerifier


class Pipeline:
    def __init__(
        self,
        config: AgentConfig,
        db: sqlite3.Connection,
        reported: ReportedState,
        runtime: ContainerRuntime,
        verifier: ImageVerifier,
        *,
        clock: Callable[[], float] = time.time,
        hooks: Sequence[ModuleHooks] = (),
        artifacts: ArtifactDirs | None = None,
    ) -> None:
        self.reported = reported
        self.artifacts = ModuleArtifacts(artifacts, clock) if artifacts is not None else None
        self.reconciler = Reconciler(config, ReconcilerStore(db), runtime, clock=clock, hooks=hooks,
                                     artifacts=self.artifacts)
        self.manager = DesiredStateManager(config, db, reported, verifier, self.reconciler, clock=clock,
                                           artifacts=artifacts)

    async def start(self) -> None:
        await self.manager.start()

    async def reconcile(self) -> PassResult:
        """One pass, recorded by the owner (as its loop does)."""
        return await self.manager.reconcile()

    async def deploy(self, version: int, deployment: Mapping[str, Any]) -> Decision:
        """Submit and pin at once (in this task); the reconciler takes it at its next pass."""
        decision = self.manager.submit(
            desired_document(version, dict(deployment)), trust=DocumentTrust(mode="off")
        )
        await self.manager.pin_pending()
        return decision

    def section(self) -> dict[str, Any]:
        return dict(self.reported.get("deployment") or {})

    def state(self, version: int) -> str | None:
        entry = (self.section().get("versions") or {}).get(str(version)) or {}
        return entry.get("state")
