"""`edge-agent status` sets the agent's storage writes against the telemetry records stored: a real
agent, a module sending records, the health sampler reading the agent's /proc/self/io."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devinfra.agent import AgentProcess
from devinfra.mosquitto import Mosquitto
from devinfra.procs import wait_until
from devinfra.telemetry import BROKER_CONF, IngestClient, agent_config
from edge_shared.health_view import health_lines


def test_status_reports_bytes_written_per_record_stored(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto", extra_conf=BROKER_CONF).start()
    config = agent_config(broker.port, tmp_path / "run", ["sensor"]) + "[twin]\nreport_stats_interval_s = 2\n"
    agent = AgentProcess(tmp_path / "agent", config).start()
    try:
        with IngestClient(tmp_path / "run/ingest/sensor/telemetry.sock") as sensor:
            sent = 0

            def figures() -> dict[str, Any]:
                status: Any = agent.call("status")
                return (status["reported"].get("health") or {}).get("storageWrites") or {}

            def has_per_record_figure() -> bool:
                nonlocal sent
                answer = sensor.send("s", {"i": sent, "pad": "p" * 500}, key=f"k-{sent}")
                assert answer["ok"], answer
                sent += 1
                time.sleep(0.2)  # a module's pace, not a deadline: the wait below is for the figure
                return "bytesPerRecord" in figures()

            wait_until(has_per_record_figure, 300, "health.storageWrites with a per-record figure", interval=0)
        got = figures()
        # (the agent's own health record, queued at start, counts too)
        assert 0 < got["records"] <= sent + 1 and got["bytesPerRecord"] > 0
        # Each record is at least one fsync'd commit: more written than the records' own bytes.
        assert got["timesRecordBytes"] > 1
        # The same window: bytes per record times records is what the hourly rate says was written.
        written = got["bytesPerHour"] * got["windowS"] / 3600
        assert got["bytesPerRecord"] * got["records"] == pytest.approx(written, rel=0.05)
        status: Any = agent.call("status")
        assert "per telemetry record stored" in "\n".join(health_lines(status["reported"]["health"]))
    finally:
        agent.stop()
        broker.stop()
