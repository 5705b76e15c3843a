"""The deployment document: which modules to run and how (docs/deployment.md is the reference).
Its model, its validation and its refusal (DesiredRejected("invalid_deployment"), with the other
codes in edge_shared/document.py): the one definition the device's document gate and the fleet's
tools agree on.

Parsed strictly at the boundary (pydantic v2, unknown keys refused). Every error becomes one
line naming the module and the field, e.g.

    module 'pilot': restartPolicy: got 'sometimes'; expected one of never, on-failure, on-unhealthy, always

The document gate (edge_agent/desired/admission.py) calls `validate_deployment`; host-dependent rules
(which host paths may be bind-mounted) are checked when `allowed_mount_roots` is given.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edge_shared.document import DesiredRejected
from edge_shared.image_ref import parse_image_reference
from edge_shared.names import MODULE_NAME_PATTERN
from edge_shared.validation import describe

RESERVED_LABEL_PREFIX = "edge-agent."
# Where a stored deployment keeps the pinned agent release image among its module images: not a
# valid module name, so it never collides with one.
AGENT_RELEASE = "@agent"
# Bumped when the way a ModuleSpec turns into a container changes, so old containers are replaced.
CONTAINER_SPEC_VERSION = 1

_MEMORY = re.compile(r"^([0-9]+)([kmg]?)b?$", re.IGNORECASE)
_CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]+$")
# Capabilities that amount to root on the host: refused outright, not merely discouraged.
FORBIDDEN_CAPABILITIES = frozenset({"SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE", "SYS_RAWIO", "SYS_BOOT", "MAC_ADMIN"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Where an artifact may not be mounted: the kernel's filesystems, the container's own tmpfs (/tmp)
# and runtime directory (/run, where the agent mounts the telemetry socket).
RESERVED_TARGETS = tuple(PurePosixPath(p) for p in ("/proc", "/sys", "/dev", "/tmp", "/run"))
# The refusal code of a deployment with an artifact path that is reserved or collides with a mount.
ARTIFACT_PATH_CODE = "artifact_path_refused"
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _image_reference(value: str, kind: str = "image") -> str:
    """A registry reference with an explicit host and a tag or digest (images, releases, artifacts)."""
    try:
        _, tag, digest = parse_image_reference(value)
    except ValueError:
        raise PydanticCustomError(
            kind, "expected registry/repository[:tag][@sha256:digest] with an explicit registry host"
        ) from None
    if tag is None and digest is None:
        raise PydanticCustomError(kind, "expected a tag or a digest (no implicit :latest)")
    return value


def _duration(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("duration", "expected seconds as a number or a string like 10s, 500ms, 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*", value)
        if not match:
            raise PydanticCustomError("duration", "expected seconds as a number or a string like 10s, 500ms, 2m")
        unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]
        seconds = float(match.group(1)) * unit
    if seconds < 0:
        raise PydanticCustomError("duration", "expected a duration >= 0")
    return seconds


class Healthcheck(_Model):
    command: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="the check as an argument list, e.g. ['/bin/check', '--quick']; exit 0 = healthy"
    )
    interval: float = Field(10.0, description="seconds between checks (number or '10s'), 0.5-3600")
    timeout: float = Field(5.0, description="seconds a check may take, 0.5-600")
    retries: int = Field(3, ge=1, le=100, description="failed checks in a row before unhealthy, 1-100")
    start_period: float = Field(
        0.0, alias="startPeriod", description="seconds after start during which failures do not count, 0-3600"
    )

    @field_validator("interval", "timeout", "start_period", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> float:
        return _duration(value)

    @model_validator(mode="after")
    def _ranges(self) -> Healthcheck:
        if not 0.5 <= self.interval <= 3600:
            raise ValueError("interval: expected 0.5-3600 seconds")
        if not 0.5 <= self.timeout <= 600:
            raise ValueError("timeout: expected 0.5-600 seconds")
        if self.start_period > 3600:
            raise ValueError("startPeriod: expected 0-3600 seconds")
        return self


class Mount(_Model):
    source: str = Field(description="an absolute host path under one of the device's allowed mount roots")
    target: str = Field(description="an absolute path inside the container")
    read_only: bool = Field(True, alias="readOnly", description="true or false (default true)")

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts:
            raise PydanticCustomError("path", "expected an absolute path without '..'")
        return normalise_container_path(value)


class Port(_Model):
    container: int = Field(ge=1, le=65535, description="container port, 1-65535")
    host: int = Field(ge=1, le=65535, description="host port, 1-65535")
    protocol: Literal["tcp", "udp"] = Field("tcp", description="tcp or udp")
    host_ip: str = Field("127.0.0.1", alias="hostIp", description="host address to bind (default 127.0.0.1)")


class Resources(_Model):
    memory: int | None = Field(None, description="memory limit in bytes or a string like 256m, at least 4m")
    cpus: float | None = Field(None, gt=0, le=64, description="CPU limit in cores, e.g. 0.5")
    pids: int = Field(256, ge=8, le=65536, description="maximum processes, 8-65536 (default 256)")

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (match := _MEMORY.match(value.strip())):
            number = int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]
        else:
            raise PydanticCustomError("memory", "expected bytes or a string like 256m or 1g")
        if number < 4 << 20:
            raise PydanticCustomError("memory", "expected at least 4m")
        return number


class Capabilities(_Model):
    add: list[str] = Field(default_factory=list, description="capabilities to add, e.g. NET_BIND_SERVICE")

    @field_validator("add")
    @classmethod
    def _caps(cls, value: list[str]) -> list[str]:
        out = []
        for cap in value:
            name = cap.upper().removeprefix("CAP_")
            if not _CAPABILITY.match(cap.upper()):
                raise PydanticCustomError("cap", "{cap} is not a capability name", {"cap": cap})
            if name in FORBIDDEN_CAPABILITIES:
                raise PydanticCustomError("cap", "{cap} is never granted to modules", {"cap": cap})
            out.append(name)
        return sorted(set(out))


def normalise_container_path(value: str) -> str:
    """An absolute container path in one spelling: `//x`, `/x/`, `/a/../x` and `/x/.` are all
    `/x` (POSIX keeps a leading `//`, podman does not: both must compare equal here)."""
    if not value.startswith("/"):
        return value
    return "/" + posixpath.normpath(value).lstrip("/")


def overlaps(a: str, b: str) -> bool:
    """Two normalised absolute paths are the same, or one contains the other."""
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


def artifact_path_problem(
    path: str, mount_targets: Iterable[str] = (), other_artifacts: Iterable[str] = ()
) -> str | None:
    """Why an artifact may not be mounted at the normalised `path`, or None: a reserved place, or
    a module mount target (the same, above or below it: podman refuses duplicate destinations)."""
    target = PurePosixPath(path)
    reserved = next((r for r in RESERVED_TARGETS if target == r or r in target.parents or target in r.parents), None)
    if reserved is not None:
        return f"{path}: {reserved} is not a place for artifacts"
    for mount in mount_targets:
        if overlaps(path, normalise_container_path(mount)):
            return f"{path}: overlaps the mount target {mount}"
    for other in other_artifacts:
        if overlaps(path, other):
            return f"{path}: overlaps the artifact path {other}"
    return None


def artifact_slot(target: str) -> str:
    """The directory name an artifact mounted at `target` has on the device: /models -> models."""
    return "-".join(PurePosixPath(target).parts[1:]) or "root"


class Artifact(_Model):
    ref: str = Field(
        description="an artifact (a model) in a registry, by tag or digest: "
        "registry/models/pilot:v2 or ...@sha256:<hex>"
    )
    path: str = Field(
        description="absolute directory in the container where it is mounted read-only; "
        "the files are in <path>/current/ (switched atomically)"
    )
    confirm: bool = Field(
        False,
        description="the module reports which artifact it uses (stream module.artifacts); the deployment is "
        "good only once it confirms this one, and fails (rolls back) when the module refuses it",
    )

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _image_reference(value, "artifact")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        normal = normalise_container_path(value)
        path = PurePosixPath(normal)
        if not path.is_absolute() or len(path.parts) < 2:
            raise PydanticCustomError("path", "expected an absolute directory below /")
        if any(not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", p) for p in path.parts[1:]):
            raise PydanticCustomError("path", "expected path components of letters, digits, '.', '_', '-'")
        return normal


class ModuleSpec(_Model):
    image: str = Field(description="a registry image like registry.example.com/pilot:1.2 or ...@sha256:<digest>")
    status: Literal["running", "stopped"] = Field("running", description="one of running, stopped")
    restart_policy: Literal["never", "on-failure", "on-unhealthy", "always"] = Field(
        "always", alias="restartPolicy", description="one of never, on-failure, on-unhealthy, always"
    )
    startup_order: int = Field(
        100, alias="startupOrder", ge=0, le=1_000_000, description="a number 0-1000000; lower starts first"
    )
    env: dict[str, str] = Field(default_factory=dict, description="environment variables as NAME: value strings")
    command: list[str] | None = Field(None, description="entrypoint override as an argument list")
    args: list[str] | None = Field(None, description="arguments (the image's CMD) as a list")
    mounts: list[Mount] = Field(default_factory=list, description="bind mounts from allowed host paths")
    devices: list[str] = Field(default_factory=list, description="device paths like /dev/video0 or /dev/i2c-1")
    ports: list[Port] = Field(default_factory=list, description="published ports")
    resources: Resources = Field(default_factory=Resources, description="memory, cpus, pids limits")
    healthcheck: Healthcheck | None = Field(None, description="a health check command and its timing")
    user: str | None = Field(None, description="user[:group] to run as, e.g. 1000:1000 or nobody")
    read_only_rootfs: bool = Field(
        True, alias="readOnlyRootfs", description="true or false (default true: /tmp is a tmpfs)"
    )
    capabilities: Capabilities = Field(default_factory=Capabilities, description="all are dropped; list adds")
    network: Literal["bridge", "none", "host"] = Field("bridge", description="one of bridge, none, host")
    labels: dict[str, str] = Field(default_factory=dict, description="container labels (not edge-agent.*)")
    stop_grace: float | None = Field(
        None, alias="stopGrace", description="seconds between SIGTERM and SIGKILL on stop (default from config)"
    )
    artifacts: list[Artifact] = Field(
        default_factory=list,
        max_length=8,
        description="signed OCI artifacts (models) placed read-only in the container; a new one does not "
        "re-create the container",
    )

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, value: list[Artifact]) -> list[Artifact]:
        slots = [artifact_slot(a.path) for a in value]
        for i, slot in enumerate(slots):
            if slot in slots[:i]:
                raise PydanticCustomError(
                    "artifacts", "{path}: two artifacts map to the same directory ({slot})",
                    {"path": value[i].path, "slot": slot},
                )
        return value

    @model_validator(mode="after")
    def _artifact_targets(self) -> ModuleSpec:
        paths = [a.path for a in self.artifacts]
        for i, path in enumerate(paths):
            problem = artifact_path_problem(path, [m.target for m in self.mounts], paths[:i])
            if problem is not None:
                raise PydanticCustomError(ARTIFACT_PATH_CODE, "artifacts: {problem}", {"problem": problem})
        return self

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _image_reference(value)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME.match(name):
                raise PydanticCustomError("env", "{name} is not a valid variable name", {"name": name})
        return value

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: list[str]) -> list[str]:
        for dev in value:
            path = PurePosixPath(dev)
            if not dev.startswith("/dev/") or ".." in path.parts or dev.rstrip("/") == "/dev":
                raise PydanticCustomError("device", "{dev} is not a device path under /dev/", {"dev": dev})
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise PydanticCustomError("label", "{key}: labels starting with edge-agent. are reserved", {"key": key})
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER.match(value):
            raise PydanticCustomError("user", "expected user or user:group")
        return value

    @field_validator("stop_grace", mode="before")
    @classmethod
    def _grace(cls, value: object) -> float | None:
        return None if value is None else _duration(value)

    def spec_hash(self, pinned_image: str) -> str:
        """Identity of the container this spec makes: any change means a new container."""
        doc = self.model_dump(mode="json", by_alias=True)
        doc["image"] = pinned_image
        # Which artifact version is placed is not part of the container: only where they are
        # mounted (a new model is switched in place, the container keeps running).
        artifacts = doc.pop("artifacts")
        if artifacts:
            doc["artifacts"] = sorted(a["path"] for a in artifacts)
        doc["_v"] = CONTAINER_SPEC_VERSION
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class AgentRelease(_Model):
    """The agent version a deployment asks for (docs/operations.md, "Agent updates")."""

    version: str = Field(description="the release version, e.g. 0.2.0 (letters, digits, '.', '+', '_', '-')")
    image: str = Field(description="the signed release image, registry/repository:tag or ...@sha256:<digest>")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9A-Za-z+_-][0-9A-Za-z.+_-]{0,63}", value):
            raise PydanticCustomError(
                "version", "expected a release version like 0.2.0 (letters, digits, '.', '+', '_', '-'; at most 64)"
            )
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return _image_reference(value)


class Deployment(_Model):
    modules: dict[Annotated[str, Field(pattern=MODULE_NAME_PATTERN)], ModuleSpec] = Field(
        default_factory=dict, description="module name -> module spec"
    )
    agent: AgentRelease | None = Field(None, description="the agent release to run: {version, image}")


def _describe(err: Mapping[str, Any], raw: Mapping[str, Any]) -> str:
    loc = [str(p) for p in err["loc"]]
    where = ""
    if len(loc) >= 2 and loc[0] == "modules":
        where = f"module {loc[1]!r}: "
        loc = loc[2:]
    if loc[-1:] == ["[key]"]:
        return (f"{where}module name: expected lower-case letters, digits, '-', '_' "
                "(at most 63, starting with a letter or digit)")
    field = ".".join(loc)
    prefix = f"{field}: " if field else ""
    return f"{where}{prefix}{describe(err, style='expected')}"


def _check_mounts(deployment: Deployment, allowed_roots: Iterable[str]) -> list[str]:
    roots = [PurePosixPath(r) for r in allowed_roots]
    problems = []
    for name, module in deployment.modules.items():
        for i, mount in enumerate(module.mounts):
            src = PurePosixPath(mount.source)
            if not any(src == root or root in src.parents for root in roots):
                allowed = ", ".join(str(r) for r in roots) or "none configured ([deployment] allowed_mount_roots)"
                problems.append(
                    f"module {name!r}: mounts.{i}.source: got {mount.source!r}; expected a path under: {allowed}"
                )
    return problems


def validate_deployment(raw: Mapping[str, Any], *, allowed_mount_roots: Iterable[str] | None = None) -> Deployment:
    """Parse a deployment document. Raises DesiredRejected("invalid_deployment", ...) listing every
    problem (first one first, '; ' separated)."""
    if not isinstance(raw, Mapping):
        raise DesiredRejected("invalid_deployment", "deployment: expected an object with a 'modules' object")
    try:
        deployment = Deployment.model_validate(dict(raw))
    except ValidationError as exc:
        problems = [_describe(e, raw) for e in exc.errors()]
        # A refused artifact path has its own code: the fleet tells it from a typo at a glance.
        path_refused = any(e["type"] == ARTIFACT_PATH_CODE for e in exc.errors())
        code = ARTIFACT_PATH_CODE if path_refused else "invalid_deployment"
        raise DesiredRejected(code, "; ".join(problems)) from None
    if allowed_mount_roots is not None:
        problems = _check_mounts(deployment, allowed_mount_roots)
        if problems:
            raise DesiredRejected("invalid_deployment", "; ".join(problems))
    return deployment
