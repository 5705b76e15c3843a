"""The device's reported state, assembled from sections that components own.

Components call `reported.set("modules", {...})`; the twin publisher waits for `changed()` and
publishes the latest whole document (coalescing: many updates between two publishes become one).
`edge-agent status` reads the same sections over the control socket.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any


class ReportedState:
    def __init__(self) -> None:
        self._sections: dict[str, Any] = {}
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def set(self, section: str, value: Any) -> None:
        if self._sections.get(section) == value:
            return
        self._sections[section] = copy.deepcopy(value)
        self._version += 1
        self._changed.set()

    def get(self, section: str) -> Any:
        return copy.deepcopy(self._sections.get(section))

    def snapshot(self) -> dict[str, Any]:
        """Every section, to read (encode, show), not to change: the sections are the copies set()
        made, replaced whole and never changed in place, so a shallow copy suffices (a deep copy
        per published report cost more than encoding it: bench/fleet_bench.py --profile)."""
        return dict(self._sections)

    async def changed(self, seen_version: int) -> int:
        """Wait until the version moves past `seen_version`; returns the new version."""
        while self._version <= seen_version:
            self._changed.clear()
            await self._changed.wait()
        return self._version
