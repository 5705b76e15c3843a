"""The agent's state database (SQLite, WAL) in the state directory.

One file, `state.db`, holds the small durable state each component owns in its own tables
(last accepted desired document, last-known-good deployment, restart counters, ...). Components
create their tables with CREATE TABLE IF NOT EXISTS on start. The stdlib sqlite3 module is all
this needs; the telemetry queue may use a second file if contention demands it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

STATE_DB_NAME = "state.db"


def open_db(path: Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open (creating) a WAL database. FULL sync by default: state writes are rare and must survive
    a power cut; the telemetry queue chooses its own setting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    return conn


def open_state_db(state_dir: Path) -> sqlite3.Connection:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    return open_db(state_dir / STATE_DB_NAME)


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE .. COMMIT (ROLLBACK on any error): several writes land together or not at all."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
