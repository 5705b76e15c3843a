"""Verification verdicts in state.db, so a reboot without the registry can start verified images.

A verdict is keyed by (repository, manifest digest, policy fingerprint): changing the trusted
keys or required annotations of a scope invalidates it. It is bound to the image ids the verified
manifest names (podman's image id is the digest of the image config), so a local image that
was swapped under the same repository@digest name is caught. `trust_resolved` remembers which
digest a tag pointed at when it was last verified, for offline starts by tag.

Tables trust_verified and trust_resolved, created and migrated by state_schema.py; read and
written with sqlite-utils. The lock: the verifier runs off the event loop (threads.run_blocking)
on the agent's one connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.store import tables

if TYPE_CHECKING:  # at run time sqlite-utils is imported once, by state_schema.py (without numpy)
    from sqlite_utils.db import Table


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
        t = tables(db)
        self._verified: Table = t.table("trust_verified")
        self._resolved: Table = t.table("trust_resolved")

    def lookup(self, repository: str, digest: str, policy: str) -> CachedVerdict | None:
        with self._lock:
            rows = list(
                self._verified.rows_where(
                    "repository = ? AND digest = ? AND policy = ?",
                    [repository, digest, policy],
                    select="signer, image_ids, verified_at",
                )
            )
        if not rows:
            return None
        row = rows[0]
        return CachedVerdict(
            repository, digest, row["signer"], frozenset(json.loads(row["image_ids"])), float(row["verified_at"])
        )

    def store(self, repository: str, digest: str, policy: str, signer: str | None, image_ids: frozenset[str]) -> None:
        with self._lock:
            self._verified.upsert(
                {
                    "repository": repository,
                    "digest": digest,
                    "policy": policy,
                    "signer": signer,
                    "image_ids": json.dumps(sorted(image_ids)),
                    "verified_at": time.time(),
                },
                pk=("repository", "digest", "policy"),
            )

    def forget(self, repository: str, digest: str) -> None:
        with self._lock:
            self._verified.delete_where("repository = ? AND digest = ?", [repository, digest])

    def remember_resolution(self, reference: str, digest: str) -> None:
        if self.resolution(reference) == digest:
            return  # the common case; spares a synchronous write per verification
        with self._lock:
            row = {"reference": reference, "digest": digest, "resolved_at": time.time()}
            self._resolved.upsert(row, pk="reference")

    def resolution(self, reference: str) -> str | None:
        with self._lock:
            rows = list(self._resolved.rows_where("reference = ?", [reference], select="digest"))
        return None if not rows else str(rows[0]["digest"])
