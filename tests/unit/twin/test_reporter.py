"""Reporter: coalesced, rate-limited, re-published after reconnect, no secrets."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.reported import ReportedState
from edge_agent.twin.reporter import Reporter, agent_section


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.01)


class FakeSession:
    def __init__(self) -> None:
        self.generation = 1
        self.sent: list[tuple[str, dict[str, Any], bool]] = []
        self._event = asyncio.Event()

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, timeout: float | None = None
    ) -> None:
        self.sent.append((topic, json.loads(payload), retain))

    async def wait_generation_after(self, generation: int) -> int:
        while self.generation <= generation:
            event = self._event
            await event.wait()
        return self.generation

    def reconnect(self) -> None:
        self.generation += 1
        event, self._event = self._event, asyncio.Event()
        event.set()


async def test_many_updates_become_few_publishes_with_the_latest_state() -> None:
    reported = ReportedState()
    session = FakeSession()
    reporter = Reporter(reported, session, session, "p/d/reported", "d", min_interval_s=0.2)
    task = asyncio.create_task(reporter.run())
    try:
        start = time.monotonic()
        for i in range(200):
            reported.set("modules", {"m": {"restartCount": i}})
            await asyncio.sleep(0.001)
        await until(lambda: bool(session.sent) and session.sent[-1][1]["modules"]["m"]["restartCount"] == 199)
        # at most one publish per 0.2 s (plus the first) however long the updates took: a handful, not 200
        assert len(session.sent) <= (time.monotonic() - start) / 0.2 + 1, len(session.sent)
        topic, last, retain = session.sent[-1]
        assert topic == "p/d/reported" and retain
        assert last["modules"]["m"]["restartCount"] == 199
        assert last["schema"] == 1 and last["deviceId"] == "d"
        assert [s[1]["sequence"] for s in session.sent] == list(range(1, len(session.sent) + 1))

        # Nothing changes: nothing is sent.
        count = len(session.sent)
        await asyncio.sleep(0.5)
        assert len(session.sent) == count
        # A reconnect re-publishes the same state once.
        session.reconnect()
        await until(lambda: len(session.sent) > count)
        await asyncio.sleep(0.5)  # and only once
        assert len(session.sent) == count + 1
        assert session.sent[-1][1]["modules"] == last["modules"]
    finally:
        task.cancel()


def test_agent_section_figures_and_no_secrets(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", "hunter2-secret")
    section = agent_section(0.0, tmp_path)
    assert section["os"] and section["arch"] and section["uptimeS"] >= 0
    assert section["disk"]["freeBytes"] > 0 and section["memory"]["availableBytes"] > 0
    assert section["memory"]["agentRssBytes"] > 0
    assert "hunter2" not in json.dumps(section) and os.environ["EDGE_MQTT_PASSWORD"] not in json.dumps(section)
