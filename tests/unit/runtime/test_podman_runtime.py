"""PodmanRuntime's HTTP side against a scripted server: the libpod paths it asks for, and the
operator-readable failures it makes of podman's answers. The same calls against the real podman
service are in tests/integration/deployment/."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from pathlib import Path

import pytest

from edge_agent.runtime.api import ContainerRequest, RuntimeEvent, RuntimeFailure
from edge_agent.runtime.podman import PodmanRuntime, build_spec, tagged

from .helpers import ScriptedServer, chunked, split


def answer(status: str, body: bytes, content_type: str = "application/json") -> list[bytes]:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return split(head.encode() + body, 50)


def request_line(server: ScriptedServer) -> str:
    return server.requests[0].split(b"\r\n", 1)[0].decode()


async def test_podman_error_message_and_status_become_the_failure(tmp_path: Path) -> None:
    body = b'{"cause":"no such container","message":"no container with name or ID \\"m1\\" found","response":404}'
    async with ScriptedServer(tmp_path / "s", answer("404 Not Found", body)) as server:
        with pytest.raises(RuntimeFailure) as err:
            await PodmanRuntime(server.url).inspect("m1")
    assert str(err.value) == 'inspect m1: no container with name or ID "m1" found (HTTP 404)'
    assert request_line(server) == "GET /v4.0.0/libpod/containers/m1/json HTTP/1.1"


async def test_image_references_are_one_path_segment(tmp_path: Path) -> None:
    async with ScriptedServer(tmp_path / "s", [b"HTTP/1.1 204 No Content\r\n\r\n"]) as server:
        assert await PodmanRuntime(server.url).image_exists("reg:5000/a/b@sha256:ab") is True
    assert request_line(server) == "GET /v4.0.0/libpod/images/reg%3A5000%2Fa%2Fb%40sha256%3Aab/exists HTTP/1.1"


async def test_pull_failure_reported_in_the_ndjson_body(tmp_path: Path) -> None:
    body = b'{"stream":"Trying to pull..."}\n{"error":"reading manifest v1: manifest unknown\\n"}\n'
    async with ScriptedServer(tmp_path / "s", answer("200 OK", body)) as server:
        with pytest.raises(RuntimeFailure, match=r"^pull reg/x:v1: reading manifest v1: manifest unknown$"):
            await PodmanRuntime(server.url).pull("reg/x:v1", insecure=True, timeout_s=30)
    line = request_line(server)
    assert line.startswith("POST /v4.0.0/libpod/images/pull?reference=reg%2Fx%3Av1&tlsVerify=false&quiet=true")


async def test_list_asks_for_our_device_label_and_inspects_each(tmp_path: Path) -> None:
    async with ScriptedServer(tmp_path / "s", answer("200 OK", b"[]")) as server:
        assert await PodmanRuntime(server.url).list_containers("dev") == []
    path, _, query = request_line(server).split()[1].partition("?")
    assert path == "/v4.0.0/libpod/containers/json"
    params = urllib.parse.parse_qs(query)
    assert params["all"] == ["True"]
    assert json.loads(params["filters"][0]) == {"label": ["edge-agent.device=dev"]}


async def test_non_json_error_body_is_quoted_as_text(tmp_path: Path) -> None:
    async with ScriptedServer(tmp_path / "s", answer("500 Internal Server Error", b"boom\n", "text/plain")) as server:
        with pytest.raises(RuntimeFailure, match=r"^start m1: boom \(HTTP 500\)$"):
            await PodmanRuntime(server.url).start("m1")


async def test_create_posts_the_spec_generator_document(tmp_path: Path) -> None:
    request = ContainerRequest(name="dev-m1", image="reg/x@sha256:ab", labels={"edge-agent.device": "dev"})
    async with ScriptedServer(tmp_path / "s", answer("201 Created", b'{"Id":"c0ffee","Warnings":[]}')) as server:
        assert await PodmanRuntime(server.url).create(request) == "c0ffee"
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v4.0.0/libpod/containers/create HTTP/1.1\r\n")
    assert json.loads(body) == build_spec(request)


def event(action: str, name: str, module: str) -> bytes:
    doc = {"Type": "container", "Action": action, "Actor": {"ID": f"id-{name}", "Attributes": {
        "name": name, "edge-agent.module": module}}}
    return json.dumps(doc).encode() + b"\n"


async def test_events_are_read_line_by_line_until_the_stream_ends(tmp_path: Path) -> None:
    stream = event("start", "dev-a", "a") + event("exec_died", "dev-a", "a") + event("died", "dev-b", "b")
    parts = [stream[i : i + 40] for i in range(0, len(stream), 40)]
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    async with ScriptedServer(tmp_path / "s", split(head + chunked(*parts), 17)) as server:
        got: list[RuntimeEvent] = []
        with pytest.raises(RuntimeFailure, match=r"^podman event stream ended$"):
            async for ev in PodmanRuntime(server.url).events("dev"):
                got.append(ev)
    assert got == [RuntimeEvent("id-dev-a", "dev-a", "start", "a"), RuntimeEvent("id-dev-b", "dev-b", "died", "b")]
    assert "/v4.0.0/libpod/events?stream=true&filters=" in request_line(server)


async def test_event_stream_cut_short_or_garbled_is_a_failure(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    cut = head + chunked(event("start", "dev-a", "a"))[:-5]
    async with ScriptedServer(tmp_path / "cut", [cut]) as server:
        with pytest.raises(RuntimeFailure, match=r"podman event stream failed: podman API at .*truncated body"):
            async for _ in PodmanRuntime(server.url).events("dev"):
                pass
    garbled = head + chunked(b"{not json\n")
    async with ScriptedServer(tmp_path / "garbled", [garbled]) as server:
        with pytest.raises(RuntimeFailure, match="podman event stream failed: not JSON"):
            async for _ in PodmanRuntime(server.url).events("dev"):
                pass


async def test_unreachable_socket_names_the_call_and_the_url(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/none.sock"
    with pytest.raises(RuntimeFailure, match=rf"^list containers: podman API at {url} unreachable: .*No such file"):
        await PodmanRuntime(url).list_containers("dev")
    with pytest.raises(RuntimeFailure, match=rf"^podman event stream failed: podman API at {url} unreachable"):
        async for _ in PodmanRuntime(url).events("dev"):
            pass


async def test_a_consumer_that_stops_ends_the_event_thread_and_its_connection(tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    first = event("start", "dev-a", "a")
    pieces = [head, f"{len(first):x}\r\n".encode() + first + b"\r\n"]
    async with ScriptedServer(tmp_path / "s", pieces, hold=True) as server:
        runtime = PodmanRuntime(server.url)
        stream = runtime.events("dev")
        assert await anext(stream) == RuntimeEvent("id-dev-a", "dev-a", "start", "a")
        assert any(t.name == "podman-events" for t in threading.enumerate())
        await stream.aclose()  # what a cancelled consumer does
        await asyncio.wait_for(server.client_gone.wait(), 5)
        for _ in range(100):
            if not any(t.name == "podman-events" for t in threading.enumerate()):
                break
            await asyncio.sleep(0.05)
        assert not any(t.name == "podman-events" for t in threading.enumerate())
        await runtime.close()


@pytest.mark.parametrize(
    ("repo_tags", "expected"),
    [
        (None, False),
        ([], False),
        (["reg.local/edge-agent-release@sha256:" + "a" * 64], False),  # what a pull by digest leaves
        (["<none>:<none>"], False),
        (["reg.local/edge-agent-release:<none>"], False),
        (["reg.local/edge-agent-release:0.2.0"], True),  # tagged by someone: kept
        (["reg.local/edge-agent-release@sha256:" + "a" * 64, "localhost/mine:1"], True),
        ("reg.local/x:1", False),  # not the API's shape
    ],
)
def test_an_image_pulled_by_digest_is_not_tagged(repo_tags: object, expected: bool) -> None:
    assert tagged(repo_tags) is expected
