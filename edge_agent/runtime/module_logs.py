"""`edge-agent logs`: a module's container output, read from the podman API with podman-py
(blocking; the CLI has no event loop to share).

The container is found with podman-py's containers.list. The logs are read through podman-py's
APIClient (`client.api.get(".../logs", stream=True)`), not Container.logs(): that one merges
stdout and stderr into one stream of payloads (it does not demultiplex), and `edge-agent logs`
keeps them apart.

libpod's `/containers/{id}/logs` answers with a multiplexed stream whatever the container's tty
setting: frames of an 8-byte header (stream: 1 stdout, 2 stderr; three zero bytes; payload length
as a big-endian uint32) then the payload. `LogFrameDecoder` takes it apart as bytes arrive, without
holding whole frames, so a follow shows each line as soon as podman sends it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from edge_agent.api_url import podman_client, transport_reason
from edge_agent.runtime.api import LABEL_DEVICE, LABEL_MODULE

if TYPE_CHECKING:
    from podman import PodmanClient

STDOUT, STDERR = 1, 2
HEADER = struct.Struct(">BxxxI")
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # without --follow: podman sends what it has and ends the answer


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


def find_module_container(client: PodmanClient, device_id: str, module: str) -> str:
    """The id of the module's container on this device (a running one first)."""
    labels = [f"label={LABEL_DEVICE}={device_id}", f"label={LABEL_MODULE}={module}"]
    found = client.containers.list(all=True, sparse=True, filters=labels)
    found.sort(key=lambda c: c.attrs.get("State") != "running")
    if not found:
        raise NoSuchModule(f"no container for module {module!r} on this device")
    return str(found[0].id)


def copy_module_logs(
    url: str, device_id: str, module: str, *, follow: bool, tail: int | None, stdout: BinaryIO, stderr: BinaryIO
) -> None:
    """Write the module container's stdout to `stdout` and its stderr to `stderr`, as podman sends
    them; with `follow`, until the container stops (or the caller is interrupted)."""
    from podman.errors import APIError

    try:
        client = podman_client(url, timeout=CONNECT_TIMEOUT_S)
    except ValueError as exc:
        raise LogsError(str(exc)) from None
    where = f"podman at {url}"
    try:
        with client:
            try:
                container = find_module_container(client, device_id, module)
            except APIError as exc:
                if exc.response is None:
                    raise
                raise LogsError(f"listing containers: {_message(exc.response.content)} "
                                f"(HTTP {exc.response.status_code})") from None
            params: dict[str, str] = {"stdout": "true", "stderr": "true", "follow": "true" if follow else "false"}
            if tail is not None:
                params["tail"] = str(tail)
            # Without --follow podman sends what it has and ends the answer; with it, no read timeout.
            timeout = (CONNECT_TIMEOUT_S, None) if follow else (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
            resp = client.api.get(f"/containers/{container}/logs", params=params, stream=True, timeout=timeout)
            try:
                if resp.status_code != 200:
                    raise LogsError(f"{where}: logs of {container[:12]}: {_message(resp.raw.read(64 * 1024))} "
                                    f"(HTTP {resp.status_code})")
                decoder = LogFrameDecoder()
                # chunk_size=None: each piece as podman sends it, so a follow shows each line at once.
                for data in resp.iter_content(chunk_size=None):
                    for stream, piece in decoder.feed(data):
                        out = stderr if stream == STDERR else stdout
                        out.write(piece)
                        out.flush()
                if decoder.in_frame:
                    raise LogsError(f"{where}: the log stream ended in the middle of a frame")
            finally:
                resp.close()
    except BrokenPipeError:
        raise  # our reader went away (`| head`): the caller's business, not podman's
    except LogsError:
        raise
    except (OSError, ValueError) as exc:  # podman-py's APIError and requests' errors are OSErrors
        raise LogsError(f"cannot read logs from {where}: {transport_reason(exc)}") from exc


def _message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:400]
    if isinstance(doc, dict) and (doc.get("message") or doc.get("cause")):
        return str(doc.get("message") or doc.get("cause"))[:400]
    return body.decode("utf-8", "replace").strip()[:400]
