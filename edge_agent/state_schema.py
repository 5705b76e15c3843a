"""The schema of state.db: its version, and the migrations that bring an older file forward.

The version is SQLite's `PRAGMA user_version` (0 in a file written before there were versions,
i.e. by every release up to f034da0): `sqlite3 state.db 'PRAGMA user_version'` shows it. The
migrations are a sqlite-utils `Migrations` set, applied in order when the agent opens the file;
each runs in one transaction together with sqlite-utils' record of it (table
`_sqlite_migrations`) and the new user_version, so a power cut leaves the file at one version or
the next, never between.

- A file written by a NEWER release (user_version above SCHEMA_VERSION) is refused with
  StateSchemaError, naming the file and both versions, before anything is written to it: the
  operator can go back to the newer release, or move the file away.
- Before a migration that rewrites data (not only adds tables), the file is copied next to
  itself as `state.db.before-schema-N` (N: the version it is migrated to), with SQLite's backup
  API, so a consistent copy also holds what was only in the WAL. An existing copy is kept: it is
  the older one.
- Migration 1 is the schema as f034da0 wrote it, word for word (CREATE TABLE IF NOT EXISTS), so
  an upgraded device and a new one have the same tables; later migrations change it.

To change the schema: append a migration (never edit one that shipped), mark it
`rewrites_data=True` if it moves or deletes rows, and add its case to
tests/integration/desired/test_state_db_migration.py.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# sqlite-utils imports numpy and pandas whenever they are installed, only to map their scalar
# types to column types; the agent never stores such values, and where its environment has them
# (a development venv with the pilot's dependencies) they would cost it some 16 MB of idle RSS.
# A None entry in sys.modules makes `import numpy` raise ImportError, which sqlite-utils handles;
# the entries are removed again, so other code can still import them. This module is the one
# place the agent imports sqlite-utils (the stores use `tables()`), so the guard always runs first.
_not_for_sqlite_utils = [name for name in ("numpy", "pandas") if name not in sys.modules]
sys.modules.update(dict.fromkeys(_not_for_sqlite_utils))  # type: ignore[arg-type]
try:
    from sqlite_utils import Database, Migrations
finally:
    for _name in _not_for_sqlite_utils:
        if sys.modules.get(_name, 0) is None:
            del sys.modules[_name]

MIGRATION_SET = "edge-agent.state"


class StateSchemaError(Exception):
    """state.db cannot be used by this release (written by a newer one)."""


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[Database], None]
    rewrites_data: bool = False


# ---------------------------------------------------------------------------------- migrations

BASELINE_F034DA0 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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


def baseline_f034da0(db: Database) -> None:
    """The tables every store had created for itself on start up to f034da0 (meta: store.py;
    deployment_*: deployment/store.py; desired_*, trust_document_keys: desired/store.py;
    trust_verified, trust_resolved: trust/cache.py). No-ops on a file that release wrote."""
    db.executescript(BASELINE_F034DA0)


def fold_twin_desired(db: Database) -> None:
    """The release before per-version status kept the accepted document in `twin_desired`
    (same columns as desired_accepted). Its row becomes the accepted document when there is none
    yet (a device that never accepted a document since that release), then the table goes, and
    with it the second place the desired store had to read."""
    legacy = db.table("twin_desired")
    if not legacy.exists():
        return
    accepted = db.table("desired_accepted")
    if accepted.count == 0:
        for row in legacy.rows_where("id = 1", select="id, version, digest, payload, accepted_at"):
            accepted.insert(row)
    legacy.drop()


def drop_deployment_bad_versions(db: Database) -> None:
    """`deployment_bad_versions` was written on every rollback and never read: what became of a
    version is its row in desired_versions (rolled_back, with code, module and reason), which the
    rollback writes in the same transaction. One record of it, not two."""
    table = db.table("deployment_bad_versions")
    if table.exists():
        table.drop()


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_baseline_f034da0", baseline_f034da0),
    Migration("0002_fold_twin_desired", fold_twin_desired, rewrites_data=True),
    Migration("0003_drop_deployment_bad_versions", drop_deployment_bad_versions, rewrites_data=True),
)
SCHEMA_VERSION = len(MIGRATIONS)


# ---------------------------------------------------------------------------------- opening


def tables(conn: sqlite3.Connection) -> Database:
    """sqlite-utils over a connection of store.open_state_db (no plugins, no PRAGMA changes)."""
    return Database(conn, execute_plugins=False, recursive_triggers=False)


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(conn: sqlite3.Connection, path: Path) -> int:
    """Read-only. Raises StateSchemaError for a file from a newer release; returns its version."""
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise StateSchemaError(
            f"{path}: state database schema version {found} was written by a newer edge-agent release; "
            f"this release knows schema versions up to {SCHEMA_VERSION}. The file was not changed: run the "
            f"newer release again, or move {path.name} (and its -wal/-shm files) away to start with empty state"
        )
    return found


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.before-schema-{version}")


def migrate(conn: sqlite3.Connection, path: Path) -> list[str]:
    """Bring the file at `path` (open as `conn`) to SCHEMA_VERSION; returns the migrations run.
    Call refuse_newer first. Idempotent: a file at SCHEMA_VERSION is only read."""
    found = schema_version(conn)
    if found == SCHEMA_VERSION:
        return []
    db = tables(conn)
    pending = MIGRATIONS[found:]
    held_data = found > 0 or bool(db.table_names())
    if held_data and any(m.rewrites_data for m in pending):
        copy = backup_path(path, SCHEMA_VERSION)
        if not copy.exists():
            keep_copy(conn, copy)
    migrations = Migrations(MIGRATION_SET)
    for number, migration in enumerate(MIGRATIONS, start=1):
        migrations(name=migration.name)(_setting_version(migration.apply, number))
    migrations.apply(db)  # pending by sqlite-utils' record, which moves with user_version
    return [m.name for m in pending]


def _setting_version(apply: Callable[[Database], None], number: int) -> Callable[[Database], None]:
    def run(db: Database) -> None:
        apply(db)
        db.execute(f"PRAGMA user_version = {number}")  # in the migration's transaction

    run.__name__ = apply.__name__
    return run


def keep_copy(conn: sqlite3.Connection, copy: Path) -> None:
    partial = copy.with_name(copy.name + ".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as target:
        conn.backup(target)
    target.close()
    partial.replace(copy)  # only a complete copy carries the name
