"""A blocking stdlib HTTP connection to the podman API, for the few calls made outside the
asyncio adapter: `edge-agent check`'s ping, `edge-agent logs` (runtime/module_logs.py) and the
trust cache's image-id lookup. The address comes from api_url.parse_api_url."""

from __future__ import annotations

import http.client
import socket

from edge_agent.api_url import ApiAddress


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def api_connection(address: ApiAddress, timeout: float | None) -> http.client.HTTPConnection:
    """A blocking connection to the API (not yet connected; the first request connects)."""
    if address.unix_path is not None:
        return UnixHTTPConnection(address.unix_path, timeout)
    return http.client.HTTPConnection(address.host or "", address.port, timeout=timeout)
