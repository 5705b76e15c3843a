"""The desired-state room's tables in state.db, and its one commit transaction.

    desired_versions     one status row per version that passed the document gate (status.py)
    desired_accepted     the last committed document, as the exact bytes received (its signature
                         stays checkable)
    trust_document_keys  the document keys a signed rotation installed (with meta rows for the
                         version that installed them and the config keys they replaced)

The tables are created and migrated by state_schema.py, and read and written with sqlite-utils.
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
from typing import TYPE_CHECKING

from edge_agent.deployment.store import DeploymentStore, StoredDeployment
from edge_agent.desired.status import KEEP_VERSIONS, VersionStatus
from edge_agent.store import delete_meta, get_meta, set_meta, tables, transaction
from edge_shared.outcome import State
from edge_shared.trust.keys import TrustedKey, parse_public_key

if TYPE_CHECKING:  # at run time sqlite-utils is imported once, by state_schema.py (without numpy)
    from sqlite_utils.db import Table

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
        t = tables(db)
        self._versions: Table = t.table("desired_versions")
        self._accepted: Table = t.table("desired_accepted")
        self._keys: Table = t.table("trust_document_keys")

    # ------------------------------------------------------------------ version status

    def versions(self) -> list[VersionStatus]:
        out = []
        for r in self._versions.rows_where(order_by="version"):
            try:
                state = State(r["state"])
            except ValueError:
                continue  # written by a newer release; not ours to interpret
            out.append(
                VersionStatus(
                    int(r["version"]),
                    str(r["digest"]),
                    state,
                    float(r["at"]),
                    r["code"],
                    r["module"],
                    str(r["description"] or ""),
                )
            )
        return out

    def put_status(self, status: VersionStatus) -> None:
        self._put_status(status)
        self._prune()

    def _put_status(self, status: VersionStatus) -> None:
        self._versions.upsert(
            {
                "version": status.version,
                "digest": status.digest,
                "state": str(status.state),
                "at": status.at,
                "code": status.code,
                "module": status.module,
                "description": status.description,
            },
            pk="version",
        )

    def _prune(self) -> None:
        current = self.deployments.get("current")
        lkg = self.deployments.get("last_known_good")
        keep = [v.version if v is not None else -1 for v in (current, lkg)]
        self._versions.delete_where(
            "version NOT IN (SELECT version FROM desired_versions ORDER BY version DESC LIMIT ?) "
            "AND version NOT IN (?, ?)",
            [_PRUNE_KEEP, *keep],
        )

    # ------------------------------------------------------------------ the accepted document

    def accepted(self) -> tuple[int, str, bytes] | None:
        for row in self._accepted.rows_where("id = 1", select="version, digest, payload"):
            return int(row["version"]), str(row["digest"]), bytes(row["payload"])
        return None

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
            self._accepted.upsert(
                {"id": 1, "version": deployment.version, "digest": digest, "payload": raw, "accepted_at": time.time()},
                pk="id",
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
            self._keys.delete_where()
            delete_meta(self.db, META_VERSION)
            set_meta(self.db, META_CONFIG_FP, fingerprint)
        return True

    def rotated_keys(self) -> tuple[TrustedKey, ...]:
        return tuple(
            parse_public_key(str(r["pem"]).encode(), "state.db trust_document_keys")
            for r in self._keys.rows_where(select="pem", order_by="key_id")
        )

    def keys_version(self) -> int | None:
        value = get_meta(self.db, META_VERSION)
        return None if value is None else int(value)

    def _install_keys(self, keys: Sequence[TrustedKey], version: int) -> None:
        self._keys.delete_where()
        self._keys.upsert_all(
            [
                {
                    "key_id": key.key_id,
                    "pem": key.pem().decode(),
                    "installed_version": version,
                    "installed_at": time.time(),
                }
                for key in keys
            ],
            pk="key_id",
        )
        set_meta(self.db, META_VERSION, str(version))
