"""Remote diagnostics on the device: the `logs` and `support_bundle` commands, served on the twin
session's command path (the same as attestation: P/D/commands/NAME, MQTT 5 response topic and
correlation data, docs/protocol.md), so they are authorised the same way: only a client the
broker's ACL lets write this device's commands topic can ask. `[diagnostics] remote_logs` and
`remote_bundle` switch the answers off on the device itself (refused with `not_authorised`).

Everything is pulled by the fleet side, a page or a chunk per request, with a cursor:
- `logs` {"source": "agent" | MODULE, "lines": N, "since": unix s, "cursor": C, "wait_s": W}
  -> {"source", "lines": [{"ts", "text", "stream", "event"?, "module"?}], "cursor", "more"}.
  Without a cursor: the newest N lines. With one: the lines after it, oldest first; with
  wait_s > 0 and nothing new, the device waits up to W seconds for a line (a long poll: that is
  `--follow`). The device keeps no state between requests, so when the fleet side goes away
  (Ctrl-C, a dead laptop, a broker restart) nothing is left running after the current wait.
- `support_bundle` {"action": "create"} -> {"id", "bytes", "sha256", "chunkBytes", "chunks"};
  {"action": "read", "id", "index"} -> {"index", "data": base64}. The bundle is kept
  (state_dir/diagnostics, mode 0600) for BUNDLE_TTL_S or until the next one is made.

Caps: at most MAX_ANSWER_BYTES of log text or one chunk per answer; a token bucket on requests
and one on bytes (shared by logs and bundle chunks). Over a cap the answer is `{"retryAfterS": s}`
with nothing else, and the client asks again then: nothing is lost, the device's uplink and CPU
are bounded. At most MAX_ACTIVE log requests are served at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.diagnostics.log_lines import Page, cap_page, decode_cursor
from edge_agent.diagnostics.log_sources import NoSuchSource, SourceUnavailable, read_journal, read_module
from edge_agent.diagnostics.rate import TokenBucket
from edge_agent.diagnostics.redact import Scrubber
from edge_agent.logs import get_logger
from edge_shared.protocol import CommandFailed
from edge_shared.threads import run_blocking

log = get_logger(__name__)

MAX_LINES = 1000
MAX_WAIT_S = 20.0  # well inside the command limit (60 s) and the fleet's answer timeout
POLL_S = 1.0
MAX_ANSWER_BYTES = 64 * 1024
MAX_ACTIVE = 4
REQUEST_BURST, REQUEST_PER_S = 20.0, 2.0
BYTES_BURST, BYTES_PER_S = 1024.0 * 1024, 128.0 * 1024
CHUNK_BYTES = 48 * 1024  # 64 KiB once base64-encoded
MAX_REMOTE_BUNDLE_BYTES = 16 * 1024 * 1024
BUNDLE_TTL_S = 900.0
# A create within this time of the last one gets that bundle again: a retried request (after a
# broker restart) or a second operator does not make the device collect everything again.
BUNDLE_REUSE_S = 60.0
SECRETS_TTL_S = 60.0
SOURCE_PATTERN = r"^(agent|[a-z0-9][a-z0-9_.-]{0,63})$"

JournalReader = Callable[[int, float | None, dict[str, Any] | None], list[Any]]
ModuleReader = Callable[[str, str, str, int, float | None, dict[str, Any] | None], list[Any]]
BundleMaker = Callable[[], bytes]


class LogsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)] = "agent"
    lines: Annotated[int, Field(ge=1, le=MAX_LINES)] = 100
    since: Annotated[float, Field(ge=0, le=1e11)] | None = None
    cursor: Annotated[str, Field(max_length=4096)] | None = None
    wait_s: Annotated[float, Field(ge=0, le=MAX_WAIT_S)] = 0.0


class BundleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    action: Literal["create", "read"]
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")] | None = None
    index: Annotated[int, Field(ge=0, le=1_000_000)] | None = None


def _start_cursor(request: LogsRequest) -> dict[str, Any]:
    """Where the following starts when the first page is empty: `since`, else the beginning."""
    if request.source == "agent":
        return {"since": request.since}
    if request.since is None:
        return {"ts": None}
    stamp = datetime.fromtimestamp(request.since, UTC).isoformat().replace("+00:00", "Z")
    return {"ts": stamp, "skip": 0}


def _bad_request(exc: ValidationError) -> CommandFailed:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "args"
    return CommandFailed("bad_request", f"{where}: {first['msg']}")


class DiagnosticsService(BaseComponent):
    name = "diagnostics"

    def __init__(
        self,
        config: AgentConfig,
        make_bundle: BundleMaker,
        secret_values: Callable[[], list[str]],
        *,
        journal: JournalReader = read_journal,
        module: ModuleReader = read_module,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = POLL_S,
    ) -> None:
        self.config = config
        self.make_bundle = make_bundle
        self.secret_values = secret_values
        self.journal = journal
        self.module = module
        self.clock = clock
        self.poll_s = poll_s
        self.requests = TokenBucket(REQUEST_BURST, REQUEST_PER_S)
        self.bytes = TokenBucket(BYTES_BURST, BYTES_PER_S)
        self.active = 0
        self.counts: Counter[str] = Counter()
        self._scrubber: tuple[float, Scrubber] | None = None
        self._bundle: tuple[str, Path, float] | None = None  # id, file, made at (monotonic)
        self._bundle_answer: dict[str, Any] = {}
        self._bundle_lock = asyncio.Lock()

    @property
    def bundle_dir(self) -> Path:
        return self.config.state.dir / "diagnostics"

    async def start(self) -> None:
        # A bundle from before a restart is stale and may be large: remove it.
        await run_blocking(self._remove_old_bundles)

    async def apply_config(self, config: AgentConfig) -> None:
        self.config = config

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        return {"logs": self.handle_logs, "support_bundle": self.handle_bundle}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control-socket command `diagnostics`."""
        return {"activeLogRequests": self.active, "counts": dict(self.counts),
                "bundle": self._bundle[0] if self._bundle else None,
                "remoteLogs": self.config.diagnostics.remote_logs,
                "remoteBundle": self.config.diagnostics.remote_bundle}

    # ----------------------------------------------------------------- shared

    def _admit(self, what: str) -> dict[str, Any] | None:
        """None when the request may go on; else the retryAfterS answer."""
        now = self.clock()
        if not self.requests.take(1, now):
            self.counts[f"{what}.rate_limited"] += 1
            return {"retryAfterS": round(max(0.1, self.requests.wait_s(1, now)), 2)}
        if self.bytes.available(now) < MAX_ANSWER_BYTES / 4:
            self.counts[f"{what}.rate_limited"] += 1
            return {"retryAfterS": round(max(0.1, self.bytes.wait_s(MAX_ANSWER_BYTES / 4, now)), 2)}
        return None

    async def scrubber(self) -> Scrubber:
        now = self.clock()
        if self._scrubber is None or now - self._scrubber[0] > SECRETS_TTL_S:
            self._scrubber = (now, Scrubber(await run_blocking(self.secret_values)))
        return self._scrubber[1]

    # ----------------------------------------------------------------- logs

    async def handle_logs(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.config.diagnostics.remote_logs:
            self.counts["logs.not_authorised"] += 1
            log.warning("remote logs request refused: diagnostics.remote_logs = false",
                        extra={"EVENT": "diagnostics.refused"})
            raise CommandFailed("not_authorised", "remote logs are switched off on this device "
                                "(diagnostics.remote_logs = false)")
        try:
            request = LogsRequest.model_validate(args)
            cursor = decode_cursor(request.cursor) if request.cursor is not None else None
        except ValidationError as exc:
            raise _bad_request(exc) from None
        except ValueError as exc:
            raise CommandFailed("bad_request", f"cursor: {exc}") from None
        if cursor is not None and (("j" in cursor or "since" in cursor) != (request.source == "agent")):
            raise CommandFailed("bad_request", f"cursor: not a cursor of {request.source}")
        busy = self._admit("logs")
        if busy is not None:
            return busy
        if self.active >= MAX_ACTIVE:
            self.counts["logs.busy"] += 1
            return {"retryAfterS": 1.0}
        self.active += 1
        try:
            page = await self._page(request, cursor)
        finally:
            self.active -= 1
        scrub = await self.scrubber()
        self.counts["logs.pages"] += 1
        lines = [{**line.wire(), "text": scrub.text(line.text)} for line in page.lines]
        return {"source": request.source, "lines": lines, "cursor": page.cursor, "more": page.more}

    async def _read(self, request: LogsRequest, cursor: dict[str, Any] | None) -> list[Any]:
        try:
            if request.source == "agent":
                return await run_blocking(self.journal, request.lines, request.since, cursor)
            return await run_blocking(self.module, self.config.podman.socket, self.config.device.id,
                                      request.source, request.lines, request.since, cursor)
        except NoSuchSource as exc:
            raise CommandFailed("no_such_module", str(exc)) from None
        except SourceUnavailable as exc:
            raise CommandFailed("logs_unavailable", str(exc)) from None

    async def _page(self, request: LogsRequest, cursor: dict[str, Any] | None) -> Page:
        start = cursor if cursor is not None else _start_cursor(request)
        deadline = self.clock() + (request.wait_s if cursor is not None else 0.0)
        while True:
            lines = await self._read(request, cursor)
            if lines or self.clock() + self.poll_s > deadline:
                break
            await asyncio.sleep(self.poll_s)
        budget = min(MAX_ANSWER_BYTES, int(self.bytes.available(self.clock())))
        page = cap_page(lines, start, request.lines, budget)
        self.bytes.take(min(sum(line.cost() for line in page.lines), self.bytes.available(self.clock())), self.clock())
        return page

    # ----------------------------------------------------------------- support bundle

    async def handle_bundle(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.config.diagnostics.remote_bundle:
            self.counts["bundle.not_authorised"] += 1
            log.warning("support bundle request refused: diagnostics.remote_bundle = false",
                        extra={"EVENT": "diagnostics.refused"})
            raise CommandFailed("not_authorised", "remote support bundles are switched off on this device "
                                "(diagnostics.remote_bundle = false)")
        try:
            request = BundleRequest.model_validate(args)
        except ValidationError as exc:
            raise _bad_request(exc) from None
        busy = self._admit("bundle")
        if busy is not None:
            return busy
        if request.action == "create":
            return await self._create_bundle()
        if request.id is None or request.index is None:
            raise CommandFailed("bad_request", "read needs id and index")
        return await self._read_chunk(request.id, request.index)

    async def _create_bundle(self) -> dict[str, Any]:
        async with self._bundle_lock:
            if self._bundle is not None and self.clock() - self._bundle[2] < BUNDLE_REUSE_S:
                self.counts["bundle.reused"] += 1
                return dict(self._bundle_answer)
            data = await run_blocking(self.make_bundle)
            if len(data) > MAX_REMOTE_BUNDLE_BYTES:
                raise CommandFailed("too_large", f"the bundle is {len(data)} bytes, over the remote limit of "
                                    f"{MAX_REMOTE_BUNDLE_BYTES}; make one on the device: edge-agent support-bundle")
            bundle_id = secrets.token_hex(8)
            path = self.bundle_dir / f"bundle-{bundle_id}.tar.gz"
            await run_blocking(self._store, path, data)
            self._bundle = (bundle_id, path, self.clock())
            self._bundle_answer = {"id": bundle_id, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                   "chunkBytes": CHUNK_BYTES, "chunks": max(1, -(-len(data) // CHUNK_BYTES))}
        self.counts["bundle.created"] += 1
        log.info("support bundle %s made (%d bytes)", bundle_id, len(data), extra={"EVENT": "diagnostics.bundle"})
        return dict(self._bundle_answer)

    def _remove_old_bundles(self) -> None:
        with contextlib.suppress(OSError):
            for old in self.bundle_dir.glob("bundle-*.tar.gz"):
                old.unlink()

    def _store(self, path: Path, data: bytes) -> None:
        self.bundle_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._remove_old_bundles()
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as f:
            f.write(data)
        tmp.replace(path)

    async def _read_chunk(self, bundle_id: str, index: int) -> dict[str, Any]:
        bundle = self._bundle
        if bundle is None or bundle[0] != bundle_id or self.clock() - bundle[2] > BUNDLE_TTL_S:
            raise CommandFailed("no_such_bundle", f"bundle {bundle_id} is gone (made again, expired after "
                                f"{BUNDLE_TTL_S:.0f} s, or the agent restarted); create a new one")
        now = self.clock()
        if not self.bytes.take(CHUNK_BYTES, now):
            self.counts["bundle.rate_limited"] += 1
            return {"retryAfterS": round(max(0.1, self.bytes.wait_s(CHUNK_BYTES, now)), 2)}

        def read() -> bytes:
            with open(bundle[1], "rb") as f:
                f.seek(index * CHUNK_BYTES)
                return f.read(CHUNK_BYTES)

        data = await run_blocking(read)
        if not data and index > 0:
            raise CommandFailed("bad_request", f"index {index} is past the end of bundle {bundle_id}")
        self.counts["bundle.chunks"] += 1
        return {"index": index, "data": base64.b64encode(data).decode()}
