"""Telemetry client against an in-test Unix socket server speaking the ingest wire format."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_pilot.telemetry import TelemetryClient

from edge_shared.names import is_stream_name


class IngestServer:
    """Validates each line like the agent does and answers one line per request, in order."""

    def __init__(self, path: Path, drop_first: int = 0, answer: str = "ok"):
        self.path = str(path)
        self.records: list[dict] = []
        self.dropped_keys: list[str | None] = []
        self.drop_first = drop_first  # close the connection without answering this many times
        self.answer = answer
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn, conn.makefile("rb") as rf:
                for line in rf:
                    if self.drop_first > 0:
                        self.drop_first -= 1
                        self.dropped_keys.append(json.loads(line).get("key"))
                        break  # no answer: the client must send it again (same key)
                    try:
                        rec = json.loads(line)
                        ok = (
                            isinstance(rec, dict)
                            and is_stream_name(rec.get("stream", ""))
                            and rec.get("priority", 5) in range(10)
                            and "payload" in rec
                            and len(line) <= 256 * 1024
                        )
                    except json.JSONDecodeError:
                        ok = False
                    if not ok:
                        conn.sendall(b'{"ok": false, "code": "invalid", "error": "bad record"}\n')
                    elif self.answer != "ok":
                        conn.sendall(json.dumps({"ok": False, "code": self.answer, "error": "x"}).encode() + b"\n")
                    else:
                        self.records.append(rec)
                        conn.sendall(json.dumps({"ok": True, "id": str(len(self.records))}).encode() + b"\n")

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IngestServer]:
    s = IngestServer(tmp_path / "telemetry.sock")
    yield s
    s.close()


def wait_for(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_records_arrive_in_wire_format(server: IngestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_TELEMETRY_SOCKET", server.path)
    c = TelemetryClient()
    for i in range(5):
        assert c.publish({"fps": 20.0, "i": i})
    assert wait_for(lambda: c.counters.sent == 5)
    c.close()
    assert [r["payload"]["i"] for r in server.records] == list(range(5))
    r = server.records[0]
    assert r["stream"] == "pilot.stats" and r["priority"] == 5 and isinstance(r["ts"], float)
    keys = [rec["key"] for rec in server.records]
    assert len(set(keys)) == 5 and all(re.fullmatch(r"[0-9a-f]{12}-[0-9]+", k) for k in keys)


def test_no_answer_is_retried_with_the_same_key(tmp_path: Path) -> None:
    s = IngestServer(tmp_path / "t.sock", drop_first=1)
    c = TelemetryClient(s.path)
    c.publish({"n": 1})
    assert wait_for(lambda: c.counters.sent == 1)
    c.close()
    s.close()
    assert len(s.records) == 1
    assert s.dropped_keys == [s.records[0]["key"]], "the re-send carries the unanswered record's key"


def test_rejection_is_counted_not_retried_forever(tmp_path: Path) -> None:
    s = IngestServer(tmp_path / "t.sock", answer="invalid")
    c = TelemetryClient(s.path)
    c.publish({"n": 1})
    assert wait_for(lambda: c.counters.rejected == 1)
    c.close()
    s.close()


def test_full_buffer_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    # a server that accepts but never answers: the sender thread is stuck on its first record
    path = tmp_path / "slow.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    c = TelemetryClient(str(path), max_queue=4, timeout=5.0)
    t0 = time.monotonic()
    results = [c.publish({"n": i}) for i in range(50)]
    assert time.monotonic() - t0 < 0.1
    assert results.count(False) >= 40 and c.counters.dropped >= 40
    c._stop.set()
    srv.close()


def test_without_socket_the_stats_line_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("EDGE_TELEMETRY_SOCKET", raising=False)
    caplog.set_level(logging.INFO, logger="edge_pilot.telemetry")
    c = TelemetryClient()
    c.publish({"fps": 19.9})
    assert wait_for(lambda: c.counters.logged == 1)
    c.close()
    assert any('"fps":19.9' in r.getMessage() for r in caplog.records)
