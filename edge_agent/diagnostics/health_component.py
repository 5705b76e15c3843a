"""The health component: samples the device's health (diagnostics/health.py) every
`twin.report_stats_interval_s`, puts it in the reported state ("health", also shown by
`edge-agent status`) and queues it as telemetry (stream "health", module "edge-agent") every
TELEMETRY_EVERY_S (an SD card wears out: each record stored is at least one fsync'd commit,
docs/telemetry.md "Storage writes"). Its storageWrites figure sets the agent's writes against the
telemetry records stored in the same window (`telemetry_totals`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.diagnostics.health import HealthSampler, ModuleStatsResult
from edge_agent.diagnostics.podman_probe import read_module_stats
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.telemetry.policy import DEFAULT_PRIORITY
from edge_agent.telemetry.queue import NewRecord, Outcome, Refused
from edge_shared.threads import run_blocking

log = get_logger(__name__)
TELEMETRY_STREAM = "health"
TELEMETRY_MODULE = "edge-agent"  # the agent's own records; module names of containers cannot have this
TELEMETRY_EVERY_S = 300.0
Submit = Callable[[NewRecord], Awaitable[Outcome]]


class HealthComponent(BaseComponent):
    name = "health"

    def __init__(self, config: AgentConfig, reported: ReportedState, submit: Submit | None = None,
                 sampler: HealthSampler | None = None,
                 module_stats: Callable[[str, str], ModuleStatsResult] = read_module_stats,
                 clock: Callable[[], float] = time.monotonic,
                 telemetry_totals: Callable[[], tuple[int, int]] | None = None) -> None:
        self.config = config
        self.reported = reported
        self.submit = submit
        self.sampler = sampler or HealthSampler(state_dir=config.state.dir)
        self.module_stats = module_stats
        self.clock = clock
        self.telemetry_totals = telemetry_totals
        self.last: dict[str, Any] = {}
        self._queued_at: float | None = None  # monotonic time of the last health record queued

    async def sample_once(self) -> dict[str, Any]:
        modules = await run_blocking(self.module_stats, self.config.podman.socket, self.config.device.id)
        totals = self.telemetry_totals() if self.telemetry_totals is not None else (0, 0)
        sample = await run_blocking(self.sampler.sample, modules, None, totals)
        self.last = sample
        self.reported.set("health", sample)
        return sample

    async def run(self) -> None:
        while True:
            sample = await self.sample_once()
            now = self.clock()
            if self.submit is not None and (self._queued_at is None or now - self._queued_at >= TELEMETRY_EVERY_S):
                self._queued_at = now
                record = NewRecord(TELEMETRY_MODULE, TELEMETRY_STREAM, DEFAULT_PRIORITY, time.time(),
                                   json.dumps(sample, separators=(",", ":"), sort_keys=True).encode())
                outcome = await self.submit(record)
                if isinstance(outcome, Refused):
                    log.debug("health record not queued: %s", outcome.error, extra={"EVENT": "health.not_queued"})
            await asyncio.sleep(self.config.twin.report_stats_interval_s)

    async def apply_config(self, config: AgentConfig) -> None:
        self.config = config
