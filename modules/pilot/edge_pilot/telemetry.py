"""Client of the agent's telemetry ingest socket (see docs/pilot.md and the wire contract).

One JSON object per line, one response line per request (``{"ok": true, "id": ...}`` once
durable). Sending runs in its own thread behind a bounded queue: the drive loop only does a
non-blocking put, and what does not fit is dropped and counted. Without EDGE_TELEMETRY_SOCKET
(or when the socket is absent) each record is logged as a stats line instead.

Records are held up to `flush_s` and then sent together, pipelined (every line, then every
answer): the agent stores them in one group commit, one fsync for all instead of one each (SD
card wear, docs/telemetry.md "Storage writes"). A record at `send_at_once_priority` or more
urgent is sent at once, with everything held; so is everything held when the client closes. A
power cut loses what is held (up to flush_s), as it loses what was never sent.

Every record carries an idempotency key (this client's random id and a counter): a record that got
no answer (the agent restarted) is sent again with the same key, and the agent stores it once
even if the first send had been committed (docs/telemetry.md)."""

from __future__ import annotations

import itertools
import json
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .logs import fields, get_logger

log = get_logger(__name__)
MAX_LINE = 256 * 1024


def flush_due(held: int, oldest_age_s: float, flush_s: float, max_held: int, urgent: bool, closing: bool) -> bool:
    """Whether the records held now go to the agent. `urgent`: one of them is at the
    send-at-once priority."""
    if held <= 0:
        return False
    return closing or urgent or held >= max_held or oldest_age_s >= flush_s


def hold_wait_s(held: int, oldest_age_s: float, flush_s: float, idle_wait_s: float = 0.2) -> float:
    """How long the sender may wait for the next record before it looks at flush_due again."""
    if held <= 0:
        return idle_wait_s
    return max(0.0, min(idle_wait_s, flush_s - oldest_age_s))


@dataclass
class TelemetryCounters:
    sent: int = 0  # acknowledged ok by the agent
    rejected: int = 0  # answered ok=false
    dropped: int = 0  # queue full, too large, or given up after retries
    logged: int = 0  # written to the log because no socket


class TelemetryClient:
    def __init__(self, socket_path: str | None = None, stream: str = "pilot.stats", priority: int = 5,
                 max_queue: int = 64, timeout: float = 2.0, retries: int = 2, flush_s: float = 0.0,
                 send_at_once_priority: int = 2, clock: Callable[[], float] = time.monotonic):
        self.path = socket_path if socket_path is not None else os.environ.get("EDGE_TELEMETRY_SOCKET")
        self.stream, self.priority = stream, priority
        self.flush_s, self.send_at_once_priority, self.clock = flush_s, send_at_once_priority, clock
        self.max_held = max_queue  # held records and queued ones: at most twice max_queue in memory
        self.q: queue.Queue[dict[str, Any]] = queue.Queue(max_queue)
        self.timeout, self.retries = timeout, retries
        self.counters = TelemetryCounters()
        self._key_prefix = secrets.token_hex(6)  # unique per client: keys never repeat across restarts
        self._numbers = itertools.count(1)
        self._sock: socket.socket | None = None
        self._connected_once = False  # an agent answered here: a missing socket means it restarts
        self._rfile: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()

    def publish(self, payload: Any, stream: str | None = None, priority: int | None = None) -> bool:
        """Non-blocking. Returns False (and counts a drop) when the buffer is full."""
        rec = {"stream": stream or self.stream, "priority": self.priority if priority is None else priority,
               "payload": payload, "ts": round(time.time(), 3), "key": f"{self._key_prefix}-{next(self._numbers)}"}
        try:
            self.q.put_nowait(rec)
            return True
        except queue.Full:
            self.counters.dropped += 1
            return False

    def _connect(self) -> bool:
        if not self.path or not os.path.exists(self.path):
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            log.warning("telemetry socket %s: %s", self.path, e, extra=fields("telemetry_connect_failed"))
            return False
        self._sock, self._rfile = s, s.makefile("rb")
        self._connected_once = True
        return True

    def _disconnect(self) -> None:
        for c in (self._rfile, self._sock):
            try:
                if c:
                    c.close()
            except OSError:
                pass
        self._sock = self._rfile = None

    def _send_group(self, recs: list[dict[str, Any]]) -> list[str]:
        """Send every record, then read every answer (pipelined: the agent commits them together).
        One result per record: 'ok' | 'rejected' | 'retry' (no answer: unknown, sent again with the
        same key) | 'too_large' | 'nosocket'."""
        results = ["retry"] * len(recs)
        lines: list[tuple[int, bytes]] = []
        for i, rec in enumerate(recs):
            line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
            if len(line) > MAX_LINE:
                results[i] = "too_large"
            else:
                lines.append((i, line))
        if not lines:
            return results
        if self._sock is None and not self._connect():
            return ["nosocket" if r == "retry" else r for r in results]
        assert self._sock is not None
        try:
            self._sock.sendall(b"".join(line for _, line in lines))
        except OSError:
            self._disconnect()
            return results
        for i, _ in lines:
            outcome = self._read_answer()
            if outcome is None:  # the connection broke: the rest is unknown
                self._disconnect()
                break
            results[i] = outcome
        return results

    def _read_answer(self) -> str | None:
        try:
            resp = self._rfile.readline(MAX_LINE)
            ans = json.loads(resp) if resp else None
        except (OSError, json.JSONDecodeError):
            return None
        if not isinstance(ans, dict):
            return None
        if ans.get("ok") is True:
            return "ok"
        code = ans.get("code")
        log.warning("telemetry rejected: %s %s", code, ans.get("error"), extra=fields("telemetry_rejected"))
        return "retry" if code in ("unavailable", "queue_full", "disk_full") else "rejected"

    def _run(self) -> None:
        held: list[dict[str, Any]] = []
        held_since = 0.0
        urgent = False
        retry_at = 0.0  # after a delivery that left records unanswered: not again before this
        while True:
            closing = self._stop.is_set()
            if closing and self.q.empty() and not held:
                return
            now = self.clock()
            backing_off = now < retry_at
            wait = 0.2 if backing_off else hold_wait_s(len(held), now - held_since if held else 0.0, self.flush_s)
            try:
                rec = self.q.get(timeout=0 if closing else wait)
            except queue.Empty:
                rec = None
            if rec is not None:
                if not held:
                    held_since = self.clock()
                held.append(rec)
                urgent = urgent or rec["priority"] <= self.send_at_once_priority
                if len(held) > self.max_held:  # the agent has not taken any for a while
                    self.counters.dropped += 1
                    held.pop(0)
            now = self.clock()
            # While closing, everything queued joins the last group.
            closing = self._stop.is_set() and self.q.empty()
            due = flush_due(len(held), now - held_since if held else 0.0, self.flush_s, self.max_held, urgent, closing)
            if due and (closing or now >= retry_at):
                held, urgent = self._deliver(held), False
                if closing:
                    self.counters.dropped += len(held)
                    return
                if held:  # the agent restarts or is full: keep them (same keys) for a later try
                    held_since = self.clock()
                    retry_at = held_since + max(self.flush_s, 1.0)

    def _deliver(self, group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send a group; returns the records that got no answer (to be sent again, same keys)."""
        pending = group
        for attempt in range(self.retries + 1):
            again: list[dict[str, Any]] = []
            for rec, result in zip(pending, self._send_group(pending), strict=True):
                if result == "ok":
                    self.counters.sent += 1
                elif result == "nosocket" and not self._connected_once:
                    self.counters.logged += 1  # no agent here: the log is where the stats go
                    log.info("stats %s %s", rec["stream"], json.dumps(rec["payload"], separators=(",", ":")),
                             extra=fields("stats"))
                elif result == "rejected":
                    self.counters.rejected += 1
                elif result == "too_large":
                    self.counters.dropped += 1
                else:  # no answer, or the socket of an agent that is restarting is not back yet
                    again.append(rec)
            pending = again
            if not pending:
                break
            if attempt < self.retries:
                self._stop.wait(0.1 * (attempt + 1))
        return pending

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._disconnect()
