"""Signals that arrive before the agent's event loop takes them over.

`edge-agent run` calls `catch_early_signals()` first thing (before the config is read and the
components start). Until the daemon installs its asyncio handlers, SIGHUP, SIGTERM and SIGINT are
only recorded here, instead of killing the process (SIGHUP's default action, exit code 129); the
daemon then acts on them: a stop stops, a reload is done once the agent is READY.
"""

from __future__ import annotations

import signal
from types import FrameType

EARLY_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
_received: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)


def catch_early_signals() -> None:
    for sig in EARLY_SIGNALS:
        signal.signal(sig, _record)


def take_early_signals() -> list[signal.Signals]:
    """The signals recorded so far, in order; forgets them."""
    out = [signal.Signals(s) for s in _received]
    _received.clear()
    return out
