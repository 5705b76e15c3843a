"""The supervisor names the real cause of a component failure (an ExceptionGroup from a TaskGroup
says only "unhandled errors in a TaskGroup") and logs the traceback once per cause."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.daemon import Agent


class CrashLoop(BaseComponent):
    """Fails twice the same way, the way a component with a TaskGroup inside does, then returns."""

    name = "twin"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs > 2:
            return

        async def publish() -> None:
            raise ValueError("topic too long: 70006 bytes")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(publish())


def test_crash_loop_names_the_cause_and_logs_one_traceback(caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(AgentConfig(), Path("/nonexistent/config.toml"))
    component = CrashLoop()
    with caplog.at_level(logging.ERROR, logger="edge_agent.daemon"):
        asyncio.run(agent._supervise(component))
    assert component.runs == 3
    assert agent.component_errors["twin"] == "ValueError: topic too long: 70006 bytes"
    failures = [r for r in caplog.records if getattr(r, "EVENT", None) == "component.failed"]
    assert len(failures) == 2
    assert "component twin failed (ValueError: topic too long: 70006 bytes)" in failures[0].getMessage()
    assert "TaskGroup" not in failures[0].getMessage()
    assert failures[0].exc_info is not None and isinstance(failures[0].exc_info[1], ExceptionGroup)
    assert failures[1].exc_info is None and "same failure again" in failures[1].getMessage()
