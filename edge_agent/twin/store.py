"""The last accepted desired document and the last desired status, in state.db.

One row each. The document is stored as the exact bytes received (so its digest and signature
stay checkable) and is written, with FULL sync, before the deployment layer hears of it: after a
power cut the agent starts what it last accepted.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS twin_desired (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    digest TEXT NOT NULL,
    payload BLOB NOT NULL,
    accepted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS twin_status (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    status TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredDesired:
    version: int
    digest: str
    payload: bytes
    accepted_at: float


class DesiredStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(_SCHEMA)

    def load(self) -> StoredDesired | None:
        row = self.db.execute("SELECT version, digest, payload, accepted_at FROM twin_desired WHERE id = 1").fetchone()
        if row is None:
            return None
        return StoredDesired(int(row[0]), str(row[1]), bytes(row[2]), float(row[3]))

    def save(self, version: int, digest: str, payload: bytes, status: dict[str, Any] | None = None) -> StoredDesired:
        """Store an accepted document (and, in the same transaction: one fsync, the new status)."""
        now = time.time()
        with self._transaction():
            self.db.execute(
                "INSERT INTO twin_desired(id, version, digest, payload, accepted_at) VALUES(1, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET version = excluded.version, digest = excluded.digest, "
                "payload = excluded.payload, accepted_at = excluded.accepted_at",
                (version, digest, payload, now),
            )
            if status is not None:
                self.save_status(status)
        return StoredDesired(version, digest, payload, now)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def load_status(self) -> dict[str, Any] | None:
        row = self.db.execute("SELECT status FROM twin_status WHERE id = 1").fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else None

    def save_status(self, status: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO twin_status(id, status) VALUES(1, ?) ON CONFLICT(id) DO UPDATE SET status = excluded.status",
            (json.dumps(status),),
        )
