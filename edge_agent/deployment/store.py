"""Durable deployment state in state.db: the current and last-known-good deployments (pinned, so
the device can start them with no network), when the current one was activated, restart counters,
versions that failed and must not be retried, and the images the agent pulled (for GC)."""

from __future__ import annotations

import functools
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from edge_agent.deployment.desired import DesiredDeployment, pin
from edge_agent.deployment.manifest import Deployment
from edge_agent.deployment.restart_policy import RestartState
from edge_agent.store import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployment_slots (
    slot TEXT PRIMARY KEY,            -- 'current' | 'last_known_good'
    version INTEGER NOT NULL,
    document TEXT NOT NULL,           -- the deployment as received (JSON)
    images TEXT NOT NULL,             -- module -> repository@digest (JSON)
    activated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_restarts (
    module TEXT PRIMARY KEY, count INTEGER NOT NULL, last_restart_at REAL, total INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_bad_versions (
    version INTEGER PRIMARY KEY, reason TEXT NOT NULL, failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_pulled_images (image TEXT PRIMARY KEY, pulled_at REAL NOT NULL);
"""


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
        self.db.executescript(SCHEMA)

    def get(self, slot: str) -> StoredDeployment | None:
        row = self.db.execute(
            "SELECT version, document, images, activated_at FROM deployment_slots WHERE slot = ?", (slot,)
        ).fetchone()
        if row is None:
            return None
        return StoredDeployment(int(row[0]), json.loads(row[1]), json.loads(row[2]), float(row[3]))

    def put(self, slot: str, dep: StoredDeployment) -> None:
        self.db.execute(
            "INSERT INTO deployment_slots(slot, version, document, images, activated_at) VALUES(?,?,?,?,?) "
            "ON CONFLICT(slot) DO UPDATE SET version=excluded.version, document=excluded.document, "
            "images=excluded.images, activated_at=excluded.activated_at",
            (slot, dep.version, json.dumps(dep.document, sort_keys=True), json.dumps(dep.images, sort_keys=True),
             dep.activated_at),
        )

    def activate(self, dep: StoredDeployment) -> None:
        """Make `dep` current and clear restart counters of the previous deployment, atomically."""
        with transaction(self.db):
            self.make_current(dep)

    def make_current(self, dep: StoredDeployment) -> None:
        """Inside a caller's transaction (desired/store.py commits a document with it)."""
        self.put("current", dep)
        self.db.execute("DELETE FROM deployment_restarts")

    def restarts(self) -> dict[str, RestartState]:
        rows = self.db.execute("SELECT module, count, last_restart_at, total FROM deployment_restarts").fetchall()
        return {r[0]: RestartState(int(r[1]), r[2], int(r[3])) for r in rows}

    def set_restart(self, module: str, state: RestartState) -> None:
        self.db.execute(
            "INSERT INTO deployment_restarts(module, count, last_restart_at, total) VALUES(?,?,?,?) "
            "ON CONFLICT(module) DO UPDATE SET count=excluded.count, last_restart_at=excluded.last_restart_at, "
            "total=excluded.total",
            (module, state.count, state.last_restart_at, state.total),
        )

    def mark_bad(self, version: int, reason: str, at: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO deployment_bad_versions(version, reason, failed_at) VALUES(?,?,?)",
            (version, reason, at),
        )

    def bad_versions(self) -> dict[int, str]:
        return {int(v): str(r) for v, r in self.db.execute("SELECT version, reason FROM deployment_bad_versions")}

    def highest_bad(self) -> int | None:
        row = self.db.execute("SELECT MAX(version) FROM deployment_bad_versions").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def note_pulled(self, image: str, at: float) -> None:
        self.db.execute("INSERT OR IGNORE INTO deployment_pulled_images(image, pulled_at) VALUES(?,?)", (image, at))

    def pulled_images(self) -> set[str]:
        return {str(r[0]) for r in self.db.execute("SELECT image FROM deployment_pulled_images")}

    def forget_pulled(self, image: str) -> None:
        self.db.execute("DELETE FROM deployment_pulled_images WHERE image = ?", (image,))
