"""The one image-reference grammar and loopback check (shared/edge_shared/image_ref.py), shared by the
deployment document's validation, the registry client and the verifiers."""

from __future__ import annotations

import pytest

from edge_shared.image_ref import ImageRef, is_loopback_host, parse_image_reference, parse_reference
from edge_shared.spec import DesiredRejected, validate_deployment

DIGEST = "sha256:" + "0f" * 32


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("registry.local/pilot:1.0", ImageRef("registry.local", "pilot", "1.0")),
        ("Registry.Local:5000/team/pi-lot__x:v1", ImageRef("registry.local:5000", "team/pi-lot__x", "v1")),
        (f"localhost/a@{DIGEST}", ImageRef("localhost", "a", None, DIGEST)),
        (f"127.0.0.1:5000/a/b:2@{DIGEST}", ImageRef("127.0.0.1:5000", "a/b", "2", DIGEST)),
        ("[::1]:5000/a:1", ImageRef("[::1]:5000", "a", "1")),
        ("reg.io/x", ImageRef("reg.io", "x")),
    ],
)
def test_accepted(text: str, ref: ImageRef) -> None:
    assert parse_reference(text) == ref
    assert parse_image_reference(text) == (ref.repository, ref.tag, ref.digest)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("busybox", "expected registry/repository"),
        ("pilot/app:1", "expected registry/repository"),  # no registry host: never docker.io
        ("reg.io/App:1", "invalid repository"),
        ("reg.io/a:-x", "invalid tag"),
        ("reg.io/a@sha256:abc", "digest must be"),
        ("reg_io.x/a:1", "expected registry/repository"),
    ],
)
def test_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_reference(text)


def test_deployment_documents_use_the_same_grammar() -> None:
    image = "Registry.Local:5000/team/pi-lot__x:v1"
    assert validate_deployment({"modules": {"m": {"image": image}}}).modules["m"].image == image
    with pytest.raises(DesiredRejected, match="expected registry/repository"):
        validate_deployment({"modules": {"m": {"image": "pilot/app:1"}}})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.8.9.10", True),
     ("[::1]:5000", True), ("::1", True), ("10.0.0.1:5000", False), ("registry.local:5000", False),
     ("localhost.example.com", False)],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
