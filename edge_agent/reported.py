"""The device's reported state, assembled from sections that components own.

Components call `reported.set("modules", {...})`; the twin publisher waits for `changed()` and
publishes the latest whole document (coalescing: many updates between two publishes become one).
`edge-agent status` reads the same sections over the control socket.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value (what sections are), several times faster than copy.deepcopy,
    which the desired-state room's report of every document went through; anything else is
    deep-copied as before."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    if value is None or isinstance(value, str | int | float):
        return value
    return copy.deepcopy(value)


class ReportedState:
    def __init__(self) -> None:
        self._sections: dict[str, Any] = {}
        self._version = 0
        self._changed = asyncio.Event()

    @property
    def version(self) -> int:
        return self._version

    def set(self, section: str, value: Any, *, handed_over: bool = False) -> None:
        """`handed_over`: the caller built `value` for this call and keeps no reference to it, so
        it is kept as it is (the desired-state room's section, set twice per document)."""
        if self._sections.get(section) == value:
            return
        self._sections[section] = value if handed_over else copy_json(value)
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
