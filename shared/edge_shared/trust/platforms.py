"""Platforms of multi-arch images: the device's own (os/architecture/variant, OCI names), and
the choice of one manifest from an OCI image index or Docker manifest list.

Pure functions; the verifier (trust/verify.py) fetches and checks, this only decides.

Names follow the OCI image index spec (`platform.os`, `platform.architecture`,
`platform.variant`) and the normalisation container runtimes apply: arm64 without a variant is
arm64/v8, 32-bit arm without a variant is arm/v7. A device of arm/v7 also runs arm/v6 and
arm/v5 images (a newer ARM core executes the older instruction sets); nothing else is assumed
compatible: an amd64/v3 image is not picked for a device that only says linux/amd64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edge_shared.image_ref import DIGEST_RE
from edge_shared.trust.cosign import FormatError, strict_json

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})

# platform.machine() (uname -m) -> OCI architecture and variant
_MACHINES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv8l": ("arm", "v7"),  # 32-bit userland on a 64-bit core
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}
_ARM_OLDER = {"v8": ("v8", "v7", "v6", "v5"), "v7": ("v7", "v6", "v5"), "v6": ("v6", "v5"), "v5": ("v5",)}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def normalized(self) -> Platform:
        variant = self.variant or _DEFAULT_VARIANT.get(self.architecture)
        return Platform(self.os, self.architecture, variant)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def parse_platform(text: str) -> Platform:
    """'linux/arm64', 'linux/arm64/v8', 'linux/amd64'; ValueError saying what is wrong."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(_NAME.match(p) for p in parts):
        raise ValueError(f"platform {text!r}: expected os/architecture[/variant] in lower case, e.g. linux/arm64")
    os_name, arch = parts[0], parts[1]
    if arch in ("aarch64", "x86_64"):
        better = "arm64" if arch == "aarch64" else "amd64"
        raise ValueError(f"platform {text!r}: {arch} is the kernel's name; the OCI name is {better}")
    return Platform(os_name, arch, parts[2] if len(parts) == 3 else None).normalized()


def host_platform(machine: str, system: str = "Linux") -> Platform:
    """The platform of this machine from platform.machine() / platform.system()."""
    arch, variant = _MACHINES.get(machine.lower(), (machine.lower(), None))
    return Platform(system.lower(), arch, variant)


@dataclass(frozen=True)
class IndexEntry:
    media_type: str
    digest: str
    size: int
    platform: Platform | None  # None: the entry names no platform (attestations, artifacts)


def is_index(media_type: str, body: bytes) -> bool:
    if media_type in INDEX_MEDIA_TYPES:
        return True
    try:
        doc = strict_json(body, "manifest")
    except FormatError:
        return False
    return isinstance(doc, dict) and "manifests" in doc and "config" not in doc and "layers" not in doc


def parse_index(body: bytes) -> list[IndexEntry]:
    """The entries of an image index / manifest list; FormatError naming the bad field."""
    doc = strict_json(body, "image index")
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
        raise FormatError("image index: expected an object with a manifests list")
    return [_entry(item, f"image index manifests[{i}]") for i, item in enumerate(doc["manifests"])]


def _entry(item: Any, what: str) -> IndexEntry:
    if not isinstance(item, dict):
        raise FormatError(f"{what}: expected an object")
    media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
    if not isinstance(media_type, str):
        raise FormatError(f"{what}.mediaType: expected a string")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise FormatError(f"{what}.digest: expected sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FormatError(f"{what}.size: expected a non-negative integer")
    raw = item.get("platform")
    if raw is None:
        return IndexEntry(media_type, digest, size, None)
    if not isinstance(raw, dict):
        raise FormatError(f"{what}.platform: expected an object")
    os_name, arch, variant = raw.get("os"), raw.get("architecture"), raw.get("variant")
    if not isinstance(os_name, str) or not isinstance(arch, str):
        raise FormatError(f"{what}.platform: os and architecture must be strings")
    if variant is not None and not isinstance(variant, str):
        raise FormatError(f"{what}.platform.variant: expected a string")
    return IndexEntry(media_type, digest, size, Platform(os_name, arch, variant or None))


def compatible(device: Platform) -> list[Platform]:
    """The platforms a device runs, best first (its own first)."""
    own = device.normalized()
    if own.architecture == "arm" and own.variant in _ARM_OLDER:
        return [Platform(own.os, "arm", v) for v in _ARM_OLDER[own.variant]]
    return [own]


def pick(entries: list[IndexEntry], device: Platform) -> IndexEntry | None:
    """The entry for the device: the best compatible platform; the first such entry when an index
    lists one platform twice (as container runtimes do)."""
    for wanted in compatible(device):
        for entry in entries:
            if entry.platform is not None and entry.platform.normalized() == wanted:
                return entry
    return None


def describe(entries: list[IndexEntry]) -> str:
    names = sorted({str(e.platform) for e in entries if e.platform is not None})
    return ", ".join(names) or "no platforms"
