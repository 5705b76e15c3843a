"""Broker endpoints: parsing `host:port` strings and choosing which broker to try next (pure).

The device names its brokers in order (`[mqtt] host`/`port` first, then `[mqtt] endpoints`).
Each endpoint is its own retry cause with the agent's per-cause capped exponential backoff
(shared/edge_shared/retry.py): an endpoint that failed waits 1x, 2x, 4x ... the initial delay before it is
tried again, and a successful connection forgets its failures. The next endpoint to try is the one
due first; among those already due, the first in the configured order. So:

- while connected, the agent stays where it is (it never leaves a working broker to go back to
  the first one: that would move a whole fleet at once and drop every session for nothing);
- when the connected broker is gone, that endpoint gets a failure, and the next endpoint that is
  not waiting out a backoff is tried at once; the first endpoint is preferred again as soon as its
  own backoff has passed;
- when every endpoint is failing, the agent waits for whichever is due first, so the delays grow
  across the list (not per endpoint from zero), capped at `reconnect_max_delay_s`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_shared.retry import Failure

MAX_ENDPOINTS = 16
# ASCII digits only: str.isdigit() and int() also take other scripts' digits ("٣" is 3).
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, order=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """`host`, `host:port`, `1.2.3.4:port`, `[::1]:port` or `::1`. Raises ValueError saying what
    is expected. The host name itself is checked by the caller (config has the one host rule).
    Nothing is trimmed or converted: "h:1883 " and "h:٣" are refused, not read as h:1883 and h:3."""
    if not text:
        raise ValueError("empty endpoint; expected host:port")
    if text != text.strip() or any(c.isspace() for c in text):
        raise ValueError(f"{text!r}: contains white space; expected host:port")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r}: '[' without ']'; expected [IPv6 address]:port")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6 address]:port")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a bare name, IPv4 address or IPv6 address without a port
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r}: no host; expected host:port")
    if port_text == "":
        if text.endswith(":"):
            raise ValueError(f"{text!r}: no port after ':'; expected host:port")
        return Endpoint(host, default_port)
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number 1-65535")
    return Endpoint(host, int(port_text))


def endpoint_list(first: Endpoint, more: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    """`host`/`port` first, then `endpoints` in order; a repeat (host:port written again in
    `endpoints`) is kept once, at its first place."""
    out: list[Endpoint] = []
    for endpoint in (first, *more):
        if endpoint not in out:
            out.append(endpoint)
    return tuple(out)


@dataclass(frozen=True)
class Choice:
    index: int  # into the endpoint list
    wait_s: float  # how long to wait before connecting (0: now)


def choose_endpoint(count: int, failures: Mapping[int, Failure], now: float) -> Choice:
    """The endpoint to connect to next: the first in order that is due (never failed, or its
    backoff has passed); when none is due, the one due soonest (ties: the first in order), with
    the wait until then. `failures` maps endpoint index to its current failure (retry.Failure)."""
    if count < 1:
        raise ValueError("no broker endpoints")
    for index in range(count):
        failure = failures.get(index)
        if failure is None or failure.next_at <= now:
            return Choice(index, 0.0)
    soonest = min(range(count), key=lambda i: (failures[i].next_at, i))
    return Choice(soonest, failures[soonest].next_at - now)
