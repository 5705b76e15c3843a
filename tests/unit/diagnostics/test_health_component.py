"""The health component: every sample in the reported state, one telemetry record per
TELEMETRY_EVERY_S (each costs SD card writes), module stats failures reported absent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import edge_agent.diagnostics.health_component as health_component
from edge_agent.config import parse_config
from edge_agent.diagnostics.health import HealthSampler, ModuleStatsResult
from edge_agent.diagnostics.health_component import HealthComponent
from edge_agent.reported import ReportedState
from edge_agent.telemetry.queue import Accepted, NewRecord, Outcome


async def test_samples_reported_each_time_telemetry_less_often(tmp_path: Path, monkeypatch: Any) -> None:
    config = parse_config(f'[state]\ndir = "{tmp_path}"\n[twin]\nreport_stats_interval_s = 1\n')
    queued: list[NewRecord] = []

    async def submit(record: NewRecord) -> Outcome:
        queued.append(record)
        return Accepted(str(len(queued)), len(queued))

    samples = 0

    def stats(url: str, device: str) -> ModuleStatsResult:
        nonlocal samples
        samples += 1
        return ModuleStatsResult(error="podman at x: unreachable")

    monkeypatch.setattr(health_component, "TELEMETRY_EVERY_S", 2.5)
    reported = ReportedState()
    # The clock says one interval passed per sample, whatever the machine's speed.
    component = HealthComponent(config, reported, submit, HealthSampler(state_dir=tmp_path), stats,
                                clock=lambda: float(samples))
    task = asyncio.create_task(component.run())
    try:
        while samples < 5:
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    health = reported.get("health")
    assert health["absent"]["modules"] == "podman at x: unreachable" and health["memory"]["totalBytes"] > 0
    assert len(queued) == 2  # samples at 1..5 "s": records at 1 and 4
    record = queued[0]
    assert (record.module, record.stream) == ("edge-agent", "health")
    assert json.loads(record.payload)["memory"]["totalBytes"] == health["memory"]["totalBytes"]
