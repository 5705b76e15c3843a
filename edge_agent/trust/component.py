"""The image verifier built from [trust], held for the daemon (the desired-state room pins images
through it). A reload rebuilds it, so new or removed keys apply at once; a set that cannot be
built keeps the previous one. Document keys are the desired-state room's (edge_agent/desired/)."""

from __future__ import annotations

import sqlite3

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.logs import get_logger
from edge_agent.trust.factory import build_verifier
from edge_shared.trust.api import VerifiedImage
from edge_shared.trust.keys import KeyFileError

log = get_logger(__name__)


class TrustComponent(BaseComponent):
    name = "trust"

    def __init__(self, config: AgentConfig, db: sqlite3.Connection) -> None:
        self.db = db
        self._verifier = build_verifier(config, db)

    async def verify(self, reference: str) -> VerifiedImage:
        """ImageVerifier: resolve and check an image against the current policy."""
        return await self._verifier.verify(reference)

    async def apply_config(self, config: AgentConfig) -> None:
        try:
            verifier = build_verifier(config, self.db)
        except (KeyFileError, OSError) as exc:
            log.error(
                "new [trust] settings refused, keeping the previous ones: %s",
                exc,
                extra={"EVENT": "trust.reload_failed"},
            )
            return
        self._verifier = verifier
        log.info("trust policy reloaded", extra={"EVENT": "trust.reloaded"})
