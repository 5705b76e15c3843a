"""Artifact directories on disk: download into staging with every digest checked, atomic switch of
`current` (the old one becomes `previous`), garbage collection. The registry is a fake here; the
real one is in tests/integration/artifacts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import pytest

from edge_agent.artifacts.placement import ArtifactDirs, ArtifactFailed
from edge_shared.artifacts.format import build_model_artifact, validate_metadata
from edge_shared.trust.registry import ImageRef, Manifest, RegistryError
from tests.unit.artifacts.test_format import META


class FakeRegistry:
    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.blob_reads = 0

    def add(self, onnx: bytes) -> str:
        built = build_model_artifact(onnx, validate_metadata(META))
        self.manifests[built.digest] = built.manifest
        self.blobs["sha256:" + hashlib.sha256(built.config).hexdigest()] = built.config
        for desc, data in built.layers:
            self.blobs[desc.digest] = data
        return built.digest

    def get_manifest(self, ref: ImageRef, reference: str | None = None) -> Manifest:
        assert reference is not None
        return Manifest(reference, "application/vnd.oci.image.manifest.v1+json", self.manifests[reference])

    def download_blob(self, ref: ImageRef, digest: str, dest: BinaryIO, max_bytes: int) -> int:
        self.blob_reads += 1
        data = self.blobs[digest]
        if len(data) > max_bytes:
            raise RegistryError("too_large", f"blob {digest} is larger than {max_bytes}")
        dest.write(data)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError("digest_mismatch", f"blob {digest} has another content digest")
        return len(data)


def _dirs(tmp_path: Path) -> tuple[ArtifactDirs, FakeRegistry]:
    reg = FakeRegistry()
    return ArtifactDirs(tmp_path / "artifacts", reg), reg  # type: ignore[arg-type]


def test_fetch_switch_and_rollback_layout(tmp_path: Path) -> None:
    dirs, reg = _dirs(tmp_path)
    d1, d2 = reg.add(b"model one"), reg.add(b"model two")
    dirs.fetch("pilot", "models", f"r.local/m@{d1}")
    placed = dirs.switch("pilot", "models", d1)
    slot = dirs.slot_dir("pilot", "models")
    assert placed.previous is None and (slot / "current" / "model.onnx").read_bytes() == b"model one"
    sidecar = (slot / "current" / "model.onnx.sha256").read_text()
    assert sidecar.split()[0] == hashlib.sha256(b"model one").hexdigest()
    assert (slot / "current" / "model.json").exists()
    assert os.readlink(slot / "current") == "sha256-" + d1.removeprefix("sha256:")
    assert oct((slot / "current" / "model.onnx").stat().st_mode & 0o777) == "0o644"

    reads = reg.blob_reads
    dirs.fetch("pilot", "models", f"r.local/m@{d1}")  # already there: nothing downloaded
    assert reg.blob_reads == reads

    dirs.fetch("pilot", "models", f"r.local/m@{d2}")
    assert (slot / "current" / "model.onnx").read_bytes() == b"model one"  # fetched is not switched
    placed = dirs.switch("pilot", "models", d2)
    assert placed.previous == d1 and dirs.link("pilot", "models", "previous") == d1
    assert (slot / "current" / "model.onnx").read_bytes() == b"model two"
    assert not [p for p in slot.iterdir() if p.name.startswith(".")]  # no staging or temp links left

    d3 = reg.add(b"model three")
    dirs.fetch("pilot", "models", f"r.local/m@{d3}")
    dirs.switch("pilot", "models", d3)
    assert dirs.collect("pilot", "models", set()) == [d1]  # current (d3) and previous (d2) stay
    assert sorted(p.name for p in slot.iterdir()) == sorted(
        ["current", "previous", "sha256-" + d2[7:], "sha256-" + d3[7:]]
    )


def test_a_corrupted_layer_leaves_nothing_and_keeps_current(tmp_path: Path) -> None:
    dirs, reg = _dirs(tmp_path)
    d1, d2 = reg.add(b"model one"), reg.add(b"model two")
    dirs.fetch("pilot", "models", f"r.local/m@{d1}")
    dirs.switch("pilot", "models", d1)
    layer = "sha256:" + hashlib.sha256(b"model two").hexdigest()
    reg.blobs[layer] = b"model tw0"
    with pytest.raises(ArtifactFailed) as err:
        dirs.fetch("pilot", "models", f"r.local/m@{d2}")
    assert err.value.code == "artifact_digest_mismatch"
    slot = dirs.slot_dir("pilot", "models")
    assert sorted(p.name for p in slot.iterdir()) == ["current", "sha256-" + d1[7:]]
    with pytest.raises(ArtifactFailed):
        dirs.switch("pilot", "models", d2)
    assert dirs.link("pilot", "models") == d1


def test_unpinned_or_unknown_references_fail_clearly(tmp_path: Path) -> None:
    dirs, _ = _dirs(tmp_path)
    with pytest.raises(ArtifactFailed) as err:
        dirs.fetch("pilot", "models", "r.local/m:v1")
    assert err.value.code == "artifact_invalid" and "not pinned" in err.value.description
