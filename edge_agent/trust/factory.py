"""Build the trust objects from the [trust] config section (what daemon.py and checks.py call)."""

from __future__ import annotations

import platform as py_platform
import sqlite3

from edge_agent.config import AgentConfig, TrustSection
from edge_agent.trust.cache import VerifyCache
from edge_agent.trust.local_images import PodmanLocalImages
from edge_agent.trust.origins import ImageOrigins
from edge_shared.trust.keys import load_public_key
from edge_shared.trust.platforms import Platform, host_platform, parse_platform
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import RegistryClient, RegistrySettings
from edge_shared.trust.verify import CosignVerifier, LocalImages


def scope_policies(trust: TrustSection) -> list[ScopePolicy]:
    return [
        ScopePolicy(
            p.scope,
            p.mode,
            tuple(load_public_key(path) for path in p.keys),
            dict(p.required_annotations),
            p.allow_unnamed_bundles,
        )
        for p in trust.policy
    ]


def registry_settings(trust: TrustSection) -> RegistrySettings:
    """Resolves registry passwords (SecretRef) now; raises OSError/KeyError naming the reference."""
    return RegistrySettings(
        insecure_registries=frozenset(trust.insecure_registries),
        ca_file=trust.ca_file,
        credentials={a.registry: (a.username, a.password.resolve()) for a in trust.registry_auth},
        max_manifest_bytes=trust.max_manifest_kb * 1024,
        max_blob_bytes=trust.max_signature_kb * 1024,
    )


def device_platform(config: AgentConfig) -> Platform:
    """[device] platform when set (validated with the config), else this machine's."""
    if config.device.platform is not None:
        return parse_platform(config.device.platform)
    return host_platform(py_platform.machine(), py_platform.system())


def build_verifier(
    config: AgentConfig, db: sqlite3.Connection | None, local_images: LocalImages | None = None
) -> CosignVerifier:
    return CosignVerifier(
        scope_policies(config.trust),
        RegistryClient(registry_settings(config.trust)),
        VerifyCache(db) if db is not None else None,
        local_images if local_images is not None else PodmanLocalImages(config.podman.socket),
        device_platform(config),
        ImageOrigins(db) if db is not None else None,
    )
