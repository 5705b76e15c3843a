"""The agent's state database (SQLite, WAL) in the state directory.

One file, `state.db`, holds the small durable state each component owns in its own tables
(last accepted desired document, last-known-good deployment, restart counters, ...). Its schema
and the migrations from older releases are in state_schema.py, run here when the file is opened
(a file from a newer release is refused before anything is written). The stores read and write
their tables through sqlite-utils (`tables()`), on the one sqlite3 connection opened here, so a
store's transaction (`transaction()`) covers its sqlite-utils writes too. The telemetry queue
keeps its own file and the sqlite3 module (telemetry/queue.py says why).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from edge_agent.state_schema import migrate, refuse_newer
from edge_agent.state_schema import tables as tables  # the stores' sqlite-utils view of a connection

STATE_DB_NAME = "state.db"


def open_db(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (creating) a WAL database. FULL sync by default: state writes are rare and must survive
    a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def open_state_db(state_dir: Path) -> sqlite3.Connection:
    """state.db at its current schema version (migrated forward if an older release wrote it).
    Raises state_schema.StateSchemaError, without writing to it, for a file from a newer release."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    path = state_dir / STATE_DB_NAME
    if path.exists():
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)) as peek:
            refuse_newer(peek, path)  # read-only: not even the switch to WAL happens first
    conn = open_db(path)
    try:
        refuse_newer(conn, path)  # again: another process may have written it meanwhile
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    rows = list(tables(conn).table("meta").rows_where("key = ?", [key], select="value"))
    return None if not rows else str(rows[0]["value"])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    tables(conn).table("meta").upsert({"key": key, "value": value}, pk="key")


def delete_meta(conn: sqlite3.Connection, key: str) -> None:
    tables(conn).table("meta").delete_where("key = ?", [key])


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on any error): several writes land together or not at all.
    IMMEDIATE takes the write lock at once, so a concurrent reader never makes it fail half-way;
    sqlite-utils writes inside it join it (as savepoints)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
