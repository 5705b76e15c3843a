"""What diagnostics reads from podman (blocking podman-py calls; run them off the event loop):
the agent's module containers, their CPU and memory (libpod stats), and `podman info`."""

from __future__ import annotations

import json
from typing import Any

from edge_agent.api_url import podman_client, transport_reason
from edge_agent.diagnostics.health import ModuleStatsResult
from edge_agent.runtime.api import LABEL_DEVICE, LABEL_MODULE

TIMEOUT_S = 15.0


def module_containers(url: str, device_id: str) -> dict[str, str]:
    """container id -> module name, for this device's containers (running ones win a tie)."""
    with podman_client(url, timeout=TIMEOUT_S) as client:
        found = client.containers.list(all=True, sparse=True, filters=[f"label={LABEL_DEVICE}={device_id}"])
    found.sort(key=lambda c: c.attrs.get("State") == "running")  # running last: wins in the dict
    by_module: dict[str, str] = {}
    for container in found:
        module = (container.attrs.get("Labels") or {}).get(LABEL_MODULE)
        if isinstance(module, str):
            by_module[module] = str(container.id)
    return {cid: module for module, cid in by_module.items()}


def read_module_stats(url: str, device_id: str) -> ModuleStatsResult:
    """libpod stats (one sample, no stream) of the device's running module containers."""
    try:
        with podman_client(url, timeout=TIMEOUT_S) as client:
            found = client.containers.list(sparse=True, filters=[f"label={LABEL_DEVICE}={device_id}"])
            names = {str(c.id): str((c.attrs.get("Labels") or {}).get(LABEL_MODULE, "")) for c in found}
            names = {cid: m for cid, m in names.items() if m}
            if not names:
                return ModuleStatsResult()
            resp = client.api.get("/containers/stats", params={"stream": "false", "containers": list(names)})
            body = json.loads(resp.content)
    except (OSError, ValueError) as exc:  # podman-py's errors are OSErrors
        return ModuleStatsResult(error=f"podman at {url}: {transport_reason(exc)}")
    if not isinstance(body, dict) or body.get("Error"):
        error = body.get("Error") if isinstance(body, dict) else body
        return ModuleStatsResult(error=f"podman stats: {str(error)[:200]}")
    stats = [s for s in body.get("Stats") or [] if isinstance(s, dict)]
    return ModuleStatsResult(stats=stats, names=names)


def podman_info(url: str) -> dict[str, Any]:
    """`podman info` as the API gives it (host, store, registries, version)."""
    with podman_client(url, timeout=TIMEOUT_S) as client:
        resp = client.api.get("/info")
        info = json.loads(resp.content)
    return info if isinstance(info, dict) else {"info": info}


def module_env_lists(url: str, device_id: str) -> list[list[str]]:
    """Each module container's environment (NAME=VALUE), for redaction: a module that prints its
    own password must not put it in a bundle or a remote log."""
    out: list[list[str]] = []
    with podman_client(url, timeout=TIMEOUT_S) as client:
        for container in client.containers.list(all=True, filters=[f"label={LABEL_DEVICE}={device_id}"]):
            env = (container.attrs.get("Config") or {}).get("Env") or []
            out.append([str(item) for item in env])
    return out
