"""The agent's self-update, in the running agent.

Follows the agent release that the last known good deployment names (so an agent update rides
only on a deployment whose modules proved healthy), and:
- installs it beside the running version from its verified image (the desired-state room pinned
  and verified the image under the trust policy, like a module image), asks the guard to switch,
  and stops so that systemd starts the new version (modules keep running: the agent leaves
  containers alone when it stops and adopts them when it starts);
- in the new version, confirms the trial once it proved itself: started with its state loaded,
  connected to the broker, its first reconcile pass adopted every module without creating,
  re-creating or restarting one, and then it kept running for the soak (soak.py) and is still
  connected. If it cannot, it says why (trial-note) and the guard, not this code, switches back at
  the deadline or after a crash loop (a watchdog or OOM kill during the soak is such a start);
- reports the "agentUpdate" section: what runs, what is wanted, what is under way, how the last
  update ended.

Only when installed with the guard (systemd/edge-agent-update-guard: $state/agent/current exists
and the process runs under systemd); otherwise an agent release is refused with that reason.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.component import BaseComponent
from edge_agent.config import AgentConfig
from edge_agent.deployment.pass_causes import Cause, counted_against_release
from edge_agent.deployment.pinned import CommittedDeployment
from edge_agent.logs import get_logger
from edge_agent.reported import ReportedState
from edge_agent.runtime.api import RuntimeFailure
from edge_agent.runtime.podman import PodmanRuntime
from edge_agent.selfupdate import install as installer
from edge_agent.selfupdate.files import UpdateFiles
from edge_agent.selfupdate.plan import Confirm, Idle, Install, Refuse, Restart, Wait, decide
from edge_agent.selfupdate.soak import Soak, soak_from_env
from edge_shared.retry import Retries
from edge_shared.spec import AGENT_RELEASE
from edge_shared.threads import run_blocking

log = get_logger(__name__)

POLL_S = 5.0
MAX_WHEELHOUSE_BYTES = 512 * 1024 * 1024
SECTION = "agentUpdate"


class SelfUpdateComponent(BaseComponent):
    name = "selfupdate"

    def __init__(
        self,
        config: AgentConfig,
        reported: ReportedState,
        runtime: PodmanRuntime,
        last_known_good: Callable[[], CommittedDeployment | None],
        connected: Callable[[], Awaitable[None]],
        first_pass: Callable[[], Awaitable[Mapping[str, Cause]]],
        restart: Callable[[str], None],
        *,
        is_insecure: Callable[[str], bool],
        is_connected: Callable[[], bool] = lambda: True,
        under_guard: bool | None = None,
        soak: Soak | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.files = UpdateFiles(config.state.dir)
        self.reported = reported
        self.runtime = runtime
        self.last_known_good = last_known_good
        self.connected = connected
        self.first_pass = first_pass
        self.restart = restart
        self.is_insecure = is_insecure
        self.is_connected = is_connected
        self.pull_timeout_s = config.podman.pull_timeout_s
        self.under_guard = (
            under_guard
            if under_guard is not None
            else bool(os.environ.get("INVOCATION_ID")) and self.files.pointer.is_symlink()
        )
        self.soak = soak if soak is not None else soak_from_env(os.environ)
        self.sleep = sleep
        self.retries = Retries(10.0, 600.0)
        self.state = "idle"
        self.detail = ""
        self.wanted: str | None = None

    async def start(self) -> None:
        if self.soak.problem is not None:
            log.error("agent update settings: %s", self.soak.problem, extra={"EVENT": "agent.update_settings"})
        self._report()

    async def run(self) -> None:
        await self.collect_interrupted_install()
        trial = self.files.trial()
        if trial is not None and trial.version == __version__:
            await self._confirm()
        while True:
            await self._step()
            await asyncio.sleep(POLL_S)

    # ------------------------------------------------------------------ one step

    async def _step(self) -> None:
        # The stored document passed the gate (validated) when it was admitted: read it as it is.
        stored = self.last_known_good()
        release = stored.document.get("agent") if stored is not None else None
        version = release.get("version") if isinstance(release, dict) else None
        image = stored.images.get(AGENT_RELEASE) if stored is not None and version is not None else None
        self.wanted = version
        installed = version is not None and self.files.installed(version)
        action = decide(
            version,
            image,
            __version__,
            self.files.trial(),
            self.files.bad_versions(),
            installed,
            self.files.pending_request(),
            connected=self.is_connected(),
            last=self.files.outcome(),
            now=time.time(),
        )
        if isinstance(action, Confirm):
            return  # run() confirms (or says why it cannot) before the first step
        if isinstance(action, Idle):
            self._set("idle", action.why)
        elif isinstance(action, Refuse):
            self._set("refused", f"agent {action.version}: {action.reason}")
        elif isinstance(action, Wait):
            self._set("waiting", action.why)
        elif not self.under_guard:
            self._set(
                "refused",
                f"agent {action.version}: this agent was not installed with the update guard "
                "(docs/operations.md, Agent updates); update it by hand",
            )
        elif isinstance(action, Restart):
            self._switch(action.version)
        elif isinstance(action, Install) and self.retries.due("install", time.time()):
            await self._install(action)

    async def _install(self, action: Install) -> None:
        if self.files.installed(action.version):  # kept from before (going back to the previous one)
            await self._collect_leftovers()
            self._collect_releases(action.version)
            self._switch(action.version)
            return
        self._set("installing", f"agent {action.version} from {action.image}")
        log.info("installing agent %s from %s", action.version, action.image, extra={"EVENT": "agent.update_install"})
        try:
            self.files.releases.mkdir(parents=True, exist_ok=True)
            self.files.start_fetching(action.image)
            with tempfile.TemporaryDirectory(dir=self.files.releases, prefix=".wheels-") as tmp:
                await self.runtime.pull(
                    action.image, insecure=self.is_insecure(action.image), timeout_s=self.pull_timeout_s
                )
                await self.runtime.copy_from_image(
                    action.image, f"/wheelhouse/{installer.wheelhouse_name()}", Path(tmp), MAX_WHEELHOUSE_BYTES
                )
                wheels = Path(tmp) / installer.wheelhouse_name()
                if not wheels.is_dir():
                    raise installer.InstallFailed(f"the release image has no /wheelhouse/{installer.wheelhouse_name()}")
                await run_blocking(installer.install, self.files, action.version, wheels, name="agent install")
            await self.runtime.remove_image(action.image)  # its wheels are installed; the image is not needed
        except (RuntimeFailure, installer.InstallFailed, OSError) as exc:
            await self._collect_leftovers(keep_image=action.image)  # the retry reuses the pulled image
            failure, news = self.retries.failed("install", str(exc), time.time())
            self._set(
                "failed", f"agent {action.version}: {exc} (attempt {failure.attempts}, next in {failure.delay:.0f} s)"
            )
            (log.error if news else log.debug)(
                "agent %s not installed: %s", action.version, exc, extra={"EVENT": "agent.update_failed"}
            )
            return
        self.retries.succeeded("install")
        await self._collect_leftovers()
        self._collect_releases(action.version)
        if not self.is_connected():  # the next step switches once connected (plan.decide)
            self._set("waiting", f"agent {action.version} installed; switches once connected to the broker")
            return
        self._switch(action.version)

    def _collect_releases(self, version: str) -> None:
        removed = installer.collect(self.files, {version, __version__})
        if removed:
            log.info("removed old agent releases: %s", ", ".join(removed), extra={"EVENT": "agent.update_gc"})

    async def collect_interrupted_install(self) -> None:
        """At start: what an install this agent began left in podman (its fetching mark says so), and
        nothing when there was none (another agent on the same podman store may be installing)."""
        if self.files.fetching() is not None:
            await self._collect_leftovers()

    async def _collect_leftovers(self, keep_image: str | None = None) -> None:
        """Helper containers and release images an interrupted or finished install left; the fetching
        mark goes once they are collected (kept when the retry keeps the pulled image)."""
        try:
            containers, images = await self.runtime.collect_release_leftovers(keep_image)
        except RuntimeFailure as exc:
            log.warning("cannot collect agent release leftovers: %s", exc, extra={"EVENT": "agent.update_gc"})
            return
        if keep_image is None:
            self.files.done_fetching()
        if containers or images:
            log.info("removed %d helper container(s) and %d agent release image(s) left by earlier installs",
                     len(containers), len(images), extra={"EVENT": "agent.update_gc"})

    def _switch(self, version: str) -> None:
        self.files.request(version)
        self._set("restarting", f"into agent {version}")
        log.warning(
            "agent %s installed; restarting into it (modules keep running)",
            version,
            extra={"EVENT": "agent.update_restart"},
        )
        self.restart(f"update to agent {version}")

    # ------------------------------------------------------------------ the trial, in the new version

    async def _confirm(self) -> None:
        self._set("trial", f"agent {__version__} proving itself: waiting for the broker and the first pass")
        await self.connected()
        why = await self.first_pass()
        for module, cause in sorted(why.items()):
            if cause.kind != "release":  # asked for by the deployment or a restart policy: not this release's doing
                log.info("agent %s trial: first pass acted on %s (%s: %s); not counted against the release",
                         __version__, module, cause.kind, cause.detail,
                         extra={"EVENT": "agent.update_first_pass", "MODULE": module})
        recreated = counted_against_release(why)
        if recreated:
            details = "; ".join(f"{m}: {why[m].detail}" for m in recreated)
            reason = f"the first pass had to replace modules instead of adopting them ({details})"
            self.files.note(reason)
            self._set("trial", f"agent {__version__} cannot confirm: {reason}")
            log.error(
                "agent %s does not confirm its update: %s",
                __version__,
                reason,
                extra={"EVENT": "agent.update_unconfirmed"},
            )
            return
        if self.soak.seconds > 0:
            # Running well for a while, not only starting well: a hang or a leak shows later (the
            # watchdog or the OOM killer then ends this process before it confirms).
            self._set("trial", f"agent {__version__} running its soak: confirms in {self.soak.seconds} s")
            await self.sleep(self.soak.seconds)
            await self.connected()
        trial = self.files.trial()
        previous = self.files.previous_version(trial) if trial is not None else "?"
        if self.files.confirm(__version__, previous):
            log.info("agent %s confirmed (from %s)", __version__, previous, extra={"EVENT": "agent.update_confirmed"})
        self._set("idle", "confirmed")

    # ------------------------------------------------------------------ reporting

    def _set(self, state: str, detail: str) -> None:
        if (state, detail) != (self.state, self.detail) and state in ("refused", "failed"):
            log.warning("agent update: %s", detail, extra={"EVENT": f"agent.update_{state}"})
        self.state, self.detail = state, detail
        self._report()

    def _report(self) -> None:
        section: dict[str, Any] = {
            "running": __version__,
            "wanted": self.wanted,
            "state": self.state,
            "detail": self.detail,
        }
        trial = self.files.trial()
        if trial is not None:
            section["trial"] = {"version": trial.version, "starts": trial.starts}
        last = self.files.outcome()
        if last is not None:
            section["last"] = last
        self.reported.set(SECTION, section)
