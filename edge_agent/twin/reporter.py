"""Publishes the reported document: the latest whole state, coalesced and rate-limited.

Components update sections of ReportedState as often as they like; this loop publishes at
most once per `min_interval_s`, always the newest snapshot (ten updates in between become one
message), retained with QoS 1. It also publishes again after every reconnect, so a broker that
lost its retained messages is put right. Agent figures (uptime, disk, memory) are refreshed
every `stats_interval_s`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.twin.session import Publisher
from edge_shared import protocol

log = get_logger(__name__)


class ConnectionWatcher(Protocol):
    generation: int

    async def wait_generation_after(self, generation: int) -> int: ...


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def agent_section(started_monotonic: float, state_dir: Path) -> dict[str, Any]:
    """The "agent" section: what runs and how much room it has. No paths beyond the state dir,
    no config values, nothing secret."""
    section: dict[str, Any] = {
        "version": __version__,
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "uptimeS": round(time.monotonic() - started_monotonic),
    }
    try:
        usage = shutil.disk_usage(state_dir)
        section["disk"] = {"path": str(state_dir), "totalBytes": usage.total, "freeBytes": usage.free}
    except OSError:
        pass
    mem = _meminfo()
    if mem:
        section["memory"] = {"totalBytes": mem.get("MemTotal"), "availableBytes": mem.get("MemAvailable")}
    rss = _rss_bytes()
    if rss is not None:
        section.setdefault("memory", {})["agentRssBytes"] = rss
    return section


class Reporter:
    def __init__(
        self,
        reported: ReportedState,
        publisher: Publisher,
        connection: ConnectionWatcher,
        topic: str,
        device_id: str,
        *,
        min_interval_s: float = 1.0,
        stats_interval_s: float = 60.0,
        started_monotonic: float | None = None,
        state_dir: Path | None = None,
    ) -> None:
        self.reported = reported
        self.publisher = publisher
        self.connection = connection
        self.topic = topic
        self.device_id = device_id
        self.min_interval_s = min_interval_s
        self.stats_interval_s = stats_interval_s
        self.started_monotonic = started_monotonic if started_monotonic is not None else time.monotonic()
        self.state_dir = state_dir
        self.published = 0  # documents sent (for tests and status)
        self.sequence = 0

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.state_dir is not None:
                tg.create_task(self._refresh_stats())
            tg.create_task(self._publish_loop())

    async def _refresh_stats(self) -> None:
        assert self.state_dir is not None
        while True:
            self.reported.set("agent", agent_section(self.started_monotonic, self.state_dir))
            await asyncio.sleep(self.stats_interval_s)

    async def _publish_loop(self) -> None:
        seen_version = -1
        seen_generation = 0
        while True:
            seen_generation = await self._wait_for_news(seen_version, seen_generation)
            seen_version = self.reported.version
            self.sequence += 1
            payload = protocol.reported_document(self.device_id, self.sequence, self.reported.snapshot())
            await self.publisher.publish(self.topic, payload, qos=1, retain=True)
            # Published on the current connection, so that reconnect needs no second copy.
            seen_generation = max(seen_generation, self.connection.generation)
            self.published += 1
            log.debug("reported state published (%d bytes)", len(payload), extra={"EVENT": "reported.published"})
            await asyncio.sleep(self.min_interval_s)

    async def _wait_for_news(self, seen_version: int, seen_generation: int) -> int:
        """Return when the state changed or the session reconnected; the new generation."""
        if self.reported.version > seen_version:
            return max(seen_generation, self.connection.generation)
        if self.connection.generation > seen_generation:
            return self.connection.generation
        changed = asyncio.ensure_future(self.reported.changed(seen_version))
        reconnected = asyncio.ensure_future(self.connection.wait_generation_after(seen_generation))
        try:
            await asyncio.wait({changed, reconnected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            reconnected.cancel()
        return max(seen_generation, self.connection.generation)
