"""A deployment as the reconciler sees it: the committed record (document and pinned images, as
state.db keeps it), the pinned modules the planner works on, and the pure mapping from a module
spec to the container request (least privilege by default).

"desired" names the document pipeline (edge_agent/desired/); what the reconciler runs is the
committed, pinned deployment named here."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

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
from edge_shared.validation import describe, location, summary


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
    # Modules of a stored document this release does not accept (a rule tightened since an older
    # release committed it, e.g. an artifact path now refused) -> why, one line. Their containers
    # are left as they are (never created, removed or restarted) and the reason is reported.
    unloadable: Mapping[str, str] = field(default_factory=dict)

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
        try:
            return pin(self.version, Deployment.model_validate(self.document), self.images)
        except ValidationError:
            return pin_what_loads(self.version, self.document, self.images)


def pin_what_loads(version: int, document: Mapping[str, Any], images: Mapping[str, str]) -> PinnedDeployment:
    """A stored document this release no longer accepts as a whole (an older release validated
    and committed it): the modules whose spec still loads are pinned, the others are named with
    the reason, so the device keeps running what it can instead of failing every pass."""
    raw = document.get("modules")
    raw_modules: dict[str, Any] = dict(raw) if isinstance(raw, Mapping) else {}
    unloadable: dict[str, str] = {}
    for name, spec in sorted(raw_modules.items()):
        try:
            ModuleSpec.model_validate(spec)
        except ValidationError as exc:
            unloadable[name] = _unloadable_reason(version, name, spec, exc)
    rest = {**document, "modules": {n: s for n, s in raw_modules.items() if n not in unloadable}}
    try:
        deployment = Deployment.model_validate(rest)
    except ValidationError as exc:  # not one module's spec: the document itself
        why = f"stored deployment {version} is not accepted by this release: {summary(exc)}"
        return PinnedDeployment(version, {}, {name: why for name in raw_modules} or {"(document)": why})
    return dataclasses.replace(pin(version, deployment, images), unloadable=unloadable)


def _unloadable_reason(version: int, name: str, spec: Any, exc: ValidationError) -> str:
    problems = "; ".join(
        f"{location(e['loc']) + ': ' if e['loc'] else ''}{describe(e, show_input=False)}" for e in exc.errors()[:3]
    )
    artifacts = spec.get("artifacts") if isinstance(spec, Mapping) else None
    named = [f"artifact {a.get('ref')} at {a.get('path')}" for a in artifacts or [] if isinstance(a, Mapping)]
    return (f"stored deployment {version}: module {name} is not accepted by this release: {problems}"
            + (f" ({', '.join(named)})" if named else "")
            + "; its container is left as it is until a deployment this release accepts")


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
