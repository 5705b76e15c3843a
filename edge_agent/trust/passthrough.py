"""The image verifier the deployment layer uses when it is given none (tests, `bench/`, a
component built without the trust component): trust mode "off" for every image.

There is one implementation of mode "off": CosignVerifier with a `mode = "off"` policy, which
resolves a tag to its manifest digest in the registry (or takes the digest written in the
reference, without asking the registry) and checks nothing else. `PassthroughVerifier` is that
verifier with a single `*` scope, plus the question the executor asks before a pull: may this
image's registry be spoken to over plain HTTP (listed in insecure_registries AND on loopback)?
Containers are only ever created from the repository@digest it returns.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_shared.image_ref import is_loopback_host
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import RegistryClient, RegistrySettings
from edge_shared.trust.verify import CosignVerifier


class RegistryUnreachable(Exception):
    """Kept for callers that catch it (desired/manager.py). The verifier reports an
    unreachable registry as ImageRejected(code="registry_unreachable"), which they retry alike."""


class PassthroughVerifier(CosignVerifier):
    def __init__(self, insecure_registries: Iterable[str] = (), timeout_s: float = 15.0) -> None:
        self.insecure = frozenset(r for r in insecure_registries if is_loopback_host(r))
        registry = RegistryClient(RegistrySettings(insecure_registries=self.insecure, timeout_s=timeout_s))
        super().__init__([ScopePolicy("*", "off")], registry)

    def is_insecure(self, image: str) -> bool:
        return image.split("/", 1)[0] in self.insecure
