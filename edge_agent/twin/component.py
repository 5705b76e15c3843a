"""TwinComponent: receives desired documents, decides, persists, hands over; reports state.

start() (no network): loads the last accepted document from state.db and hands it to the
deployment layer at once, so a device that boots without network runs its last deployment.
run(): the MQTT session, the reporter and the agent-figures refresh.

For every received desired document: evaluate (size, UTF-8, depth, JSON, schema, types,
signature gate, replay, deployment validator) -> persist -> hand over. A refusal is logged,
reported as lastDesiredStatus and leaves the stored and running deployment untouched.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.logs import get_logger
from edge_agent.mqtt_params import broker_params
from edge_agent.reported import ReportedState
from edge_agent.twin.document import (
    DeploymentValidator,
    Limits,
    SignatureGate,
    default_deployment_validator,
    evaluate,
    identity_gate,
    parse_desired,
    peek_version,
)
from edge_agent.twin.events import DesiredRejected, DesiredState
from edge_agent.twin.protocol import DeviceTopics
from edge_agent.twin.reporter import Reporter
from edge_agent.twin.session import TwinSession
from edge_agent.twin.store import DesiredStore

log = get_logger(__name__)

DesiredCallback = Callable[[DesiredState], Awaitable[None]]


class TwinComponent(BaseComponent):
    name = "twin"

    def __init__(
        self,
        config: AgentConfig,
        db: sqlite3.Connection,
        reported: ReportedState,
        on_desired: DesiredCallback,
        *,
        validate_deployment: DeploymentValidator = default_deployment_validator,
        signature_gate: SignatureGate = identity_gate,
        started_monotonic: float | None = None,
    ) -> None:
        self.config = config
        self.reported = reported
        self.on_desired = on_desired
        self.validate_deployment = validate_deployment
        self.signature_gate = signature_gate
        self.limits = Limits(config.twin.max_desired_bytes, config.twin.max_desired_depth)
        self.store = DesiredStore(db)
        self.topics = DeviceTopics(config.mqtt.topic_prefix, config.device.id)
        self.current: DesiredState | None = None
        self._digest: str | None = None
        self._lock = asyncio.Lock()
        # Built now (no I/O) so other components can register commands and publish through it.
        self.session = TwinSession(
            lambda: broker_params(config.mqtt, config.device.id),
            self.topics,
            self.handle_desired,
            reconnect_max_delay_s=config.mqtt.reconnect_max_delay_s,
            session_expiry_s=config.mqtt.session_expiry_s,
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

    async def start(self) -> None:
        started = time.monotonic()
        saved = self.store.load_status() or {}
        status, last_version = saved.get("status"), saved.get("lastDesiredVersion")
        stored = self.store.load()
        if stored is None:
            self._report(status or {"code": "none", "description": "no desired document received yet"}, last_version)
            log.info("no stored desired document; waiting for the fleet", extra={"EVENT": "desired.none_stored"})
            return
        try:
            # The stored bytes are the signature gate's output, checked when they arrived; a
            # signature that expired since must not leave a rebooted device idle.
            doc = parse_desired(stored.payload, self.limits)
        except DesiredRejected as exc:
            log.error(
                "stored desired document version %d is unreadable (%s); waiting for the fleet",
                stored.version,
                exc,
                extra={"EVENT": "desired.stored_invalid"},
            )
            self._report({"code": "stored_invalid", "description": str(exc)}, stored.version)
            return
        self._digest = stored.digest
        state = DesiredState(doc.version, doc.deployment, doc.properties, source="stored")
        self.current = state
        if status is None:
            status, last_version = {"code": "ok", "description": f"accepted version {doc.version}"}, doc.version
        self._report(status, last_version)
        await self._hand_over(state)
        log.info(
            "stored desired document version %d handed over in %.0f ms (before any network)",
            doc.version,
            (time.monotonic() - started) * 1000,
            extra={"EVENT": "desired.handed_over", "DEPLOYMENT": str(doc.version), "SOURCE": "stored"},
        )

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
        async with self._lock:
            await self._handle(raw)

    async def _handle(self, raw: bytes) -> None:
        accepted = self.current.version if self.current else None
        if not raw:
            cleared = "the retained desired document was deleted; keeping the running deployment"
            self._refuse(DesiredRejected("cleared", cleared), None)
            return
        try:
            verdict, doc, payload = evaluate(
                raw,
                last_version=accepted,
                last_digest=self._digest,
                limits=self.limits,
                signature_gate=self.signature_gate,
                validate_deployment=self.validate_deployment,
            )
        except DesiredRejected as exc:
            self._refuse(exc, peek_version(raw, self.limits))
            return
        except Exception as exc:  # a validator or gate bug must not take the twin down
            log.exception("desired document check failed unexpectedly")
            problem = DesiredRejected("internal_error", f"{type(exc).__name__}: {exc}")
            self._refuse(problem, peek_version(raw, self.limits))
            return
        if verdict == "duplicate":
            log.debug("desired version %d received again; nothing to do", doc.version)
            return
        status = {"code": "ok", "description": f"accepted version {doc.version}"}
        # Persisted (one transaction with its status) before anyone acts on it.
        try:
            self.store.save(doc.version, doc.digest, payload, {"status": status, "lastDesiredVersion": doc.version})
        except sqlite3.Error as exc:  # disk full, read-only filesystem: do not act on what is not stored
            log.error(
                "cannot store desired version %d (%s); not applying it",
                doc.version,
                exc,
                extra={"EVENT": "desired.store_failed", "DEPLOYMENT": str(doc.version)},
            )
            self._report({"code": "store_failed", "description": f"cannot persist the document: {exc}"}, doc.version)
            return
        self._digest = doc.digest
        state = DesiredState(doc.version, doc.deployment, doc.properties, source="broker")
        self.current = state
        self._report(status, doc.version)
        log.info(
            "desired document version %d accepted",
            doc.version,
            extra={"EVENT": "desired.accepted", "DEPLOYMENT": str(doc.version)},
        )
        await self._hand_over(state)

    def _refuse(self, exc: DesiredRejected, version: int | None) -> None:
        log.warning(
            "desired document%s refused: %s: %s (keeping version %s)",
            f" version {version}" if version is not None else "",
            exc.code,
            exc.description,
            self.current.version if self.current else "none",
            extra={"EVENT": "desired.rejected", "CODE": exc.code},
        )
        self._set_status({"code": exc.code, "description": exc.description}, version)

    async def _hand_over(self, state: DesiredState) -> None:
        try:
            await self.on_desired(state)
        except Exception as exc:
            log.exception(
                "deployment layer failed to take desired version %d",
                state.version,
                extra={"EVENT": "desired.handover_failed", "DEPLOYMENT": str(state.version)},
            )
            self._report({"code": "handover_failed", "description": f"{type(exc).__name__}: {exc}"}, state.version)

    def _set_status(self, status: dict[str, Any], version: int | None) -> None:
        self.store.save_status({"status": status, "lastDesiredVersion": version})
        self._report(status, version)

    def _report(self, status: Mapping[str, Any], last_version: int | None) -> None:
        self.reported.set(
            "desired",
            {
                "acceptedVersion": self.current.version if self.current else None,
                "lastDesiredVersion": last_version,
                "lastDesiredStatus": dict(status),
            },
        )

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "device": self.config.device.id,
            "acceptedVersion": self.current.version if self.current else None,
            "echo": args.get("echo"),
        }
