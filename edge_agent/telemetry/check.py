"""`edge-agent check` line for the telemetry queue: the file is a sound SQLite database."""

from __future__ import annotations

import contextlib
import sqlite3

from edge_agent.checks import CheckResult
from edge_agent.config import AgentConfig
from edge_agent.telemetry.queue import QUEUE_DB_NAME


def check_telemetry_queue(config: AgentConfig) -> CheckResult:
    name = "telemetry queue"
    if not config.telemetry.enabled:
        return CheckResult(name, "pass", "telemetry disabled")
    path = config.state.dir / QUEUE_DB_NAME
    if not path.exists():
        return CheckResult(name, "pass", f"{path} not created yet (made on first start)")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            depth = db.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.Error as exc:
        return CheckResult(name, "fail", f"{path}: {exc}", "the agent moves a damaged queue aside on start")
    if verdict != "ok":
        return CheckResult(name, "fail", f"{path}: {verdict}", "the agent moves a damaged queue aside on start")
    return CheckResult(name, "pass", f"{path}: ok, {depth} records queued")
