"""Uplink: sends queued records to P/D/telemetry/STREAM with QoS 1 and deletes them only after
the broker's PUBACK.

- Many records per MQTT message (envelope below), zlib-compressed when it pays.
- A bounded window of messages awaiting PUBACK; acknowledgements are processed in send order,
  so a stream's records are deleted in order.
- On a failed publish (disconnect) everything in flight is forgotten and sending resumes from the
  oldest record still queued once connected again.
- A batch the broker refuses (a PUBACK with a failure reason, e.g. "Not authorized" when its ACL
  does not let this device publish telemetry) is not deleted: the records stay queued (the cap
  and TTL still apply, and count what they drop), the refusal is logged as an error and reported
  (`lastError`, `refusedBatches`), and sending is retried with a backoff up to 5 minutes, so the
  upload resumes by itself once the broker's ACL is fixed. The broker may already have some of those:
  at-least-once, so the fleet side drops duplicates by record id (at most `inflight_batches` x
  `batch_max_records` records per reconnect or agent crash).

Envelope (JSON, content type application/json, or application/json+zlib when compressed):
    {"schema": 1, "device": D, "stream": S,
     "records": [{"id", "seq", "ts", "received", "priority", "module", "deployment", "payload"}, ...]}
     ("deployment": the deployment version the module's container was started for; absent when
     the agent does not know it, e.g. records queued by an older agent)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from edge_agent.logs import get_logger
from edge_agent.telemetry.policy import choose_stream
from edge_agent.telemetry.queue import TelemetryQueue
from edge_shared.batch import encode_batch
from edge_shared.mqtt_client import PublishRefused
from edge_shared.retry import Backoff

log = get_logger(__name__)
T = TypeVar("T")

REFUSED_FIRST_RETRY_S = 2.0
REFUSED_MAX_RETRY_S = 300.0


class Publisher(Protocol):
    """What the uplink needs from the device's MQTT session."""

    async def publish_once(self, topic: str, payload: bytes, qos: int = 1, content_type: str | None = None) -> None:
        """Return after the broker's PUBACK; raise on disconnect (one attempt, no retry inside)."""
        ...

    async def wait_connected(self) -> None: ...


DbCall = Callable[..., Awaitable[Any]]


class RateMeter:
    """Records per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self.events: deque[tuple[float, int]] = deque()

    def add(self, n: int) -> None:
        self.events.append((self.clock(), n))
        self._trim()

    def rate(self) -> float:
        self._trim()
        return round(sum(n for _, n in self.events) / self.window_s, 1)

    def _trim(self) -> None:
        cutoff = self.clock() - self.window_s
        while self.events and self.events[0][0] < cutoff:
            self.events.popleft()


@dataclass
class _InFlight:
    stream: str
    first_n: int
    last_n: int
    count: int
    task: asyncio.Task[None]


class Uplink:
    def __init__(
        self,
        queue: TelemetryQueue,
        db: DbCall,
        publisher: Publisher,
        topic_prefix: str,
        device: str,
        *,
        batch_max_records: int,
        batch_max_bytes: int,
        inflight: int,
        compress: bool,
        new_data: asyncio.Event,
    ) -> None:
        self.queue = queue
        self.db = db
        self.publisher = publisher
        self.topic_prefix = topic_prefix
        self.device = device
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.window = inflight
        self.compress = compress
        self.new_data = new_data
        self.rate = RateMeter()
        self.sent_records = 0
        self.connected = False
        self.last_error: str | None = None
        self.refused_batches = 0
        self._refused_retry = Backoff(REFUSED_FIRST_RETRY_S, REFUSED_MAX_RETRY_S)
        self._refused_logged: str | None = None

    def topic(self, stream: str) -> str:
        return f"{self.topic_prefix}/{self.device}/telemetry/{stream}"

    async def run(self) -> None:
        while True:
            self.connected = False
            await self.publisher.wait_connected()
            self.connected = True
            try:
                await self._pump()
            except asyncio.CancelledError:
                raise
            except PublishRefused as exc:
                self.refused_batches += 1
                self.last_error = str(exc)
                if self._refused_logged != exc.reason:  # one error per cause, not one per retry
                    self._refused_logged = exc.reason
                    log.error(
                        "%s: telemetry stays queued, retrying with a backoff up to %.0f s",
                        exc,
                        REFUSED_MAX_RETRY_S,
                        extra={"EVENT": "telemetry.refused"},
                    )
                await asyncio.sleep(self._refused_retry.next())
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "telemetry upload interrupted (%s); resuming from the oldest unacknowledged record",
                    self.last_error,
                    extra={"EVENT": "telemetry.upload_interrupted"},
                )
                await asyncio.sleep(0.5)

    async def _pump(self) -> None:
        cursors: dict[str, int] = {}  # per stream: insert number of the last record sent
        inflight: deque[_InFlight] = deque()
        try:
            while True:
                while len(inflight) < self.window:
                    heads = await self.db(self.queue.pending_after, dict(cursors))
                    stream = choose_stream(heads)
                    if stream is None:
                        break
                    records = await self.db(
                        self.queue.read_batch,
                        stream,
                        cursors.get(stream, 0),
                        self.batch_max_records,
                        self.batch_max_bytes,
                    )
                    if not records:  # evicted or expired meanwhile
                        stats = self.queue.streams.get(stream)
                        cursors[stream] = stats.last_n if stats is not None else 0
                        continue
                    payload, content_type = encode_batch(self.device, stream, records, self.compress)
                    task = asyncio.create_task(
                        self.publisher.publish_once(self.topic(stream), payload, 1, content_type),
                        name=f"publish {stream}",
                    )
                    inflight.append(_InFlight(stream, records[0].n, records[-1].n, len(records), task))
                    cursors[stream] = records[-1].n
                if not inflight:
                    self.new_data.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.new_data.wait(), 1.0)
                    continue
                await asyncio.wait([inflight[0].task], return_when=asyncio.FIRST_COMPLETED)
                while inflight and inflight[0].task.done():
                    done = inflight.popleft()
                    done.task.result()  # raises if the publish failed: resume from the queue's head
                    await self._delete(done)
        finally:
            for item in inflight:
                item.task.cancel()
            for item in inflight:
                with contextlib.suppress(BaseException):
                    await item.task

    async def _delete(self, done: _InFlight) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self.db(self.queue.delete_sent, done.stream, done.first_n, done.last_n)
                break
            except Exception as exc:  # e.g. disk full: the broker has them; retry, never resend
                log.error(
                    "cannot delete %d uploaded records of %s (%s); retrying",
                    done.count,
                    done.stream,
                    exc,
                    extra={"EVENT": "telemetry.delete_failed"},
                )
                await asyncio.sleep(backoff.next())
        self.sent_records += done.count
        self.rate.add(done.count)
        if self._refused_logged is not None:
            log.info("the broker takes telemetry again", extra={"EVENT": "telemetry.accepted_again"})
            self._refused_logged = None
        self.last_error = None  # the last error since an upload last went through
        self._refused_retry.reset()
