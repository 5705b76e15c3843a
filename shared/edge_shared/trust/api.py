"""The contract between the deployment executor and image trust: verify, then run by digest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

TrustMode = Literal["enforce", "warn", "off"]


@dataclass(frozen=True)
class VerifiedImage:
    reference: str  # as written in the deployment, e.g. registry.local/pilot:1.2
    repository: str  # registry/repository, e.g. registry.local/pilot
    digest: str  # sha256:<hex> that was verified; the container is created from repository@digest
    mode: TrustMode  # the policy that applied
    signer: str | None  # id of the key that verified the signature, None when not verified (warn/off)
    # A multi-arch reference (an image index / manifest list): the index it resolved to and the
    # platform picked from it; `digest` is then that platform's manifest. None for a plain image.
    index_digest: str | None = None
    platform: str | None = None


class ImageRejected(Exception):
    """The image may not run. `code` e.g. unsigned, untrusted_key, digest_mismatch, reference_mismatch."""

    def __init__(self, reference: str, code: str, description: str) -> None:
        super().__init__(f"{reference}: {code}: {description}")
        self.reference = reference
        self.code = code
        self.description = description


class ImageVerifier(Protocol):
    async def verify(self, reference: str) -> VerifiedImage:
        """Resolve the reference to a digest and check it against the trust policy.
        Raises ImageRejected."""
        ...
