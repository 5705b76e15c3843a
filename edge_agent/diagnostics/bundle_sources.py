"""The support bundle's sources on a real device: the same for `edge-agent support-bundle` (run
by a technician, the agent may be down) and for the running agent answering `edgectl
support-bundle` (status then comes from the agent itself)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.api_url import transport_reason
from edge_agent.config import AgentConfig
from edge_agent.diagnostics.bundle import BundleSources, all_module_logs, journal_text
from edge_agent.diagnostics.health import HealthSampler
from edge_agent.diagnostics.podman_probe import module_env_lists, podman_info, read_module_stats
from edge_agent.diagnostics.redact import (
    config_secret_values,
    container_secret_values,
    environment_secret_values,
)
from edge_agent.store import STATE_DB_NAME


def check_text(config: AgentConfig) -> str:
    from edge_agent.diagnostics.health_check import run_all_checks

    lines = []
    for r in run_all_checks(config):
        lines.append(f"{r.outcome.upper():<4}  {r.name:<24} {r.detail}")
        if r.hint and r.outcome != "pass":
            lines.append(f"      hint: {r.hint}")
    return "\n".join(lines) + "\n"


def secret_values(config: AgentConfig) -> list[str]:
    values = config_secret_values(config) + environment_secret_values()
    with contextlib.suppress(OSError):  # podman down: no module logs in the bundle either
        values += container_secret_values(module_env_lists(config.podman.socket, config.device.id))
    return values


def device_sources(config: AgentConfig, config_path: Path, status: Callable[[], dict[str, Any]]) -> BundleSources:
    def health() -> dict[str, Any]:
        sampler = HealthSampler(state_dir=config.state.dir)
        return sampler.sample(read_module_stats(config.podman.socket, config.device.id))

    def podman_version() -> dict[str, Any]:
        try:
            info = podman_info(config.podman.socket)
        except (OSError, ValueError) as exc:
            return {"podman": None, "podmanUnavailable": podman_problem(exc)}
        version = info.get("version") if isinstance(info.get("version"), dict) else {}
        return {"podman": version.get("Version") if version else None}

    def from_podman(read: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            try:
                return read()
            except (OSError, ValueError) as exc:  # podman-py's errors are OSErrors
                raise RuntimeError(podman_problem(exc)) from None

        return call

    def podman_problem(exc: BaseException) -> str:
        return f"podman at {config.podman.socket}: {transport_reason(exc)}"

    return BundleSources(
        device=config.device.id,
        config_path=config_path,
        check=lambda: check_text(config),
        status=status,
        journal=journal_text,
        module_logs=from_podman(lambda: all_module_logs(config.podman.socket, config.device.id)),
        health=health,
        podman_info=from_podman(lambda: podman_info(config.podman.socket)),
        state_db=config.state.dir / STATE_DB_NAME,
        secrets=lambda: secret_values(config),
        extra_versions=podman_version,
    )


def status_from_socket(config: AgentConfig) -> Callable[[], dict[str, Any]]:
    """The running agent's status over its control socket (RuntimeError naming why when it does
    not answer: the bundle then says the agent was not running)."""
    def status() -> dict[str, Any]:
        from edge_agent.control import CONTROL_SOCKET_NAME, AgentNotRunning, CommandError, call

        try:
            answer = call(config.state.dir / CONTROL_SOCKET_NAME, "status", timeout=10)
        except (AgentNotRunning, CommandError) as exc:
            raise RuntimeError(f"the agent did not answer: {exc}") from None
        return answer if isinstance(answer, dict) else {"status": json.loads(json.dumps(answer))}

    return status


def make_bundle(config: AgentConfig, config_path: Path) -> bytes:
    """A whole support bundle (tar.gz bytes) of this device, the agent's status over its socket."""
    from edge_agent.diagnostics.bundle import bundle_name, collect, write_tar

    return write_tar(collect(device_sources(config, config_path, status_from_socket(config))),
                     bundle_name(config.device.id))


def agent_process_secrets(status: Callable[[], dict[str, Any]]) -> list[str]:
    """Secret-named values of the running agent's environment (/proc/PID/environ: what systemd's
    Environment= gave it), for a bundle made outside the agent by `edge-agent support-bundle`."""
    try:
        pid = int(status().get("pid", 0))
        raw = Path(f"/proc/{pid}/environ").read_bytes() if pid > 0 else b""
    except (RuntimeError, OSError, ValueError, TypeError):
        return []
    env = dict(item.partition("=")[::2] for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)
    return environment_secret_values(env)
