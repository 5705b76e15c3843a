"""RegistryClient.download_blob against the real registry: streamed to a file with its digest
checked, refused past the size limit; and ArtifactDirs.fetch of a pushed model artifact."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from devinfra.registry import Registry
from edge_agent.artifacts.placement import ArtifactDirs, ArtifactFailed
from edge_shared.artifacts.format import build_model_artifact, validate_metadata
from edge_shared.trust.registry import RegistryClient, RegistryError, RegistrySettings, parse_reference
from edgectl.push import push_artifact
from tests.unit.artifacts.test_format import META


def test_download_streams_checks_digest_and_limit(registry: Registry, tmp_path: Path) -> None:
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host})))
    ref = parse_reference(f"{registry.host}/artifacts-test/blob:1")
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = client.push_blob(ref, data)
    out = io.BytesIO()
    assert client.download_blob(ref, digest, out, max_bytes=len(data)) == len(data)
    assert out.getvalue() == data
    with pytest.raises(RegistryError) as err:
        client.download_blob(ref, digest, io.BytesIO(), max_bytes=len(data) - 1)
    assert err.value.code == "too_large"
    missing = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    with pytest.raises(RegistryError) as err:
        client.download_blob(ref, missing, io.BytesIO(), max_bytes=100)
    assert err.value.code == "not_found"


def test_fetch_places_a_pushed_model_and_refuses_a_truncated_limit(registry: Registry, tmp_path: Path) -> None:
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({registry.host})))
    ref = parse_reference(f"{registry.host}/artifacts-test/model:v1")
    onnx = os.urandom(100_000)
    pushed = push_artifact(client, ref, build_model_artifact(onnx, validate_metadata(META)))
    assert pushed.bytes_uploaded > len(onnx)
    again = push_artifact(client, ref, build_model_artifact(onnx, validate_metadata(META)))
    assert again.digest == pushed.digest and again.bytes_uploaded == 0  # blobs already there
    dirs = ArtifactDirs(tmp_path / "artifacts", client)
    dirs.fetch("pilot", "models", pushed.reference)
    dirs.switch("pilot", "models", pushed.digest)
    current = dirs.slot_dir("pilot", "models") / "current"
    assert (current / "model.onnx").read_bytes() == onnx
    small = ArtifactDirs(tmp_path / "small", client, max_bytes=1000)
    with pytest.raises(ArtifactFailed) as err:
        small.fetch("pilot", "models", pushed.reference)
    assert err.value.code == "artifact_too_large"
