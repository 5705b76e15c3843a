"""Module -> agent ingest: one Unix stream socket per module (/work/notes/telemetry-ingest-wire.md).

The agent serves `<runtime_dir>/ingest/<module>/telemetry.sock`; the module's container gets only
its own directory `<runtime_dir>/ingest/<module>/` bind-mounted at /run/edge-agent, so the socket
is /run/edge-agent/telemetry.sock inside. The directory, not the socket file, is mounted: a file
bind mount pins the socket's inode, and after any agent restart (new socket, new inode) a running
container would be left with a dead socket. Identity is the socket: every record read from it is
attributed to that module, and a request that names a module is refused.

Requests are JSON lines (at most 256 KiB); each gets exactly one answer line, in order. A client
may pipeline: the server parses ahead (up to MAX_PENDING unanswered requests per connection), so
many records of one connection land in one group commit. The answer {"ok": true, "id": ...} is
written only after the record's transaction committed. A request may carry the module's own
idempotency key ("key"): the queue stores a key once per module (within telemetry.idempotency_window_s),
so re-sending a record that got no answer never stores it twice; the answer to a re-send is the
stored record's id with "duplicate": true.

asyncio's StreamReader.readline cannot skip an over-long line and keep going, so lines are split
by hand here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge_agent.logs import get_logger
from edge_agent.telemetry.policy import DEFAULT_PRIORITY
from edge_agent.telemetry.queue import Accepted, NewRecord, Outcome, Refused
from edge_shared.names import MODULE_NAME_RE, STREAM_NAME_RE, is_module_name, is_stream_name

log = get_logger(__name__)

MAX_LINE = 256 * 1024
MAX_PENDING = 256
ALLOWED_KEYS = {"stream", "priority", "payload", "ts", "key"}
# A module's idempotency key: printable ASCII without spaces, 1-128 characters (a UUID, a counter).
KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
CONTAINER_SOCKET_PATH = "/run/edge-agent/telemetry.sock"
CONTAINER_SOCKET_ENV = "EDGE_TELEMETRY_SOCKET"

Submit = Callable[[NewRecord], Awaitable[Outcome]]


def ingest_mount_dir(runtime_dir: Path, module: str) -> Path:
    """The host directory to bind-mount at /run/edge-agent in `module`'s container."""
    if not is_module_name(module):
        raise ValueError(f"module name {module!r} cannot have an ingest socket; expected {MODULE_NAME_RE.pattern}")
    return runtime_dir / "ingest" / module


def ingest_socket_path(runtime_dir: Path, module: str) -> Path:
    return ingest_mount_dir(runtime_dir, module) / "telemetry.sock"


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(line: bytes, module: str) -> NewRecord | Refused:
    """One request line -> a record attributed to `module`, or the refusal to send back."""
    if len(line) > MAX_LINE:
        return Refused("too_large", f"request line is {len(line)} bytes; at most {MAX_LINE} bytes per line")
    try:
        doc = json.loads(line, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        return Refused("invalid", f"request is not valid JSON: {exc}")
    if not isinstance(doc, dict):
        return Refused("invalid", "request must be a JSON object with stream, payload and optional priority, ts")
    unknown = sorted(set(doc) - ALLOWED_KEYS)
    if unknown:
        hint = "; the module is known from the socket" if "module" in unknown else ""
        return Refused("invalid", f"unknown field {unknown[0]!r}; expected stream, priority, payload, ts, key{hint}")
    stream = doc.get("stream")
    if not isinstance(stream, str) or not is_stream_name(stream):
        return Refused("invalid", f"stream: got {stream!r}; expected a name matching {STREAM_NAME_RE.pattern}")
    priority = doc.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        return Refused("invalid", f"priority: got {priority!r}; expected an integer 0 (most urgent) to 9 (bulk)")
    if "payload" not in doc:
        return Refused("invalid", "payload: required field is missing; expected any JSON value")
    ts = doc.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)):
        return Refused("invalid", f"ts: got {ts!r}; expected unix seconds as a number")
    key = doc.get("key")
    if key is not None and (not isinstance(key, str) or not KEY_RE.match(key)):
        shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:60] + "..."
        return Refused("invalid", f"key: got {shown}; expected 1-128 printable ASCII characters without spaces")
    payload = json.dumps(doc["payload"], separators=(",", ":"), ensure_ascii=False).encode()
    return NewRecord(module, stream, priority, float(ts) if ts is not None else None, payload, key,
                     wire_bytes=len(line) + 1)  # with its newline


def answer_line(outcome: Outcome) -> bytes:
    if isinstance(outcome, Accepted):
        if outcome.duplicate:
            return b'{"ok":true,"id":"' + outcome.id.encode() + b'","duplicate":true}\n'
        return b'{"ok":true,"id":"' + outcome.id.encode() + b'"}\n'
    return json.dumps({"ok": False, "code": outcome.code, "error": outcome.error}).encode() + b"\n"


class ModuleIngestServer:
    """The socket of one module."""

    def __init__(self, module: str, path: Path, submit: Submit) -> None:
        self.module = module
        self.path = path
        self.submit = submit
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # ingest/ is root-only: host users cannot reach the sockets. A container reaches its own
        # module directory through the bind mount, which needs no access to ingest/.
        ingest = self.path.parent.parent
        ingest.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(ingest, 0o700)
        self.path.parent.mkdir(exist_ok=True)
        os.chmod(self.path.parent, 0o755)  # noqa: S103 - traversed by the container's (any) uid
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # stale socket of a previous run
        self.server = await asyncio.start_unix_server(self._client, path=str(self.path))
        # Any uid inside the module's container (user namespaces, non-root images) may connect.
        os.chmod(self.path, 0o666)  # noqa: S103
        log.info(
            "telemetry ingest socket for %s at %s",
            self.module,
            self.path,
            extra={"EVENT": "telemetry.socket_open", "MODULE": self.module},
        )

    async def close(self, remove_dir: bool = False) -> None:
        """Stop serving and remove the socket. Keep the directory unless the module is gone: a
        running container's bind mount refers to this very directory, and the next agent start
        puts the new socket in it."""
        if self.server is not None:
            self.server.close()
            for task in list(self.connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if remove_dir:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        # Unbounded queue, bounded by the semaphore: the end marker always fits.
        answers: asyncio.Queue[asyncio.Future[Outcome] | None] = asyncio.Queue()
        room = asyncio.Semaphore(MAX_PENDING)
        sender = asyncio.create_task(self._answer(answers, room, writer))
        try:
            await self._read(reader, answers, room)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Stopping (close() cancels us): unanswered requests are "unknown" to the module (some may
            # have committed); it re-sends them with the same idempotency key. Not
            # re-raised: asyncio's start_unix_server callback calls task.exception() on this
            # task, which for a cancelled task logs "Exception in callback" at every stop.
            sender.cancel()
        finally:
            answers.put_nowait(None)  # after a client's EOF, still answer what it sent
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            writer.close()
            self.connections.discard(task)

    async def _read(
        self,
        reader: asyncio.StreamReader,
        answers: asyncio.Queue[asyncio.Future[Outcome] | None],
        room: asyncio.Semaphore,
    ) -> None:
        buf = bytearray()
        skipping = 0  # bytes of an over-long line being skipped
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            buf += chunk
            while True:
                end = buf.find(b"\n")
                if end < 0:
                    if skipping or len(buf) > MAX_LINE:
                        skipping += len(buf)
                        buf.clear()
                    break
                line = bytes(buf[:end])
                del buf[: end + 1]
                await room.acquire()
                if skipping:
                    size = skipping + len(line)
                    skipping = 0
                    error = f"request line is {size} bytes or more; at most {MAX_LINE} bytes per line"
                    answers.put_nowait(_done(Refused("too_large", error)))
                    continue
                if not line.strip():
                    room.release()
                    continue
                parsed = parse_request(line, self.module)
                if isinstance(parsed, Refused):
                    answers.put_nowait(_done(parsed))
                else:
                    answers.put_nowait(asyncio.ensure_future(self.submit(parsed)))

    async def _answer(
        self,
        answers: asyncio.Queue[asyncio.Future[Outcome] | None],
        room: asyncio.Semaphore,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            while (fut := await answers.get()) is not None:
                try:
                    outcome = await fut
                except Exception as exc:
                    log.exception(
                        "telemetry ingest failed", extra={"EVENT": "telemetry.ingest_error", "MODULE": self.module}
                    )
                    outcome = Refused("unavailable", f"telemetry queue unavailable: {type(exc).__name__}")
                writer.write(answer_line(outcome))
                room.release()
                if answers.empty():
                    await writer.drain()
        finally:
            # The client is gone (or we stop): never leave the reader waiting for room.
            for _ in range(MAX_PENDING):
                room.release()


def _done(outcome: Outcome) -> asyncio.Future[Outcome]:
    fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    fut.set_result(outcome)
    return fut
