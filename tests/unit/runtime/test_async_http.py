"""The asyncio HTTP/1.1 client against scripted asyncio Unix-socket servers in the test: every
answer is sent in small pieces with a pause between them, so each framing is parsed across
split reads."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.runtime.async_http import (
    ApiUnreachable,
    AsyncHTTPClient,
    ProtocolError,
    RequestTimeout,
)

from .helpers import ScriptedServer, chunked, split


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "api.sock"


def serve(sock: Path, data: bytes, size: int = 3, hold: bool = False) -> ScriptedServer:
    return ScriptedServer(sock, split(data, size), hold=hold)


# ---------------------------------------------------------------- requests and framing


async def test_content_length_body_across_split_reads_and_the_request_sent(sock: Path) -> None:
    body = json.dumps({"Id": "abc", "n": list(range(50))}).encode()
    answer = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    async with serve(sock, answer) as server:
        client = AsyncHTTPClient(server.url)
        resp = await client.request(
            "POST", "/v4.0.0/libpod/containers/create", params={"all": True, "f": "a b&c"}, json_body={"name": "x"}
        )
    assert (resp.status, resp.reason) == (201, "Created")
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == json.loads(body)
    (request,) = server.requests
    head, _, sent = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v4.0.0/libpod/containers/create?all=true&f=a+b%26c HTTP/1.1"
    assert {"Host: localhost", "Connection: close", "Content-Type: application/json", "Content-Length: 13"} <= set(
        lines
    )
    assert json.loads(sent) == {"name": "x"}


async def test_chunked_body_with_extensions_and_trailers_across_split_reads(sock: Path) -> None:
    body = chunked(b"hello ", b"chunked " * 40, b"world", ext=True).removesuffix(b"\r\n")  # room for a trailer
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"X-Trailer: yes\r\n\r\n"
    async with serve(sock, answer, size=1) as server:
        resp = await AsyncHTTPClient(server.url).request("GET", "/x")
    assert resp.body == b"hello " + b"chunked " * 40 + b"world"


async def test_body_until_close_when_no_length_is_given(sock: Path) -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"until the end\n" * 100
    async with serve(sock, answer, size=50) as server:
        resp = await AsyncHTTPClient(server.url).request("GET", "/x")
    assert resp.text == "until the end\n" * 100


async def test_no_content_and_interim_answers(sock: Path) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX-A: 1\r\nX-A: 2\r\n\r\n"
    async with serve(sock, answer, hold=True) as server:
        resp = await AsyncHTTPClient(server.url).request("POST", "/start", timeout=5)
    assert (resp.status, resp.body, resp.headers["x-a"]) == (204, b"", "1, 2")
    assert b"Content-Length: 0\r\n" in server.requests[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
    piece=st.integers(min_value=1, max_value=64),
)
async def test_any_chunking_of_any_body_reads_back_the_same(
    tmp_path_factory: pytest.TempPathFactory, body: bytes, cuts: list[int], piece: int
) -> None:
    edges = sorted({0, len(body), *(c for c in cuts if c < len(body))})
    parts = [body[a:b] for a, b in itertools.pairwise(edges) if body[a:b]]
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*parts)
    path = tmp_path_factory.mktemp("h") / "s.sock"
    async with ScriptedServer(path, split(answer, piece), pause=0) as server:
        resp = await AsyncHTTPClient(server.url).request("GET", "/x")
    assert resp.body == body


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", "response headers over the 65536 byte limit"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Some: aaaaaaaaaa\r\n" * 5000 + b"\r\n", "more than 100 response headers"),
        (b"HTTP/1.1 200 OK\r\n" + (b"X-Some-Longer-Name: " + b"a" * 1000 + b"\r\n") * 70, "65536 byte limit"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 70000000\r\n\r\nxx", "body of 70000000 bytes is over the 67108864"),
        (b"SPDY/3 200 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12, 13\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", "malformed chunk size line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nab\r\n0\r\n\r\n", "malformed chunk size line"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 20 + b"\r\nab\r\n0\r\n\r\n",
            "malformed chunk size line",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n", "instead of CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345", "truncated body: the connection closed with 5 bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n12345", "closed in the middle of a chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n", "while reading a chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "closed in the middle of the headers"),
        (b"", "the connection closed without an answer"),
    ],
)
async def test_malformed_oversized_and_truncated_answers_are_refused(sock: Path, answer: bytes, message: str) -> None:
    async with serve(sock, answer, size=4096) as server:
        with pytest.raises(ProtocolError, match="podman API at unix://") as err:
            await AsyncHTTPClient(server.url).request("GET", "/x", timeout=10)
    assert message in str(err.value)


async def test_buffered_body_is_capped_also_without_a_length(sock: Path) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*[b"x" * 1000] * 20)
    async with serve(sock, answer, size=4096) as server:
        with pytest.raises(ProtocolError, match="response body is over the 5000 byte limit"):
            await AsyncHTTPClient(server.url, max_body_bytes=5000).request("GET", "/x")


async def test_no_answer_within_the_timeout(sock: Path) -> None:
    async with ScriptedServer(sock, [b"HTTP/1.1 200 OK\r\n"], hold=True) as server:
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match=r"podman API at unix://.*no answer to GET /slow within 0.3 s"):
            await AsyncHTTPClient(server.url).request("GET", "/slow", timeout=0.3)
        assert time.monotonic() - started < 3
        await asyncio.wait_for(server.client_gone.wait(), 5)  # and the connection was closed


async def test_missing_socket_and_refused_connection_are_unreachable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sock"
    with pytest.raises(ApiUnreachable, match=rf"^podman API at unix://{missing} unreachable: .*No such file"):
        await AsyncHTTPClient(f"unix://{missing}").request("GET", "/_ping")
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))  # bound, never listening: connect is refused
        with pytest.raises(ApiUnreachable, match=r"unreachable: .*Connection refused"):
            await AsyncHTTPClient(f"unix://{dead}").request("GET", "/_ping")


async def test_tcp_url(unused_tcp_port: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(head), head))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", unused_tcp_port)
    async with server:
        resp = await AsyncHTTPClient(f"tcp://127.0.0.1:{unused_tcp_port}").request("GET", "/_ping")
    assert resp.body.startswith(b"GET /_ping HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{unused_tcp_port}".encode() in resp.body


# ---------------------------------------------------------------- streaming


async def collect(lines: AsyncIterator[bytes]) -> list[bytes]:
    return [line async for line in lines]


async def test_stream_yields_lines_split_across_chunks_and_reads(sock: Path) -> None:
    events = [json.dumps({"Action": "start", "n": i}).encode() for i in range(20)]
    text = b"\n".join(events) + b"\r\n\nlast-without-newline"
    parts = [text[i : i + 7] for i in range(0, len(text), 7)]
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*parts)
    async with (
        serve(sock, answer, size=5) as server,
        AsyncHTTPClient(server.url).stream("GET", "/events", params={"stream": "true"}) as resp,
    ):
        assert resp.status == 200
        got = await collect(resp.lines())
    assert got == [*events, b"", b"last-without-newline"]


async def test_server_closing_mid_stream_raises_after_the_lines_received(sock: Path) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"one\n", b"two\nthr")[:-5]
    async with serve(sock, answer) as server:
        got: list[bytes] = []
        async with AsyncHTTPClient(server.url).stream("GET", "/events") as resp:
            with pytest.raises(ProtocolError, match="truncated body: the connection closed while reading a chunk size"):
                async for line in resp.lines():
                    got.append(line)
    assert got == [b"one", b"two"]


async def test_stream_refuses_an_endless_line(sock: Path) -> None:
    answer = b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000
    async with serve(sock, answer, size=1000) as server, AsyncHTTPClient(server.url).stream("GET", "/e") as resp:
        with pytest.raises(ProtocolError, match="longer than 2048 bytes"):
            await collect(resp.lines(max_line=2048))


async def test_cancelling_a_stream_reader_closes_the_connection(sock: Path) -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    async with ScriptedServer(sock, [answer], hold=True) as server:
        got: list[bytes] = []
        first = asyncio.Event()

        async def reader() -> None:
            async with AsyncHTTPClient(server.url).stream("GET", "/events") as resp:
                async for piece in resp.chunks():
                    got.append(piece)
                    first.set()

        task = asyncio.create_task(reader())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.client_gone.wait(), 5)
    assert got == [b"first"]


async def test_stream_timeout_covers_the_headers_only(sock: Path) -> None:
    async with ScriptedServer(sock, [b"HTTP/1.1 200 OK\r\nX-Partial: "], hold=True) as server:
        with pytest.raises(RequestTimeout, match=r"no answer to GET /events within 0\.2 s"):
            async with AsyncHTTPClient(server.url).stream("GET", "/events", timeout=0.2):
                pass
    path2 = sock.with_name("slow-body.sock")
    async with (
        ScriptedServer(path2, [b"HTTP/1.1 200 OK\r\n\r\n", b"late\n"], pause=0.5) as server,
        AsyncHTTPClient(server.url).stream("GET", "/events", timeout=0.2) as resp,
    ):
        assert await collect(resp.lines()) == [b"late"]


async def test_error_body_of_a_stream_can_be_read(sock: Path) -> None:
    answer = b'HTTP/1.1 500 Internal Server Error\r\nContent-Length: 16\r\n\r\n{"message":"no"}'
    async with serve(sock, answer) as server, AsyncHTTPClient(server.url).stream("GET", "/events") as resp:
        assert (resp.status, await resp.read()) == (500, b'{"message":"no"}')
