"""The telemetry component: per-module ingest sockets -> group commit into the SQLite queue ->
uplink over MQTT; TTL sweeps, figures in reported state ("telemetry") and `edge-agent status`.

Wiring: daemon.build_components adds `TelemetryComponent(ctx.config, ctx.reported, ctx.control,
publisher=twin.session)`: uploads share the device's one MQTT connection (TwinSession.publish_once).
Module lifecycle calls `await open_module(name)` before it creates a module's container, mounts the
directory `ingest_mount_dir(name)` at /run/edge-agent (the socket is then
/run/edge-agent/telemetry.sock inside; mount the directory, not the socket file, see ingest.py),
and calls `await close_module(name)` when it removes the module. Sockets stay open while the
component's run() is restarted after a failure; they are removed when the agent stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.control import ControlServer
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import ContainerRequest, MountRequest
from edge_agent.telemetry.ingest import ModuleIngestServer
from edge_agent.telemetry.ingest import ingest_mount_dir as _mount_dir
from edge_agent.telemetry.ingest import ingest_socket_path as _socket_path
from edge_agent.telemetry.policy import rules_from_config
from edge_agent.telemetry.queue import QUEUE_DB_NAME, Accepted, NewRecord, Outcome, Refused, TelemetryQueue
from edge_agent.telemetry.uplink import Publisher, Uplink

log = get_logger(__name__)
CONTAINER_INGEST_DIR = "/run/edge-agent"  # where a module finds telemetry.sock
T = TypeVar("T")

GROUP_MAX_RECORDS = 1000
GROUP_MAX_BYTES = 1024 * 1024  # bounds one transaction, hence the WAL
REPORT_INTERVAL_S = 2.0
EXPIRE_INTERVAL_S = 5.0


class TelemetryComponent(BaseComponent):
    name = "telemetry"

    def __init__(
        self,
        config: AgentConfig,
        reported: ReportedState,
        control: ControlServer | None,
        publisher: Publisher,
    ) -> None:
        self.config = config
        self.reported = reported
        self.section = config.telemetry
        self.queue = TelemetryQueue(
            config.state.dir / QUEUE_DB_NAME,
            self.section.cap_bytes,
            rules_from_config(self.section),
            self.section.synchronous,
            key_window_s=self.section.idempotency_window_s,
            key_max=self.section.idempotency_max_keys,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telemetry-db")
        self.publisher = publisher
        self._pending: asyncio.Queue[tuple[NewRecord, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._new_data = asyncio.Event()
        self._modules: set[str] = set(self.section.modules)
        self._module_deployment: dict[str, int | None] = {}  # module -> version it was started for
        self._current_seen: tuple[int, int | None] = (-1, None)  # (reported.version, current deployment)
        self._servers: dict[str, ModuleIngestServer] = {}
        self._running = False
        self._started = False
        self._commit_started: float | None = None
        # Records stored since the agent started and their own bytes (what the modules sent): the
        # health component sets the agent's storage writes against them.
        self.acknowledged_records = 0
        self.acknowledged_bytes = 0
        # Told of every record a module sends, before it is queued (must not block or raise).
        self.observers: list[Callable[[str, str, bytes], None]] = []
        self.uplink = self._make_uplink()
        if control is not None:
            control.register("telemetry", self._status_command)

    def _make_uplink(self) -> Uplink:
        s = self.section
        return Uplink(
            self.queue,
            self._db,
            self.publisher,
            self.config.mqtt.topic_prefix,
            self.config.device.id,
            batch_max_records=s.batch_max_records,
            batch_max_bytes=s.batch_max_bytes,
            inflight=s.inflight_batches,
            compress=s.compression == "zlib",
            new_data=self._new_data,
        )

    # ------------------------------------------------------------------ public API

    def ingest_socket_path(self, module: str) -> Path:
        """Where `module`'s socket is on the host."""
        return _socket_path(self.section.runtime_dir, module)

    def ingest_mount_dir(self, module: str) -> Path:
        """The host directory to bind-mount at /run/edge-agent in `module`'s container."""
        return _mount_dir(self.section.runtime_dir, module)

    async def open_module(self, module: str) -> Path:
        """Serve `module`'s ingest socket now (idempotent). Returns the socket's host path.
        Records sent before the component runs wait for it (the module just sees a slow answer)."""
        path = self.ingest_socket_path(module)
        self._modules.add(module)
        if module not in self._servers:
            await self._open(module)
        return path

    async def close_module(self, module: str) -> None:
        """Stop serving `module`'s socket and remove it. Its queued records stay and are sent."""
        self._modules.discard(module)
        server = self._servers.pop(module, None)
        if server is not None:
            await server.close(remove_dir=True)

    # ModuleHooks (edge_agent.deployment.hooks): every module container gets its own socket.

    async def before_create(self, module: str, request: ContainerRequest) -> ContainerRequest:
        """Serve the module's socket and mount its folder (not the socket file: a restarted agent
        makes a new socket there) at /run/edge-agent in the container, read-only."""
        await self.open_module(module)
        mount = MountRequest(str(self.ingest_mount_dir(module)), CONTAINER_INGEST_DIR, read_only=True)
        env = {**request.env, "EDGE_TELEMETRY_SOCKET": f"{CONTAINER_INGEST_DIR}/telemetry.sock"}
        return dataclasses.replace(request, mounts=(*request.mounts, mount), env=env)

    async def before_start(self, module: str, image: str, deployment: int | None) -> None:
        # Records are attributed to the deployment version the module was started for, so the
        # fleet can compare versions (edgectl compare) from the telemetry alone.
        self._module_deployment[module] = deployment
        await self.open_module(module)  # after an agent restart, adopted modules need theirs again

    async def after_remove(self, module: str) -> None:
        await self.close_module(module)

    def _current_deployment(self) -> int | None:
        """The device's current deployment version, read from the reported state only when that
        changed (it is copied on every read)."""
        if self._current_seen[0] != self.reported.version:
            current = (self.reported.get("deployment") or {}).get("current")
            self._current_seen = (self.reported.version, current if isinstance(current, int) else None)
        return self._current_seen[1]

    async def submit(self, record: NewRecord) -> Outcome:
        for observe in self.observers:  # e.g. which artifact a module says it uses (artifacts/modules.py)
            observe(record.module, record.stream, record.payload)
        deployment = self._module_deployment.get(record.module)
        if deployment is None:  # adopted after an agent restart (not started by this agent run)
            deployment = self._current_deployment()
        if deployment is not None and record.deployment is None:
            record = dataclasses.replace(record, deployment=deployment)
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((record, fut))
        return await fut

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # A queue that cannot be opened (e.g. a full disk) must not keep the agent from starting:
        # run() keeps trying, and modules get no socket (nothing stored) meanwhile.
        if await self._try_open():
            await self._db(self.queue.expire)
            await self._report()
        # Sockets exist by READY=1, so modules started after the agent find them.
        for module in sorted(self._modules - set(self._servers)):
            await self._open(module)

    async def _try_open(self) -> bool:
        if not self._started:
            try:
                await self._db(self.queue.open)
            except Exception as exc:
                log.error(
                    "cannot open the telemetry queue %s: %s", self.queue.path, exc,
                    extra={"EVENT": "telemetry.queue_unavailable"},
                )
                self.reported.set("telemetry", {"status": "unavailable", "error": str(exc)})
                return False
            self._started = True
        return True

    async def run(self) -> None:
        while not await self._try_open():  # noqa: ASYNC110 - polling the disk, no event to wait on
            await asyncio.sleep(5)
        self._running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._commit_loop(), name="telemetry-commit")
                for module in sorted(self._modules - set(self._servers)):
                    await self._open(module)
                tg.create_task(self.uplink.run(), name="telemetry-uplink")
                tg.create_task(self._housekeeping(), name="telemetry-housekeeping")
        except asyncio.CancelledError:
            await self._close_all()  # the agent stops: remove the sockets
            raise
        finally:
            self._running = False
            self._fail_pending("telemetry is not running")

    async def _close_all(self) -> None:
        for module in list(self._servers):
            server = self._servers.pop(module)
            with contextlib.suppress(Exception):
                await server.close()

    async def apply_config(self, config: AgentConfig) -> None:
        old = self.section
        self.config = config
        self.section = config.telemetry
        self.queue.rules = rules_from_config(self.section)
        self.queue.key_window_s = self.section.idempotency_window_s
        self.queue.key_max = self.section.idempotency_max_keys
        if self.section.cap_bytes != old.cap_bytes:
            self.queue.cap_bytes = self.queue.effective_cap = self.section.cap_bytes
            await self._db(lambda: self.queue._set_page_limit(self.queue._db()))
        u = self.uplink
        u.batch_max_records = self.section.batch_max_records
        u.batch_max_bytes = self.section.batch_max_bytes
        u.window = self.section.inflight_batches
        u.compress = self.section.compression == "zlib"
        for module in set(old.modules) - set(self.section.modules):
            await self.close_module(module)
        for module in self.section.modules:
            await self.open_module(module)

    def stalled(self) -> str | None:
        started = self._commit_started
        if started is not None and time.monotonic() - started > 60:
            return f"a telemetry commit has been running for {time.monotonic() - started:.0f} s"
        return None

    # ------------------------------------------------------------------ internals

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _open(self, module: str) -> None:
        server = ModuleIngestServer(module, self.ingest_socket_path(module), self.submit)
        await server.start()
        self._servers[module] = server

    async def _commit_loop(self) -> None:
        """Group commit: whatever arrived while the previous transaction ran goes into the next."""
        while True:
            first = await self._pending.get()
            group = [first]
            size = len(first[0].payload)
            while not self._pending.empty() and len(group) < GROUP_MAX_RECORDS and size < GROUP_MAX_BYTES:
                item = self._pending.get_nowait()
                group.append(item)
                size += len(item[0].payload)
            live = [(rec, fut) for rec, fut in group if not fut.done()]
            if not live:
                continue
            self._commit_started = time.monotonic()
            try:
                outcomes: list[Outcome] = await self._db(self.queue.append, [rec for rec, _ in live])
            except Exception as exc:
                log.exception("telemetry commit failed", extra={"EVENT": "telemetry.commit_failed"})
                outcomes = [Refused("unavailable", f"telemetry queue unavailable: {type(exc).__name__}")] * len(live)
            finally:
                self._commit_started = None
            for (rec, fut), outcome in zip(live, outcomes, strict=True):
                if isinstance(outcome, Accepted) and not outcome.duplicate:
                    self.acknowledged_records += 1
                    self.acknowledged_bytes += rec.own_bytes
                if not fut.done():
                    fut.set_result(outcome)
            self._new_data.set()

    def _fail_pending(self, why: str) -> None:
        while not self._pending.empty():
            _, fut = self._pending.get_nowait()
            if not fut.done():
                fut.set_result(Refused("unavailable", why))

    async def _housekeeping(self) -> None:
        last_expire = 0.0
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if time.monotonic() - last_expire >= EXPIRE_INTERVAL_S:
                last_expire = time.monotonic()
                try:
                    expired = await self._db(self.queue.expire)
                    if expired:
                        log.warning(
                            "telemetry records expired before upload: %s",
                            ", ".join(f"{s}={n}" for s, n in sorted(expired.items())),
                            extra={"EVENT": "telemetry.expired"},
                        )
                    await self._db(self.queue.vacuum_some)
                except Exception as exc:  # disk full: try again next round
                    log.warning("telemetry housekeeping failed: %s", exc, extra={"EVENT": "telemetry.housekeeping"})
            await self._report()

    async def figures(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._db(self.queue.stats)
        stats["uploadRate"] = self.uplink.rate.rate()
        stats["sentRecords"] = self.uplink.sent_records
        stats["connected"] = self.uplink.connected
        stats["lastError"] = self.uplink.last_error
        stats["refusedBatches"] = self.uplink.refused_batches
        stats["sockets"] = sorted(self._servers)
        return stats

    async def _report(self) -> None:
        figures = await self.figures()
        figures.pop("files", None)
        self.reported.set("telemetry", figures)

    async def _status_command(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.figures()
