"""The device's durable deployment state in state.db, and the one way to change it.

    deployment_slots     'current' | 'last_known_good' -> version, document, pinned images (JSON)
    desired_versions     one status row per version that passed the document gate (status.py)
    desired_accepted     the last committed document, as the exact bytes received (its signature
                         stays checkable)
    trust_document_keys  the document keys a signed rotation installed (with meta rows for the
                         version that installed them and the config keys they replaced)
    deployment_restarts  cleared here when `current` changes (the reconciler counts restarts)

Everything that changes this state is a Transition (transitions.py computes them, purely), and
`apply()` writes one in ONE transaction after checking that `current` and `last_known_good` are
still what the transition was computed from: a rollback is a compare-and-swap on `current`, so it
can never overwrite a newer deployment committed meanwhile. A power cut leaves all of a
transition or none of it. The tables are created and migrated by state_schema.py, and read and
written with sqlite-utils, except the rows a transition writes: those are plain SQL upserts, since
sqlite-utils reads the table's schema again on every upsert (about 50 statements per accepted
document, half of the commit's time besides its fsync; bench/twin_latency.py). An accepted
document's transaction is seven statements (the slots' versions in one read, the document, the
`current` slot, the restart counters, its status rows, the prune) and three pages in the WAL
(desired_accepted, deployment_slots, desired_versions). What the gate and the replay
floor read for every document (the accepted document, the rotated keys and their meta rows) is
read once and then kept as this store writes it: it is their one writer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.deployment.pinned import CommittedDeployment
from edge_agent.desired.status import STORED_VERSIONS, VersionStatus
from edge_agent.store import delete_meta, get_meta, set_meta, tables, transaction
from edge_shared.outcome import State
from edge_shared.trust.keys import TrustedKey, parse_public_key

if TYPE_CHECKING:  # at run time sqlite-utils is imported once, by state_schema.py (without numpy)
    from sqlite_utils.db import Table

META_CONFIG_FP = "trust.document_keys.config"
META_VERSION = "trust.document_keys.version"
CURRENT = "current"
LAST_KNOWN_GOOD = "last_known_good"


def keys_fingerprint(keys: Sequence[TrustedKey]) -> str:
    return hashlib.sha256("|".join(sorted(k.key_id for k in keys)).encode()).hexdigest()


class StaleTransition(Exception):
    """The state on disk is not what the transition was computed from; nothing was written."""


@dataclass(frozen=True)
class Accepted:
    """The document bytes a commit stores (with any key rotation it carries)."""

    raw: bytes
    digest: str
    new_keys: tuple[TrustedKey, ...] = ()


@dataclass(frozen=True)
class Transition:
    """One change of the durable state. `expect_*`: the versions in the slots it replaces (None:
    empty). `current`/`last_known_good`: the new slot contents (None: unchanged)."""

    why: str
    expect_current: int | None
    expect_last_known_good: int | None
    current: CommittedDeployment | None = None
    last_known_good: CommittedDeployment | None = None
    statuses: tuple[VersionStatus, ...] = ()
    accepted: Accepted | None = None

    @property
    def changes_current(self) -> bool:
        return self.current is not None


class StateStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        t = tables(db)
        self._keys: Table = t.table("trust_document_keys")
        # What the gate and the replay floor read for every document, read from state.db once and
        # then kept as this store writes it (it is the one writer of these rows; a failed write
        # makes it read them again).
        self._accepted: tuple[int, str, bytes] | None = None
        self._accepted_read = False
        self._rotation: tuple[int | None, tuple[TrustedKey, ...], str | None] | None = None

    # ------------------------------------------------------------------ reading

    def slot(self, slot: str) -> CommittedDeployment | None:
        row = self.db.execute(
            "SELECT version, document, images, activated_at FROM deployment_slots WHERE slot = ?", (slot,)
        ).fetchone()
        if row is None:
            return None
        return CommittedDeployment(int(row[0]), json.loads(row[1]), json.loads(row[2]), float(row[3]))

    def current(self) -> CommittedDeployment | None:
        return self.slot(CURRENT)

    def last_known_good(self) -> CommittedDeployment | None:
        return self.slot(LAST_KNOWN_GOOD)

    def versions(self) -> list[VersionStatus]:
        out = []
        for version, digest, state, at, code, module, description in self.db.execute(
            "SELECT version, digest, state, at, code, module, description FROM desired_versions ORDER BY version"
        ):
            try:
                known = State(state)
            except ValueError:
                continue  # written by a newer release; not ours to interpret
            out.append(VersionStatus(int(version), str(digest), known, float(at), code, module, str(description or "")))
        return out

    def accepted(self) -> tuple[int, str, bytes] | None:
        """(version, digest, bytes) of the accepted document: read once, then kept as apply() writes it."""
        if not self._accepted_read:
            row = self.db.execute("SELECT version, digest, payload FROM desired_accepted WHERE id = 1").fetchone()
            self._accepted = None if row is None else (int(row[0]), str(row[1]), bytes(row[2]))
            self._accepted_read = True
        return self._accepted

    # ------------------------------------------------------------------ the one way to write

    def apply(self, transition: Transition) -> None:
        """Write the transition in one transaction, or nothing: raises StaleTransition when a slot
        holds another version than expected, sqlite3.Error when the disk refuses."""
        try:
            self._write(transition)
        except BaseException:
            # The disk may hold the write or not (a commit whose fsync failed): read it again.
            self._accepted_read, self._rotation = False, None
            raise
        if transition.accepted is not None and transition.current is not None:
            self._accepted = (transition.current.version, transition.accepted.digest, transition.accepted.raw)
            self._accepted_read = True

    def _write(self, transition: Transition) -> None:
        a = transition.accepted
        if a is not None and a.new_keys:
            self._rotation = None  # read again after this write
        with transaction(self.db):
            found = self._slot_versions()
            expected = (transition.expect_current, transition.expect_last_known_good)
            if found != expected:
                raise StaleTransition(
                    f"{transition.why}: expected current/last-known-good {expected}, found {found}")
            current, last_known_good = found
            if a is not None and transition.current is not None:
                self.db.execute(
                    "INSERT INTO desired_accepted (id, version, digest, payload, accepted_at) VALUES (1, ?, ?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET version = excluded.version, digest = excluded.digest, "
                    "payload = excluded.payload, accepted_at = excluded.accepted_at",
                    (transition.current.version, a.digest, a.raw, time.time()),
                )
                if a.new_keys:
                    self._install_keys(a.new_keys, transition.current.version)
            if transition.current is not None:
                self._put_slot(CURRENT, transition.current)
                current = transition.current.version
                # Restart counters belong to the deployment that was current. A WHERE clause, so
                # that an empty table is not rewritten (without one, SQLite clears the table's two
                # b-trees: two more pages in the WAL on every accepted document).
                self.db.execute("DELETE FROM deployment_restarts WHERE true")
            if transition.last_known_good is not None:
                self._put_slot(LAST_KNOWN_GOOD, transition.last_known_good)
                last_known_good = transition.last_known_good.version
            for status in transition.statuses:
                self._put_status(status)
            self._prune(current, last_known_good)

    def put_status(self, status: VersionStatus) -> None:
        """A status row that changes no slot (probation, a description update, a rejection)."""
        with transaction(self.db):
            self._put_status(status)
            self._prune(*self._slot_versions())

    def _slot_versions(self) -> tuple[int | None, int | None]:
        """The versions in `current` and `last_known_good` (None: empty), in one read."""
        found = dict(self.db.execute("SELECT slot, version FROM deployment_slots").fetchall())
        return (None if (c := found.get(CURRENT)) is None else int(c),
                None if (g := found.get(LAST_KNOWN_GOOD)) is None else int(g))

    def _put_slot(self, slot: str, dep: CommittedDeployment) -> None:
        self.db.execute(
            "INSERT INTO deployment_slots (slot, version, document, images, activated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (slot) DO UPDATE SET version = excluded.version, document = excluded.document, "
            "images = excluded.images, activated_at = excluded.activated_at",
            (slot, dep.version, json.dumps(dep.document, sort_keys=True), json.dumps(dep.images, sort_keys=True),
             dep.activated_at),
        )

    def _put_status(self, status: VersionStatus) -> None:
        self.db.execute(
            "INSERT INTO desired_versions (version, digest, state, at, code, module, description) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (version) DO UPDATE SET digest = excluded.digest, state = excluded.state, at = excluded.at, "
            "code = excluded.code, module = excluded.module, description = excluded.description",
            (status.version, status.digest, str(status.state), status.at, status.code, status.module,
             status.description),
        )

    def _prune(self, current: int | None, last_known_good: int | None) -> None:
        """The rule of status.pruned, on the stored rows (`current`, `last_known_good`: the slots'
        versions as this transaction leaves them)."""
        self.db.execute(
            "DELETE FROM desired_versions WHERE "
            "version NOT IN (SELECT version FROM desired_versions ORDER BY version DESC LIMIT ?) "
            "AND version NOT IN (?, ?)",
            [STORED_VERSIONS, -1 if current is None else current, -1 if last_known_good is None else last_known_good],
        )

    # ------------------------------------------------------------------ document keys

    def reset_keys_if_config_changed(self, config_keys: Sequence[TrustedKey]) -> bool:
        """The operator changed [trust] document_keys on the device: they win over any rotation."""
        fingerprint = keys_fingerprint(config_keys)
        if self.config_fingerprint() == fingerprint:
            return False
        self._rotation = None
        with transaction(self.db):
            self._keys.delete_where()
            delete_meta(self.db, META_VERSION)
            set_meta(self.db, META_CONFIG_FP, fingerprint)
        return True

    def _rotation_state(self) -> tuple[int | None, tuple[TrustedKey, ...], str | None]:
        """(keys version, rotated keys, config fingerprint), read once after each change."""
        if self._rotation is None:
            value = get_meta(self.db, META_VERSION)
            keys = tuple(
                parse_public_key(str(r["pem"]).encode(), "state.db trust_document_keys")
                for r in self._keys.rows_where(select="pem", order_by="key_id")
            )
            self._rotation = (None if value is None else int(value), keys, get_meta(self.db, META_CONFIG_FP))
        return self._rotation

    def rotated_keys(self) -> tuple[TrustedKey, ...]:
        return self._rotation_state()[1]

    def keys_version(self) -> int | None:
        return self._rotation_state()[0]

    def restore_keys(self, keys: Sequence[TrustedKey], version: int) -> None:
        """Put back a rotation that an agent roll-back's older state.db lost (trust_floor.py)."""
        self._rotation = None
        with transaction(self.db):
            self._install_keys(keys, version)

    def config_fingerprint(self) -> str | None:
        return self._rotation_state()[2]

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
