"""The enrollment records (SQLite): one row per device id, and every certificate issued (for the
CRL). Only the enrollment service and `edgectl enrollments/revoke` on its host open it."""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from edgectl.enrollment.ca import Revoked
from edgectl.enrollment.policy import Record, Status

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    ek_hash TEXT,
    key_hash TEXT,
    reason TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    cert_serial TEXT,
    not_after TEXT,
    issued INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS certs (
    serial TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    not_after TEXT NOT NULL,
    revoked_at TEXT
);
"""


@dataclass(frozen=True)
class Row:
    device_id: str
    status: str
    ek_hash: str | None
    key_hash: str | None
    reason: str
    updated_at: str
    cert_serial: str | None
    not_after: str | None
    issued: int


class EnrollmentStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def record(self, device_id: str) -> Record | None:
        row = self.db.execute("SELECT status, ek_hash, key_hash FROM devices WHERE device_id = ?",
                              (device_id,)).fetchone()
        return Record(row[0], row[1], row[2]) if row else None

    def rows(self) -> list[Row]:
        return [Row(*r) for r in self.db.execute(
            "SELECT device_id, status, ek_hash, key_hash, reason, updated_at, cert_serial, not_after, issued "
            "FROM devices ORDER BY device_id")]

    def row(self, device_id: str) -> Row | None:
        return next((r for r in self.rows() if r.device_id == device_id), None)

    def put(self, device_id: str, record: Record, reason: str, now: dt.datetime) -> None:
        self.db.execute(
            "INSERT INTO devices (device_id, status, ek_hash, key_hash, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(device_id) DO UPDATE SET status = excluded.status, ek_hash = excluded.ek_hash, "
            "key_hash = excluded.key_hash, reason = excluded.reason, updated_at = excluded.updated_at",
            (device_id, record.status, record.ek_hash, record.key_hash, reason, now.isoformat()),
        )

    def set_reason(self, device_id: str, reason: str) -> None:
        self.db.execute("UPDATE devices SET reason = ? WHERE device_id = ?", (reason, device_id))

    def set_status(self, device_id: str, status: Status, reason: str, now: dt.datetime) -> bool:
        cur = self.db.execute("UPDATE devices SET status = ?, reason = ?, updated_at = ? WHERE device_id = ?",
                              (status, reason, now.isoformat(), device_id))
        return cur.rowcount == 1

    def issued(self, device_id: str, serial: int, not_after: dt.datetime) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO certs (serial, device_id, not_after) VALUES (?, ?, ?)",
                            (f"{serial:x}", device_id, not_after.isoformat()))
            self.db.execute("UPDATE devices SET cert_serial = ?, not_after = ?, issued = issued + 1 "
                            "WHERE device_id = ?", (f"{serial:x}", not_after.isoformat(), device_id))

    def issued_claim(self, cn: str, serial: int, not_after: dt.datetime) -> None:
        """A claim certificate (CN claim:BATCH), kept so that `edgectl revoke claim:BATCH` can list it
        in the CRL."""
        self.db.execute("INSERT INTO certs (serial, device_id, not_after) VALUES (?, ?, ?)",
                        (f"{serial:x}", cn, not_after.isoformat()))

    def revoke_claim(self, cn: str, now: dt.datetime) -> int:
        cur = self.db.execute("UPDATE certs SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                              (now.isoformat(), cn))
        return cur.rowcount

    def revoke(self, device_id: str, now: dt.datetime) -> int:
        """Revoke the device and every certificate it holds; returns how many certificates."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE devices SET status = 'revoked', reason = 'revoked by an operator', "
                            "updated_at = ? WHERE device_id = ?", (now.isoformat(), device_id))
            cur = self.db.execute("UPDATE certs SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                                  (now.isoformat(), device_id))
            return cur.rowcount

    def is_revoked(self, serial: int) -> bool:
        row = self.db.execute("SELECT revoked_at FROM certs WHERE serial = ?", (f"{serial:x}",)).fetchone()
        return row is not None and row[0] is not None

    def revoked_certs(self, now: dt.datetime) -> list[Revoked]:
        """Revoked certificates not yet expired (an expired one needs no CRL entry)."""
        out = []
        for serial, not_after, revoked_at in self.db.execute(
                "SELECT serial, not_after, revoked_at FROM certs WHERE revoked_at IS NOT NULL"):
            if dt.datetime.fromisoformat(not_after) > now:
                out.append(Revoked(int(serial, 16), dt.datetime.fromisoformat(revoked_at)))
        return out

    def revoked_devices(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT device_id FROM devices WHERE status = 'revoked' ORDER BY 1")]
