"""The newest document wins: one that arrives while the previous one is still being verified (a
slow registry) is applied, the slow one is reported superseded, and at no moment does the
reported state claim a version that is not what runs (real podman, real registry behind a proxy
that holds back chosen responses)."""

from __future__ import annotations

import asyncio
import http.client
import http.server
import threading
import time
from typing import Any

from tests.infra.procs import free_port

from .conftest import RunImages, owned

SLEEP = {"command": ["sh", "-c"], "args": ["trap 'exit 0' TERM; while true; do sleep 1; done"]}


class DelayingProxy:
    """Forwards GET/HEAD to the registry; requests whose path contains `slow_path` wait first."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.slow_path: str | None = None
        self.delay_s = 0.0
        self.delayed = 0
        self.port = free_port()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self, method: str) -> None:
                if proxy.slow_path and proxy.slow_path in self.path:
                    proxy.delayed += 1
                    time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", proxy.upstream)
                for name in {k for k in self.headers if k.lower() != "host"}:
                    for value in self.headers.get_all(name) or ():  # podman sends several Accept headers
                        conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
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

    def __enter__(self) -> DelayingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_document_arriving_during_verification_wins(
    harness_factory: Any, images: RunImages, run_id: str, registry: Any
) -> None:
    with DelayingProxy(registry.host) as proxy:
        h = await harness_factory(also_insecure=(proxy.host,), stabilisation_window_s=1)

        def via_proxy(ref: str) -> str:
            return ref.replace(registry.host, proxy.host, 1)

        one, slow, three = (via_proxy(images.image(n, "v1")) for n in ("one", "slow", "three"))
        await h.deploy(1, {"modules": {"app": {"image": one, **SLEEP}}})
        await h.wait_for(lambda: h.state(1) == "good", 60, "version 1 good")

        # Every reported state from here on, sampled as it changes.
        seen: list[dict[str, Any]] = []
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                snapshot = h.deployment()
                if not seen or seen[-1] != snapshot:
                    seen.append(snapshot)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        proxy.slow_path, proxy.delay_s = "-slow/manifests/", 8.0
        await h.deploy(2, {"modules": {"app": {"image": slow, **SLEEP}}})
        await h.wait_for(lambda: proxy.delayed > 0, 10, "version 2's image lookup held back by the registry")
        assert h.state(2) == "verifying"
        await h.deploy(3, {"modules": {"app": {"image": three, **SLEEP}}})
        await h.wait_for(lambda: h.state(3) == "good", 60, "version 3 good")
        await asyncio.sleep(8.5)  # the held-back lookup of version 2 returns meanwhile: it must not apply
        stop.set()
        await sampler

        assert h.state(2) == "superseded" and h.deployment()["current"] == 3
        containers = owned(run_id)
        assert [c["Config"]["Labels"]["edge-agent.deployment"] for c in containers] == ["3"]
        assert containers[0]["ImageName"].startswith(three.rsplit(":", 1)[0] + "@sha256:")
        # Never claimed: version 2 was never current nor past verifying; "current" moved 1 -> 3 once.
        assert all(s.get("current") in (1, 3) for s in seen), seen
        v2_states = {(s.get("versions") or {}).get("2", {}).get("state") for s in seen} - {None}
        assert v2_states <= {"verifying", "superseded"}, v2_states
        currents = [s.get("current") for s in seen]
        assert currents == sorted(currents), currents
