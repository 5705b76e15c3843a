"""Trust mode "off" without a trust component: PassthroughVerifier is the cosign verifier with one
`*` scope in mode off. A digest in the reference is taken as is (no registry needed); a tag is
resolved in the registry, and an unreachable registry is a retryable refusal."""

from __future__ import annotations

import socket

import pytest

from edge_agent.trust.passthrough import PassthroughVerifier
from edge_shared.trust.api import ImageRejected
from edge_shared.trust.verify import CosignVerifier

DIGEST = "sha256:" + "ab" * 32


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_digest_is_taken_as_written_without_the_registry() -> None:
    verifier = PassthroughVerifier()
    assert isinstance(verifier, CosignVerifier)
    verified = await verifier.verify(f"registry.invalid:5000/team/app@{DIGEST}")
    assert (verified.repository, verified.digest, verified.mode, verified.signer) == (
        "registry.invalid:5000/team/app", DIGEST, "off", None)


async def test_a_tag_needs_the_registry_and_its_absence_is_retryable() -> None:
    host = f"127.0.0.1:{closed_port()}"
    verifier = PassthroughVerifier([host], timeout_s=2)
    with pytest.raises(ImageRejected) as info:
        await verifier.verify(f"{host}/team/app:1")
    assert info.value.code == "registry_unreachable"


def test_plain_http_only_for_listed_loopback_registries() -> None:
    verifier = PassthroughVerifier(["127.0.0.1:5000", "localhost:5001", "registry.example.com:5000"])
    assert verifier.is_insecure("127.0.0.1:5000/a@" + DIGEST)
    assert verifier.is_insecure("localhost:5001/a:1")
    assert not verifier.is_insecure("registry.example.com:5000/a:1")
    assert not verifier.is_insecure("127.0.0.1:5002/a:1")
