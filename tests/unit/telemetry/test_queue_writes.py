"""What one append writes (SD card wear), and the counters and sent records it no longer writes
at every commit: numbers are never reused, and a record the broker has is never read again."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from edge_agent.telemetry.policy import Rules, StreamRules
from edge_agent.telemetry.queue import SENT_FLUSH_RECORDS, Accepted, NewRecord, TelemetryQueue

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


def test_one_append_writes_its_row_and_index_pages_only(tmp_path: Path) -> None:
    q = make(tmp_path)
    assert q.page_size == 1024
    for i in range(300):  # a queue in use: pages come from the free list, uploads leave
        q.append([rec(i)])
        q.delete_sent("pilot.stats", 1, 10**9)
    conn = q._db()
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    frames = []
    for i in range(300, 311):
        before = wal_frames(q)
        q.append([rec(i)])
        q.delete_sent("pilot.stats", 1, 10**9)
        frames.append(wal_frames(q) - before)
    # The typical append (a B-tree split now and then writes a few pages more): row leaf, stream
    # index, key index, AUTOINCREMENT's counter, and when a leaf is taken from the free list:
    # page 1, the free-list trunk, the pointer map, the table's interior page. Before: 4 KiB
    # pages, and also the streams table, the key table and its index, the priority index, and a
    # second commit for the upload's delete.
    assert sorted(frames)[len(frames) // 2] <= 8, frames
    q.close()


def test_a_sent_record_is_not_read_again_and_leaves_the_file_with_a_later_commit(tmp_path: Path) -> None:
    q = make(tmp_path)
    (first,) = q.append([rec(1)])
    assert isinstance(first, Accepted)
    batch = q.read_batch("pilot.stats", 0, 10, 1 << 20)
    assert q.delete_sent("pilot.stats", batch[0].n, batch[-1].n) == 1
    assert q.depth == 0 and q.heads() == {} and q.read_batch("pilot.stats", 0, 10, 1 << 20) == []
    assert q.oldest_received() is None
    with sqlite3.connect(q.path) as other:  # still in the file: a power cut now sends it again
        assert other.execute("SELECT count(*) FROM records").fetchone()[0] == 1
    for i in range(2, SENT_FLUSH_RECORDS + 1):  # 256 marked in all
        q.append([rec(i)])
        q.delete_sent("pilot.stats", 1, 10**9)
    q.append([rec(10**6)])  # the flush rides along this append's commit
    with sqlite3.connect(q.path) as other:
        assert other.execute("SELECT count(*) FROM records").fetchone()[0] == 1
    q.close()


def test_a_sent_record_left_in_the_file_by_a_crash_is_sent_again(tmp_path: Path) -> None:
    q = make(tmp_path)
    q.append([rec(1), rec(2)])
    q.delete_sent("pilot.stats", 1, 10**9)
    q.conn = None  # the agent dies: no close, no flush
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
