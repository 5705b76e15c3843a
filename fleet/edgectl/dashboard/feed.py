"""The dashboard's live data: one FleetClient watching every device's retained desired, reported
and presence messages (edgectl's own reading, kept current by later messages), a subscription to
the pilot's telemetry, and the rollout state file, each with a change counter that the page's
server-sent events follow.

The broker connection is kept for as long as the dashboard runs: a liveness probe (the client's
own retained-read marker) every LIVENESS_S notices a broker that went away, and the feed
reconnects with a backoff, showing the last known state marked as such meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgectl.client import DeviceView, FleetClient, FleetError
from edgectl.dashboard.telemetry_buffer import TelemetryBuffer

log = logging.getLogger(__name__)

LIVENESS_S = 10.0
ROLLOUT_POLL_S = 0.5
KINDS = ("fleet", "telemetry", "rollouts")


class FleetFeed:
    def __init__(
        self,
        make_client: Callable[[], FleetClient],
        *,
        rollout_state: Path | None,
        attestation_dir: Path | None = None,
        stream: str = "pilot.stats",
        telemetry: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._make = make_client
        self.rollout_state = rollout_state
        self.attestation_dir = attestation_dir
        self.stream = stream
        self.telemetry_enabled = telemetry
        self.clock = clock
        self.fleet: FleetClient | None = None
        self.connected = False
        self.broker_error = ""
        self.broker_since: float | None = None
        self.telemetry = TelemetryBuffer()
        self.revisions = dict.fromkeys(KINDS, 0)
        self._changed = asyncio.Condition()
        self._notifying = False  # a wake-up of the waiters is already scheduled
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()  # the first full read of the broker's retained state is in

    # ---- change counters

    def bump(self, kind: str) -> None:
        self.revisions[kind] += 1
        if self._notifying:  # (a burst of messages wakes the waiters once)
            return

        async def notify() -> None:
            self._notifying = False
            async with self._changed:
                self._changed.notify_all()

        # Condition.notify_all needs the lock; a task keeps bump() callable from sync code.
        with contextlib.suppress(RuntimeError):
            self._tasks.add(task := asyncio.get_running_loop().create_task(notify()))
            task.add_done_callback(self._tasks.discard)
            self._notifying = True

    async def wait_change(self, seen: dict[str, int], kinds: tuple[str, ...], timeout: float) -> dict[str, int]:
        """Return the revisions once one of `kinds` moved past `seen`, or after `timeout`."""

        def moved() -> bool:
            return any(self.revisions[k] != seen.get(k) for k in kinds)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(moved)
        return dict(self.revisions)

    # ---- reading

    def views(self) -> list[DeviceView]:
        fleet = self.fleet
        if fleet is None:
            return []
        return [fleet.cached_view(d) for d in fleet.cached_devices()]

    def view(self, device: str) -> DeviceView:
        return self.fleet.cached_view(device) if self.fleet is not None else DeviceView(device)

    def known(self, device: str) -> bool:
        return self.fleet is not None and device in self.fleet.cached_devices()

    # ---- running

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._broker())
            if self.telemetry_enabled:
                tg.create_task(self._telemetry())
            if self.rollout_state is not None:
                tg.create_task(self._rollout_file())

    async def _broker(self) -> None:
        delay = 0.5
        while True:
            fleet = self._make()
            try:
                async with fleet:
                    await fleet.watch(None)
                    self.fleet, self.connected, self.broker_error = fleet, True, ""
                    self.broker_since = self.clock()
                    self.ready.set()
                    self.bump("fleet")
                    log.info("dashboard: reading %s", fleet.endpoint, extra={"EVENT": "dashboard.connected"})
                    delay = 0.5
                    probe = time.monotonic()
                    while True:
                        await fleet.news(LIVENESS_S)
                        self.bump("fleet")
                        if time.monotonic() - probe >= LIVENESS_S:
                            await fleet.retained([], timeout=LIVENESS_S)
                            probe = time.monotonic()
            except Exception as exc:
                import aiomqtt

                if not isinstance(exc, FleetError | aiomqtt.MqttError | OSError):
                    raise
                if self.connected or not self.broker_error:
                    log.warning("dashboard: broker: %s", exc, extra={"EVENT": "dashboard.disconnected"})
                self.connected, self.broker_error, self.broker_since = False, str(exc), self.clock()
                self.ready.set()
                self.bump("fleet")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _telemetry(self) -> None:
        import aiomqtt

        from edge_shared.mqtt_client import make_client
        from edgectl.telemetry_cmd import records_of

        template = self._make()
        params = dataclasses.replace(template.params, client_id=f"{template.params.client_id}-telemetry")
        topic = f"{template.prefix}/+/telemetry/{self.stream}"
        delay = 0.5
        index = 0
        endpoints = params.all_endpoints
        while True:
            client = make_client(params.at(endpoints[index % len(endpoints)]), max_queued_incoming=0)
            try:
                async with client:
                    await client.subscribe(topic, qos=1)
                    delay = 0.5
                    async for message in client.messages:
                        content_type = getattr(message.properties, "ContentType", None) if message.properties else None
                        try:
                            records = records_of(bytes(message.payload), content_type)
                        except (ValueError, UnicodeDecodeError, TypeError) as exc:
                            log.warning("dashboard: malformed telemetry on %s: %s", message.topic, exc,
                                        extra={"EVENT": "dashboard.telemetry_malformed"})
                            continue
                        if any([self.telemetry.add(r) for r in records]):
                            self.bump("telemetry")
            except aiomqtt.MqttError:
                index += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _rollout_file(self) -> None:
        assert self.rollout_state is not None
        files = [self.rollout_state, self.rollout_state.with_name(self.rollout_state.name + "-wal")]
        last: list[tuple[int, int] | None] = []
        while True:
            now: list[tuple[int, int] | None] = []
            for f in files:
                try:
                    st = f.stat()
                    now.append((st.st_mtime_ns, st.st_size))
                except OSError:
                    now.append(None)
            if now != last:
                last = now
                self.bump("rollouts")
            await asyncio.sleep(ROLLOUT_POLL_S)

    # ---- the rollout file and enrollment records (blocking: called through asyncio.to_thread)

    def read_rollouts(self) -> list[tuple[str, str, int, int, float, float, str, int, str | None, float | None]] | str:
        """The stored rollouts, newest first, or why there are none to show."""
        store = self._store()
        if isinstance(store, str):
            return store
        try:
            rows: list[tuple[str, str, int, int, float, float, str, int, str | None, float | None]] = store.list()
            return rows
        finally:
            store.close()

    def read_rollout(self, rollout_id: str) -> tuple[Any, Any, list[tuple[float, str]], bool] | str:
        """The rollout, its stored settings, its events, and whether the edgectl running it is alive."""
        from edgectl.rollout_store import StoreError

        store = self._store()
        if isinstance(store, str):
            return store
        try:
            from edgectl.rollout_store import owner_alive

            rollout, meta = store.load(rollout_id)
            return rollout, meta, store.events(rollout_id), bool(meta.owner) and owner_alive(meta.owner)
        except StoreError as exc:
            return str(exc)
        finally:
            store.close()

    def _store(self) -> Any:
        from edgectl.rollout_store import RolloutStore, StoreError

        if self.rollout_state is None:
            return "no rollout state file given"
        if not self.rollout_state.exists():  # not created here: the dashboard only reads
            return f"no rollout state file at {self.rollout_state} yet (edgectl rollout creates it)"
        try:
            return RolloutStore(self.rollout_state)
        except StoreError as exc:
            return str(exc)

    def read_enrollment(self, device: str) -> dict[str, Any] | None:
        """The fleet's enrollment record of `device` (edgectl enroll), without key material."""
        from edge_shared.names import DEVICE_ID_PATTERN
        from edgectl.attest_cmds import record_path

        if self.attestation_dir is None or not re.fullmatch(DEVICE_ID_PATTERN, device):
            return None
        path = record_path(self.attestation_dir, device)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"enrolled": False, "path": str(path)}
        except (OSError, ValueError) as exc:
            return {"enrolled": False, "path": str(path), "error": f"unreadable enrollment record: {exc}"}
        if not isinstance(data, dict):
            return {"enrolled": False, "path": str(path), "error": "unreadable enrollment record: not an object"}
        return {"enrolled": True, "path": str(path), "enrolledAt": data.get("enrolled_at"),
                "akName": data.get("ak_name"), "ekCertificate": bool(data.get("ek_cert")),
                "lastCounters": data.get("last_counters")}
