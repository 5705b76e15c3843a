"""What one append writes (SD card wear), and the counters and sent records it no longer writes
at every commit: numbers are never reused, and a record the broker has is never read again."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from edge_agent.telemetry.policy import Rules, StreamRules
from edge_agent.telemetry.queue import SENT_FLUSH_AGE_S, Accepted, NewRecord, TelemetryQueue

PILOT_LIKE = json.dumps({"fps": 20.0, "total_ms": [3.25] * 20, "latency_ms": {"total": {"p50": 3.1}},
                         "pad": "p" * 400}).encode()


def make(path: Path) -> TelemetryQueue:
    q = TelemetryQueue(path / "telemetry.db", 16 << 20, Rules(StreamRules(None, "drop-oldest", 0), {}))
    q.open()
    return q


def rec(i: int, stream: str = "pilot.stats") -> NewRecord:
    return NewRecord("pilot", stream, 5, None, PILOT_LIKE, key=f"k-{i}")


def wal_frames(q: TelemetryQueue) -> int:
    size = os.path.getsize(f"{q.path}-wal")
    return max(0, size - 32) // (q.page_size + 24)


def wal_bytes_per_append(q: TelemetryQueue, group: int, appends: int = 11) -> list[int]:
    """WAL bytes (frames with their headers) each append of `group` records writes, in a queue in
    use: pages come from the free list, uploads leave (marked sent after each append)."""
    n = 0
    for _ in range(300 // group):
        q.append([rec(n + j) for j in range(group)])
        n += group
        q.delete_sent("pilot.stats", 1, 10**9)
    conn = q._db()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out = []
    for _ in range(appends):
        before = wal_frames(q)
        q.append([rec(n + j) for j in range(group)])
        n += group
        q.delete_sent("pilot.stats", 1, 10**9)
        out.append((wal_frames(q) - before) * (q.page_size + 24))
    return out


def test_one_append_writes_its_row_and_index_pages_only(tmp_path: Path) -> None:
    q = make(tmp_path)
    assert q.page_size == 512
    written = wal_bytes_per_append(q, 1)
    # The typical append (a B-tree split now and then writes a few pages more) is 11 pages of 512
    # bytes: the row's leaf and its overflow page, the stream and key index leaves,
    # AUTOINCREMENT's counter, the table's interior page, page 1, the free-list trunk and the
    # pointer map, and the delete of the record uploaded since. Before: 8 pages of 1 KiB (8.4 KB);
    # before that 4 KiB pages.
    assert sorted(written)[len(written) // 2] <= 12 * 536, written
    q.close()


def test_a_group_commit_writes_a_third_per_record_of_one_record_commits(tmp_path: Path) -> None:
    """The pilot sends its records in groups (telemetry.flush_s): the pages every commit writes
    whatever its size (page 1, index leaves, counters) are shared by the group."""
    alone = wal_bytes_per_append(make(tmp_path / "alone"), 1)
    grouped = wal_bytes_per_append(make(tmp_path / "grouped"), 10)
    alone_per_record = sorted(alone)[len(alone) // 2]
    grouped_per_record = sorted(grouped)[len(grouped) // 2] / 10
    # Measured: 5.9 KB alone, 1.55 KB per record in groups of 10 (29 pages of 512 for the group).
    assert grouped_per_record <= alone_per_record / 3, (alone, grouped)
    assert grouped_per_record <= 1700, grouped


def test_a_sent_record_is_not_read_again_and_leaves_the_file_with_a_later_commit(tmp_path: Path) -> None:
    q = make(tmp_path)
    (first,) = q.append([rec(1)])
    assert isinstance(first, Accepted)
    batch = q.read_batch("pilot.stats", 0, 10, 1 << 20)
    assert q.delete_sent("pilot.stats", batch[0].n, batch[-1].n) == 1
    assert q.depth == 0 and q.heads() == {} and q.read_batch("pilot.stats", 0, 10, 1 << 20) == []
    assert q.oldest_received() is None
    in_file = q._db().execute  # the agent holds the file exclusively: read through its connection
    assert in_file("SELECT count(*) FROM records").fetchone()[0] == 1, "still in the file: a power cut sends it again"
    q.append([rec(2)])  # the delete rides along the next append's commit
    assert [k for (k,) in in_file("SELECT key FROM records")] == ["k-2"]
    # No append comes: the marked records leave with a commit of their own once the oldest waited
    # SENT_FLUSH_AGE_S (or SENT_FLUSH_RECORDS are waiting), at the next housekeeping round.
    q.delete_sent("pilot.stats", 1, 10**9)
    q.expire()
    assert in_file("SELECT count(*) FROM records").fetchone()[0] == 1, "not due yet"
    q._sent_since = time.monotonic() - SENT_FLUSH_AGE_S
    q.expire()
    assert in_file("SELECT count(*) FROM records").fetchone()[0] == 0
    q.close()


def test_a_sent_record_left_in_the_file_by_a_crash_is_sent_again(tmp_path: Path) -> None:
    q = make(tmp_path)
    q.append([rec(1), rec(2)])
    q.delete_sent("pilot.stats", 1, 10**9)
    assert q.conn is not None
    q.conn.close()  # the agent dies (its lock with it): no flush
    q.conn = None
    again = make(tmp_path)
    assert again.depth == 2 and [r.payload for r in again.read_batch("pilot.stats", 0, 10, 1 << 20)] == [PILOT_LIKE] * 2
    again.close()


def test_insert_numbers_and_seqs_are_never_reused(tmp_path: Path) -> None:
    q = make(tmp_path)
    outcomes = q.append([rec(1), rec(2), rec(3)])
    ids = {o.id for o in outcomes if isinstance(o, Accepted)}
    q.delete_sent("pilot.stats", 1, 10**9)
    q.close()  # flushes: the queue file is empty now
    q = make(tmp_path)
    (later,) = q.append([rec(4)])
    assert isinstance(later, Accepted) and later.id not in ids and later.seq == 4
    q.close()


def test_a_key_stays_known_while_its_record_waits_to_leave_the_file(tmp_path: Path) -> None:
    q = make(tmp_path)
    (first,) = q.append([rec(1)])
    q.delete_sent("pilot.stats", 1, 10**9)
    (again,) = q.append([rec(1)])
    assert isinstance(first, Accepted) and again == Accepted(first.id, first.seq, duplicate=True)
    q.flush_sent()
    (third,) = q.append([rec(1)])  # now from the key table
    assert third == Accepted(first.id, first.seq, duplicate=True)
    q.close()


def test_eviction_takes_the_least_urgent_then_the_oldest_across_streams(tmp_path: Path) -> None:
    body = b'"' + b"x" * 900 + b'"'
    q = TelemetryQueue(tmp_path / "t.db", 10_000, Rules(StreamRules(None, "drop-oldest", 0), {}))
    q.open()
    q.append([NewRecord("m", "a", 7, None, body), NewRecord("m", "b", 7, None, body),
              NewRecord("m", "a", 3, None, body), NewRecord("m", "b", 9, None, body)])
    q.append([NewRecord("m", "c", 1, None, body) for _ in range(7)])  # 11 records do not fit 10,000 bytes
    left = {(r.stream, r.priority) for s in ("a", "b") for r in q.read_batch(s, 0, 10, 1 << 20)}
    assert ("b", 9) not in left and ("a", 3) in left  # priority 9 went first, then the oldest 7s
    assert q.stats()["drops"]["b"]["evicted"] == 1
    q.close()
