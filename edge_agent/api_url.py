"""Where the podman API is: the one parser of the `[podman] socket` URL, and the libpod path prefix.

The asyncio client (runtime/async_http.py) and the blocking callers (unix_http.py: `edge-agent
check`'s ping, `edge-agent logs`, the trust cache's image-id lookup) all go through
`parse_api_url`. Accepted forms, those podman-py accepted minus ssh:
  unix:///run/podman/podman.sock                 (the usual one)
  http+unix://%2Frun%2Fpodman%2Fpodman.sock  or  http+unix:///run/podman/podman.sock
  tcp://HOST:PORT  or  http://HOST:PORT          (`podman system service tcp:...`: no TLS, no auth)
Stdlib only and no http.client, so the podman adapter's import stays small.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

# Every libpod call is made against API version 4.0.0: the minimal libpod API podman 4.x and 5.x
# declare, which podman 4.3 (Debian bookworm) serves, and which pins the few version-gated answers
# to their 4.x form whatever the server's own version.
LIBPOD_PREFIX = "/v4.0.0/libpod"


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
