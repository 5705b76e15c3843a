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

from devinfra.agent import AgentProcess
from edgectl.client import FleetClient

REPO = Path(__file__).resolve().parents[3]


def edgectl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args],
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


def deployment_section(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc.get("deployment") or {})


def version_state(doc: dict[str, Any], version: int) -> str | None:
    entry = (deployment_section(doc).get("versions") or {}).get(str(version)) or {}
    return entry.get("state")


def refused_code(doc: dict[str, Any]) -> str | None:
    return (deployment_section(doc).get("lastRefused") or {}).get("code")


STATE_TABLES = ("desired_accepted", "desired_versions", "deployment_slots", "trust_document_keys", "meta")


def stored_state(agent: AgentProcess) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the desired-state room and the reconciler keep (read alongside the running agent:
    WAL allows it), to show that refused input changed nothing."""
    db = sqlite3.connect(f"file:{agent.state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        out = {}
        for table in STATE_TABLES:
            rows = db.execute(f"SELECT * FROM {table}").fetchall()
            out[table] = sorted(r for r in rows if table != "meta" or str(r[0]).startswith("trust."))
        return out
    finally:
        db.close()


def stored_version(agent: AgentProcess) -> int | None:
    rows = stored_state(agent)["desired_accepted"]
    return int(rows[0][1]) if rows else None


def count(log: str, needle: str) -> int:
    return log.count(needle)
