"""Request parsing and the SQLite queue (real SQLite in a temp dir; fast)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from edge_agent.telemetry.ingest import MAX_LINE, answer_line, ingest_mount_dir, ingest_socket_path, parse_request
from edge_agent.telemetry.policy import Rules, StreamRules
from edge_agent.telemetry.queue import Accepted, NewRecord, Refused, TelemetryQueue, file_limit


def rec(stream: str = "s", payload: object = 1, priority: int = 5, module: str = "m") -> NewRecord:
    return NewRecord(module, stream, priority, None, json.dumps(payload).encode())


def make_queue(
    path: Path, cap: int = 1 << 20, clock: list[float] | None = None, **streams: StreamRules
) -> TelemetryQueue:
    now = clock if clock is not None else [1000.0]
    q = TelemetryQueue(path / "t.db", cap, Rules(StreamRules(None, "drop-oldest", 0), streams), clock=lambda: now[0])
    q.open()
    return q


# ------------------------------------------------------------------ parsing


def test_parse_valid_request_attributes_the_socket_module() -> None:
    out = parse_request(b'{"stream": "pilot.stats", "priority": 2, "payload": {"a": [1, 2]}, "ts": 5.5}', "pilot")
    assert out == NewRecord("pilot", "pilot.stats", 2, 5.5, b'{"a":[1,2]}')
    assert parse_request(b'{"stream": "s", "payload": null}', "m") == NewRecord("m", "s", 5, None, b"null")


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"[1]", "JSON object"),
        (b"{", "not valid JSON"),
        (b'{"stream": "s", "payload": NaN}', "not valid JSON"),
        (b'{"stream": "Bad", "payload": 1}', "stream"),
        (b'{"stream": "' + b"a" * 65 + b'", "payload": 1}', "stream"),
        (b'{"stream": "s", "payload": 1, "priority": 10}', "priority"),
        (b'{"stream": "s", "payload": 1, "priority": true}', "priority"),
        (b'{"stream": "s", "payload": 1, "priority": "1"}', "priority"),
        (b'{"stream": "s"}', "payload"),
        (b'{"stream": "s", "payload": 1, "ts": "now"}', "ts"),
        (b'{"stream": "s", "payload": 1, "module": "other"}', "known from the socket"),
        (b'{"stream": "s", "payload": 1, "extra": 1}', "unknown field 'extra'"),
    ],
)
def test_parse_refuses_bad_requests_clearly(line: bytes, needle: str) -> None:
    out = parse_request(line, "m")
    assert isinstance(out, Refused) and out.code == "invalid" and needle in out.error


def test_parse_too_large() -> None:
    out = parse_request(b'{"stream":"s","payload":"' + b"x" * MAX_LINE + b'"}', "m")
    assert isinstance(out, Refused) and out.code == "too_large"


def test_answer_lines() -> None:
    assert json.loads(answer_line(Accepted("ab-1", 1))) == {"ok": True, "id": "ab-1"}
    assert json.loads(answer_line(Refused("disk_full", "full"))) == {"ok": False, "code": "disk_full", "error": "full"}


def test_socket_path_needs_a_valid_module_name(tmp_path: Path) -> None:
    assert ingest_socket_path(tmp_path, "pilot") == tmp_path / "ingest/pilot/telemetry.sock"
    assert ingest_mount_dir(tmp_path, "pilot") == tmp_path / "ingest/pilot"
    with pytest.raises(ValueError, match="module name"):
        ingest_socket_path(tmp_path, "../x")


# ------------------------------------------------------------------ queue


def test_sequence_and_ids_survive_reopen_and_are_never_reused(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    out = q.append([rec("a"), rec("b"), rec("a")])
    assert [o.seq for o in out if isinstance(o, Accepted)] == [1, 1, 2]
    ids = {o.id for o in out if isinstance(o, Accepted)}
    for stream in ("a", "b"):
        for r in q.read_batch(stream, 0, 100, 1 << 20):
            q.delete_sent(stream, r.n, r.n)
    assert q.depth == 0
    q.close()
    q = make_queue(tmp_path)
    again = q.append([rec("a")])
    assert isinstance(again[0], Accepted) and again[0].seq == 3 and again[0].id not in ids


def test_read_batch_in_order_with_limits(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    q.append([rec("s", {"i": i}) for i in range(10)])
    first = q.read_batch("s", 0, 4, 1 << 20)
    assert [json.loads(r.payload)["i"] for r in first] == [0, 1, 2, 3]
    nxt = q.read_batch("s", first[-1].n, 100, 20)  # byte limit, but always at least one record
    assert [json.loads(r.payload)["i"] for r in nxt] == [4, 5]
    assert q.delete_sent("s", first[0].n, first[-1].n) == 4
    assert q.depth == 6 and q.heads()["s"].head_rowid == nxt[0].n


def test_cap_evicts_and_counts_persistently(tmp_path: Path) -> None:
    q = make_queue(tmp_path, cap=64 * 1024)
    for _ in range(50):
        out = q.append([rec("bulk", "x" * 500) for _ in range(20)])
        assert all(isinstance(o, Accepted) for o in out)
    assert q.used_bytes <= 64 * 1024
    evicted = q.drops["bulk"]["evicted"]
    assert evicted == 1000 - q.depth > 0
    q.close()
    q = make_queue(tmp_path, cap=64 * 1024)
    assert q.drops["bulk"]["evicted"] == evicted and q.depth == 1000 - evicted
    assert q.integrity_check() == "ok"
    assert (tmp_path / "t.db").stat().st_size <= file_limit(64 * 1024)


def test_refuse_new_stream_at_cap(tmp_path: Path) -> None:
    q = make_queue(tmp_path, cap=64 * 1024, keep=StreamRules(None, "refuse-new", 0))
    outs = []
    for _ in range(20):
        outs += q.append([rec("keep", "k" * 1000) for _ in range(10)])
    refused = [o for o in outs if isinstance(o, Refused)]
    assert refused and {o.code for o in refused} == {"queue_full"}
    assert q.refused["keep"]["queue_full"] == len(refused)
    assert "keep" not in q.drops


def test_ttl_expiry_counted(tmp_path: Path) -> None:
    clock = [1000.0]
    q = make_queue(tmp_path, clock=clock, short=StreamRules(None, "drop-oldest", 10))
    q.append([rec("short"), rec("short"), rec("other")])
    clock[0] = 1005.0
    assert q.expire() == {}
    q.append([rec("short")])
    clock[0] = 1011.0
    assert q.expire() == {"short": 2}
    assert q.depth == 2 and q.drops["short"]["expired"] == 2
    assert q.stats()["drops"] == {"short": {"expired": 2}}


def test_file_page_limit_met_before_counted_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend records cost almost nothing: only max_page_count can stop the file from growing.
    monkeypatch.setattr("edge_agent.telemetry.queue.record_cost", lambda stream, module, n: 1)
    q = make_queue(tmp_path, cap=64 * 1024, keep=StreamRules(None, "refuse-new", 0))
    bulk_codes: set[str] = set()
    keep_codes: set[str] = set()
    for _ in range(60):
        for o in q.append([rec("keep", "k" * 200) for _ in range(10)]):
            keep_codes.add("ok" if isinstance(o, Accepted) else o.code)
        for o in q.append([rec("bulk", "b" * 200) for _ in range(20)]):
            bulk_codes.add("ok" if isinstance(o, Accepted) else o.code)
    assert q.effective_cap < 64 * 1024, "the file limit lowered the effective cap"
    assert keep_codes == {"ok", "queue_full"}
    assert "ok" in bulk_codes and q.drops["bulk"]["evicted"] > 0
    assert (tmp_path / "t.db").stat().st_size <= file_limit(64 * 1024)
    assert q.integrity_check() == "ok"
    count = q._db().execute("SELECT count(*) FROM records").fetchone()[0]
    assert count == q.depth


def test_damaged_file_is_moved_aside_and_a_new_queue_starts(tmp_path: Path) -> None:
    (tmp_path / "t.db").write_bytes(b"this is not a database" * 200)
    q = make_queue(tmp_path)
    assert isinstance(q.append([rec("s")])[0], Accepted)
    assert len(list(tmp_path.glob("t.db.corrupt-*"))) == 1


def test_check_line(tmp_path: Path) -> None:
    from edge_agent.checks import check_telemetry_queue
    from edge_agent.config import parse_config

    config = parse_config(f'[state]\ndir = "{tmp_path}"\n')
    assert "not created yet" in check_telemetry_queue(config).detail
    q = TelemetryQueue(tmp_path / "telemetry.db", 1 << 20, Rules(StreamRules(None, "drop-oldest", 0)))
    q.open()
    q.append([rec("s")])
    result = check_telemetry_queue(config)  # the agent holds the file exclusively while it runs
    assert result.outcome == "pass" and "in use by the running agent" in result.detail, result
    q.close()
    result = check_telemetry_queue(config)
    assert result.outcome == "pass" and "1 records queued" in result.detail, result
    (tmp_path / "telemetry.db").write_bytes(b"garbage" * 1000)
    assert check_telemetry_queue(config).outcome == "fail"


async def test_closing_the_socket_with_a_client_connected_logs_no_asyncio_error(tmp_path: Path) -> None:
    # Stopping the agent while a module is connected used to end in asyncio's "Exception in
    # callback ... CancelledError" (ERROR in the journal at every stop).
    import asyncio

    from edge_agent.telemetry.ingest import ModuleIngestServer

    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))

    async def submit(record: NewRecord) -> Accepted | Refused:
        return Refused("busy", "not stored in this test")

    server = ModuleIngestServer("pilot", tmp_path / "ingest" / "pilot" / "telemetry.sock", submit)
    await server.start()
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(b'{"stream":"s","payload":1}\n')
    await writer.drain()
    assert json.loads(await reader.readline())["code"] == "busy"
    await server.close()
    assert await reader.read() == b""  # the agent hung up on the client
    writer.close()
    for _ in range(5):
        await asyncio.sleep(0)
    assert errors == []


def test_deployment_version_is_stored_and_uploaded(tmp_path: Path) -> None:
    from edge_shared.batch import decode_batch, encode_batch

    q = make_queue(tmp_path)
    base = rec("s", {"i": 0})
    q.append([base, NewRecord("m", "s", 5, None, b'{"i":1}', deployment=7)])
    stored = q.read_batch("s", 0, 10, 1 << 20)
    assert [r.deployment for r in stored] == [None, 7]
    doc = decode_batch(*encode_batch("dev1", "s", stored, compress=False))
    assert "deployment" not in doc["records"][0] and doc["records"][1]["deployment"] == 7
    assert doc["records"][1]["payload"] == {"i": 1}


def test_a_queue_from_an_older_agent_gets_the_deployment_column(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    q.append([rec("s", {"old": True})])
    q.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "t.db")) as db:  # as an agent before the column wrote it
        db.execute("ALTER TABLE records DROP COLUMN deployment")
        db.commit()
    q = make_queue(tmp_path)
    q.append([NewRecord("m", "s", 5, None, b"{}", deployment=3)])
    assert [r.deployment for r in q.read_batch("s", 0, 10, 1 << 20)] == [None, 3]
