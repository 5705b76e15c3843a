"""The attestation component: owns the TPM connection, answers enroll/activate/attest requests
and measures module images (`measurer`, called by the lifecycle before a container starts).

Without a TPM (or with attestation disabled) the agent runs normally: every request is answered
with the error ``attestation_unavailable`` naming the reason, and `edge-agent check` says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.attestation.keys import activate, read_identity
from edge_agent.attestation.measure import ImageMeasurer
from edge_agent.attestation.mqtt_command import Handler
from edge_agent.attestation.quote import AttestRequestError, encode_quote, parse_attest_request
from edge_agent.attestation.subprocess_tpm import SubprocessTpm
from edge_agent.attestation.tpm import TpmBackend, TpmError
from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig, AttestationSection
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import ContainerRequest
from edge_shared.attestation import ak_name, b64
from edge_shared.protocol import CommandFailed
from edge_shared.threads import run_blocking

log = get_logger(__name__)
TpmFactory = Callable[[AttestationSection], TpmBackend]
STATE_SUBDIR = "attestation"
# Slow hardware TPMs take seconds for a key; minutes means a hang. The TPM worker kills a call
# after attestation.tpm_timeout_s, so with it this reports only a backend without a deadline.
TPM_STALL_S = 120.0
T = TypeVar("T")


def tpm_from_config(section: AttestationSection) -> TpmBackend:
    """The TPM through a worker process (edge_agent.attestation.tpm_worker): tpm2-pytss is not
    loaded in the agent, and a hanging call is killed after tpm_timeout_s."""
    return SubprocessTpm(section.tcti, section.ek_type, section.ak_handle,
                         call_timeout=section.tpm_timeout_s, idle_timeout=section.worker_idle_s)


class AttestationService(BaseComponent):
    name = "attestation"

    def __init__(
        self,
        config: AgentConfig,
        reported: ReportedState | None = None,
        tpm_factory: TpmFactory = tpm_from_config,
    ) -> None:
        self.config = config
        self.section = config.attestation
        self.reported = reported
        self.tpm_factory = tpm_factory
        self.tpm: TpmBackend | None = None
        self.measurer: ImageMeasurer | None = None
        self.unavailable: str | None = "not started"
        self.lock = asyncio.Lock()
        self._ak_name = ""
        self._tpm_description = ""
        self._busy: tuple[str, float] | None = None

    @property
    def state_dir(self) -> Path:
        return self.config.state.dir / STATE_SUBDIR

    async def start(self) -> None:
        if not self.section.enabled:
            self._set_unavailable("attestation is disabled in the config (attestation.enabled = false)")
            return
        tpm: TpmBackend | None = None
        try:
            tpm = await run_blocking(self.tpm_factory, self.section)
            self._tpm_description = await run_blocking(tpm.describe)
            self._ak_name = ak_name(await run_blocking(tpm.ak_public)).hex()
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            measurer = ImageMeasurer(tpm, self.state_dir, self.section.image_pcr, self.lock)
            await measurer.load()
        except (TpmError, OSError, ValueError) as exc:
            if tpm is not None:
                await run_blocking(tpm.close)
            where = f"no usable TPM at {self.section.tcti}" if isinstance(exc, TpmError) else "cannot start"
            self._set_unavailable(f"{where}: {exc}")
            return
        self.tpm, self.measurer, self.unavailable = tpm, measurer, None
        log.info("attestation ready: %s, AK %s", self._tpm_description, self._ak_name[:16],
                 extra={"EVENT": "attestation.ready"})
        self._report()

    def _set_unavailable(self, reason: str) -> None:
        self.unavailable = reason
        log.warning("attestation unavailable: %s", reason, extra={"EVENT": "attestation.unavailable"})
        self._report()

    def _report(self, **extra: Any) -> None:
        if self.reported is None:
            return
        section: dict[str, Any] = {"available": self.unavailable is None}
        if self.unavailable:
            section["reason"] = self.unavailable
        else:
            section.update(
                tpm=self._tpm_description,
                akName=self._ak_name,
                imagePcr=self.section.image_pcr,
                imageEvents=len(self.measurer.events) if self.measurer else 0,
                imageLogConsistent=self.measurer.consistent if self.measurer else None,
            )
        section.update(extra)
        self.reported.set("attestation", section)

    async def run(self) -> None:
        # Commands are served by the twin's session (daemon registers handlers()); nothing runs here.
        return None

    async def apply_config(self, config: AgentConfig) -> None:
        if config.attestation != self.section:
            log.warning("attestation settings changed: they take effect after a restart",
                        extra={"EVENT": "config.restart_needed"})
        self.config = config.model_copy(update={"attestation": self.section})

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        """Control-socket command `attestation` (used by `edge-agent check` while the agent runs)."""
        return {"available": self.unavailable is None, "reason": self.unavailable, "tpm": self._tpm_description,
                "ak_name": self._ak_name, "image_pcr": self.section.image_pcr}

    # ModuleHooks (edge_agent.deployment.hooks): measure each module image before it starts.

    async def before_create(self, module: str, request: ContainerRequest) -> ContainerRequest:
        return request

    async def before_start(self, module: str, image: str, deployment: int | None) -> None:
        """Extend PCR image_pcr with the image digest, once per module and digest per boot (a
        crash-looping module does not grow the log; after a reboot the PCR and log start over).
        A failure is logged, not fatal: the module runs and quotes then show it unmeasured."""
        if self.measurer is None:
            return
        digest = image.rpartition("@")[2]
        if any(e["module"] == module and e["digest"] == digest for e in self.measurer.events):
            return
        try:
            await self.measurer.extend(digest, module, deployment if deployment is not None else "")
        except Exception as exc:
            log.error("could not measure image %s of module %s: %s", image, module, exc,
                      extra={"EVENT": "attestation.measure_failed", "MODULE": module})
        self._report()

    async def after_remove(self, module: str) -> None:
        return None

    def handlers(self) -> dict[str, Handler]:
        """The device's attestation commands, for the MQTT command registry."""
        return {
            "attest": self.handle_attest,
            "attest_enroll": self.handle_enroll,
            "attest_activate": self.handle_activate,
        }

    async def _tpm_call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        self._busy = (what, time.monotonic())
        try:
            return await run_blocking(fn, *args)
        finally:
            self._busy = None

    def stalled(self) -> str | None:
        """A TPM command far past any sane duration means the TPM (or its bus) hangs."""
        if self._busy is not None and time.monotonic() - self._busy[1] > TPM_STALL_S:
            return f"TPM operation '{self._busy[0]}' running for {time.monotonic() - self._busy[1]:.0f} s"
        return None

    def _require_tpm(self) -> TpmBackend:
        if self.tpm is None:
            raise CommandFailed("attestation_unavailable", f"attestation is unavailable on this device: "
                                f"{self.unavailable}")
        return self.tpm

    async def handle_enroll(self, request: dict[str, Any]) -> dict[str, Any]:
        tpm = self._require_tpm()
        async with self.lock:
            try:
                identity = await self._tpm_call("read keys", read_identity, tpm)
            except TpmError as exc:
                raise CommandFailed("tpm_error", str(exc)) from None
        return identity.to_wire()

    async def handle_activate(self, request: dict[str, Any]) -> dict[str, Any]:
        tpm = self._require_tpm()
        async with self.lock:
            try:
                return await self._tpm_call("activate credential", activate, tpm, request)
            except ValueError as exc:
                raise CommandFailed("bad_request", str(exc)) from None
            except TpmError as exc:
                raise CommandFailed("activation_failed", f"the TPM refused the credential: {exc}") from None

    async def handle_attest(self, request: dict[str, Any]) -> dict[str, Any]:
        tpm = self._require_tpm()
        try:
            parsed = parse_attest_request(request, self.section.image_pcr)
        except AttestRequestError as exc:
            raise CommandFailed("bad_request", str(exc)) from None
        async with self.lock:
            # Under the lock no image is measured between the quote and the log snapshot.
            try:
                raw = await self._tpm_call("quote", tpm.quote, parsed.pcrs, parsed.nonce)
            except TpmError as exc:
                raise CommandFailed("tpm_error", str(exc)) from None
            image_log = self.measurer.snapshot() if self.measurer else []
            ima_log = await run_blocking(_read_text, self.section.ima_log)
        boot_log = await run_blocking(_read_bytes, self.section.boot_log)
        log.info("answered attest request over PCRs %s", ",".join(map(str, parsed.pcrs)),
                 extra={"EVENT": "attestation.quoted"})
        self._report(lastQuote=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return {
            "quote": encode_quote(raw),
            "ak_name": self._ak_name,
            "image_pcr": self.section.image_pcr,
            "image_log": image_log,
            "ima_log": ima_log,
            "ima_log_path": str(self.section.ima_log),
            "boot_log": b64(boot_log) if boot_log is not None else None,
            "tpm": self._tpm_description,
        }

    def close(self) -> None:
        if self.tpm is not None:
            self.tpm.close()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
