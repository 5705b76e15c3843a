"""Image references: the one grammar (deployment documents, the registry client, the verifier,
`edgectl sign-image`/`verify-image`) and the one loopback check (which registries may be spoken
to over plain HTTP).

    registry[:port]/repository[:tag][@sha256:<64 hex>]

The registry part is required (no implicit docker.io: a device must never silently pull from a
public registry): a first component with a dot or a port, `localhost`, or an [IPv6] literal.
The repository follows the OCI distribution grammar (lower-case components joined by `.`, `_`,
`__` or dashes, separated by `/`); tags are at most 128 of `[A-Za-z0-9_.-]`, not starting with
`.` or `-`; the only digest accepted is sha256.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                      r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port], lower case
    path: str  # repository path inside the registry
    tag: str | None = None  # None: not written (the registry's "latest" when fetched by tag)
    digest: str | None = None

    @property
    def repository(self) -> str:
        """registry/path, what cosign signs as docker-reference."""
        return f"{self.registry}/{self.path}"

    @property
    def reference(self) -> str:
        """The tag or digest the manifest is fetched by."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.path, None, digest)

    def __str__(self) -> str:
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag or 'latest'}"


def parse_reference(text: str) -> ImageRef:
    """registry/repo[:tag][@sha256:...] -> ImageRef; ValueError saying what is wrong."""
    ref = text.strip()
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        if not DIGEST_RE.match(digest):
            raise ValueError(f"image reference {text!r}: digest must be sha256:<64 lowercase hex>")
    first, sep, rest = ref.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost") or not _HOST_RE.match(first):
        raise ValueError(f"image reference {text!r}: expected registry/repository[:tag], e.g. registry.local/pilot:1.0")
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ValueError(f"image reference {text!r}: invalid tag {tag!r}")
    if not _REPO_RE.match(rest):
        raise ValueError(f"image reference {text!r}: invalid repository name {rest!r} (lowercase, digits, ._-/)")
    return ImageRef(first.lower(), rest, tag, digest)


def parse_image_reference(text: str) -> tuple[str, str | None, str | None]:
    """registry/path[:tag][@sha256:...] -> (repository, tag, digest), tag and digest None when
    not written. Raises ValueError."""
    ref = parse_reference(text)
    return ref.repository, ref.tag, ref.digest


def is_loopback_host(registry: str) -> bool:
    """Is `registry` (host, host:port, [v6] or [v6]:port) on this machine? localhost or a loopback
    address; names other than localhost are never resolved (DNS could say anything)."""
    if registry.startswith("["):
        host = registry[1 : registry.find("]")]
    else:
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
