"""In-memory ContainerRuntime for fast unit tests: containers are records, images a set, and
tests drive exits and health with `exit()` and `set_health()`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from edge_agent.runtime.api import (
    LABEL_DEVICE,
    LABEL_MODULE,
    ContainerRequest,
    Health,
    ObservedContainer,
    RuntimeEvent,
    RuntimeFailure,
)


class FakeRuntime:
    def __init__(self, images: set[str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.images: set[str] = set(images or ())
        self.registry: set[str] = set()  # images that pull() can fetch
        self.containers: dict[str, ObservedContainer] = {}
        self.requests: dict[str, ContainerRequest] = {}
        self.calls: list[tuple[str, str]] = []
        self.clock = clock
        self.down = False  # True: every call fails as if podman did not answer
        self.list_calls = 0
        self._ids = itertools.count(1)
        self._events: asyncio.Queue[RuntimeEvent] = asyncio.Queue()

    def _find(self, ref: str) -> ObservedContainer:
        for c in self.containers.values():
            if ref in (c.id, c.name):
                return c
        raise RuntimeFailure(f"no such container {ref}")

    def _emit(self, c: ObservedContainer, action: str) -> None:
        self._events.put_nowait(RuntimeEvent(c.id, c.name, action, c.labels.get(LABEL_MODULE)))

    async def list_containers(self, device_id: str) -> list[ObservedContainer]:
        self.list_calls += 1
        if self.down:
            raise RuntimeFailure("podman API: connection refused (fake runtime is down)")
        return [c for c in self.containers.values() if c.labels.get(LABEL_DEVICE) == device_id]

    async def image_exists(self, image: str) -> bool:
        return image in self.images

    async def pull(self, image: str, *, insecure: bool, timeout_s: float) -> None:
        self.calls.append(("pull", image))
        if image not in self.registry and image not in self.images:
            raise RuntimeFailure(f"pull {image}: not found")
        self.images.add(image)

    async def create(self, request: ContainerRequest) -> str:
        self.calls.append(("create", request.name))
        if request.image not in self.images:
            raise RuntimeFailure(f"create {request.name}: image {request.image} not present")
        if any(c.name == request.name for c in self.containers.values()):
            raise RuntimeFailure(f"create {request.name}: name already in use")
        cid = f"c{next(self._ids):04d}"
        labels = dict(request.labels)
        self.containers[cid] = ObservedContainer(cid, request.name, labels, "created", image=request.image)
        self.requests[cid] = request
        return cid

    async def start(self, container: str) -> None:
        c = self._find(container)
        self.calls.append(("start", c.name))
        health: Health = "starting" if self.requests.get(c.id) and self.requests[c.id].healthcheck else "none"
        self.containers[c.id] = replace(c, state="running", started_at=self.clock(), exit_code=None, health=health)
        self._emit(c, "start")

    async def stop(self, container: str, grace_s: float) -> None:
        c = self._find(container)
        self.calls.append(("stop", c.name))
        if c.state == "running":
            self.containers[c.id] = replace(c, state="exited", exit_code=143, finished_at=self.clock())
            self._emit(c, "died")

    async def remove(self, container: str) -> None:
        c = self._find(container)
        self.calls.append(("remove", c.name))
        del self.containers[c.id]
        self.requests.pop(c.id, None)

    async def healthcheck(self, container: str) -> Health:
        return self._find(container).health

    async def remove_image(self, image: str) -> bool:
        if image in self.images and not any(c.image == image for c in self.containers.values()):
            self.images.discard(image)
            self.calls.append(("rmi", image))
            return True
        return False

    async def events(self, device_id: str) -> AsyncIterator[RuntimeEvent]:
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        return None

    # ---- test controls
    def exit(self, module_or_name: str, code: int) -> None:
        for c in self.containers.values():
            if module_or_name in (c.name, c.labels.get(LABEL_MODULE)) and c.state == "running":
                self.containers[c.id] = replace(c, state="exited", exit_code=code, finished_at=self.clock())
                self._emit(c, "died")
                return
        raise KeyError(module_or_name)

    def set_health(self, module_or_name: str, health: Health) -> None:
        for c in self.containers.values():
            if module_or_name in (c.name, c.labels.get(LABEL_MODULE)):
                self.containers[c.id] = replace(c, health=health)
                self._emit(c, "health_status")
                return
        raise KeyError(module_or_name)
