"""A deployment as the reconciler sees it: the committed record (document and pinned images, as
state.db keeps it), the pinned modules the planner works on, and the pure mapping from a module
spec to the container request (least privilege by default).

"desired" names the document pipeline (edge_agent/desired/); what the reconciler runs is the
committed, pinned deployment named here."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.runtime.api import (
    LABEL_DEPLOYMENT,
    LABEL_DEVICE,
    LABEL_MODULE,
    LABEL_SPEC_HASH,
    ContainerRequest,
    HealthcheckRequest,
    MountRequest,
    PortRequest,
)
from edge_shared.spec import Deployment, ModuleSpec


@dataclass(frozen=True)
class PinnedModule:
    name: str
    spec: ModuleSpec
    image: str  # repository@sha256:digest
    spec_hash: str


@dataclass(frozen=True)
class PinnedDeployment:
    version: int
    modules: Mapping[str, PinnedModule] = field(default_factory=dict)

    def ordered(self) -> list[PinnedModule]:
        return sorted(self.modules.values(), key=lambda m: (m.spec.startup_order, m.name))

    @property
    def images(self) -> frozenset[str]:
        return frozenset(m.image for m in self.modules.values())


@dataclass(frozen=True)
class CommittedDeployment:
    """A deployment the desired-state owner committed: the document (artifact refs pinned) and its
    module images pinned to digests, and when it became current."""

    version: int
    document: dict[str, Any]
    images: dict[str, str]
    activated_at: float

    def pinned(self) -> PinnedDeployment:
        """The pinned deployment. The document was validated once, by the document gate, before
        it was committed; here it is only loaded into its model (once per record)."""
        return self._pinned

    @functools.cached_property
    def _pinned(self) -> PinnedDeployment:
        return pin(self.version, Deployment.model_validate(self.document), self.images)


def pin(version: int, deployment: Deployment, pinned_images: Mapping[str, str]) -> PinnedDeployment:
    """Combine a validated deployment with its resolved images (module name -> repo@digest)."""
    modules = {}
    for name, spec in deployment.modules.items():
        image = pinned_images[name]
        modules[name] = PinnedModule(name, spec, image, spec.spec_hash(image))
    return PinnedDeployment(version, modules)


@dataclass(frozen=True)
class NamingSettings:
    device_id: str
    container_prefix: str = "edge-"
    default_stop_grace_s: float = 10.0


def container_name(module: str, naming: NamingSettings) -> str:
    return f"{naming.container_prefix}{module}"


def container_request(module: PinnedModule, version: int, naming: NamingSettings) -> ContainerRequest:
    spec = module.spec
    labels = dict(spec.labels)
    labels.update(
        {
            LABEL_DEVICE: naming.device_id,
            LABEL_MODULE: module.name,
            LABEL_DEPLOYMENT: str(version),
            LABEL_SPEC_HASH: module.spec_hash,
        }
    )
    hc = spec.healthcheck
    return ContainerRequest(
        name=container_name(module.name, naming),
        image=module.image,
        labels=labels,
        env=dict(spec.env),
        entrypoint=tuple(spec.command) if spec.command is not None else None,
        command=tuple(spec.args) if spec.args is not None else None,
        mounts=tuple(MountRequest(m.source, m.target, m.read_only) for m in spec.mounts),
        devices=tuple(spec.devices),
        ports=tuple(PortRequest(p.container, p.host, p.protocol, p.host_ip) for p in spec.ports),
        memory_bytes=spec.resources.memory,
        cpus=spec.resources.cpus,
        pids_limit=spec.resources.pids,
        healthcheck=None
        if hc is None
        else HealthcheckRequest(tuple(hc.command), hc.interval, hc.timeout, hc.retries, hc.start_period),
        user=spec.user,
        read_only_rootfs=spec.read_only_rootfs,
        cap_add=tuple(spec.capabilities.add),
        network=spec.network,
        stop_grace_s=spec.stop_grace if spec.stop_grace is not None else naming.default_stop_grace_s,
    )
