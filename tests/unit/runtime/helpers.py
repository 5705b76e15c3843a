"""A scripted asyncio Unix-socket HTTP server for the client's unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path


class ScriptedServer:
    """Reads one request per connection, then writes `pieces` one by one (pausing after each),
    then closes, unless `hold` (never answer / keep the connection open)."""

    def __init__(self, path: Path, pieces: Sequence[bytes], *, hold: bool = False, pause: float = 0.005) -> None:
        self.path = path
        self.pieces = pieces
        self.hold = hold
        self.pause = pause
        self.requests: list[bytes] = []
        self.client_gone = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            self.requests.append(head + await reader.readexactly(length))
            for piece in self.pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(self.pause)
            if self.hold:
                while await reader.read(1024):  # until the client closes its end
                    pass
                self.client_gone.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_gone.set()
        finally:
            writer.close()

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_unix_server(self.handle, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def split(data: bytes, size: int = 3) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def chunked(*parts: bytes, ext: bool = False) -> bytes:
    out = b""
    for p in parts:
        out += f"{len(p):x}".encode() + (b";name=value" if ext else b"") + b"\r\n" + p + b"\r\n"
    return out + b"0\r\n\r\n"
