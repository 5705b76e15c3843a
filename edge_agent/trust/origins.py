"""Which image index a pinned platform digest was picked from, for the reported state.

The verifier resolves a multi-arch tag (or a pinned index digest) to the manifest of the device's
platform; the container runs repository@platform-digest. The reported modules section says that
digest and, from here, the index it came from and the platform (`indexDigest`, `platform`), also
after a restart (the deployment is pinned once, when it is accepted, so this is kept in state.db).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS trust_image_origin (
    image TEXT PRIMARY KEY,          -- repository@platform-digest
    index_digest TEXT NOT NULL,
    platform TEXT NOT NULL,
    resolved_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ImageOrigin:
    index_digest: str
    platform: str


class ImageOrigins:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._lock = threading.Lock()
        with self._lock:
            self.db.executescript(SCHEMA)

    def record(self, image: str, index_digest: str, platform: str) -> None:
        if self.lookup(image) == ImageOrigin(index_digest, platform):
            return  # the common case: no write per verification
        with self._lock:
            self.db.execute(
                "INSERT INTO trust_image_origin(image, index_digest, platform, resolved_at) VALUES(?,?,?,?) "
                "ON CONFLICT(image) DO UPDATE SET index_digest=excluded.index_digest, "
                "platform=excluded.platform, resolved_at=excluded.resolved_at",
                (image, index_digest, platform, time.time()),
            )

    def lookup(self, image: str) -> ImageOrigin | None:
        with self._lock:
            row = self.db.execute(
                "SELECT index_digest, platform FROM trust_image_origin WHERE image=?", (image,)
            ).fetchone()
        return None if row is None else ImageOrigin(str(row[0]), str(row[1]))
