"""ContainerRuntime over Podman's libpod REST API (the podman socket), through podman-py.

Why the API and not the CLI: no fork+exec of a Go binary per call (matters on a Pi 4 with many
modules), structured JSON errors, and a streamed events endpoint.

podman-py is blocking (requests). The bridge to asyncio is in one place: `PodmanRuntime._call`
runs one blocking podman-py function in a daemon thread (edge_shared.threads.run_blocking, the
agent's one way to run blocking work off the loop) and turns podman-py's exceptions into
RuntimeFailure with an operator-readable message. The events stream is read by a thread of its
own (`events`), which hands each event to the loop with call_soon_threadsafe and is shut down
from the loop side when the consumer stops.

podman-py's managers are used where they say exactly what we need (containers.list/get, start,
images.exists/get/remove). The low-level client of the same library, `PodmanClient.api`
(podman-py's documented APIClient: get/post/delete on libpod paths), is used where its managers
lack something the agent needs:
  - create: libpod's SpecGenerator document is posted as built by `build_spec`, because
    podman-py's containers.create() cannot express the least-privilege mount options: its mount
    translation keeps only ro/U/size/mode/propagation/relabel, so `mounts[].options`
    "nosuid"/"nodev" (the /tmp tmpfs and every bind mount) and "rbind" would be dropped, and its
    `tmpfs` argument is refused outright;
  - stop and remove: the HTTP timeout must cover the stop grace (containers.stop uses 1.5 x the
    grace, too short for a 1 s grace plus cleanup), and remove must pass `timeout=0`
    (containers.remove has no such argument, so a forced remove would wait the stop timeout);
  - pull: a whole-call timeout of pull_timeout_s and the `{"error": ...}` lines of the progress
    stream (images.pull neither takes a timeout nor reports those lines);
  - healthcheck: podman-py has no call for `GET /containers/{id}/healthcheck`;
  - events: we hold the streamed response so the loop side can shut it down (urllib3's
    HTTPResponse.shutdown) when the consumer stops; EventsManager.list hides it.
Every path is under /v4.0.0/libpod (api_url.LIBPOD_API_VERSION), the minimal libpod API
version of podman 4 and 5, served by podman 4.3 (Debian bookworm) and later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import tarfile
import tempfile
import threading
import urllib.parse
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from podman.domain.containers import Container
from podman.errors import APIError, NotFound

from edge_agent.api_url import podman_client, transport_problem
from edge_agent.logs import get_logger
from edge_agent.runtime.api import (
    HELPER_RELEASE_UNPACK,
    LABEL_DEVICE,
    LABEL_HELPER,
    LABEL_MODULE,
    RELEASE_IMAGE_LABEL,
    ContainerRequest,
    ContainerState,
    Health,
    ObservedContainer,
    RuntimeEvent,
    RuntimeFailure,
)
from edge_agent.runtime.inspect_cache import Inspected, inspect_key, list_key, refresh
from edge_shared.threads import call_soon_from_thread, run_blocking

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


def inspected(doc: dict[str, Any]) -> Inspected:
    """An inspect document as the agent observes it, with the key the list shows for it."""
    observed = observed_from_inspect(doc)
    return Inspected(inspect_key(doc, observed), observed)


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


T = TypeVar("T")


class PodmanRuntime:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client = podman_client(url, timeout=API_TIMEOUT_S)
        self._api = self._client.api  # podman-py's APIClient: see the module docstring for where
        self._inspected: dict[str, Inspected] = {}  # the last inspect of each listed container, by id
        # Containers (id or name) acted on and not observed since, with the count of the latest action.
        self._touched: dict[str, int] = {}
        self._actions = 0
        self._created: dict[str, str] = {}  # name -> id of the containers created since the last list

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """The bridge: `fn(*args)` (blocking podman-py) in a daemon thread; podman-py's errors
        become RuntimeFailure naming `what`."""
        try:
            return await run_blocking(fn, *args, name=f"podman {what}")
        except RuntimeFailure:
            raise
        except APIError as exc:
            raise self._failure(what, exc) from exc
        except OSError as exc:  # requests' exceptions are OSErrors
            raise RuntimeFailure(f"{what}: {transport_problem(exc, self.url)}") from exc

    def _failure(self, what: str, exc: APIError) -> RuntimeFailure:
        if exc.response is None:
            return RuntimeFailure(f"{what}: {transport_problem(exc, self.url)}")
        return _error(what, exc.response.status_code, exc.response.content[:MAX_ERROR_BODY])

    def _json(self, what: str, resp: Any) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise RuntimeFailure(f"{what}: podman answered HTTP {resp.status_code} with a body that is not JSON: "
                                 f"{resp.text[:200]!r}") from None

    # ------------------------------------------------------------------ queries

    async def list_containers(self, device_id: str) -> list[ObservedContainer]:
        """The device's containers: libpod's sparse list, then a full inspect of each container the
        list shows changed or the agent acted on since the last list (inspect_cache.py). The
        inspects of containers the agent acted on are taken beside the list, not after it."""
        touched = dict(self._touched)
        self._created.clear()  # a start by name after this list is an inspect by name
        observed = await self._observe(device_id, set(touched))
        for ref, action in touched.items():  # observed, unless acted on again meanwhile
            if self._touched.get(ref) == action:
                del self._touched[ref]
        return observed

    def _touch(self, container: str) -> None:
        """The agent acts on `container` (id or name): the next list inspects it again."""
        self._actions += 1
        self._touched[self._created.get(container, container)] = self._actions

    async def _observe(self, device_id: str, touched: set[str]) -> list[ObservedContainer]:
        what = "list containers"
        # podman-py's filters: a list of "name=value" (a dict would stringify list values).
        filters = [f"label={LABEL_DEVICE}={device_id}"]

        def sparse_list() -> list[dict[str, Any]]:
            return [dict(c.attrs) for c in self._client.containers.list(all=True, sparse=True, filters=filters)]

        def inspect_each(refs: tuple[str, ...]) -> list[Inspected]:
            out = []
            for ref in refs:
                try:
                    out.append(inspected(self._client.containers.get(ref).attrs))
                except NotFound:
                    continue  # removed meanwhile: the list says whether it is there
            return out

        if touched:
            listing, taken = await asyncio.gather(self._call(what, sparse_list),
                                                  self._call(what, inspect_each, tuple(sorted(touched))))
        else:
            listing, taken = await self._call(what, sparse_list), []
        fresh = {i.key[0]: i for i in taken}
        decision = refresh(listing, self._inspected, fresh, touched)
        known = dict(decision.known)
        if decision.inspect:
            known.update((i.key[0], i) for i in await self._call(what, inspect_each, decision.inspect))
        self._inspected = known  # only what this list shows: the rest is gone
        ids = (list_key(entry)[0] for entry in listing)
        return [known[cid].observed for cid in ids if cid in known]

    async def inspect(self, container: str) -> dict[str, Any]:
        def get() -> dict[str, Any]:
            return dict(self._client.containers.get(container).attrs)

        return await self._call(f"inspect {container}", get)

    async def image_exists(self, image: str) -> bool:
        # An error counts as "not there": the pull that follows then says what is wrong.
        return bool(await self._call(f"image exists {image}", self._client.images.exists, image))

    # ------------------------------------------------------------------ changes

    async def pull(self, image: str, *, insecure: bool, timeout_s: float) -> None:
        what = f"pull {image}"
        params = {"reference": image, "tlsVerify": "false" if insecure else "true", "quiet": "true",
                  "policy": "always"}

        def pull() -> None:
            resp = self._api.post("/images/pull", params=params, timeout=timeout_s)
            resp.raise_for_status()
            # 200 is sent before the pull starts; failures arrive as {"error": ...} lines of the NDJSON body.
            for line in resp.content.splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and doc.get("error"):
                    raise RuntimeFailure(f"{what}: {str(doc['error']).strip()[:400]}")

        await self._call(what, pull)

    async def create(self, request: ContainerRequest) -> str:
        what = f"create {request.name}"

        def create() -> str:
            resp = self._api.post("/containers/create", data=json.dumps(build_spec(request)),
                                  headers={"content-type": "application/json"})
            resp.raise_for_status()
            doc = self._json(what, resp)
            if not isinstance(doc, dict) or not doc.get("Id"):
                raise RuntimeFailure(f"{what}: podman answered without a container id: {resp.text[:200]!r}")
            return str(doc["Id"])

        created = await self._call(what, create)
        self._created[request.name] = created
        self._touch(created)
        return created

    async def start(self, container: str) -> None:
        # A model from the id alone: no inspect round trip before the start (304, running, is no error).
        model: Container = self._client.containers.prepare_model({"Id": container})
        self._touch(container)  # also when the start fails: its state may have changed
        await self._call(f"start {container}", model.start)

    async def stop(self, container: str, grace_s: float) -> None:
        t = max(0, math.ceil(grace_s))
        self._touch(container)

        def stop() -> None:
            resp = self._api.post(f"/containers/{_q(container)}/stop", params={"timeout": t},
                                  timeout=API_TIMEOUT_S + t)
            if resp.status_code != 304:  # already stopped
                resp.raise_for_status()

        await self._call(f"stop {container}", stop)

    async def remove(self, container: str) -> None:
        def remove() -> None:
            resp = self._api.delete(f"/containers/{_q(container)}",
                                    params={"force": "true", "v": "true", "timeout": 0})
            if resp.status_code != 404:
                resp.raise_for_status()

        try:
            await self._call(f"remove {container}", remove)
        except BaseException:
            self._touch(container)  # what is left of it is inspected again
            raise

    async def healthcheck(self, container: str) -> Health:
        what = f"healthcheck {container}"

        def run() -> Health:
            resp = self._api.get(f"/containers/{_q(container)}/healthcheck")
            resp.raise_for_status()
            doc = self._json(what, resp)
            return _health(str(doc.get("Status", "")) if isinstance(doc, dict) else "")

        return await self._call(what, run)

    async def remove_image(self, image: str) -> bool:
        def remove() -> bool:
            try:
                found = self._client.images.get(image)
            except NotFound:
                return False
            if found.attrs.get("RepoTags"):
                return False  # someone tagged it (by hand, or another tool): not ours to delete
            try:
                self._client.images.remove(image)
            except APIError as exc:
                if exc.response is not None and exc.response.status_code in (404, 409):
                    return False  # gone already / still used by a container
                raise
            return True

        return await self._call(f"remove image {image}", remove)

    async def copy_from_image(self, image: str, path: str, dest: Path, max_bytes: int) -> None:
        """Unpack `path` of a local image into `dest` (a tar stream from a container that is created
        but never started), refusing more than `max_bytes`. Used for agent releases, whose image
        carries files, not a program."""
        what = f"copy {path} from {image}"

        def copy() -> None:
            # Labelled: a kill or power cut while it exists leaves it to collect_release_leftovers().
            container = self._client.containers.create(
                image, command=["/nonexistent"], network_mode="none", labels={LABEL_HELPER: HELPER_RELEASE_UNPACK}
            )
            try:
                stream, _ = container.get_archive(path)
                with tempfile.TemporaryFile(dir=dest.parent) as tar:
                    size = 0
                    for chunk in stream:
                        size += len(chunk)
                        if size > max_bytes:
                            raise RuntimeFailure(f"{what}: more than {max_bytes} bytes")
                        tar.write(chunk)
                    tar.seek(0)
                    with tarfile.open(fileobj=tar) as archive:
                        archive.extractall(dest, members=_plain_members(archive, what))  # noqa: S202 (checked)
            finally:
                container.remove(force=True)

        await self._call(what, copy)

    async def collect_release_leftovers(self, keep_image: str | None = None) -> tuple[list[str], list[str]]:
        """Remove what unpacking agent releases can leave behind when the agent is killed or the power
        goes: its helper containers (LABEL_HELPER), and agent release images (the release label that
        scripts/build-release.sh sets) other than `keep_image`, unless someone tagged them. Returns
        the container ids and image ids removed."""

        def collect() -> tuple[list[str], list[str]]:
            containers: list[str] = []
            for helper in self._client.containers.list(
                all=True, sparse=True, filters=[f"label={LABEL_HELPER}={HELPER_RELEASE_UNPACK}"]
            ):
                with contextlib.suppress(NotFound):
                    helper.remove(force=True)
                    containers.append(str(helper.id))
            keep_id = None
            if keep_image is not None:
                with contextlib.suppress(NotFound):
                    keep_id = self._client.images.get(keep_image).id
            images: list[str] = []
            for found in self._client.images.list(filters={"label": RELEASE_IMAGE_LABEL}):
                if found.id == keep_id or tagged(found.attrs.get("RepoTags")):
                    continue
                try:
                    self._client.images.remove(found.id)
                except NotFound:
                    continue
                except APIError as exc:
                    if exc.response is not None and exc.response.status_code == 409:
                        continue  # still used by a container
                    raise
                images.append(str(found.id))
            return containers, images

        return await self._call("collect agent release leftovers", collect)

    # ------------------------------------------------------------------ events

    async def events(self, device_id: str) -> AsyncIterator[RuntimeEvent]:
        """Container events for our device, live. Raises RuntimeFailure when the stream ends or
        breaks. The stream is read by a daemon thread of its own, which hands each event to the
        loop; when the consumer stops (or is cancelled) the response is shut down, which ends
        the thread's blocking read."""
        filters = json.dumps({"type": ["container"], "label": [f"{LABEL_DEVICE}={device_id}"]})
        params = {"stream": "true", "filters": filters}
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RuntimeEvent | BaseException] = asyncio.Queue()
        stopping = threading.Event()
        responses: list[Any] = []

        def pump() -> None:
            try:
                resp = self._api.get("/events", params=params, stream=True,
                                     timeout=(EVENTS_CONNECT_TIMEOUT_S, None))
                responses.append(resp)
                if stopping.is_set():
                    return
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if stopping.is_set():
                        return
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError:
                        raise RuntimeFailure(f"podman event stream failed: not JSON: {line[:200]!r}") from None
                    event = event_from_doc(doc)
                    if event is not None and not call_soon_from_thread(loop, queue.put_nowait, event):
                        return
                failure: BaseException = RuntimeFailure("podman event stream ended")
            except APIError as exc:
                failure = (self._failure("events", exc) if exc.response is not None else
                           RuntimeFailure(f"podman event stream failed: {transport_problem(exc, self.url)}"))
            except RuntimeFailure as exc:
                failure = exc
            except Exception as exc:  # requests' transport errors, urllib3's after a shutdown
                failure = RuntimeFailure(f"podman event stream failed: {transport_problem(exc, self.url)}")
            if not stopping.is_set():
                call_soon_from_thread(loop, queue.put_nowait, failure)

        threading.Thread(target=pump, name="podman-events", daemon=True).start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stopping.set()
            for resp in responses:
                _shutdown(resp)

    async def close(self) -> None:
        """Release podman-py's pooled connections."""
        self._client.close()


def tagged(repo_tags: object) -> bool:
    """Whether an image carries a tag someone gave it. podman lists an image pulled by digest (as
    the agent pulls releases) with its digest reference, `repo@sha256:...`, among its RepoTags:
    that is no tag, and such an image is the agent's to collect."""
    if not isinstance(repo_tags, list):
        return False
    return any(isinstance(t, str) and "@" not in t and not t.endswith(":<none>") for t in repo_tags)


def _plain_members(archive: tarfile.TarFile, what: str) -> list[tarfile.TarInfo]:
    """Only files and folders, inside the destination, without setuid/setgid bits. By hand because
    tarfile's extraction filters arrived in 3.11.4 and Debian bookworm ships 3.11.2."""
    members = archive.getmembers()
    for member in members:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise RuntimeFailure(f"{what}: refusing archive member {member.name!r} (only plain files and folders)")
        member.mode &= 0o755
    return members


def _q(name: str) -> str:
    """A container or image reference as one path segment (image references hold / : @)."""
    return urllib.parse.quote(name, safe="")


def _shutdown(resp: Any) -> None:
    """Stop a streamed response another thread is reading: urllib3 2.3+'s HTTPResponse.shutdown
    interrupts the blocked read; close() releases the connection."""
    shutdown = getattr(resp.raw, "shutdown", None)
    with contextlib.suppress(Exception):
        if shutdown is not None:
            shutdown()
        resp.close()
