"""Small helpers for the twin integration tests."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from edge_agent.fleet.client import FleetClient
from tests.infra.agent import AgentProcess

REPO = Path(__file__).resolve().parents[3]


def edgectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent.fleet.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


async def wait_reported(
    fleet: FleetClient, device: str, predicate: Any, timeout: float = 20, what: str = "reported state"
) -> dict[str, Any]:
    """Poll the retained reported document until predicate(doc) holds."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        view = await fleet.view(device)
        last = view.reported
        if last is not None and predicate(last):
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last reported: {json.dumps(last)[:2000]}")


def desired_section(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc.get("desired") or {})


def stored_desired(agent: AgentProcess) -> tuple[int, bytes] | None:
    """What the agent persisted (read-only, alongside the running agent: WAL allows it)."""
    db = sqlite3.connect(f"file:{agent.state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT version, payload FROM twin_desired WHERE id = 1").fetchone()
    finally:
        db.close()
    return None if row is None else (int(row[0]), bytes(row[1]))


def count(log: str, needle: str) -> int:
    return log.count(needle)
