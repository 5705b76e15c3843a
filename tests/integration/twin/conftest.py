"""Fixtures for the twin's integration tests: a CA, a mutual-TLS mosquitto with the example
ACL, device configs for the real agent, and fleet clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devinfra.pki import Pki, tls_broker, unique
from devinfra.twin_env import TwinEnv


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def twin_env(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwinEnv]:
    """A shared mutual-TLS broker for tests that do not stop it."""
    prefix = unique("twin")
    fleet = pki.client(unique("fleet"))
    broker = tls_broker(tmp_path_factory.mktemp("tls-mosquitto"), pki, prefix, fleet.cn).start()
    yield TwinEnv(pki, broker, prefix, fleet)
    broker.stop()


@pytest.fixture
def own_twin_env(pki: Pki, tmp_path: Path) -> Iterator[TwinEnv]:
    """A broker of the test's own, for tests that kill and restart it."""
    prefix = unique("own")
    fleet = pki.client(unique("fleet"))
    broker = tls_broker(tmp_path / "mosquitto", pki, prefix, fleet.cn).start()
    yield TwinEnv(pki, broker, prefix, fleet)
    broker.stop()
