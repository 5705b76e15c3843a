"""The dashboard's safety rules: response headers (a strict Content-Security-Policy: scripts and
styles from the dashboard's own static files only, nothing inline), the access token, the Host
check, and when it may listen beyond loopback (only with TLS and a token).

Why a Host check on loopback: a web page elsewhere could point its own name at 127.0.0.1 (DNS
rebinding) and read the dashboard from the operator's browser; requests naming any other host
are refused.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
REALM = "edgectl dashboard"
MIN_TOKEN_CHARS = 16

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, *, tls: bool, token: str | None) -> str | None:
    """Why the dashboard must not listen on `host` with these settings (None: it may)."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        return (f"the access token is {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
                "(e.g. openssl rand -hex 24)")
    if is_loopback(host):
        return None
    missing = [what for what, ok in (("TLS (--https-cert and --https-key)", tls), ("an access token (--token-file or "
               "$EDGECTL_DASHBOARD_TOKEN)", token is not None)) if not ok]
    if missing:
        return (f"--listen {host} is reachable beyond this machine: it needs {' and '.join(missing)}; "
                "or keep the default 127.0.0.1 and reach it through an SSH tunnel")
    return None


def token_matches(header: str | None, token: str) -> bool:
    """`Authorization: Bearer TOKEN`, or Basic with TOKEN as the password (any user name), which
    browsers ask for themselves; compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    return hmac.compare_digest(given.encode(), token.encode())


def allowed_hosts(bind: str, extra: Iterable[str]) -> set[str]:
    names = {"127.0.0.1", "localhost", "[::1]", "::1", *extra}
    if bind not in ("0.0.0.0", "::"):  # noqa: S104 - a comparison, not a bind
        names.add(bind if ":" not in bind else f"[{bind}]")
    return names


class Guard:
    """ASGI middleware: the Host check, the token, and the headers on every response."""

    def __init__(self, app: ASGIApp, *, token: str | None, hosts: set[str] | None, tls: bool) -> None:
        self.app = app
        self.token = token
        self.hosts = hosts
        self.headers = [*HEADERS, *((b"strict-transport-security", b"max-age=31536000"),) * tls]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if self.hosts is not None and name not in self.hosts:
            await self._plain(send, 421, f"this dashboard does not answer for the host {host!r}\n")
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await self._plain(send, 405, "the dashboard is read-only: every action stays in edgectl\n")
            return
        if self.token is not None and not token_matches(headers.get("authorization"), self.token):
            challenge = [(b"www-authenticate", f'Basic realm="{REALM}"'.encode())]
            await self._plain(send, 401, "a token is needed\n", challenge)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, with_headers)

    async def _plain(self, send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = text.encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            *self.headers, *(extra or []),
        ]})
        await send({"type": "http.response.body", "body": body})
