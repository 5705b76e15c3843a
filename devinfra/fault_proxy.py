"""A loopback HTTP proxy in front of the real registry that injects faults into chosen responses:

- `truncate(path)`: send the full Content-Length header but only half the body, then close (a
  truncated manifest);
- `mutate(path, body)`: rewrite a body (e.g. a flipped byte in a blob);
- `slow_path` / `delay_s`: requests whose path contains `slow_path` wait `delay_s` first (a slow
  registry); `delayed` counts them;
- `refuse(path)`: an HTTP status to answer instead of forwarding (e.g. 429 Too Many Requests, with
  Retry-After), or None; `refused` counts them.

GET and HEAD are forwarded with every header as sent (podman sends several Accept headers), the
body as received (no content decoding)."""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from collections.abc import Callable

from devinfra.procs import free_port


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        truncate: Callable[[str], bool] | None = None,
        mutate: Callable[[str, bytes], bytes] | None = None,
        refuse: Callable[[str], int | None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.truncate = truncate
        self.mutate = mutate
        self.refuse = refuse
        self.refused = 0
        self.truncated = 0
        self.slow_path: str | None = None
        self.delay_s = 0.0
        self.delayed = 0
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self, method: str) -> None:
                status = proxy.refuse(self.path) if proxy.refuse is not None else None
                if status is not None:
                    proxy.refused += 1
                    self.send_response(status)
                    self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if proxy.slow_path and proxy.slow_path in self.path:
                    proxy.delayed += 1
                    time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", proxy.upstream)
                for name in {k for k in self.headers if k.lower() != "host"}:
                    for value in self.headers.get_all(name) or ():
                        conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                ok = resp.status == 200
                if proxy.mutate is not None and ok:
                    body = proxy.mutate(self.path, body)
                truncated = ok and method != "HEAD" and proxy.truncate is not None and proxy.truncate(self.path)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                if truncated:
                    self.send_header("Connection", "close")
                self.end_headers()
                if method == "HEAD":
                    return
                if truncated:
                    proxy.truncated += 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._forward("GET")

            def do_HEAD(self) -> None:
                self._forward("HEAD")

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
