"""Fixtures for trust integration tests: real registry (docker-registry 2.8), real podman, keys.

Images are `trust-test-*` variants of the busybox test image, pushed under
`<registry>/trust-test/<name>`; every test uses its own repository name.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devinfra.podman import PodmanService, podman
from devinfra.registry import Registry
from edge_agent.store import open_state_db
from edge_agent.trust.cache import VerifyCache
from edge_agent.trust.local_images import PodmanLocalImages
from edge_shared.trust import keys
from edge_shared.trust.policy import ScopePolicy
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference
from edge_shared.trust.verify import CosignVerifier, LocalImages

_counter = itertools.count()


@dataclass
class KeyPair:
    private: keys.PrivateKey
    public: keys.TrustedKey


def make_keypair() -> KeyPair:
    priv = keys.generate_private_key()
    return KeyPair(priv, keys.parse_public_key(keys.public_key_pem(priv.public_key()), "test"))


@pytest.fixture(scope="session", autouse=True)
def remove_trust_test_images(podman_env: Path) -> Iterator[None]:
    """Images this package made (trust-test-* variants, pulled trust-test/* repositories) go at the end."""
    yield
    listing = podman("images", "--format", "{{.ID}} {{.Repository}}", check=False).stdout.splitlines()
    ids = {line.split()[0] for line in listing if "trust-test" in line}
    for image_id in ids:
        podman("rmi", "-f", image_id, check=False)


@pytest.fixture(scope="session")
def signer() -> KeyPair:
    return make_keypair()


@pytest.fixture(scope="session")
def stranger() -> KeyPair:
    return make_keypair()


def build_variant(base: str, tag: str) -> str:
    """A distinct local image (own config digest) from the busybox test image, without network."""
    local = f"localhost/trust-test-variant:{tag}"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Containerfile").write_text(f"FROM {base}\nLABEL trust.variant={tag}\n")
        podman("build", "--pull=never", "-q", "-t", local, tmp)
    return local


@dataclass
class ImageFactory:
    registry: Registry
    base: str

    def push(self, repo_name: str, tag: str = "1", variant: str | None = None) -> str:
        """Push an image to <registry>/trust-test/<repo_name>:<tag>; returns the reference. Always an
        image of its own (a variant of the base), never the shared busybox image under another name:
        removing a trust-test image by id or digest must not remove what other tests run."""
        source = build_variant(self.base, variant or f"{repo_name}-{tag}")
        ref = f"{self.registry.host}/trust-test/{repo_name}:{tag}"
        podman("tag", source, ref)
        podman("push", "--tls-verify=false", "-q", ref)
        podman("rmi", ref, check=False)  # keep only what the test pulls by digest
        return ref

    def unique(self, stem: str) -> str:
        return f"{stem}-{next(_counter)}"


@pytest.fixture(scope="session")
def images(registry: Registry, busybox_image: str) -> ImageFactory:
    return ImageFactory(registry, busybox_image)


@pytest.fixture(scope="session")
def registry_client(registry: Registry) -> RegistryClient:
    return RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host})))


@pytest.fixture
def cache(tmp_path: Path) -> VerifyCache:
    return VerifyCache(open_state_db(tmp_path / "state"))


@pytest.fixture(scope="session")
def local_images(podman_service: PodmanService) -> PodmanLocalImages:
    return PodmanLocalImages(podman_service.url)


def verifier_for(
    registry_host: str,
    trusted: list[keys.TrustedKey],
    *,
    mode: str = "enforce",
    cache: VerifyCache | None = None,
    local: LocalImages | None = None,
    settings: RegistrySettings | None = None,
    required: dict[str, str] | None = None,
) -> CosignVerifier:
    policy = ScopePolicy(registry_host, mode, tuple(trusted), required or {})  # type: ignore[arg-type]
    client = RegistryClient(settings or RegistrySettings(insecure_registries=frozenset({registry_host})))
    return CosignVerifier([policy], client, cache, local)


@pytest.fixture
def cleanup_containers() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "-f", "-t", "0", name, check=False)


def repo_of(reference: str) -> str:
    return parse_reference(reference).repository
