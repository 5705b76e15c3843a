"""The telemetry queue: one SQLite file (WAL) of its own, `<state.dir>/telemetry.db`, so queue
writes never contend with state.db.

Durability: every append is one transaction for a group of records (group commit); callers
acknowledge records to modules only after `append` returned. `synchronous=FULL` (default) fsyncs
the WAL at each commit, so an acknowledged record survives a power cut; NORMAL survives a crash
of the agent but a power cut may roll back the last commits (docs/telemetry.md).

Space: the records' counted bytes (policy.record_cost) are kept under the cap by policy.py; the
file itself is hard-limited with PRAGMA max_page_count to `file_limit(cap)`, the WAL is kept small
by frequent checkpoints and journal_size_limit, and free pages go back to the file system with
incremental vacuum. SQLITE_FULL below the page limit means the disk is full: the append is rolled
back and every record of it refused with "disk_full"; the next append tries again, so the queue
recovers by itself once space returns.

Not thread-safe: the component calls it from one worker thread.

Why the sqlite3 module here and not sqlite-utils (which the state.db stores use): every part of
the queue is the kind sqlite-utils does not model. The page cap (PRAGMA max_page_count), the WAL
checkpoints and journal_size_limit, incremental vacuum and auto_vacuum set before the first table
exists, and telling SQLITE_FULL below the page limit from a full disk are PRAGMAs and error codes
on the connection; eviction is set-based DELETEs chosen by policy.py, and appends are a group
commit of executemany batches, whose cost per record is what the ingest rate rests on. The queue
is its own file with its own schema (table meta), not part of state.db's versions.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_agent.logs import get_logger
from edge_agent.telemetry.policy import (
    Candidate,
    Incoming,
    Rules,
    StreamHead,
    expiry_cutoffs,
    plan_admission,
    record_cost,
)

log = get_logger(__name__)

QUEUE_DB_NAME = "telemetry.db"
# 512-byte pages (SQLite's smallest) for a new queue: a commit writes whole pages, and most of a
# small group commit's pages are not the records' own (page 1, index leaves, interior pages); half
# the page, half those bytes. A pilot record then takes a leaf cell and one overflow page.
PAGE_SIZE = 512
WAL_AUTOCHECKPOINT_BYTES = 1024 * 1024  # checkpoint once the WAL holds 1 MiB (in pages of the file's size)
WAL_SIZE_LIMIT = 4 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint
# One group commit writes at most ~1 MiB of records (component.GROUP_MAX_BYTES) plus index and
# eviction pages; the WAL then holds at most the checkpoint threshold plus one such transaction.
WAL_BOUND = 4 * 1024 * 1024
FILE_OVERHEAD_RATIO = 0.25  # B-tree and index overhead allowed beyond the counted bytes
FILE_OVERHEAD_FIXED = 256 * 1024  # schema, counters, partly filled pages
SQLITE_FULL = 13
# Idempotency keys are remembered this long, and at most this many (the newest), whichever ends first.
DEFAULT_KEY_WINDOW_S = 3600.0
DEFAULT_KEY_MAX = 100_000
# Records the broker acknowledged are deleted from the file riding along the next append's commit
# (every append takes all that are waiting: deleting while the queue is small writes fewer pages
# than deleting in bulk later), or with a commit of their own once this many are waiting, this many
# bytes, or the oldest waited this long and no append came. A power cut before that sends them
# again (at-least-once; the fleet drops duplicates by id).
SENT_FLUSH_RECORDS = 256
SENT_FLUSH_BYTES = 256 * 1024
SENT_FLUSH_AGE_S = 60.0

RefusalCode = Literal["invalid", "too_large", "queue_full", "disk_full", "unavailable"]


def file_limit(cap_bytes: int) -> int:
    """The most bytes telemetry.db may ever take (enforced with max_page_count), WAL excluded."""
    return _max_pages(cap_bytes) * PAGE_SIZE


def _max_pages(cap_bytes: int, page_size: int = PAGE_SIZE) -> int:
    return math.ceil((cap_bytes * (1 + FILE_OVERHEAD_RATIO) + FILE_OVERHEAD_FIXED) / page_size)


@dataclass(frozen=True)
class NewRecord:
    module: str
    stream: str
    priority: int  # as requested by the module
    ts: float | None
    payload: bytes  # compact JSON text
    key: str | None = None  # the module's idempotency key: stored once per module within the window
    deployment: int | None = None  # the deployment version the module's container was started for
    # The request line as the module sent it (0: not from a socket, e.g. the agent's own); a figure, not data.
    wire_bytes: int = field(default=0, compare=False)

    @property
    def own_bytes(self) -> int:
        """The record's own bytes: what the module sent, else its payload."""
        return self.wire_bytes or len(self.payload)


@dataclass(frozen=True)
class Accepted:
    id: str
    seq: int
    duplicate: bool = False  # the module's key was already stored: this is that record's id


@dataclass(frozen=True)
class Refused:
    code: RefusalCode
    error: str


Outcome = Accepted | Refused


@dataclass(frozen=True)
class StoredRecord:
    n: int  # insert order (rowid); never reused
    id: str
    stream: str
    seq: int
    module: str
    priority: int
    ts: float
    received: float
    payload: bytes
    deployment: int | None = None  # see NewRecord


@dataclass
class _StreamStats:
    count: int = 0
    bytes: int = 0
    priorities: Counter[int] = field(default_factory=Counter)
    last_n: int = 0  # insert number of the stream's newest record


class QueueError(Exception):
    pass


class TelemetryQueue:
    def __init__(
        self,
        path: Path,
        cap_bytes: int,
        rules: Rules,
        synchronous: str = "full",
        clock: Callable[[], float] = time.time,
        key_window_s: float = DEFAULT_KEY_WINDOW_S,
        key_max: int = DEFAULT_KEY_MAX,
    ) -> None:
        self.path = path
        self.key_window_s = key_window_s
        self.key_max = key_max
        self.cap_bytes = cap_bytes
        self.rules = rules
        self.synchronous = synchronous.upper()
        self.clock = clock
        self.conn: sqlite3.Connection | None = None
        self.epoch = ""
        self.streams: dict[str, _StreamStats] = {}
        self.drops: dict[str, Counter[str]] = {}
        self.refused: dict[str, Counter[str]] = {}
        self.disk_full = False
        self.effective_cap = cap_bytes  # lowered if the file limit is met before the counted cap
        # Counters kept in memory and written only with the transactions that delete records (see
        # _save_counters): an append writes nothing but its own row and its index entries.
        self.next_n = 1
        self.next_seq: dict[str, int] = {}
        # Records the broker acknowledged but not yet deleted from the file (see delete_sent):
        # per stream, every record up to this insert number is sent.
        self.sent_through: dict[str, int] = {}
        self._sent_pending = 0  # records marked sent and not yet deleted
        self._sent_pending_bytes = 0
        self._sent_since: float | None = None  # monotonic time of the oldest mark not yet deleted
        self.page_size = PAGE_SIZE
        self._flushed = False  # a transaction deleted the records marked sent (not yet committed)

    # ------------------------------------------------------------------ open / close

    def open(self) -> None:
        """Open (creating) the queue. A file SQLite cannot read as a database is moved aside to
        telemetry.db.corrupt-<time> (kept for inspection) and a new queue is started."""
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) != 26:
                raise  # e.g. disk full or locked: not corruption (26 = SQLITE_NOTADB)
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "telemetry queue %s is damaged (%s); moved to %s, starting an empty queue",
                self.path,
                exc,
                aside,
                extra={"EVENT": "telemetry.queue_corrupt"},
            )
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(f"{self.path}{suffix}"):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        try:
            self._configure(conn)
            self._create_schema(conn)
            self.conn = conn
            self._load()
        except BaseException:
            conn.close()
            self.conn = None
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        # page_size and auto_vacuum only take effect on a new, empty database.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        # The agent is the file's only user: with the lock held for good, SQLite keeps the WAL index
        # in memory instead of the mmapped telemetry.db-shm, whose pages every commit dirtied and
        # the kernel wrote back to the card (about 6 KB per commit in bench/storage_writes.py).
        # Other processes cannot open the file while the agent runs (edge-agent check says so);
        # the lock goes with the process.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise QueueError(f"{self.path}: cannot use WAL journal mode (got {mode})")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_BYTES // page_size}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        self._set_page_limit(conn)

    def _set_page_limit(self, conn: sqlite3.Connection) -> None:
        # A queue created by an older agent keeps its page size (it cannot change in WAL mode).
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = _max_pages(self.cap_bytes, self.page_size)
        got = int(conn.execute(f"PRAGMA max_page_count={pages}").fetchone()[0])
        if got != pages:  # the file is already larger (cap lowered): keep it, shrink as records go
            log.warning(
                "telemetry.db is larger than the new cap allows (%d pages > %d); it shrinks as records are sent",
                got,
                pages,
                extra={"EVENT": "telemetry.cap_lowered"},
            )

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.executescript(
            """
            BEGIN;
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS records (
                n INTEGER PRIMARY KEY AUTOINCREMENT,
                stream TEXT NOT NULL,
                seq INTEGER NOT NULL,
                module TEXT NOT NULL,
                priority INTEGER NOT NULL,
                ts REAL NOT NULL,
                received REAL NOT NULL,
                size INTEGER NOT NULL,
                payload BLOB NOT NULL,
                deployment INTEGER,
                key TEXT
            );
            CREATE INDEX IF NOT EXISTS records_by_stream ON records(stream);
            CREATE TABLE IF NOT EXISTS streams (stream TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS drops (
                stream TEXT NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (stream, reason)
            );
            CREATE TABLE IF NOT EXISTS idempotency (
                k INTEGER PRIMARY KEY AUTOINCREMENT,
                module TEXT NOT NULL,
                key TEXT NOT NULL,
                n INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                received REAL NOT NULL,
                UNIQUE (module, key)
            );
            COMMIT;
            """
        )
        # Added after the first release: a queue written by an older agent gets the column (its
        # records have no deployment version: NULL).
        columns = {r[1] for r in conn.execute("PRAGMA table_info(records)")}
        if "deployment" not in columns:
            conn.execute("ALTER TABLE records ADD COLUMN deployment INTEGER")
        # Added with the write diet (docs/telemetry.md, "Storage writes"): a record's idempotency
        # key is stored in its row (one index page per append instead of a table and its index)
        # and moved to the idempotency table when the record leaves; eviction no longer uses an
        # index of its own (each index is one more page written per append).
        if "key" not in columns:
            conn.execute("ALTER TABLE records ADD COLUMN key TEXT")
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS records_by_key ON records(module, key) WHERE key IS NOT NULL")
        conn.execute("DROP INDEX IF EXISTS records_by_eviction")
        row = conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        if row is None:
            # Record ids are <epoch>-<n>: unique even if this file is ever deleted and recreated.
            conn.execute("INSERT INTO meta(key, value) VALUES('epoch', ?)", (secrets.token_hex(4),))
            row = conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        self.epoch = str(row[0])

    def _load(self, keep_sent: bool = False) -> None:
        """Read the counted figures back from the file. keep_sent (after a rolled-back transaction):
        the records marked sent stay marked."""
        conn = self._db()
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        if not keep_sent:
            self.sent_through = {}
            self._sent_pending = self._sent_pending_bytes = 0
            self._sent_since = None
        # The next insert number and each stream's next seq: the largest of what was saved with the
        # last delete and what the records hold (a queue written by an older agent also has
        # AUTOINCREMENT's sqlite_sequence). A number is never reused: whichever transaction deletes
        # the newest record also saves the counters.
        candidates = [1]
        row = conn.execute("SELECT value FROM meta WHERE key='next_n'").fetchone()
        if row is not None:
            candidates.append(int(row[0]))
        top = conn.execute("SELECT max(n) FROM records").fetchone()[0]
        if top is not None:
            candidates.append(int(top) + 1)
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'").fetchone() is not None:
            for (seq,) in conn.execute("SELECT seq FROM sqlite_sequence WHERE name='records'"):
                candidates.append(int(seq) + 1)
        self.next_n = max(candidates)
        self.next_seq = {str(stream): int(nxt) for stream, nxt in conn.execute("SELECT stream, next_seq FROM streams")}
        for stream, top_seq in conn.execute("SELECT stream, max(seq) FROM records GROUP BY stream"):
            self.next_seq[stream] = max(self.next_seq.get(stream, 1), int(top_seq) + 1)
        self.streams = {}
        for stream, priority, count, size in conn.execute(
            "SELECT stream, priority, count(*), sum(size) FROM records GROUP BY stream, priority"
        ):
            st = self.streams.setdefault(stream, _StreamStats())
            st.count += count
            st.bytes += size
            st.priorities[priority] += count
        for stream, last_n in conn.execute("SELECT stream, max(n) FROM records GROUP BY stream"):
            self.streams[stream].last_n = last_n
        for stream, through in self.sent_through.items():
            for priority, size in conn.execute(
                "SELECT priority, size FROM records WHERE stream=? AND n<=?", (stream, through)
            ).fetchall():
                self._untrack(stream, priority, size)
        self.drops = {}
        for stream, reason, n in conn.execute("SELECT stream, reason, n FROM drops"):
            self.drops.setdefault(stream, Counter())[reason] = n

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):  # not deleted now: sent again after the restart
                self.flush_sent()
            self.conn.close()
            self.conn = None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise QueueError("telemetry queue is not open")
        return self.conn

    # ------------------------------------------------------------------ figures

    @property
    def used_bytes(self) -> int:
        return sum(s.bytes for s in self.streams.values())

    @property
    def depth(self) -> int:
        return sum(s.count for s in self.streams.values())

    def record_id(self, n: int) -> str:
        return f"{self.epoch}-{n}"

    def oldest_received(self) -> float | None:
        """When the oldest queued record (not yet sent) arrived."""
        conn = self._db()
        found = [
            float(row[0])
            for stream in self.streams
            if (row := conn.execute(
                "SELECT received FROM records WHERE stream=? AND n>? ORDER BY n LIMIT 1",
                (stream, self.sent_through.get(stream, 0)),
            ).fetchone()) is not None
        ]
        return min(found) if found else None

    def file_bytes(self) -> dict[str, int]:
        out = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                out["db" + suffix.replace("-", "_")] = os.stat(f"{self.path}{suffix}").st_size
            except FileNotFoundError:
                out["db" + suffix.replace("-", "_")] = 0
        return out

    def integrity_check(self) -> str:
        return str(self._db().execute("PRAGMA integrity_check").fetchone()[0])

    # ------------------------------------------------------------------ append (group commit)

    def append(self, batch: Sequence[NewRecord]) -> list[Outcome]:
        """Store a group of records in one transaction. Returns one outcome per record, in order.

        A record whose (module, key) is already stored is not stored again: its outcome is the
        stored record's id and seq, marked duplicate. So is a second record of the same key in
        one batch, once the first is stored."""
        if not batch:
            return []
        known = self._known_keys(batch)
        fresh: list[NewRecord] = []
        first_of: dict[tuple[str, str], int] = {}  # key -> index in fresh
        slots: list[int | Accepted] = []
        for rec in batch:
            ident = (rec.module, rec.key) if rec.key is not None else None
            if ident is not None and ident in known:
                slots.append(known[ident])
            elif ident is not None and ident in first_of:
                slots.append(first_of[ident])
            else:
                if ident is not None:
                    first_of[ident] = len(fresh)
                slots.append(len(fresh))
                fresh.append(rec)
        stored = self._append_fresh(fresh) if fresh else []
        out: list[Outcome] = []
        seen: set[int] = set()
        for slot in slots:
            if isinstance(slot, Accepted):
                out.append(slot)
                continue
            outcome = stored[slot]
            if slot in seen and isinstance(outcome, Accepted):
                outcome = Accepted(outcome.id, outcome.seq, duplicate=True)
            seen.add(slot)
            out.append(outcome)
        return out

    def _known_keys(self, batch: Sequence[NewRecord]) -> dict[tuple[str, str], Accepted]:
        keyed = {(r.module, r.key) for r in batch if r.key is not None}
        if not keyed:
            return {}
        conn = self._db()
        horizon = self.clock() - self.key_window_s
        out = {}
        stale_sent = False
        for module, key in keyed:
            row = conn.execute(
                "SELECT n, seq, stream, received FROM records WHERE module=? AND key=? AND key IS NOT NULL",
                (module, key),
            ).fetchone()
            if row is not None and row[0] <= self.sent_through.get(row[2], 0) and row[3] < horizon:
                stale_sent = True  # sent, waiting to be deleted, and past the window: forgotten
                continue
            if row is None:
                row = conn.execute(
                    "SELECT n, seq FROM idempotency WHERE module=? AND key=? AND received>=?", (module, key, horizon)
                ).fetchone()
            if row is not None:
                out[(module, key)] = Accepted(self.record_id(int(row[0])), int(row[1]), duplicate=True)
        if stale_sent:
            self.flush_sent()  # its row (and key) must leave before a new record takes the key
        return out

    def _append_fresh(self, batch: Sequence[NewRecord]) -> list[Outcome]:
        try:
            return self._append(batch)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL and not self._at_page_limit():
                return self._refuse_all(batch, "disk_full", f"the device's disk is full: {exc}")
            if getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:
                # The file limit was met before the counted cap (records cost more file than counted).
                if not self._make_room_in_file(batch):
                    return self._refuse_all(batch, "queue_full", "telemetry queue file is at its size limit")
                try:
                    return self._append(batch)
                except sqlite3.OperationalError as again:
                    if getattr(again, "sqlite_errorcode", None) == SQLITE_FULL:
                        code: RefusalCode = "queue_full" if self._at_page_limit() else "disk_full"
                        return self._refuse_all(batch, code, f"telemetry queue is full: {again}")
                    raise
            raise

    def _make_room_in_file(self, batch: Sequence[NewRecord]) -> bool:
        """Evict (by the same rules: drop-oldest streams, least urgent and oldest first, nothing more
        urgent than the batch) a tenth of the queue, and count no more than what is left from now on."""
        floors = [self.rules.priority(r.stream, r.priority) for r in batch if self.rules.evictable(r.stream)]
        if not floors:
            return False
        conn = self._db()
        want = max(len(batch), self.depth // 10)
        drops: Counter[tuple[str, str]] = Counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._flush_sent(conn)  # sent records go first, and are not counted as dropped
            rows = [
                n
                for n, stream in conn.execute(
                    "SELECT n, stream FROM records WHERE priority >= ? ORDER BY priority DESC, n", (min(floors),)
                )
                if self.rules.evictable(stream)
            ][:want]
            self._delete_rows(conn, rows, drops, "evicted")
            self._save_counters(conn)
            self._count_drops(conn, drops)
            conn.execute("COMMIT")
        except BaseException:
            self._flushed = False
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._load(keep_sent=True)
            raise
        self._sent_flushed()
        for (stream, reason), n in drops.items():
            self.drops.setdefault(stream, Counter())[reason] += n
        self.effective_cap = max(1, self.used_bytes)
        log.warning(
            "telemetry.db reached its size limit; evicted %d records, counting at most %d bytes from now on",
            len(rows),
            self.effective_cap,
            extra={"EVENT": "telemetry.page_limit"},
        )
        return bool(rows)

    def _at_page_limit(self) -> bool:
        conn = self._db()
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return pages - free + 8 >= _max_pages(self.cap_bytes, self.page_size)

    def _refuse_all(self, batch: Sequence[NewRecord], code: RefusalCode, error: str) -> list[Outcome]:
        if code == "disk_full" and not self.disk_full:
            log.error("telemetry: disk full, refusing records: %s", error, extra={"EVENT": "telemetry.disk_full"})
        self.disk_full = self.disk_full or code == "disk_full"
        for rec in batch:
            self.refused.setdefault(rec.stream, Counter())[code] += 1
        return [Refused(code, error) for _ in batch]

    def _append(self, batch: Sequence[NewRecord]) -> list[Outcome]:
        conn = self._db()
        now = self.clock()
        incoming = [
            Incoming(
                rec.stream,
                self.rules.priority(rec.stream, rec.priority),
                record_cost(rec.stream, rec.module, len(rec.payload)),
                self.rules.for_stream(rec.stream).policy,
            )
            for rec in batch
        ]
        cap = min(self.cap_bytes, self.effective_cap)
        used = self.used_bytes
        need = used + sum(i.cost for i in incoming) - cap
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Sent records leave with this append's commit (no commit of their own); before
            # choosing what to evict, so none of them is counted as dropped.
            self._flush_sent(conn)
            candidates = self._candidates(conn, need) if need > 0 else []
            plan = plan_admission(incoming, used, cap, candidates)
            drops: Counter[tuple[str, str]] = Counter()
            if plan.evicted:
                self._delete_rows(conn, [c.rowid for c in plan.evicted], drops, "evicted")
            outcomes: list[Outcome] = []
            inserted: dict[int, int] = {}
            for index, (rec, inc, ok) in enumerate(zip(batch, incoming, plan.accepted, strict=True)):
                if not ok:
                    outcomes.append(Refused("queue_full", self._full_text(rec.stream, inc.policy)))
                    continue
                seq = self.next_seq.get(rec.stream, 1)
                n = self.next_n
                self.next_n += 1
                # The key is stored in the record's own row: both or neither survive.
                conn.execute(
                    "INSERT INTO records(n, stream, seq, module, priority, ts, received, size, payload,"
                    " deployment, key) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (n, rec.stream, seq, rec.module, inc.priority, rec.ts if rec.ts is not None else now, now,
                     inc.cost, rec.payload, rec.deployment, rec.key),
                )
                inserted[index] = n
                self.next_seq[rec.stream] = seq + 1
                outcomes.append(Accepted(self.record_id(n), seq))
            added = [(batch[i].stream, incoming[i].priority, incoming[i].cost, n) for i, n in inserted.items()]
            if plan.evicted_incoming:
                gone = {inserted[i] for i in plan.evicted_incoming}
                self._delete_rows(conn, sorted(gone), drops, "evicted", tracked=False)
                added = [a for i, a in zip(inserted, added, strict=True) if inserted[i] not in gone]
                for i in plan.evicted_incoming:
                    drops[(batch[i].stream, "evicted")] += 1
            if drops or plan.evicted or plan.evicted_incoming:
                self._save_counters(conn)
            self._count_drops(conn, drops)
            conn.execute("COMMIT")
        except BaseException:
            self._flushed = False
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._load(keep_sent=True)  # the rolled-back deletes are back
            raise
        self._sent_flushed()
        for stream, priority, cost, n in added:
            st = self.streams.setdefault(stream, _StreamStats())
            st.last_n = max(st.last_n, n)
            st.count += 1
            st.bytes += cost
            st.priorities[priority] += 1
        for (stream, reason), n in drops.items():
            self.drops.setdefault(stream, Counter())[reason] += n
        for rec, out in zip(batch, outcomes, strict=True):
            if isinstance(out, Refused):
                self.refused.setdefault(rec.stream, Counter())[out.code] += 1
        if self.disk_full:
            self.disk_full = False
            log.info("telemetry: disk space is back, accepting records", extra={"EVENT": "telemetry.disk_ok"})
        return outcomes

    def _full_text(self, stream: str, policy: str) -> str:
        if policy == "refuse-new":
            return f"telemetry queue is at its cap ({self.cap_bytes} bytes) and stream {stream} is refuse-new"
        return (
            f"telemetry queue is at its cap ({self.cap_bytes} bytes) and holds nothing of equal or lower "
            f"priority that may be dropped for stream {stream}"
        )

    def _candidates(self, conn: sqlite3.Connection, need: int) -> list[Candidate]:
        """Evictable queued records in eviction order (least urgent first, then oldest), enough to
        free `need` bytes (twice, for slack). Read per priority level and stream through the stream
        index: the queue keeps no index by priority, which would be one more page written per append."""
        want = 2 * need
        out: list[Candidate] = []
        freed = 0
        levels = sorted(
            {p for s, st in self.streams.items() if self.rules.evictable(s) for p in st.priorities}, reverse=True
        )
        for priority in levels:
            if freed >= want:
                break
            level: list[Candidate] = []
            for stream in sorted(s for s, st in self.streams.items()
                                 if self.rules.evictable(s) and st.priorities.get(priority)):
                got, after = 0, self.sent_through.get(stream, 0)
                while got < want - freed:
                    rows = conn.execute(
                        "SELECT n, size FROM records WHERE stream=? AND n>? AND priority=? ORDER BY n LIMIT 512",
                        (stream, after, priority),
                    ).fetchall()
                    if not rows:
                        break
                    for n, size in rows:
                        level.append(Candidate(n, stream, priority, size))
                        got += size
                    after = rows[-1][0]
            level.sort(key=lambda c: c.rowid)
            for candidate in level:
                if freed >= want:
                    break
                out.append(candidate)
                freed += candidate.cost
        return out

    def _delete_rows(
        self,
        conn: sqlite3.Connection,
        rows: Sequence[int],
        drops: Counter[tuple[str, str]] | None,
        reason: str,
        tracked: bool = True,
    ) -> None:
        for start in range(0, len(rows), 500):
            chunk = rows[start : start + 500]
            marks = ",".join("?" * len(chunk))
            deleted = conn.execute(
                f"DELETE FROM records WHERE n IN ({marks})"  # noqa: S608
                " RETURNING stream, priority, size, module, key, n, seq, received",
                chunk,
            ).fetchall()
            self._remember_keys(conn, [row[3:] for row in deleted])
            for stream, priority, size, *_ in deleted:
                if tracked:
                    self._untrack(stream, priority, size)
                if drops is not None and tracked:
                    drops[(stream, reason)] += 1

    def _remember_keys(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Keep the idempotency keys of records that leave the queue (module, key, n, seq, received)."""
        keyed = [tuple(r) for r in rows if r[1] is not None]
        if keyed:
            conn.executemany(
                "INSERT OR REPLACE INTO idempotency(module, key, n, seq, received) VALUES(?, ?, ?, ?, ?)", keyed
            )

    def _save_counters(self, conn: sqlite3.Connection) -> None:
        """Write the insert number and the streams' seqs: in every transaction that deletes records."""
        conn.execute(
            "INSERT INTO meta(key, value) VALUES('next_n', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(self.next_n),),
        )
        conn.executemany(
            "INSERT INTO streams(stream, next_seq) VALUES(?, ?)"
            " ON CONFLICT(stream) DO UPDATE SET next_seq=excluded.next_seq",
            list(self.next_seq.items()),
        )

    def _sent_flush_due(self) -> bool:
        if not self._sent_pending:
            return False
        since = self._sent_since
        return (
            self._sent_pending >= SENT_FLUSH_RECORDS
            or self._sent_pending_bytes >= min(SENT_FLUSH_BYTES, max(1, self.cap_bytes // 8))
            or (since is not None and time.monotonic() - since >= SENT_FLUSH_AGE_S)
        )

    def _flush_sent(self, conn: sqlite3.Connection) -> None:
        """Delete the records marked sent, inside the caller's transaction; the marks are cleared
        by _sent_flushed once it committed."""
        if not self._sent_pending:
            return
        for stream, through in self.sent_through.items():
            deleted = conn.execute(
                "DELETE FROM records WHERE stream=? AND n<=? RETURNING module, key, n, seq, received",
                (stream, through),
            ).fetchall()
            self._remember_keys(conn, deleted)
        self._save_counters(conn)
        self._flushed = True

    def _sent_flushed(self) -> None:
        if self._flushed:
            self._flushed = False
            self.sent_through = {}
            self._sent_pending = self._sent_pending_bytes = 0
            self._sent_since = None

    def flush_sent(self) -> int:
        """Delete every record marked sent now (one commit); returns how many were marked."""
        pending = self._sent_pending
        if not pending:
            return 0
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._flush_sent(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._flushed = False
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._sent_flushed()
        return pending

    def _untrack(self, stream: str, priority: int, size: int) -> None:
        st = self.streams.get(stream)
        if st is None:
            return
        st.count -= 1
        st.bytes -= size
        st.priorities[priority] -= 1
        if st.priorities[priority] <= 0:
            del st.priorities[priority]
        if st.count <= 0:
            del self.streams[stream]

    def _count_drops(self, conn: sqlite3.Connection, drops: Counter[tuple[str, str]]) -> None:
        conn.executemany(
            "INSERT INTO drops(stream, reason, n) VALUES(?, ?, ?)"
            " ON CONFLICT(stream, reason) DO UPDATE SET n = n + excluded.n",
            [(s, r, n) for (s, r), n in drops.items()],
        )

    # ------------------------------------------------------------------ uplink side

    def heads(self) -> dict[str, StreamHead]:
        conn = self._db()
        out = {}
        for stream, st in self.streams.items():
            if st.count <= 0:
                continue
            row = conn.execute(
                "SELECT min(n) FROM records WHERE stream=? AND n>?", (stream, self.sent_through.get(stream, 0))
            ).fetchone()
            if row is None or row[0] is None:
                continue
            out[stream] = StreamHead(min(st.priorities) if st.priorities else 9, int(row[0]))
        return out

    def pending_after(self, cursors: dict[str, int]) -> dict[str, StreamHead]:
        """Heads of the streams that hold records after their cursor (insert number last sent)."""
        return {s: h for s, h in self.heads().items() if self.streams[s].last_n > cursors.get(s, 0)}

    def read_batch(self, stream: str, after_n: int, max_records: int, max_bytes: int) -> list[StoredRecord]:
        """The next records of a stream after insert number `after_n`, in order (at least one)."""
        rows = self._db().execute(
            "SELECT n, seq, module, priority, ts, received, payload, deployment FROM records"
            " WHERE stream=? AND n>? ORDER BY n LIMIT ?",
            (stream, max(after_n, self.sent_through.get(stream, 0)), max_records),
        ).fetchall()
        out: list[StoredRecord] = []
        total = 0
        for n, seq, module, priority, ts, received, payload, deployment in rows:
            total += len(payload)
            if out and total > max_bytes:
                break
            out.append(
                StoredRecord(
                    n, self.record_id(n), stream, seq, module, priority, ts, received, bytes(payload), deployment
                )
            )
        return out

    def delete_sent(self, stream: str, first_n: int, last_n: int) -> int:
        """The broker has a stream's records with insert numbers in [first_n, last_n]: they leave
        the queue now (its figures, what is read and sent) and the file with a later commit (the
        next append's, or flush_sent's), so an acknowledged upload costs no fsync of its own. A
        power cut before that commit sends them again: at-least-once, the fleet side drops
        duplicates by record id. Returns how many records left."""
        conn = self._db()
        through = self.sent_through.get(stream, 0)
        rows = conn.execute(
            "SELECT n, priority, size FROM records WHERE stream=? AND n BETWEEN ? AND ? AND n>?",
            (stream, first_n, last_n, through),
        ).fetchall()
        if not rows:
            return 0
        older = conn.execute(
            "SELECT 1 FROM records WHERE stream=? AND n>? AND n<? LIMIT 1", (stream, through, first_n)
        ).fetchone()
        if older is not None:  # not the stream's head (the uplink sends in order): delete now
            return self._delete_now(stream, first_n, last_n)
        for _, priority, size in rows:
            self._untrack(stream, priority, size)
            self._sent_pending_bytes += size
        self._sent_pending += len(rows)
        self.sent_through[stream] = max(n for n, _, _ in rows)
        if self._sent_since is None:
            self._sent_since = time.monotonic()
        if not self.streams:
            self.effective_cap = self.cap_bytes
        return len(rows)

    def _delete_now(self, stream: str, first_n: int, last_n: int) -> int:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = conn.execute(
                "DELETE FROM records WHERE stream=? AND n BETWEEN ? AND ? AND n>?"
                " RETURNING priority, size, module, key, n, seq, received",
                (stream, first_n, last_n, self.sent_through.get(stream, 0)),
            ).fetchall()
            self._remember_keys(conn, [row[2:] for row in deleted])
            self._save_counters(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for priority, size, *_ in deleted:
            self._untrack(stream, priority, size)
        if not self.streams:
            self.effective_cap = self.cap_bytes
        return len(deleted)

    def forget_keys(self, now: float | None = None) -> int:
        """Forget idempotency keys older than the window, and all but the newest `key_max`."""
        now = self.clock() if now is None else now
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            gone = conn.execute("DELETE FROM idempotency WHERE received < ?", (now - self.key_window_s,)).rowcount
            gone += conn.execute(
                "DELETE FROM idempotency WHERE k <= (SELECT max(k) FROM idempotency) - ?", (self.key_max,)
            ).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return int(gone)

    def expire(self, now: float | None = None) -> dict[str, int]:
        """Delete records past their stream's TTL; returns how many per stream (counted as "expired")."""
        now = self.clock() if now is None else now
        if self._sent_flush_due():
            self.flush_sent()
        self.forget_keys(now)
        cutoffs = expiry_cutoffs(self.rules, list(self.streams), now)
        if not cutoffs:
            return {}
        conn = self._db()
        drops: Counter[tuple[str, str]] = Counter()
        conn.execute("BEGIN IMMEDIATE")
        try:
            gone: list[tuple[str, int, int]] = []
            for stream, cutoff in cutoffs.items():
                rows = conn.execute(
                    "DELETE FROM records WHERE stream=? AND received < ? AND n>?"
                    " RETURNING priority, size, module, key, n, seq, received",
                    (stream, cutoff, self.sent_through.get(stream, 0)),
                ).fetchall()
                self._remember_keys(conn, [row[2:] for row in rows])
                for priority, size, *_ in rows:
                    gone.append((stream, priority, size))
                    drops[(stream, "expired")] += 1
            if gone:
                self._save_counters(conn)
            self._count_drops(conn, drops)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for stream, priority, size in gone:
            self._untrack(stream, priority, size)
        for (stream, reason), n in drops.items():
            self.drops.setdefault(stream, Counter())[reason] += n
        return {stream: n for (stream, _), n in drops.items()}

    def vacuum_some(self, max_pages: int = 256) -> int:
        """Give free pages back to the file system, a few at a time; returns the free pages left."""
        conn = self._db()
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if free > 64:
            conn.execute(f"PRAGMA incremental_vacuum({max_pages})").fetchall()
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return free

    def stats(self) -> dict[str, Any]:
        oldest = self.oldest_received()
        return {
            "depth": self.depth,
            "bytes": self.used_bytes,
            "capBytes": self.cap_bytes,
            "oldestAgeS": None if oldest is None else round(max(0.0, self.clock() - oldest)),
            "drops": {s: dict(c) for s, c in sorted(self.drops.items()) if any(c.values())},
            "refused": {s: dict(c) for s, c in sorted(self.refused.items()) if any(c.values())},
            "diskFull": self.disk_full,
            "streams": {s: {"depth": st.count, "bytes": st.bytes} for s, st in sorted(self.streams.items())},
            "files": self.file_bytes(),
        }
