"""Durable deployment state in state.db: the current and last-known-good deployments (pinned, so
the device can start them with no network), when the current one was activated, restart counters,
versions that failed and must not be retried, and the images the agent pulled (for GC).

    deployment_slots          'current' | 'last_known_good' -> version, document and images (JSON)
    deployment_restarts       module -> restart counters of the current deployment
    deployment_bad_versions   version -> why it failed
    deployment_pulled_images  repository@digest the agent pulled

The tables are created and migrated by state_schema.py; read and written with sqlite-utils.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.deployment.desired import DesiredDeployment, pin
from edge_agent.deployment.manifest import Deployment
from edge_agent.deployment.restart_policy import RestartState
from edge_agent.store import tables, transaction

if TYPE_CHECKING:  # at run time sqlite-utils is imported once, by state_schema.py (without numpy)
    from sqlite_utils.db import Table


@dataclass(frozen=True)
class StoredDeployment:
    version: int
    document: dict[str, Any]
    images: dict[str, str]
    activated_at: float

    def desired(self) -> DesiredDeployment:
        """The pinned deployment. The document was validated once, by the document gate, before
        it was stored; here it is only loaded into its model (once per stored deployment)."""
        return self._desired

    @functools.cached_property
    def _desired(self) -> DesiredDeployment:
        return pin(self.version, Deployment.model_validate(self.document), self.images)


class DeploymentStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        t = tables(db)
        self._slots: Table = t.table("deployment_slots")
        self._restarts: Table = t.table("deployment_restarts")
        self._bad: Table = t.table("deployment_bad_versions")
        self._pulled: Table = t.table("deployment_pulled_images")

    def get(self, slot: str) -> StoredDeployment | None:
        for row in self._slots.rows_where("slot = ?", [slot]):
            return StoredDeployment(
                int(row["version"]), json.loads(row["document"]), json.loads(row["images"]), float(row["activated_at"])
            )
        return None

    def put(self, slot: str, dep: StoredDeployment) -> None:
        self._slots.upsert(
            {
                "slot": slot,
                "version": dep.version,
                "document": json.dumps(dep.document, sort_keys=True),
                "images": json.dumps(dep.images, sort_keys=True),
                "activated_at": dep.activated_at,
            },
            pk="slot",
        )

    def activate(self, dep: StoredDeployment) -> None:
        """Make `dep` current and clear restart counters of the previous deployment, atomically."""
        with transaction(self.db):
            self.make_current(dep)

    def make_current(self, dep: StoredDeployment) -> None:
        """Inside a caller's transaction (desired/store.py commits a document with it)."""
        self.put("current", dep)
        self._restarts.delete_where()

    def restarts(self) -> dict[str, RestartState]:
        return {
            str(r["module"]): RestartState(int(r["count"]), r["last_restart_at"], int(r["total"]))
            for r in self._restarts.rows
        }

    def set_restart(self, module: str, state: RestartState) -> None:
        self._restarts.upsert(
            {"module": module, "count": state.count, "last_restart_at": state.last_restart_at, "total": state.total},
            pk="module",
        )

    def mark_bad(self, version: int, reason: str, at: float) -> None:
        self._bad.upsert({"version": version, "reason": reason, "failed_at": at}, pk="version")

    def bad_versions(self) -> dict[int, str]:
        return {int(r["version"]): str(r["reason"]) for r in self._bad.rows}

    def highest_bad(self) -> int | None:
        return max(self.bad_versions(), default=None)

    def note_pulled(self, image: str, at: float) -> None:
        self._pulled.insert({"image": image, "pulled_at": at}, pk="image", ignore=True)

    def pulled_images(self) -> set[str]:
        return {str(r["image"]) for r in self._pulled.rows}

    def forget_pulled(self, image: str) -> None:
        self._pulled.delete_where("image = ?", [image])
