"""Module image measurements: every image the agent starts is extended into one PCR (default 23)
and appended to an append-only log, so a quote proves which exact images run.

An event is canonical JSON (sorted keys, no spaces); the PCR is extended with SHA-256 of those
bytes. Replaying the log from zeros must reproduce the PCR. The log is written (and fsynced)
before the PCR is extended: after a crash between the two, start-up finds the log one entry
ahead of the PCR and finishes the extend.

PCR 23 is resettable from locality 0 (the OS). A reboot resets it; the log then starts over
(the old one is kept as image-measurements.prev.jsonl). Anything with root can also reset it,
which a verifier sees only as a mismatch against the log; see docs/attestation.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from edge_agent.attestation.tpm import TpmBackend
from edge_agent.logs import get_logger
from edge_shared.attestation import ZERO_PCR, canonical_event, event_digest, replay_image_log
from edge_shared.threads import run_blocking

log = get_logger(__name__)
LOG_NAME = "image-measurements.jsonl"


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not a JSON event ({exc.msg})") from None
        if not isinstance(event, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        events.append(event)
    return events


class ImageMeasurer:
    """Extends module image digests into `pcr` and keeps the log. TPM calls run in a worker
    thread; `lock` serialises them with quotes (the TPM has no resource manager)."""

    def __init__(self, tpm: TpmBackend, state_dir: Path, pcr: int = 23, lock: asyncio.Lock | None = None) -> None:
        self.tpm = tpm
        self.pcr = pcr
        self.path = state_dir / LOG_NAME
        self.lock = lock or asyncio.Lock()
        self.events: list[dict[str, Any]] = []
        self.consistent = True

    async def load(self) -> None:
        """Line the log up with the PCR after a restart or reboot."""
        async with self.lock:
            current = await run_blocking(self.tpm.pcr_read, [self.pcr])
            value = current[self.pcr]
            try:
                events = read_log(self.path)
            except (ValueError, UnicodeDecodeError) as exc:
                # Keep the broken file for inspection; quotes fail image_log_replay until reboot.
                kept = self.path.with_name(f"image-measurements.corrupt-{int(time.time())}.jsonl")
                self.path.replace(kept)
                log.error("image measurement log is damaged (%s); kept as %s", exc, kept,
                          extra={"EVENT": "attestation.log_corrupt"})
                self.events, self.consistent = [], value == ZERO_PCR
                return
            if events and value == ZERO_PCR:
                # PCR reset (a reboot): this log described the previous boot.
                self.path.replace(self.path.with_name("image-measurements.prev.jsonl"))
                log.info("image measurement log started over (PCR %d was reset)", self.pcr,
                         extra={"EVENT": "attestation.log_reset"})
                events = []
            elif events and replay_image_log(events) != value:
                if replay_image_log(events[:-1]) == value:
                    # Crashed between writing the log and extending: finish the extend.
                    await run_blocking(self.tpm.pcr_extend, self.pcr, event_digest(events[-1]))
                else:
                    self.consistent = False
                    log.error(
                        "PCR %d does not match the image measurement log %s; quotes will fail verification "
                        "until the next reboot",
                        self.pcr,
                        self.path,
                        extra={"EVENT": "attestation.log_mismatch"},
                    )
            elif not events and value != ZERO_PCR:
                self.consistent = False
                log.error("PCR %d was extended by something else than the agent", self.pcr,
                          extra={"EVENT": "attestation.log_mismatch"})
            self.events = events

    async def extend(self, digest: str, module: str, deployment_version: str | int) -> dict[str, Any]:
        """Measure one image before its container starts. `digest` is ``sha256:<hex>``."""
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise ValueError(f"module {module}: image digest {digest!r} is not sha256:<64 hex>")
        async with self.lock:
            event = {
                "seq": len(self.events),
                "module": module,
                "digest": digest,
                "deployment": str(deployment_version),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            line = canonical_event(event) + b"\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.events.append(event)
            await run_blocking(self.tpm.pcr_extend, self.pcr, event_digest(event))
        log.info("measured image %s of module %s into PCR %d", digest, module, self.pcr,
                 extra={"EVENT": "attestation.image_measured", "MODULE": module,
                        "DEPLOYMENT": str(deployment_version)})
        return event

    def snapshot(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.events]
