"""Verification verdicts in state.db, so a reboot without the registry can start verified images.

A verdict is keyed by (repository, manifest digest, policy fingerprint): changing the trusted
keys or required annotations of a scope invalidates it. It is bound to the image ids the verified
manifest names (podman's image id is the digest of the image config), so a local image that
was swapped under the same repository@digest name is caught. `trust_resolved` remembers which
digest a tag pointed at when it was last verified, for offline starts by tag.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS trust_verified (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    policy TEXT NOT NULL,
    signer TEXT,
    image_ids TEXT NOT NULL,
    verified_at REAL NOT NULL,
    PRIMARY KEY (repository, digest, policy)
);
CREATE TABLE IF NOT EXISTS trust_resolved (
    reference TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    resolved_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class CachedVerdict:
    repository: str
    digest: str
    signer: str | None
    image_ids: frozenset[str]  # bare 64-hex ids
    verified_at: float


class VerifyCache:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._lock = threading.Lock()
        with self._lock:
            self.db.executescript(SCHEMA)

    def lookup(self, repository: str, digest: str, policy: str) -> CachedVerdict | None:
        with self._lock:
            row = self.db.execute(
                "SELECT signer, image_ids, verified_at FROM trust_verified "
                "WHERE repository=? AND digest=? AND policy=?",
                (repository, digest, policy),
            ).fetchone()
        if row is None:
            return None
        return CachedVerdict(repository, digest, row[0], frozenset(json.loads(row[1])), float(row[2]))

    def store(self, repository: str, digest: str, policy: str, signer: str | None, image_ids: frozenset[str]) -> None:
        with self._lock:
            self.db.execute(
                "INSERT INTO trust_verified(repository, digest, policy, signer, image_ids, verified_at) "
                "VALUES(?,?,?,?,?,?) ON CONFLICT(repository, digest, policy) DO UPDATE SET "
                "signer=excluded.signer, image_ids=excluded.image_ids, verified_at=excluded.verified_at",
                (repository, digest, policy, signer, json.dumps(sorted(image_ids)), time.time()),
            )

    def forget(self, repository: str, digest: str) -> None:
        with self._lock:
            self.db.execute("DELETE FROM trust_verified WHERE repository=? AND digest=?", (repository, digest))

    def remember_resolution(self, reference: str, digest: str) -> None:
        if self.resolution(reference) == digest:
            return  # the common case; spares a synchronous write per verification
        with self._lock:
            self.db.execute(
                "INSERT INTO trust_resolved(reference, digest, resolved_at) VALUES(?,?,?) "
                "ON CONFLICT(reference) DO UPDATE SET digest=excluded.digest, resolved_at=excluded.resolved_at",
                (reference, digest, time.time()),
            )

    def resolution(self, reference: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT digest FROM trust_resolved WHERE reference=?", (reference,)).fetchone()
        return None if row is None else str(row[0])
