"""Local control socket: how the `edge-agent` CLI talks to the running daemon.

A Unix stream socket (mode 0600, in the state directory) speaking one JSON object per line
(documented for operators in docs/operations.md, "The control socket"):
request ``{"cmd": "status", "args": {}}``, answer ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "..."}``. Components register the commands they serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge_agent.logs import get_logger

log = get_logger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST = 64 * 1024
CONTROL_SOCKET_NAME = "control.sock"


class CommandError(Exception):
    """An error whose message is shown to the CLI user as is."""


class ControlServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handlers: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None

    def register(self, cmd: str, handler: Handler) -> None:
        self.handlers[cmd] = handler

    async def start(self) -> None:
        """Listen now (before READY=1), so the CLI can talk to the agent as soon as it is ready."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old_umask = os.umask(0o077)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)

    async def serve(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        try:
            async with self._server:
                await self._server.serve_forever()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def close(self) -> None:
        """Stop listening and remove the socket (also when serve() never got to run)."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(await self._answer(line), default=str).encode() + b"\n")
                await writer.drain()
        except (ValueError, ConnectionError):  # over-long line or client gone
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            cmd = request["cmd"]
            args = request.get("args") or {}
            if not isinstance(cmd, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": 'bad request: expected {"cmd": str, "args": object}'}
        handler = self.handlers.get(cmd)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}; known: {', '.join(sorted(self.handlers))}"}
        try:
            return {"ok": True, "result": await handler(args)}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control command %s failed", cmd, extra={"EVENT": "control.error"})
            return {"ok": False, "error": f"{cmd} failed: {type(exc).__name__}: {exc}"}


class AgentNotRunning(Exception):
    pass


def exchange_line(path: Path, request: Any, timeout: float = 10.0) -> Any:
    """One JSON line to a Unix stream socket, one JSON line back (the control socket's and the
    telemetry ingest socket's framing). OSError when the socket cannot be reached or answers
    nothing; ValueError when the answer is not JSON."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def call(path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Blocking client used by the CLI. Raises AgentNotRunning or CommandError."""
    try:
        answer = exchange_line(path, {"cmd": cmd, "args": args or {}}, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentNotRunning(f"the agent is not running (no answer on {path})") from exc
    except PermissionError as exc:
        raise AgentNotRunning(f"permission denied on {path}: run as root or the agent's user") from exc
    except TimeoutError as exc:
        raise AgentNotRunning(f"the agent did not answer on {path} within {timeout:.0f} s") from exc
    if not answer.get("ok"):
        raise CommandError(answer.get("error", "unknown error"))
    return answer.get("result")
