"""Client of the agent's telemetry ingest socket (see docs/pilot.md and the wire contract).

One JSON object per line, one response line per request (``{"ok": true, "id": ...}`` once
durable). Sending runs in its own thread behind a bounded queue: the drive loop only does a
non-blocking put, and what does not fit is dropped and counted. Without EDGE_TELEMETRY_SOCKET
(or when the socket is absent) each record is logged as a stats line instead.

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
from dataclasses import dataclass
from typing import Any

from .logs import fields, get_logger

log = get_logger(__name__)
MAX_LINE = 256 * 1024


@dataclass
class TelemetryCounters:
    sent: int = 0  # acknowledged ok by the agent
    rejected: int = 0  # answered ok=false
    dropped: int = 0  # queue full, too large, or given up after retries
    logged: int = 0  # written to the log because no socket


class TelemetryClient:
    def __init__(self, socket_path: str | None = None, stream: str = "pilot.stats", priority: int = 5,
                 max_queue: int = 64, timeout: float = 2.0, retries: int = 2):
        self.path = socket_path if socket_path is not None else os.environ.get("EDGE_TELEMETRY_SOCKET")
        self.stream, self.priority = stream, priority
        self.q: queue.Queue[dict[str, Any]] = queue.Queue(max_queue)
        self.timeout, self.retries = timeout, retries
        self.counters = TelemetryCounters()
        self._key_prefix = secrets.token_hex(6)  # unique per client: keys never repeat across restarts
        self._numbers = itertools.count(1)
        self._sock: socket.socket | None = None
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
        return True

    def _disconnect(self) -> None:
        for c in (self._rfile, self._sock):
            try:
                if c:
                    c.close()
            except OSError:
                pass
        self._sock = self._rfile = None

    def _send_one(self, rec: dict[str, Any]) -> str:
        """'ok' | 'rejected' | 'retry' (no answer: unknown; sent again with the same key)."""
        line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_LINE:
            return "too_large"
        if self._sock is None and not self._connect():
            return "nosocket"
        assert self._sock is not None
        try:
            self._sock.sendall(line)
            resp = self._rfile.readline(MAX_LINE)
        except OSError:
            self._disconnect()
            return "retry"
        if not resp:
            self._disconnect()
            return "retry"
        try:
            ans = json.loads(resp)
        except json.JSONDecodeError:
            self._disconnect()
            return "retry"
        if ans.get("ok") is True:
            return "ok"
        code = ans.get("code")
        log.warning("telemetry rejected: %s %s", code, ans.get("error"), extra=fields("telemetry_rejected"))
        return "retry" if code in ("unavailable", "queue_full", "disk_full") else "rejected"

    def _run(self) -> None:
        while not self._stop.is_set() or not self.q.empty():
            try:
                rec = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            for attempt in range(self.retries + 1):
                result = self._send_one(rec)
                if result == "ok":
                    self.counters.sent += 1
                    break
                if result == "nosocket":
                    self.counters.logged += 1
                    log.info("stats %s %s", rec["stream"], json.dumps(rec["payload"], separators=(",", ":")),
                             extra=fields("stats"))
                    break
                if result == "rejected":
                    self.counters.rejected += 1
                    break
                if result == "too_large":
                    self.counters.dropped += 1
                    break
                if attempt == self.retries:
                    self.counters.dropped += 1
                else:
                    self._stop.wait(0.1 * (attempt + 1))

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._disconnect()
