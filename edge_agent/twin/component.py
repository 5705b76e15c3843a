"""TwinComponent: the transport of the desired state. Receives the payloads of the desired topic and
hands each, as bytes, to the desired-state room (edge_agent/desired/manager.py), which checks,
pins, stores and reports them; publishes the reported state; answers `ping`.

run(): the MQTT session, the reporter and the agent-figures refresh. The session asks the broker
for packets no larger than the desired-document limit allows (MQTT 5 Maximum Packet Size on
CONNECT), so an oversized document is dropped by the broker and never reaches memory here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.twin.reporter import Reporter
from edge_agent.twin.session import MAX_COMMAND_BYTES, TwinSession
from edge_shared.broker_endpoints import Endpoint
from edge_shared.mqtt_params import broker_params
from edge_shared.protocol import DeviceTopics

log = get_logger(__name__)

DesiredSink = Callable[[bytes], object]
# Room for the topic name and MQTT 5 properties around the largest document or command.
PACKET_OVERHEAD_BYTES = 16 * 1024


def max_packet_bytes(config: AgentConfig) -> int:
    """The largest MQTT packet this device accepts: its largest desired document or command."""
    return max(config.twin.max_desired_bytes, MAX_COMMAND_BYTES) + PACKET_OVERHEAD_BYTES


class TwinComponent(BaseComponent):
    name = "twin"

    def __init__(
        self,
        config: AgentConfig,
        reported: ReportedState,
        on_desired: DesiredSink,
        *,
        started_monotonic: float | None = None,
    ) -> None:
        self.config = config
        self.reported = reported
        self.on_desired = on_desired
        self.topics = DeviceTopics(config.mqtt.topic_prefix, config.device.id)
        # Built now (no I/O) so other components can register commands and publish through it.
        self.session = TwinSession(
            lambda: broker_params(config.mqtt, config.device.id),
            self.topics,
            self.handle_desired,
            reconnect_max_delay_s=config.mqtt.reconnect_max_delay_s,
            session_expiry_s=config.mqtt.session_expiry_s,
            max_packet_bytes=max_packet_bytes(config),
            on_endpoint=self._broker_changed,
        )
        self.reporter = Reporter(
            reported,
            self.session,
            self.session,
            self.topics.reported,
            config.device.id,
            min_interval_s=config.twin.report_min_interval_s,
            stats_interval_s=config.twin.report_stats_interval_s,
            started_monotonic=started_monotonic,
            state_dir=Path(config.state.dir),
        )
        self.session.commands.register("ping", self._ping)

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.session.run(), name="twin-session")
            tg.create_task(self.reporter.run(), name="twin-reporter")

    async def apply_config(self, config: AgentConfig) -> None:
        if config.mqtt != self.config.mqtt or config.twin != self.config.twin or config.device != self.config.device:
            log.warning(
                "mqtt/twin/device settings changed: they take effect after a restart",
                extra={"EVENT": "config.restart_needed"},
            )

    # ----------------------------------------------------------------- desired documents

    async def handle_desired(self, raw: bytes) -> None:
        try:
            self.on_desired(raw)
        except Exception:  # a bug in the room must not take the MQTT session down
            log.exception("desired document handling failed unexpectedly",
                          extra={"EVENT": "desired.internal_error"})

    def _broker_changed(self, endpoint: Endpoint, connected: bool) -> None:
        """The `broker` section: which of the configured endpoints the device is connected to
        (`edge-agent status` shows it; the fleet sees it in the reported state)."""
        endpoints = self.config.mqtt.broker_endpoints()
        self.reported.set(
            "broker",
            {
                "endpoint": str(endpoint),
                "connected": connected,
                "index": endpoints.index(endpoint) + 1 if endpoint in endpoints else None,
                "endpoints": [str(e) for e in endpoints],
            },
        )

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "device": self.config.device.id,
            "current": (self.reported.get("deployment") or {}).get("current"),
            "echo": args.get("echo"),
        }
