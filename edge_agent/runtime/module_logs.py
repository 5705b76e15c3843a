"""`edge-agent logs`: a module's container output, read from the podman API (blocking stdlib
HTTP; the CLI has no event loop to share).

libpod's `/containers/{id}/logs` answers with a multiplexed stream whatever the container's tty
setting: frames of an 8-byte header (stream: 1 stdout, 2 stderr; three zero bytes; payload length
as a big-endian uint32) then the payload. `LogFrameDecoder` takes it apart as bytes arrive, without
holding whole frames, so a follow shows each line as soon as podman sends it.
"""

from __future__ import annotations

import http.client
import json
import struct
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from edge_agent.api_url import LIBPOD_PREFIX, parse_api_url
from edge_agent.runtime.api import LABEL_DEVICE, LABEL_MODULE
from edge_agent.unix_http import api_connection

STDOUT, STDERR = 1, 2
HEADER = struct.Struct(">BxxxI")
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # without --follow: podman sends what it has and ends the answer
MAX_LOOKUP_BODY = 16 * 1024 * 1024


class LogsError(Exception):
    """Reading the logs failed; the message is fit for an operator."""


class NoSuchModule(LogsError):
    pass


@dataclass
class LogFrameDecoder:
    """Incremental decoder of libpod's multiplexed log stream."""

    _header: bytearray = field(default_factory=bytearray)
    _stream: int = 0
    _left: int = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """(stream, payload piece) for every piece of payload in `data`."""
        view = memoryview(data)
        while view:
            if self._left:
                piece, view = view[: self._left], view[self._left :]
                self._left -= len(piece)
                yield self._stream, bytes(piece)
                continue
            need = HEADER.size - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) < HEADER.size:
                return
            if self._header[1:4] != b"\0\0\0" or self._header[0] > 3:
                raise LogsError(f"podman sent a log stream that is not multiplexed (header {bytes(self._header)!r})")
            self._stream, self._left = HEADER.unpack(self._header)
            self._header.clear()

    @property
    def in_frame(self) -> bool:
        """True when the stream stopped inside a frame (the answer was cut short)."""
        return bool(self._header) or self._left > 0


def find_module_container(conn: http.client.HTTPConnection, device_id: str, module: str) -> str:
    """The id of the module's container on this device (a running one first)."""
    labels = [f"{LABEL_DEVICE}={device_id}", f"{LABEL_MODULE}={module}"]
    query = urllib.parse.urlencode({"all": "true", "filters": json.dumps({"label": labels})})
    conn.request("GET", f"{LIBPOD_PREFIX}/containers/json?{query}")
    resp = conn.getresponse()
    body = resp.read(MAX_LOOKUP_BODY)
    if resp.status != 200:
        raise LogsError(f"listing containers: {_message(body)} (HTTP {resp.status})")
    found = sorted(json.loads(body) or [], key=lambda c: c.get("State") != "running")
    if not found:
        raise NoSuchModule(f"no container for module {module!r} on this device")
    return str(found[0]["Id"])


def copy_module_logs(
    url: str, device_id: str, module: str, *, follow: bool, tail: int | None, stdout: BinaryIO, stderr: BinaryIO
) -> None:
    """Write the module container's stdout to `stdout` and its stderr to `stderr`, as podman sends
    them; with `follow`, until the container stops (or the caller is interrupted)."""
    try:
        address = parse_api_url(url)
    except ValueError as exc:
        raise LogsError(str(exc)) from None
    where = f"podman at {url}"
    try:
        lookup = api_connection(address, CONNECT_TIMEOUT_S)
        try:
            container = find_module_container(lookup, device_id, module)
        finally:
            lookup.close()
        params: dict[str, str] = {"stdout": "true", "stderr": "true", "follow": "true" if follow else "false"}
        if tail is not None:
            params["tail"] = str(tail)
        conn = api_connection(address, CONNECT_TIMEOUT_S)
        try:
            conn.request("GET", f"{LIBPOD_PREFIX}/containers/{container}/logs?{urllib.parse.urlencode(params)}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise LogsError(f"{where}: logs of {container[:12]}: {_message(resp.read(64 * 1024))} "
                                f"(HTTP {resp.status})")
            if conn.sock is not None:
                conn.sock.settimeout(None if follow else READ_TIMEOUT_S)
            decoder = LogFrameDecoder()
            while data := resp.read1(64 * 1024):
                for stream, piece in decoder.feed(data):
                    out = stderr if stream == STDERR else stdout
                    out.write(piece)
                    out.flush()
            if decoder.in_frame:
                raise LogsError(f"{where}: the log stream ended in the middle of a frame")
        finally:
            conn.close()
    except BrokenPipeError:
        raise  # our reader went away (`| head`): the caller's business, not podman's
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise LogsError(f"cannot read logs from {where}: {exc}") from exc


def _message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:400]
    if isinstance(doc, dict) and (doc.get("message") or doc.get("cause")):
        return str(doc.get("message") or doc.get("cause"))[:400]
    return body.decode("utf-8", "replace").strip()[:400]
