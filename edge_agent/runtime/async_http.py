"""A small asyncio HTTP/1.1 client for the podman API socket, stdlib only.

Why by hand: the agent talks HTTP to exactly one peer, podman's Go server on a local socket, and
needs a handful of requests, a JSON body, per-request timeouts and one long streamed response
(`/events`). podman-py did this with requests: blocking, so every call needed a thread, and its
imports (requests, urllib3, charset_normalizer, idna, paramiko, pynacl, bcrypt) cost the agent
about 7 MB of RSS. The asyncio clients cost more than this file: RSS on top of `import asyncio`
measured with bench/runtime_import_rss.py, aiohttp 14.4 MB, httpx 5.4 MB (and five more
packages), against about 1.6 MB for the whole podman adapter with this client. What is written
here is the part of HTTP/1.1 that podman uses, with hard limits on everything it reads.

One connection per request (`Connection: close`): connecting to a Unix socket costs microseconds,
and no pool means no stale-connection retries and no state shared between concurrent calls.

Responses: status line and headers (bounded in bytes and count), body by Content-Length, by
`Transfer-Encoding: chunked`, or until the server closes. `request()` buffers the body (at most
`max_body_bytes`); `stream()` hands the body out as it arrives (`chunks()`, `lines()`) and closes
the socket when its block exits, also on cancellation.

Errors are `HTTPClientError` subclasses with operator-readable messages that name the API URL:
`ApiUnreachable` (socket missing, connection refused), `ProtocolError` (malformed or truncated
answer, a limit exceeded), `RequestTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.api_url import ApiAddress, parse_api_url

MAX_HEADER_BYTES = 64 * 1024  # status line + all header lines (also the longest single line)
MAX_HEADERS = 100
MAX_BODY_BYTES = 64 * 1024 * 1024  # a buffered body; podman's largest answers are inspect documents
MAX_LINE_BYTES = 1024 * 1024  # one line of a streamed body (an event, a pull progress line)
MAX_CHUNK_SIZE_LINE = 1024  # "hex-size[;extensions]" of one chunk
READ_SIZE = 64 * 1024

_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([0-9]{3})(?: (.*))?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX = re.compile(r"[0-9A-Fa-f]{1,15}")
_NO_BODY_STATUS = (204, 304)

QueryValue = str | int | float | bool
Params = Mapping[str, QueryValue]


class HTTPClientError(Exception):
    """A request failed below the level of an HTTP status: the message is fit for an operator."""


class ApiUnreachable(HTTPClientError):
    """The socket is missing, refused the connection, or the connection broke while sending."""


class ProtocolError(HTTPClientError):
    """The answer is not HTTP/1.1 we accept: malformed, truncated, or over a limit."""


class RequestTimeout(HTTPClientError):
    """No complete answer within the request's timeout."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body)


class StreamedResponse:
    """Status and headers of a response whose body is read as it arrives."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str], body: _BodyReader) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._body = body

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (framing removed); ends when the body is complete."""
        while (data := await self._body.next_piece()) is not None:
            yield data

    async def read(self, limit: int = MAX_BODY_BYTES) -> bytes:
        """The rest of the body, at most `limit` bytes (ProtocolError beyond)."""
        return await self._body.read_all(limit)

    async def lines(self, max_line: int = MAX_LINE_BYTES) -> AsyncIterator[bytes]:
        """The body split at LF (CR LF tolerated), without the line ends; a last line without LF
        is yielded too. A line over `max_line` bytes is a ProtocolError."""
        pending = bytearray()
        async for data in self.chunks():
            pending += data
            while (end := pending.find(b"\n")) != -1:
                line = bytes(pending[:end])
                del pending[: end + 1]
                yield line.removesuffix(b"\r")
            if len(pending) > max_line:
                raise self._body.error(f"a line of the response body is longer than {max_line} bytes")
        if pending:
            yield bytes(pending).removesuffix(b"\r")


class _BodyReader:
    """Removes the body's framing: Content-Length, chunked, or until the connection closes."""

    def __init__(self, reader: asyncio.StreamReader, where: str, *, length: int | None, chunked: bool) -> None:
        self.reader = reader
        self.where = where
        self.chunked = chunked
        self.remaining = length  # Content-Length left, or None
        self.chunk_left = 0
        self.done = length == 0

    def error(self, what: str) -> ProtocolError:
        return ProtocolError(f"{self.where}: {what}")

    async def next_piece(self) -> bytes | None:
        if self.done:
            return None
        if self.chunked:
            return await self._next_chunked()
        if self.remaining is None:  # delimited by the server closing
            data = await self.reader.read(READ_SIZE)
            if not data:
                self.done = True
                return None
            return data
        data = await self.reader.read(min(self.remaining, READ_SIZE))
        if not data:
            raise self.error(f"truncated body: the connection closed with {self.remaining} bytes still to come")
        self.remaining -= len(data)
        self.done = self.remaining == 0
        return data

    async def _next_chunked(self) -> bytes | None:
        if self.chunk_left == 0:
            size = await self._chunk_size()
            if size == 0:
                await self._trailers()
                self.done = True
                return None
            self.chunk_left = size
        data = await self.reader.read(min(self.chunk_left, READ_SIZE))
        if not data:
            raise self.error("truncated body: the connection closed in the middle of a chunk")
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            end = await self._read_line("end of a chunk", MAX_CHUNK_SIZE_LINE)
            if end:
                raise self.error(f"malformed chunked body: {end[:40]!r} after a chunk's data instead of CRLF")
        return data

    async def _chunk_size(self) -> int:
        line = await self._read_line("chunk size", MAX_CHUNK_SIZE_LINE)
        size_text = line.split(b";", 1)[0].strip().decode("latin-1")
        if not _HEX.fullmatch(size_text):
            raise self.error(f"malformed chunk size line {line[:40]!r}")
        return int(size_text, 16)

    async def _trailers(self) -> None:
        total = 0
        while line := await self._read_line("trailer", MAX_HEADER_BYTES):
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise self.error(f"trailers longer than {MAX_HEADER_BYTES} bytes")

    async def _read_line(self, what: str, limit: int) -> bytes:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise self.error(f"truncated body: the connection closed while reading a {what}") from None
        except asyncio.LimitOverrunError:
            raise self.error(f"{what} line longer than {limit} bytes") from None
        if len(line) > limit + 2:
            raise self.error(f"{what} line longer than {limit} bytes")
        return line.removesuffix(b"\n").removesuffix(b"\r")

    async def read_all(self, limit: int) -> bytes:
        if self.remaining is not None and self.remaining > limit:
            raise self.error(f"response body of {self.remaining} bytes is over the {limit} byte limit")
        body = bytearray()
        while (data := await self.next_piece()) is not None:
            body += data
            if len(body) > limit:
                raise self.error(f"response body is over the {limit} byte limit")
        return bytes(body)


class AsyncHTTPClient:
    """HTTP/1.1 requests to one API (a `[podman] socket` URL, see unix_http.parse_api_url)."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "podman API",
        max_body_bytes: int = MAX_BODY_BYTES,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.address: ApiAddress = parse_api_url(url)
        self.url = url
        self.name = name
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers

    def _where(self) -> str:
        return f"{self.name} at {self.url}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        timeout: float | None = 60.0,
    ) -> Response:
        """One request; the whole exchange (connect to last body byte) must fit in `timeout` s."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._send(method, path, params, json_body)
                try:
                    status, reason, headers, body = await self._read_head(reader, method)
                    data = await body.read_all(self.max_body_bytes)
                finally:
                    await _close(writer)
        except TimeoutError:
            raise RequestTimeout(f"{self._where()}: no answer to {method} {path} within {timeout:g} s") from None
        return Response(status, reason, headers, data)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        timeout: float | None = 60.0,
    ) -> AsyncIterator[StreamedResponse]:
        """A request whose body is read inside the block: `timeout` covers the exchange up to the
        end of the headers only. The connection is closed when the block exits."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._send(method, path, params, json_body)
                try:
                    status, reason, headers, body = await self._read_head(reader, method)
                except BaseException:
                    await _close(writer)
                    raise
        except TimeoutError:
            raise RequestTimeout(f"{self._where()}: no answer to {method} {path} within {timeout:g} s") from None
        try:
            yield StreamedResponse(status, reason, headers, body)
        finally:
            await _close(writer)

    # ------------------------------------------------------------------ the wire

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        limit = self.max_header_bytes + 2
        try:
            if self.address.unix_path is not None:
                return await asyncio.open_unix_connection(self.address.unix_path, limit=limit)
            return await asyncio.open_connection(self.address.host, self.address.port, limit=limit)
        except OSError as exc:
            raise ApiUnreachable(f"{self._where()} unreachable: {exc}") from exc

    async def _send(
        self, method: str, path: str, params: Params | None, json_body: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            raise ValueError(f"request path must start with / and hold no spaces or line ends: {path!r}")
        target = path
        if params:
            target += "?" + urllib.parse.urlencode({k: _query_value(v) for k, v in params.items()})
        host = "localhost" if self.address.unix_path is not None else f"{self.address.host}:{self.address.port}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: edge-agent", "Connection: close"]
        body = b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            lines.append("Content-Type: application/json")
        if json_body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reader, writer = await self._connect()
        try:
            writer.write(head + body)
            await writer.drain()
        except OSError as exc:
            await _close(writer)
            raise ApiUnreachable(f"{self._where()} unreachable: sending {method} {path}: {exc}") from exc
        except BaseException:
            await _close(writer)
            raise
        return reader, writer

    async def _read_head(
        self, reader: asyncio.StreamReader, method: str
    ) -> tuple[int, str, dict[str, str], _BodyReader]:
        where = self._where()
        budget = [self.max_header_bytes]
        while True:
            status_line = await self._head_line(reader, budget, "status line")
            match = _STATUS_LINE.fullmatch(status_line)
            if match is None:
                raise ProtocolError(f"{where}: malformed status line {status_line[:80]!r}")
            status = int(match.group(1))
            headers = await self._headers(reader, budget)
            if status < 100 or status == 101:
                raise ProtocolError(f"{where}: unexpected status {status}")
            if status >= 200:
                break  # 1xx other than 101 are interim answers: the real one follows
        reason = match.group(2) or ""
        no_body = method == "HEAD" or status in _NO_BODY_STATUS
        length: int | None = 0 if no_body else self._content_length(headers)
        chunked = False
        if not no_body and "transfer-encoding" in headers:
            codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
            if codings != ["chunked"]:
                raise ProtocolError(f"{where}: unsupported Transfer-Encoding {headers['transfer-encoding']!r}")
            chunked, length = True, None  # chunked framing wins over any Content-Length
        return status, reason, headers, _BodyReader(reader, where, length=length, chunked=chunked)

    def _content_length(self, headers: Mapping[str, str]) -> int | None:
        text = headers.get("content-length")
        if text is None:
            return None
        values = {v.strip() for v in text.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit() or not next(iter(values)).isascii():
            raise ProtocolError(f"{self._where()}: malformed Content-Length {text[:40]!r}")
        return int(values.pop())

    async def _head_line(self, reader: asyncio.StreamReader, budget: list[int], what: str) -> str:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and what == "status line":
                raise ProtocolError(f"{self._where()}: the connection closed without an answer") from None
            raise ProtocolError(f"{self._where()}: the connection closed in the middle of the {what}") from None
        except asyncio.LimitOverrunError:
            raise self._headers_too_long() from None
        budget[0] -= len(raw)
        if budget[0] < 0:
            raise self._headers_too_long()
        return raw.removesuffix(b"\n").removesuffix(b"\r").decode("latin-1")

    def _headers_too_long(self) -> ProtocolError:
        return ProtocolError(f"{self._where()}: response headers over the {self.max_header_bytes} byte limit")

    async def _headers(self, reader: asyncio.StreamReader, budget: list[int]) -> dict[str, str]:
        headers: dict[str, str] = {}
        count = 0
        while line := await self._head_line(reader, budget, "headers"):
            count += 1
            if count > self.max_headers:
                raise ProtocolError(f"{self._where()}: more than {self.max_headers} response headers")
            name, sep, value = line.partition(":")
            if not sep or not _TOKEN.fullmatch(name):
                raise ProtocolError(f"{self._where()}: malformed header line {line[:80]!r}")
            key, value = name.lower(), value.strip(" \t")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return headers


def _query_value(value: QueryValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
