"""Uplink against a fake publisher (real SQLite queue): delete only after PUBACK, bounded window,
resume from the oldest unacknowledged record after a failure, priorities, envelope."""

from __future__ import annotations

import asyncio
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edge_agent.telemetry.policy import Rules, StreamRules
from edge_agent.telemetry.queue import NewRecord, StoredRecord, TelemetryQueue
from edge_agent.telemetry.uplink import Uplink
from edge_shared.batch import CONTENT_TYPE_ZLIB, decode_batch, encode_batch
from edgectl.telemetry_cmd import Deduplicator, format_record, records_of


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail_next = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.waiting = 0
        self.max_waiting = 0

    async def wait_connected(self) -> None:
        return None

    async def publish_once(
        self, topic: str, payload: bytes, qos: int = 1, content_type: str | None = None
    ) -> None:
        assert qos == 1
        self.waiting += 1
        self.max_waiting = max(self.max_waiting, self.waiting)
        try:
            await self.hold.wait()
            self.sent.append((topic, decode_batch(payload, content_type)))  # delivered to the broker...
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionError("connection lost before PUBACK")  # ...but no PUBACK came back
        finally:
            self.waiting -= 1


def setup(tmp_path: Path, pub: FakePublisher, **kw: Any) -> tuple[TelemetryQueue, Uplink, asyncio.Event, Any]:
    q = TelemetryQueue(tmp_path / "t.db", 1 << 24, Rules(StreamRules(None, "drop-oldest", 0)))
    q.open()
    ex = ThreadPoolExecutor(1)

    async def db(fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(ex, fn, *args)

    new = asyncio.Event()
    params = {"batch_max_records": 10, "batch_max_bytes": 1 << 20, "inflight": 3, "compress": True, **kw}
    return q, Uplink(q, db, pub, "edge", "dev1", new_data=new, **params), new, ex


def add(q: TelemetryQueue, stream: str, n: int, priority: int = 5) -> None:
    q.append([NewRecord("m", stream, priority, None, json.dumps({"i": i}).encode()) for i in range(n)])


async def run_until(pred: Any, up: Uplink, timeout: float = 10) -> None:
    task = asyncio.create_task(up.run())
    try:
        async with asyncio.timeout(timeout):
            while not pred():
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_uploads_in_order_and_deletes_after_ack(tmp_path: Path) -> None:
    pub = FakePublisher()
    q, up, _, _ = setup(tmp_path, pub)
    add(q, "s", 95)
    await run_until(lambda: q.depth == 0, up)
    records = [r for _, doc in pub.sent for r in doc["records"]]
    assert [r["seq"] for r in records] == list(range(1, 96))
    assert all(topic == "edge/dev1/telemetry/s" for topic, _ in pub.sent)
    assert max(len(doc["records"]) for _, doc in pub.sent) == 10
    assert up.sent_records == 95 and up.rate.rate() > 0


async def test_nothing_deleted_without_puback_and_window_is_bounded(tmp_path: Path) -> None:
    pub = FakePublisher()
    pub.hold.clear()
    q, up, _, _ = setup(tmp_path, pub)
    add(q, "a", 100)
    add(q, "b", 100)
    task = asyncio.create_task(up.run())
    async with asyncio.timeout(30):
        while pub.waiting < 3:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # time for a fourth, which the window must not send
    assert q.depth == 200 and pub.waiting == 3, "three messages in flight, none acknowledged"
    pub.hold.set()
    async with asyncio.timeout(10):
        while q.depth:
            await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert pub.max_waiting == 3


async def test_failure_resumes_from_oldest_unacknowledged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pub = FakePublisher()
    q, up, _, _ = setup(tmp_path, pub)
    add(q, "s", 50)
    pub.fail_next = 1
    await run_until(lambda: q.depth == 0, up)
    seqs = [r["seq"] for _, doc in pub.sent for r in doc["records"]]
    assert set(seqs) == set(range(1, 51))
    firsts: list[int] = []
    for s in seqs:
        if s not in firsts:
            firsts.append(s)
    assert firsts == sorted(firsts)
    assert len(seqs) - 50 <= 3 * 10, "duplicates only within the window"
    assert "telemetry upload interrupted (ConnectionError" in caplog.text
    assert up.last_error is None  # the last error since an upload last went through: none now


async def test_urgent_stream_goes_first(tmp_path: Path) -> None:
    pub = FakePublisher()
    q, up, _, _ = setup(tmp_path, pub, inflight=1)
    add(q, "bulk", 30, priority=9)
    add(q, "alerts", 5, priority=0)
    await run_until(lambda: q.depth == 0, up)
    assert pub.sent[0][1]["stream"] == "alerts"


def test_envelope_round_trip_and_compression() -> None:
    recs = [StoredRecord(n, f"e-{n}", "s", n, "mod", 5, 1.5, 2.5, b'{"x":"' + b"y" * 100 + b'"}') for n in range(1, 30)]
    payload, ctype = encode_batch("dev1", "s", recs, compress=True)
    assert ctype == CONTENT_TYPE_ZLIB and zlib.decompress(payload)
    doc = decode_batch(payload, ctype)
    assert doc["device"] == "dev1" and doc["stream"] == "s" and doc["schema"] == 1
    assert doc["records"][0] == {"id": "e-1", "seq": 1, "ts": 1.5, "received": 2.5, "priority": 5, "module": "mod",
                                 "payload": {"x": "y" * 100}}
    small, ctype2 = encode_batch("dev1", "s", recs[:1], compress=True)
    assert ctype2 == "application/json" and json.loads(small)["records"][0]["id"] == "e-1"
    assert decode_batch(payload)["records"] == doc["records"], "zlib is recognised without a content type"
    assert [r["device"] for r in records_of(payload, None)] == ["dev1"] * 29


def test_deduplicator_and_format() -> None:
    d = Deduplicator(window=2)
    assert d.first_time("a") and not d.first_time("a") and d.first_time("b") and d.first_time("c")
    assert d.first_time("a"), "forgotten beyond the window"
    rec = {"stream": "s", "seq": 1, "priority": 5, "module": "m", "id": "e-1", "ts": 0, "payload": {"k": 1}}
    assert "s seq=1" in format_record(rec, False) and json.loads(format_record(rec, True)) == rec
    assert "DUPLICATE" in format_record({**rec, "duplicate": True}, False)
