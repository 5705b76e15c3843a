"""A deployment as the planner sees it: modules with images pinned to digests, and the pure
mapping from a module spec to the container request (least privilege by default)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from edge_agent.deployment.manifest import Deployment, ModuleSpec
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


@dataclass(frozen=True)
class DesiredModule:
    name: str
    spec: ModuleSpec
    image: str  # repository@sha256:digest
    spec_hash: str


@dataclass(frozen=True)
class DesiredDeployment:
    version: int
    modules: Mapping[str, DesiredModule] = field(default_factory=dict)

    def ordered(self) -> list[DesiredModule]:
        return sorted(self.modules.values(), key=lambda m: (m.spec.startup_order, m.name))

    @property
    def images(self) -> frozenset[str]:
        return frozenset(m.image for m in self.modules.values())


def pin(version: int, deployment: Deployment, pinned_images: Mapping[str, str]) -> DesiredDeployment:
    """Combine a validated deployment with its resolved images (module name -> repo@digest)."""
    modules = {}
    for name, spec in deployment.modules.items():
        image = pinned_images[name]
        modules[name] = DesiredModule(name, spec, image, spec.spec_hash(image))
    return DesiredDeployment(version, modules)


@dataclass(frozen=True)
class NamingSettings:
    device_id: str
    container_prefix: str = "edge-"
    default_stop_grace_s: float = 10.0


def container_name(module: str, naming: NamingSettings) -> str:
    return f"{naming.container_prefix}{module}"


def container_request(module: DesiredModule, version: int, naming: NamingSettings) -> ContainerRequest:
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
