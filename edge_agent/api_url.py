"""Where the podman API is: the one check of the `[podman] socket` URL, and the one place a
podman-py client is made (`podman_client`), for the runtime adapter, `edge-agent check`,
`edge-agent logs` and the trust cache's image-id lookup.

Accepted forms (podman-py's, minus ssh: the agent never shells out to ssh):
  unix:///run/podman/podman.sock                 (the usual one)
  http+unix://%2Frun%2Fpodman%2Fpodman.sock  or  http+unix:///run/podman/podman.sock
  tcp://HOST:PORT  or  http://HOST:PORT          (`podman system service tcp:...`: no TLS, no auth)
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podman import PodmanClient

# Every libpod call is made against API version 4.0.0: the minimal libpod API podman 4.x and 5.x
# declare, which podman 4.3 (Debian bookworm) serves, and which pins the few version-gated answers
# to their 4.x form whatever the server's own version (podman-py would otherwise use its own, 5.x).
LIBPOD_API_VERSION = "4.0.0"
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ApiAddress:
    """A parsed API URL: either a Unix socket path or a TCP host and port."""

    url: str
    unix_path: str | None = None
    host: str | None = None
    port: int | None = None


def parse_api_url(url: str) -> ApiAddress:
    """The address in a podman API URL; ValueError naming the URL and the accepted forms."""
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "unix":
        path = url[len("unix://") :]
    elif scheme == "http+unix":
        # podman-py's form puts the quoted path in the host part; the plain form in the path.
        path = urllib.parse.unquote(parsed.netloc) if parsed.netloc else parsed.path
    elif scheme in ("tcp", "http"):
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ValueError(f"podman API URL {url!r}: expected {scheme}://HOST:PORT")
        return ApiAddress(url, host=parsed.hostname, port=port)
    else:
        raise ValueError(
            f"podman API URL {url!r}: unsupported scheme; expected unix:///path/to/podman.sock, "
            "http+unix://, tcp://HOST:PORT or http://HOST:PORT"
        )
    if not path.startswith("/"):
        raise ValueError(f"podman API URL {url!r}: expected an absolute socket path like unix:///run/podman/podman.sock")
    return ApiAddress(url, unix_path=path)


def podman_client(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> PodmanClient:
    """A podman-py client for the API at `url` (checked with parse_api_url first: ValueError),
    pinned to LIBPOD_API_VERSION. `timeout` is each request's connect and read timeout unless the
    call gives its own. Making one does not connect."""
    from podman import PodmanClient

    address = parse_api_url(url)
    if address.unix_path is not None:
        base = f"http+unix://{urllib.parse.quote(address.unix_path, safe='')}"
    else:
        host = f"[{address.host}]" if ":" in (address.host or "") else address.host
        base = f"http://{host}:{address.port}"
    return PodmanClient(base_url=base, version=LIBPOD_API_VERSION, timeout=timeout)


def transport_problem(exc: BaseException, url: str) -> str:
    """`podman API at URL unreachable: ...` or `podman API at URL: <reason>` (see transport_reason)."""
    reason = transport_reason(exc)
    sep = " " if reason.startswith("unreachable") else ": "
    return f"podman API at {url}{sep}{reason}"


def transport_reason(exc: BaseException) -> str:
    """Why a podman-py call got no usable HTTP answer, for an operator: "unreachable: <the OS
    error>" (e.g. No such file or directory), "no answer in time", or "truncated body: ...".
    podman-py wraps these in APIError without a response; the useful part is at the bottom of
    the exception chain."""
    import requests

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        nested = [a for a in getattr(seen, "args", ()) if isinstance(a, BaseException)]
        seen = seen.__cause__ or seen.__context__ or (nested[-1] if nested else None)
    if any(isinstance(e, requests.Timeout | TimeoutError) for e in chain):
        return "no answer in time"
    os_errors = [e for e in chain if isinstance(e, OSError) and e.errno is not None]
    if os_errors:
        return f"unreachable: {os_errors[-1]}"
    if any(isinstance(e, requests.exceptions.ChunkedEncodingError) for e in chain):
        return f"truncated body: the connection broke in the middle of the answer ({chain[-1]})"
    if any(isinstance(e, requests.ConnectionError) for e in chain):
        return f"unreachable: {chain[-1]}"
    return str(chain[-1])


def podman_ping(url: str, timeout: float = 3.0) -> str:
    """Ping the podman API (podman-py: `PodmanClient.ping`, then `version`); returns
    "podman <version>". OSError (podman-py's APIError is one) when it does not answer OK;
    ValueError for a URL that is not a podman API URL. `edge-agent check`, the quickstart and
    the test infrastructure all wait for podman with this."""
    with podman_client(url, timeout=timeout) as client:
        if not client.ping():
            raise OSError(f"podman API at {url}: /_ping did not answer OK")
        version = client.version()
    return f"podman {version.get('Version', '?')}"
