"""The desired-state room's tables in state.db, and its one commit transaction.

    desired_versions     one status row per version that passed the document gate (status.py)
    desired_accepted     the last committed document, as the exact bytes received (its signature
                         stays checkable)
    trust_document_keys  the document keys a signed rotation installed (with meta rows for the
                         version that installed them and the config keys they replaced)

`commit()` writes, in ONE transaction, everything accepting a document changes: the accepted
document, the deployment's `current` slot (deployment/store.py, restart counters cleared), any key
rotation, and the version's status rows. Before it, nothing of the document is stored but its
status row; a power cut leaves either all of it or none.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence

from edge_agent.deployment.store import DeploymentStore, StoredDeployment
from edge_agent.desired.status import KEEP_VERSIONS, State, VersionStatus
from edge_agent.store import get_meta, set_meta, transaction
from edge_agent.trust.keys import TrustedKey, parse_public_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS desired_versions (
    version INTEGER PRIMARY KEY,
    digest TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    code TEXT,
    module TEXT,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS desired_accepted (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    payload BLOB NOT NULL,
    accepted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trust_document_keys (
    key_id TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    installed_version INTEGER NOT NULL,
    installed_at REAL NOT NULL
);
"""
META_CONFIG_FP = "trust.document_keys.config"
META_VERSION = "trust.document_keys.version"
# Rows kept beyond the reported ones, so the newest version is never pruned by an old one.
_PRUNE_KEEP = KEEP_VERSIONS * 2


def keys_fingerprint(keys: Sequence[TrustedKey]) -> str:
    return hashlib.sha256("|".join(sorted(k.key_id for k in keys)).encode()).hexdigest()


class DesiredStore:
    def __init__(self, db: sqlite3.Connection, deployments: DeploymentStore) -> None:
        self.db = db
        self.deployments = deployments
        db.executescript(SCHEMA)

    # ------------------------------------------------------------------ version status

    def versions(self) -> list[VersionStatus]:
        rows = self.db.execute(
            "SELECT version, digest, state, at, code, module, description FROM desired_versions ORDER BY version"
        ).fetchall()
        out = []
        for r in rows:
            try:
                state = State(r[2])
            except ValueError:
                continue  # written by a newer release; not ours to interpret
            out.append(VersionStatus(int(r[0]), str(r[1]), state, float(r[3]), r[4], r[5], str(r[6] or "")))
        return out

    def put_status(self, status: VersionStatus) -> None:
        self._put_status(status)
        self._prune()

    def _put_status(self, status: VersionStatus) -> None:
        self.db.execute(
            "INSERT INTO desired_versions(version, digest, state, at, code, module, description) "
            "VALUES(?,?,?,?,?,?,?) ON CONFLICT(version) DO UPDATE SET digest=excluded.digest, "
            "state=excluded.state, at=excluded.at, code=excluded.code, module=excluded.module, "
            "description=excluded.description",
            (status.version, status.digest, str(status.state), status.at, status.code, status.module,
             status.description),
        )

    def _prune(self) -> None:
        current = self.deployments.get("current")
        lkg = self.deployments.get("last_known_good")
        keep = [v.version if v is not None else -1 for v in (current, lkg)]
        self.db.execute(
            "DELETE FROM desired_versions WHERE version NOT IN "
            "(SELECT version FROM desired_versions ORDER BY version DESC LIMIT ?) AND version NOT IN (?, ?)",
            (_PRUNE_KEEP, *keep),
        )

    # ------------------------------------------------------------------ the accepted document

    def accepted(self) -> tuple[int, str, bytes] | None:
        row = self.db.execute("SELECT version, digest, payload FROM desired_accepted WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]), bytes(row[2]))

    def legacy_accepted(self) -> tuple[int, str] | None:
        """The accepted document's version and digest as releases before per-version status kept
        them (table twin_desired), so an upgraded device recognises its retained document."""
        try:
            row = self.db.execute("SELECT version, digest FROM twin_desired WHERE id = 1").fetchone()
        except sqlite3.OperationalError:  # no such table: a device that never ran an older release
            return None
        return None if row is None else (int(row[0]), str(row[1]))

    def commit(
        self,
        raw: bytes,
        deployment: StoredDeployment,
        digest: str,
        statuses: Iterable[VersionStatus],
        new_keys: Sequence[TrustedKey] | None = None,
    ) -> None:
        """Accept a document: all of it lands together or nothing does (raises sqlite3.Error)."""
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO desired_accepted(id, version, digest, payload, accepted_at) VALUES(1, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET version = excluded.version, digest = excluded.digest, "
                "payload = excluded.payload, accepted_at = excluded.accepted_at",
                (deployment.version, digest, raw, time.time()),
            )
            self.deployments.make_current(deployment)
            if new_keys:
                self._install_keys(new_keys, deployment.version)
            for status in statuses:
                self._put_status(status)
            self._prune()

    # ------------------------------------------------------------------ document keys

    def reset_keys_if_config_changed(self, config_keys: Sequence[TrustedKey]) -> bool:
        """The operator changed [trust] document_keys on the device: they win over any rotation."""
        fingerprint = keys_fingerprint(config_keys)
        if get_meta(self.db, META_CONFIG_FP) == fingerprint:
            return False
        with transaction(self.db):
            self.db.execute("DELETE FROM trust_document_keys")
            self.db.execute("DELETE FROM meta WHERE key = ?", (META_VERSION,))
            set_meta(self.db, META_CONFIG_FP, fingerprint)
        return True

    def rotated_keys(self) -> tuple[TrustedKey, ...]:
        rows = self.db.execute("SELECT pem FROM trust_document_keys ORDER BY key_id").fetchall()
        return tuple(parse_public_key(str(r[0]).encode(), "state.db trust_document_keys") for r in rows)

    def keys_version(self) -> int | None:
        value = get_meta(self.db, META_VERSION)
        return None if value is None else int(value)

    def _install_keys(self, keys: Sequence[TrustedKey], version: int) -> None:
        self.db.execute("DELETE FROM trust_document_keys")
        for key in keys:
            self.db.execute(
                "INSERT OR REPLACE INTO trust_document_keys(key_id, pem, installed_version, installed_at) "
                "VALUES(?,?,?,?)",
                (key.key_id, key.pem().decode(), version, time.time()),
            )
        set_meta(self.db, META_VERSION, str(version))
