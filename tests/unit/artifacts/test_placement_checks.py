"""The device's own checks before and after an artifact download: free space (state.min_free_mb
and the declared size) and the model's metadata (model.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.artifacts.placement import ArtifactDirs, ArtifactFailed, check_metadata, check_space
from edge_shared.artifacts.format import canonical_json
from tests.unit.artifacts.test_format import META
from tests.unit.artifacts.test_placement import FakeRegistry

MB = 1024 * 1024


@pytest.mark.parametrize(("total", "free", "need", "min_free", "code"), [
    (100 * MB, 100 * MB, 10 * MB, 64 * MB, None),
    (100 * MB, 74 * MB, 10 * MB, 64 * MB, None),  # exactly the reserve left
    (100 * MB, 73 * MB, 10 * MB, 64 * MB, "artifact_io"),  # would eat into the reserve: retried
    (100 * MB, 0, 10 * MB, 64 * MB, "artifact_io"),
    (100 * MB, 100 * MB, 37 * MB, 64 * MB, "artifact_no_space"),  # never fits: final
    (100 * MB, 100 * MB, 500 * MB, 0, "artifact_no_space"),
    (100 * MB, 100 * MB, 100 * MB, 0, None),
    (100 * MB, 100 * MB, 0, 100 * MB, None),
])
def test_free_space_before_a_download(total: int, free: int, need: int, min_free: int, code: str | None) -> None:
    if code is None:
        check_space(total, free, need, min_free, "r.local/m@sha256:1")
        return
    with pytest.raises(ArtifactFailed) as caught:
        check_space(total, free, need, min_free, "r.local/m@sha256:1")
    assert caught.value.code == code and "r.local/m@sha256:1" in caught.value.description
    assert "state.min_free_mb" in caught.value.description


def _meta(**change: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(META))
    doc.update(change)
    return doc


@pytest.mark.parametrize(("content", "message"), [
    (canonical_json(META), None),
    (b"not json", "model.json"),
    (b"[]", "expected a JSON object"),
    (b'{"input": 1, "input": 2}', "duplicate key"),
    (b"\xff\xfe", "model.json"),
    (canonical_json(_meta(outputs=[])), "outputs"),
    (canonical_json({k: v for k, v in META.items() if k != "input"}), "input"),
    (canonical_json(_meta(dataset={"hash": "md5:x"})), "dataset"),
    (canonical_json(_meta(input={**META["input"], "shape": [1, 0, 2]})), "shape"),
    (canonical_json(_meta(input={**META["input"], "scale": 0})), "scale"),
])
def test_model_metadata_is_checked_on_the_device(tmp_path: Path, content: bytes, message: str | None) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(content)
    if message is None:
        check_metadata(path, "r.local/m@sha256:1")
        return
    with pytest.raises(ArtifactFailed) as caught:
        check_metadata(path, "r.local/m@sha256:1")
    assert caught.value.code == "artifact_invalid_metadata" and message in caught.value.description


def test_a_download_with_bad_metadata_or_too_little_space_leaves_nothing(tmp_path: Path) -> None:
    reg = FakeRegistry()
    digest = reg.add(b"model one")
    # The fleet's metadata check was skipped (another pusher): the config blob says shape [0].
    manifest = json.loads(reg.manifests[digest])
    bad = canonical_json(_meta(input={**META["input"], "shape": [0]}))
    bad_digest = "sha256:" + hashlib.sha256(bad).hexdigest()
    manifest["config"] = {**manifest["config"], "digest": bad_digest, "size": len(bad)}
    body = canonical_json(manifest)
    bad_manifest = "sha256:" + hashlib.sha256(body).hexdigest()
    reg.manifests[bad_manifest] = body
    reg.blobs[bad_digest] = bad
    dirs = ArtifactDirs(tmp_path / "artifacts", reg)  # type: ignore[arg-type]
    with pytest.raises(ArtifactFailed) as caught:
        dirs.fetch("pilot", "models", f"r.local/m@{bad_manifest}")
    assert caught.value.code == "artifact_invalid_metadata" and "shape" in caught.value.description
    slot = dirs.slot_dir("pilot", "models")
    assert sorted(p.name for p in slot.iterdir()) == []  # neither the version nor its staging stays

    reads = reg.blob_reads
    greedy = ArtifactDirs(tmp_path / "greedy", reg, min_free_bytes=10**15)  # type: ignore[arg-type]
    with pytest.raises(ArtifactFailed) as caught:
        greedy.fetch("pilot", "models", f"r.local/m@{digest}")
    assert caught.value.code == "artifact_no_space"
    assert sorted(p.name for p in greedy.slot_dir("pilot", "models").iterdir()) == []
    assert reg.blob_reads == reads  # refused before a single byte is downloaded
