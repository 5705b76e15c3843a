"""The one podman API URL parser, and the decoder of libpod's multiplexed log stream."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.api_url import ApiAddress, parse_api_url, podman_client
from edge_agent.runtime.module_logs import LogFrameDecoder, LogsError

SOCK = "/run/podman/podman.sock"


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("unix:///run/podman/podman.sock", ApiAddress("unix:///run/podman/podman.sock", unix_path=SOCK)),
        ("unix:///tmp/a b/p.sock", ApiAddress("unix:///tmp/a b/p.sock", unix_path="/tmp/a b/p.sock")),
        ("http+unix://%2Frun%2Fpodman%2Fpodman.sock", ApiAddress("http+unix://%2Frun%2Fpodman%2Fpodman.sock", SOCK)),
        ("http+unix:///run/podman/podman.sock", ApiAddress("http+unix:///run/podman/podman.sock", unix_path=SOCK)),
        ("tcp://127.0.0.1:8888", ApiAddress("tcp://127.0.0.1:8888", host="127.0.0.1", port=8888)),
        ("http://podman.local:80", ApiAddress("http://podman.local:80", host="podman.local", port=80)),
    ],
)
def test_accepted_api_urls(url: str, address: ApiAddress) -> None:
    assert parse_api_url(url) == address


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("unix://run/podman.sock", "absolute socket path"),
        ("unix://", "absolute socket path"),
        ("tcp://127.0.0.1", "tcp://HOST:PORT"),
        ("tcp://127.0.0.1:99999", "tcp://HOST:PORT"),
        ("ssh://core@host/run/podman.sock", "unsupported scheme"),
        ("/run/podman/podman.sock", "unsupported scheme"),
    ],
)
def test_refused_api_urls_name_the_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_api_url(url)
    assert repr(url) in str(err.value)


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


@given(
    frames=st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=40)), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=700), max_size=12),
)
def test_frames_split_anywhere_decode_to_the_same_streams(frames: list[tuple[int, bytes]], cuts: list[int]) -> None:
    data = b"".join(frame(s, p) for s, p in frames)
    edges = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    decoder = LogFrameDecoder()
    out: dict[int, bytes] = {1: b"", 2: b""}
    for a, b in itertools.pairwise(edges):
        for stream, piece in decoder.feed(data[a:b]):
            assert piece, "no empty pieces"
            out[stream] += piece
    assert not decoder.in_frame
    assert out == {s: b"".join(p for t, p in frames if t == s) for s in (1, 2)}


def test_a_stream_cut_inside_a_frame_is_noticed() -> None:
    decoder = LogFrameDecoder()
    assert list(decoder.feed(frame(1, b"hello")[:-2])) == [(1, b"hel")]
    assert decoder.in_frame
    decoder = LogFrameDecoder()
    assert list(decoder.feed(frame(2, b"x")[:5])) == []
    assert decoder.in_frame


def test_a_stream_that_is_not_multiplexed_is_refused() -> None:
    with pytest.raises(LogsError, match="not multiplexed"):
        list(LogFrameDecoder().feed(b"plain text output\n"))


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("unix:///run/podman/podman.sock", "http+unix://%2Frun%2Fpodman%2Fpodman.sock"),
        ("http+unix://%2Frun%2Fpodman%2Fpodman.sock", "http+unix://%2Frun%2Fpodman%2Fpodman.sock"),
        ("tcp://127.0.0.1:8888", "http://127.0.0.1:8888"),
        ("tcp://[::1]:8888", "http://[::1]:8888"),
    ],
)
def test_the_one_podman_client_is_pinned_to_libpod_4(url: str, base: str) -> None:
    client = podman_client(url)
    assert client.api.base_url.geturl() == base
    assert client.api.path_prefix == "/v4.0.0/libpod/"
    client.close()


def test_no_ssh_client() -> None:
    with pytest.raises(ValueError, match="unsupported scheme"):
        podman_client("ssh://core@host/run/podman.sock")
