"""The fleet-side record of rollouts: one SQLite file (default ~/.local/state/edgectl/rollouts.db,
or `edgectl rollout --state FILE`), so `edgectl rollout status` can explain a rollout and
`edgectl rollout --resume ID` continues one that was interrupted (Ctrl-C, SIGKILL, a crash).

Every change is one committed transaction (WAL, synchronous=FULL) written BEFORE the action it
enables: a device's document bytes are stored before they are published, so a resumed rollout
publishes the very same bytes (same version, same digest: the device recognises them) instead of
a second version.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgectl.rollout_policy import DeviceRecord, Phase, Policy, Rollout, Status

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    prefix TEXT NOT NULL,
    selector TEXT NOT NULL,
    batches_spec TEXT NOT NULL,
    manifest_path TEXT NOT NULL,
    manifest TEXT NOT NULL,
    properties TEXT,
    key_path TEXT,
    expires_in TEXT NOT NULL,
    policy TEXT NOT NULL,
    status TEXT NOT NULL,
    batch INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    owner TEXT,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    device TEXT NOT NULL,
    position INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    phase TEXT NOT NULL,
    since REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    failed_reason TEXT NOT NULL DEFAULT '',
    version INTEGER,
    digest TEXT,
    payload BLOB,
    previous INTEGER,
    previous_doc TEXT,
    previous_note TEXT NOT NULL DEFAULT '',
    revert_version INTEGER,
    revert_digest TEXT,
    revert_payload BLOB,
    PRIMARY KEY (rollout, device)
);
CREATE TABLE IF NOT EXISTS rollout_events (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    text TEXT NOT NULL
);
"""

# Another edgectl that updated a rollout this recently is taken to be still running it.
LEASE_S = 15.0


class StoreError(Exception):
    """Shown to the operator as is (unknown id, a rollout another edgectl runs, unreadable file)."""


def default_state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(base) / "edgectl" / "rollouts.db"


@dataclass(frozen=True)
class RolloutMeta:
    """What the operator asked for (kept so status can say it and a resume needs no flags)."""

    created: float
    updated: float
    prefix: str
    selector: str
    batches_spec: str
    manifest_path: str
    manifest: dict[str, Any]
    properties: dict[str, Any] | None
    key_path: str | None
    expires_in: str
    owner: str | None = None
    heartbeat: float | None = None


@dataclass(frozen=True)
class Previous:
    """The deployment a device ran before the rollout (what returning it restores): None when it
    cannot be known (`note` says why)."""

    document: dict[str, Any] | None
    note: str = ""


class RolloutStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), isolation_level=None, timeout=10)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"rollout state {path}: {exc}") from None

    def close(self) -> None:
        self.db.close()

    # ---- writing

    def create(self, rollout: Rollout, meta: RolloutMeta) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO rollouts (id, created, updated, prefix, selector, batches_spec, manifest_path, manifest, "
                "properties, key_path, expires_in, policy, status, batch, batches, reason) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rollout.id, meta.created, meta.updated, meta.prefix, meta.selector, meta.batches_spec,
                    meta.manifest_path, json.dumps(meta.manifest), None if meta.properties is None
                    else json.dumps(meta.properties), meta.key_path, meta.expires_in,
                    json.dumps(asdict(rollout.policy)), str(rollout.status), rollout.batch, rollout.batches,
                    rollout.reason,
                ),
            )
            for position, record in enumerate(rollout.devices):
                self.db.execute(
                    "INSERT INTO rollout_devices (rollout, device, position, batch, phase, since) VALUES (?,?,?,?,?,?)",
                    (rollout.id, record.device, position, record.batch, str(record.phase), record.since),
                )

    def save(
        self,
        rollout: Rollout,
        changed: Iterable[DeviceRecord] = (),
        *,
        payloads: dict[str, bytes] | None = None,
        revert_payloads: dict[str, bytes] | None = None,
        previous: dict[str, Previous] | None = None,
        events: Sequence[str] = (),
        now: float | None = None,
    ) -> None:
        """One transaction: the rollout's status, the changed device records (with the document
        bytes about to be published), and progress lines."""
        now = time.time() if now is None else now
        with self._transaction():
            self.db.execute(
                "UPDATE rollouts SET status=?, batch=?, reason=?, updated=?, heartbeat=? WHERE id=?",
                (str(rollout.status), rollout.batch, rollout.reason, now, now, rollout.id),
            )
            for r in changed:
                self.db.execute(
                    "UPDATE rollout_devices SET phase=?, since=?, reason=?, failed_reason=?, version=?, digest=?, "
                    "previous=?, revert_version=?, revert_digest=? WHERE rollout=? AND device=?",
                    (str(r.phase), r.since, r.reason, r.failed_reason, r.version, r.digest, r.previous,
                     r.revert_version, r.revert_digest, rollout.id, r.device),
                )
            for device, payload in (payloads or {}).items():
                self.db.execute("UPDATE rollout_devices SET payload=? WHERE rollout=? AND device=?",
                                (payload, rollout.id, device))
            for device, payload in (revert_payloads or {}).items():
                self.db.execute("UPDATE rollout_devices SET revert_payload=? WHERE rollout=? AND device=?",
                                (payload, rollout.id, device))
            for device, prev in (previous or {}).items():
                self.db.execute(
                    "UPDATE rollout_devices SET previous_doc=?, previous_note=? WHERE rollout=? AND device=?",
                    (None if prev.document is None else json.dumps(prev.document), prev.note, rollout.id, device),
                )
            for text in events:
                self.db.execute(
                    "INSERT INTO rollout_events (rollout, at, text) VALUES (?,?,?)", (rollout.id, now, text)
                )

    def claim(self, rollout_id: str, owner: str, now: float) -> None:
        """Take the rollout for this process; StoreError when another edgectl updated it within
        LEASE_S seconds (it is probably still running it)."""
        with self._transaction():
            row = self.db.execute("SELECT owner, heartbeat, status FROM rollouts WHERE id=?", (rollout_id,)).fetchone()
            if row is None:
                raise StoreError(self.unknown(rollout_id))
            other, heartbeat, _ = row
            if other and other != owner and heartbeat is not None and now - heartbeat < LEASE_S and owner_alive(other):
                raise StoreError(
                    f"rollout {rollout_id} is being run by another edgectl ({other}, updated "
                    f"{now - heartbeat:.0f} s ago); wait for it or stop it first"
                )
            self.db.execute("UPDATE rollouts SET owner=?, heartbeat=? WHERE id=?", (owner, now, rollout_id))

    def release(self, rollout_id: str) -> None:
        with self._transaction():
            self.db.execute("UPDATE rollouts SET owner=NULL WHERE id=?", (rollout_id,))

    def heartbeat(self, rollout_id: str, now: float) -> None:
        self.db.execute("UPDATE rollouts SET heartbeat=? WHERE id=?", (now, rollout_id))

    # ---- reading

    def unknown(self, rollout_id: str) -> str:
        known = [r[0] for r in self.db.execute("SELECT id FROM rollouts ORDER BY created DESC LIMIT 5")]
        hint = f" (known: {', '.join(known)})" if known else " (there are none)"
        return f"no rollout {rollout_id!r} in {self.path}{hint}"

    def load(self, rollout_id: str) -> tuple[Rollout, RolloutMeta]:
        row = self.db.execute(
            "SELECT created, updated, prefix, selector, batches_spec, manifest_path, manifest, properties, key_path, "
            "expires_in, policy, status, batch, batches, reason, owner, heartbeat FROM rollouts WHERE id=?",
            (rollout_id,),
        ).fetchone()
        if row is None:
            raise StoreError(self.unknown(rollout_id))
        (created, updated, prefix, selector, batches_spec, manifest_path, manifest, properties, key_path,
         expires_in, policy, status, batch, batches, reason, owner, heartbeat) = row
        records = tuple(
            DeviceRecord(
                device=d, batch=b, phase=Phase(phase), since=since, reason=why, version=version, digest=digest,
                previous=prev, revert_version=rv, revert_digest=rd, failed_reason=failed,
            )
            for d, b, phase, since, why, version, digest, prev, rv, rd, failed in self.db.execute(
                "SELECT device, batch, phase, since, reason, version, digest, previous, revert_version, "
                "revert_digest, failed_reason FROM rollout_devices WHERE rollout=? ORDER BY position",
                (rollout_id,),
            )
        )
        rollout = Rollout(rollout_id, Status(status), batch, batches, Policy(**json.loads(policy)), records, reason)
        meta = RolloutMeta(
            created, updated, prefix, selector, batches_spec, manifest_path, json.loads(manifest),
            None if properties is None else json.loads(properties), key_path, expires_in, owner, heartbeat,
        )
        return rollout, meta

    def payload(self, rollout_id: str, device: str, *, revert: bool = False) -> bytes | None:
        row = self.db.execute(
            "SELECT payload, revert_payload FROM rollout_devices WHERE rollout=? AND device=?", (rollout_id, device)
        ).fetchone()
        value = row[1 if revert else 0] if row else None
        return bytes(value) if value is not None else None

    def previous(self, rollout_id: str, device: str) -> Previous | None:
        row = self.db.execute(
            "SELECT previous_doc, previous_note, payload FROM rollout_devices WHERE rollout=? AND device=?",
            (rollout_id, device),
        ).fetchone()
        if row is None or row[2] is None:
            return None  # nothing was made for it
        return Previous(None if row[0] is None else json.loads(row[0]), row[1])

    def events(self, rollout_id: str) -> list[tuple[float, str]]:
        return list(self.db.execute(
            "SELECT at, text FROM rollout_events WHERE rollout=? ORDER BY seq", (rollout_id,)
        ))

    def list(self) -> list[tuple[str, str, int, int, float, float, str, int]]:
        """(id, status, batch, batches, created, updated, manifest path, devices), newest first."""
        return list(self.db.execute(
            "SELECT r.id, r.status, r.batch, r.batches, r.created, r.updated, r.manifest_path, "
            "(SELECT COUNT(*) FROM rollout_devices d WHERE d.rollout = r.id) "
            "FROM rollouts r ORDER BY r.created DESC"
        ))

    def latest(self) -> str | None:
        row = self.db.execute("SELECT id FROM rollouts ORDER BY created DESC LIMIT 1").fetchone()
        return row[0] if row else None

    # ---- helpers

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def owner_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the owning process still exists (when it ran on this host; else assume it does)."""
    import socket

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
