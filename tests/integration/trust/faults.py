"""A loopback HTTP proxy in front of the real registry that damages chosen responses: it sends
the full Content-Length header but only part of the body, then closes (a truncated manifest),
or rewrites bodies (`mutate`, e.g. a flipped byte in a blob)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable

import requests

from tests.infra.procs import free_port


class TruncatingProxy:
    def __init__(
        self,
        upstream: str,
        should_truncate: Callable[[str], bool],
        mutate: Callable[[str, bytes], bytes] | None = None,
    ) -> None:
        self.upstream = upstream
        self.should_truncate = should_truncate
        self.mutate = mutate
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                resp = requests.get(f"http://{proxy.upstream}{self.path}", timeout=10, allow_redirects=False,
                                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                body = resp.content
                if proxy.mutate is not None and resp.status_code == 200:
                    body = proxy.mutate(self.path, body)
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if proxy.should_truncate(self.path) and resp.status_code == 200:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> TruncatingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
