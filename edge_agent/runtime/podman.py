"""ContainerRuntime over Podman's libpod REST API (the podman socket), asyncio-native.

Why the API and not the CLI: no fork+exec of a Go binary per call (matters on a Pi 4 with many
modules), structured JSON errors, and a streamed events endpoint. We post libpod's SpecGenerator
document ourselves (`build_spec`): it carries every least-privilege field (no_new_privileges,
read-only tmpfs, per-device entries, ...) on the Podman versions we meet (4.3 on Debian bookworm).

The transport is runtime/async_http.py, a small stdlib HTTP/1.1 client on the event loop: no
threads, and the events stream is just a coroutine reading lines. (podman-py, used before, is
blocking and its imports cost the agent about 7 MB of RSS; see bench/runtime_import_rss.py.)
Every path is under api_url.LIBPOD_PREFIX (/v4.0.0/libpod), the minimal libpod API version of
podman 4 and 5, served by podman 4.3 (Debian bookworm) and later.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from edge_agent.api_url import LIBPOD_PREFIX
from edge_agent.logs import get_logger
from edge_agent.runtime.api import (
    LABEL_DEVICE,
    LABEL_MODULE,
    ContainerRequest,
    ContainerState,
    Health,
    ObservedContainer,
    RuntimeEvent,
    RuntimeFailure,
)
from edge_agent.runtime.async_http import AsyncHTTPClient, HTTPClientError, Params, Response

log = get_logger(__name__)
NS = 1_000_000_000
TMP_TMPFS_SIZE = "64m"
LOG_MAX_BYTES = 16 * 1024 * 1024  # k8s-file log driver rotates at this size: logs stay bounded
API_TIMEOUT_S = 60.0
EVENTS_CONNECT_TIMEOUT_S = 10.0  # up to the response headers; the stream itself has no timeout
MAX_ERROR_BODY = 64 * 1024
EVENT_ACTIONS = {"create", "start", "died", "stop", "remove", "health_status", "oom", "kill", "exited", "restart"}

_STATES: dict[str, ContainerState] = {
    "configured": "created",
    "created": "created",
    "initialized": "created",
    "running": "running",
    "stopping": "running",
    "exited": "exited",
    "stopped": "exited",
    "paused": "paused",
}


def parse_time(text: str | None) -> float | None:
    """Podman's RFC 3339 times with nanoseconds -> unix seconds; the zero time -> None."""
    if not text or text.startswith("0001-01-01"):
        return None
    main, _, frac = text.partition(".")
    tz = ""
    if frac:
        digits = "".join(ch for ch in frac if ch.isdigit())
        tz = frac[len(digits) :]
        frac = digits[:6]
    else:
        for sign in ("Z", "+", "-"):
            idx = main.find(sign, 11)
            if idx != -1:
                main, tz = main[:idx], main[idx:]
                break
    tz = "+00:00" if tz in ("Z", "") else tz
    stamp = datetime.fromisoformat(f"{main}.{frac or '0'}{tz}")
    return stamp.timestamp()


def build_spec(request: ContainerRequest) -> dict[str, Any]:
    """libpod SpecGenerator for a module container. Least privilege: every capability dropped
    (explicit adds only), no-new-privileges, never privileged, read-only rootfs with a tmpfs
    /tmp, a pids limit, only the listed devices, no restart by podman (the agent decides)."""
    spec: dict[str, Any] = {
        "name": request.name,
        "hostname": request.name,
        "image": request.image,
        "labels": dict(request.labels),
        "env": dict(request.env),
        "privileged": False,
        "cap_drop": ["ALL"],
        "cap_add": [f"CAP_{c}" for c in request.cap_add],
        "no_new_privileges": True,
        "read_only_filesystem": request.read_only_rootfs,
        "netns": {"nsmode": request.network},
        "stop_timeout": max(1, math.ceil(request.stop_grace_s)),
        "restart_policy": "no",
        "resource_limits": {"pids": {"limit": request.pids_limit}},
        "log_configuration": {"driver": "k8s-file", "size": LOG_MAX_BYTES},
        "devices": [{"path": d} for d in request.devices],
        "mounts": [
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["rw", "nosuid", "nodev", f"size={TMP_TMPFS_SIZE}"]},
            *(
                {"destination": m.target, "source": m.source, "type": "bind",
                 "options": ["rbind", "ro" if m.read_only else "rw", "nosuid", "nodev"]}
                for m in request.mounts
            ),
        ],
    }
    if request.entrypoint is not None:
        spec["entrypoint"] = list(request.entrypoint)
    if request.command is not None:
        spec["command"] = list(request.command)
    if request.user is not None:
        spec["user"] = request.user
    if request.memory_bytes is not None:
        spec["resource_limits"]["memory"] = {"limit": request.memory_bytes, "swap": request.memory_bytes}
    if request.cpus is not None:
        spec["resource_limits"]["cpu"] = {"quota": int(request.cpus * 100_000), "period": 100_000}
    if request.ports:
        spec["portmappings"] = [
            {"container_port": p.container, "host_port": p.host, "protocol": p.protocol, "host_ip": p.host_ip}
            for p in request.ports
        ]
    if request.healthcheck is not None:
        hc = request.healthcheck
        spec["healthconfig"] = {
            "Test": ["CMD", *hc.command],
            "Interval": int(hc.interval_s * NS),
            "Timeout": int(hc.timeout_s * NS),
            "Retries": hc.retries,
            "StartPeriod": int(hc.start_period_s * NS),
        }
    return spec


def observed_from_inspect(doc: dict[str, Any]) -> ObservedContainer:
    state = doc.get("State") or {}
    health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status") or ""
    if not (doc.get("Config") or {}).get("Healthcheck"):
        health = ""
    raw_state = str(state.get("Status", "unknown"))
    mapped = _STATES.get(raw_state, "unknown")
    return ObservedContainer(
        id=str(doc["Id"]),
        name=str(doc.get("Name", "")).lstrip("/"),
        labels=dict((doc.get("Config") or {}).get("Labels") or {}),
        state=mapped,
        exit_code=int(state["ExitCode"]) if mapped == "exited" and "ExitCode" in state else None,
        started_at=parse_time(state.get("StartedAt")),
        finished_at=parse_time(state.get("FinishedAt")),
        health=_health(health),
        image=str(doc.get("ImageName") or doc.get("Image") or ""),
        oom_killed=bool(state.get("OOMKilled")),
    )


def _health(text: str) -> Health:
    return text if text in ("starting", "healthy", "unhealthy") else "none"  # type: ignore[return-value]


def _error(what: str, status: int, body: bytes) -> RuntimeFailure:
    """podman's JSON error ({"cause", "message", "response"}) or its raw text, and the HTTP status."""
    text = body.decode("utf-8", "replace")
    message = text
    try:
        doc = json.loads(body)
    except ValueError:
        pass
    else:
        if isinstance(doc, dict):
            message = str(doc.get("message") or doc.get("cause") or text)
    return RuntimeFailure(f"{what}: {message.strip()[:400]} (HTTP {status})")


def _q(name: str) -> str:
    """A container or image reference as one path segment (image references hold / : @)."""
    return urllib.parse.quote(name, safe="")


def event_from_doc(doc: Any) -> RuntimeEvent | None:
    """A podman event (JSON object) -> RuntimeEvent, or None for actions the agent ignores."""
    if not isinstance(doc, dict):
        return None
    action = str(doc.get("Action") or doc.get("status") or "")
    if action not in EVENT_ACTIONS:
        return None
    actor = doc.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    return RuntimeEvent(str(actor.get("ID") or doc.get("id") or ""), str(attrs.get("name", "")), action,
                        attrs.get(LABEL_MODULE))


class PodmanRuntime:
    def __init__(self, url: str) -> None:
        self.url = url
        self._http = AsyncHTTPClient(url, name="podman API")

    async def _call(self, what: str, method: str, path: str, *, params: Params | None = None,
                    json_body: Any = None, timeout: float = API_TIMEOUT_S) -> Response:
        try:
            return await self._http.request(method, LIBPOD_PREFIX + path, params=params, json_body=json_body,
                                            timeout=timeout)
        except HTTPClientError as exc:
            raise RuntimeFailure(f"{what}: {exc}") from exc

    @staticmethod
    def _json(what: str, resp: Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise RuntimeFailure(f"{what}: podman answered HTTP {resp.status} with a body that is not JSON: "
                                 f"{resp.text[:200]!r}") from None

    # ------------------------------------------------------------------ queries

    async def list_containers(self, device_id: str) -> list[ObservedContainer]:
        filters = json.dumps({"label": [f"{LABEL_DEVICE}={device_id}"]})
        resp = await self._call("list containers", "GET", "/containers/json",
                                params={"all": "true", "filters": filters})
        if resp.status != 200:
            raise _error("list containers", resp.status, resp.body)
        out = []
        for entry in self._json("list containers", resp) or []:
            what = f"inspect {str(entry['Id'])[:12]}"
            detail = await self._call(what, "GET", f"/containers/{_q(entry['Id'])}/json")
            if detail.status == 404:
                continue  # removed between list and inspect
            if detail.status != 200:
                raise _error(what, detail.status, detail.body)
            out.append(observed_from_inspect(self._json(what, detail)))
        return out

    async def inspect(self, container: str) -> dict[str, Any]:
        what = f"inspect {container}"
        resp = await self._call(what, "GET", f"/containers/{_q(container)}/json")
        if resp.status != 200:
            raise _error(what, resp.status, resp.body)
        result: dict[str, Any] = self._json(what, resp)
        return result

    async def image_exists(self, image: str) -> bool:
        what = f"image exists {image}"
        resp = await self._call(what, "GET", f"/images/{_q(image)}/exists")
        if resp.status not in (204, 404):
            raise _error(what, resp.status, resp.body)
        return resp.status == 204

    # ------------------------------------------------------------------ changes

    async def pull(self, image: str, *, insecure: bool, timeout_s: float) -> None:
        what = f"pull {image}"
        params = {"reference": image, "tlsVerify": "false" if insecure else "true", "quiet": "true",
                  "policy": "always"}
        resp = await self._call(what, "POST", "/images/pull", params=params, timeout=timeout_s)
        if resp.status != 200:
            raise _error(what, resp.status, resp.body)
        # 200 is sent before the pull starts; failures arrive as {"error": ...} lines of the NDJSON body.
        for line in resp.body.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("error"):
                raise RuntimeFailure(f"{what}: {str(doc['error']).strip()[:400]}")

    async def create(self, request: ContainerRequest) -> str:
        what = f"create {request.name}"
        resp = await self._call(what, "POST", "/containers/create", json_body=build_spec(request))
        if resp.status != 201:
            raise _error(what, resp.status, resp.body)
        doc = self._json(what, resp)
        if not isinstance(doc, dict) or not doc.get("Id"):
            raise RuntimeFailure(f"{what}: podman answered without a container id: {resp.text[:200]!r}")
        return str(doc["Id"])

    async def start(self, container: str) -> None:
        what = f"start {container}"
        resp = await self._call(what, "POST", f"/containers/{_q(container)}/start")
        if resp.status not in (204, 304):
            raise _error(what, resp.status, resp.body)

    async def stop(self, container: str, grace_s: float) -> None:
        what = f"stop {container}"
        t = max(0, math.ceil(grace_s))
        resp = await self._call(what, "POST", f"/containers/{_q(container)}/stop", params={"timeout": t},
                                timeout=API_TIMEOUT_S + t)
        if resp.status not in (204, 304):
            raise _error(what, resp.status, resp.body)

    async def remove(self, container: str) -> None:
        what = f"remove {container}"
        resp = await self._call(what, "DELETE", f"/containers/{_q(container)}",
                                params={"force": "true", "v": "true", "timeout": 0})
        if resp.status not in (200, 204, 404):
            raise _error(what, resp.status, resp.body)

    async def healthcheck(self, container: str) -> Health:
        what = f"healthcheck {container}"
        resp = await self._call(what, "GET", f"/containers/{_q(container)}/healthcheck")
        if resp.status != 200:
            raise _error(what, resp.status, resp.body)
        doc = self._json(what, resp)
        return _health(str(doc.get("Status", "")) if isinstance(doc, dict) else "")

    async def remove_image(self, image: str) -> bool:
        what = f"inspect image {image}"
        info = await self._call(what, "GET", f"/images/{_q(image)}/json")
        if info.status == 404:
            return False
        if info.status != 200:
            raise _error(what, info.status, info.body)
        doc = self._json(what, info)
        if isinstance(doc, dict) and doc.get("RepoTags"):
            return False  # someone tagged it (by hand, or another tool): not ours to delete
        what = f"remove image {image}"
        resp = await self._call(what, "DELETE", f"/images/{_q(image)}")
        if resp.status in (200, 204):
            return True
        if resp.status in (404, 409):  # gone already / still used by a container
            return False
        raise _error(what, resp.status, resp.body)

    # ------------------------------------------------------------------ events

    async def events(self, device_id: str) -> AsyncIterator[RuntimeEvent]:
        """Container events for our device, live. Raises RuntimeFailure when the stream ends or
        breaks; the connection is closed when the consumer stops (or is cancelled)."""
        filters = json.dumps({"type": ["container"], "label": [f"{LABEL_DEVICE}={device_id}"]})
        params = {"stream": "true", "filters": filters}
        try:
            async with self._http.stream("GET", f"{LIBPOD_PREFIX}/events", params=params,
                                         timeout=EVENTS_CONNECT_TIMEOUT_S) as resp:
                if resp.status != 200:
                    raise _error("events", resp.status, await resp.read(MAX_ERROR_BODY))
                async for line in resp.lines():
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        raise RuntimeFailure(f"podman event stream failed: not JSON: {line[:200]!r}") from None
                    event = event_from_doc(doc)
                    if event is not None:
                        yield event
        except HTTPClientError as exc:
            raise RuntimeFailure(f"podman event stream failed: {exc}") from exc
        raise RuntimeFailure("podman event stream ended")

    async def close(self) -> None:
        """Nothing to release: every request has its own connection, closed when it is done."""
