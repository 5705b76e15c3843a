"""Telemetry client against an in-test Unix socket server speaking the ingest wire format."""

from __future__ import annotations

import contextlib
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


class LineServer:
    """A Unix socket server on its own thread; subclasses set their state, then call this
    __init__, and answer each connection in `handle`."""

    def __init__(self, path: Path):
        self.path = str(path)
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
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


class IngestServer(LineServer):
    """Validates each line like the agent does and answers one line per request, in order."""

    def __init__(self, path: Path, drop_first: int = 0, answer: str = "ok"):
        self.records: list[dict] = []
        self.dropped_keys: list[str | None] = []
        self.drop_first = drop_first  # close the connection without answering this many times
        self.answer = answer
        self.conns: list[socket.socket] = []
        self.seen = 0  # request lines read
        super().__init__(path)

    def handle(self, conn: socket.socket) -> None:
        self.conns.append(conn)
        with conn, conn.makefile("rb") as rf:
            for line in rf:
                self.seen += 1
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
        super().close()
        for conn in self.conns:  # like an agent that stops: its connections end too
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
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
    assert time.monotonic() - t0 < 2.5  # none waited for the stuck sender (it gives up after 5 s)
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


# ------------------------------------------------------------------ held records, sent together


def test_flush_due_decision() -> None:
    from edge_pilot.telemetry import flush_due

    # nothing held: never
    assert not flush_due(0, 99.0, 10.0, 64, urgent=True, closing=True)
    # held, young, not urgent, not full, not closing: keep holding
    assert not flush_due(3, 9.99, 10.0, 64, urgent=False, closing=False)
    # each reason alone sends
    assert flush_due(3, 10.0, 10.0, 64, urgent=False, closing=False)
    assert flush_due(64, 0.0, 10.0, 64, urgent=False, closing=False)
    assert flush_due(1, 0.0, 10.0, 64, urgent=True, closing=False)
    assert flush_due(1, 0.0, 10.0, 64, urgent=False, closing=True)
    # flush_s 0: every record at once
    assert flush_due(1, 0.0, 0.0, 64, urgent=False, closing=False)


def test_hold_wait_decision() -> None:
    from edge_pilot.telemetry import hold_wait_s

    assert hold_wait_s(0, 0.0, 10.0) == 0.2
    assert hold_wait_s(2, 9.95, 10.0) == pytest.approx(0.05)
    assert hold_wait_s(2, 12.0, 10.0) == 0.0
    assert hold_wait_s(2, 1.0, 10.0) == 0.2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class GroupServer(LineServer):
    """Answers nothing until it has `group` request lines (or EOF): a client that waits for each
    answer before sending the next line gets none. Records every line, then answers all in order."""

    def __init__(self, path: Path, group: int):
        self.group = group
        self.lines: list[dict] = []
        super().__init__(path)

    def handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as rf:
            waiting: list[dict] = []
            for line in rf:
                waiting.append(json.loads(line))
                if len(waiting) < self.group:
                    continue
                for rec in waiting:
                    self.lines.append(rec)
                    conn.sendall(json.dumps({"ok": True, "id": str(len(self.lines))}).encode() + b"\n")
                waiting = []

    def close(self) -> None:
        super().close()
        self.thread.join(2)


def test_records_are_held_for_flush_s_then_sent_together(tmp_path: Path) -> None:
    s = GroupServer(tmp_path / "g.sock", group=5)
    clock = FakeClock()
    c = TelemetryClient(s.path, flush_s=10.0, clock=clock, timeout=5.0)
    for i in range(5):
        assert c.publish({"i": i})
    assert wait_for(lambda: c.q.empty())
    time.sleep(0.3)  # a sender that did not hold them would have sent one by now (the server takes any line)
    assert s.lines == [] and c.counters.sent == 0
    clock.now += 10.0
    # Pipelined: all five lines before any answer (this server answers only once it has five).
    assert wait_for(lambda: c.counters.sent == 5)
    c.close()
    s.close()
    assert [r["payload"]["i"] for r in s.lines] == list(range(5))


def test_an_urgent_record_is_sent_at_once_with_the_held_ones(tmp_path: Path) -> None:
    s = GroupServer(tmp_path / "g.sock", group=3)
    c = TelemetryClient(s.path, flush_s=3600.0, clock=FakeClock(), send_at_once_priority=2)
    c.publish({"i": 0})
    c.publish({"i": 1})
    c.publish({"model": "m"}, stream="module.artifacts", priority=2)
    assert wait_for(lambda: c.counters.sent == 3)
    c.close()
    s.close()
    assert [r["stream"] for r in s.lines] == ["pilot.stats", "pilot.stats", "module.artifacts"]


def test_close_sends_what_is_held(tmp_path: Path) -> None:
    s = GroupServer(tmp_path / "g.sock", group=4)
    c = TelemetryClient(s.path, flush_s=3600.0, clock=FakeClock())
    for i in range(4):
        c.publish({"i": i})
    c.close(timeout=5.0)
    s.close()
    assert c.counters.sent == 4 and len(s.lines) == 4


def test_held_records_wait_for_a_restarting_agent(tmp_path: Path) -> None:
    """Once an agent answered, a socket gone (the agent restarts) keeps the records for the next
    flush, with their keys, instead of logging them away."""
    path = tmp_path / "t.sock"
    s = IngestServer(path)
    clock = FakeClock()
    c = TelemetryClient(str(path), flush_s=5.0, clock=clock)
    c.publish({"n": 0})
    assert wait_for(lambda: c.q.empty())  # taken and held (its hold starts on the fake clock)
    clock.now += 5.0
    assert wait_for(lambda: c.counters.sent == 1)
    s.close()
    path.unlink()
    c.publish({"n": 1})
    c.publish({"n": 2})
    assert wait_for(lambda: c.q.empty())
    clock.now += 5.0
    time.sleep(0.5)  # the retries (0.1 s, 0.2 s) are over: the records are held again
    assert c.counters.logged == 0 and c.counters.dropped == 0
    s2 = IngestServer(path)
    clock.now += 5.0
    assert wait_for(lambda: c.counters.sent == 3)
    c.close()
    s2.close()
    assert [r["payload"]["n"] for r in s2.records] == [1, 2]


def test_a_full_agent_gets_the_held_records_again_later_not_at_once(tmp_path: Path) -> None:
    """queue_full / disk_full: the records stay held (same keys) and are tried again after flush_s,
    not in a tight loop and not dropped."""
    s = IngestServer(tmp_path / "t.sock", answer="queue_full")
    clock = FakeClock()
    c = TelemetryClient(s.path, flush_s=5.0, clock=clock)
    c.publish({"n": 1})
    c.publish({"n": 2})
    assert wait_for(lambda: c.q.empty())
    clock.now += 5.0
    assert wait_for(lambda: s.seen == 6)  # the group, and its two quick retries
    time.sleep(0.5)  # a client without the pause would have sent it again by now
    assert s.seen == 6 and c.counters.dropped == 0 and c.counters.sent == 0
    s.answer = "ok"
    clock.now += 5.0
    assert wait_for(lambda: c.counters.sent == 2)
    c.close()
    s.close()
    assert [r["payload"]["n"] for r in s.records] == [1, 2]
