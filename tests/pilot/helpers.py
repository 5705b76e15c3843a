"""Helpers of the pilot's tests: a real-time drive loop in a thread, waiting for a condition, and
the stats in a pilot's log line."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_pilot.drive import DriveLoop


class LoopThread:
    def __init__(self, loop: DriveLoop):
        self.loop = loop
        self.totals: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.totals = self.loop.run()

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.stop()
        self.thread.join(5)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def stats_in(line: str) -> dict[str, Any] | None:
    """The stats of a pilot log line ("... stats pilot.stats {...} event=..."), None for other lines."""
    if "stats pilot.stats " not in line:
        return None
    stats: dict[str, Any] = json.loads(line.split("stats pilot.stats ", 1)[1].rsplit(" event=", 1)[0])
    return stats
