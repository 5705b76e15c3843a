"""Model artifact format: manifest building, metadata validation, reading a manifest back."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from edge_agent.artifacts.pinning import pin_artifact_refs
from edge_shared.artifacts.format import (
    METADATA_FILE,
    MODEL_ARTIFACT_TYPE,
    MODEL_CONFIG_TYPE,
    ONNX_LAYER_TYPE,
    ArtifactFormatError,
    artifact_contents,
    build_model_artifact,
    validate_metadata,
)

META: dict[str, Any] = {
    "input": {
        "name": "image",
        "shape": [1, 3, 120, 160],
        "dtype": "float32",
        "layout": "NCHW",
        "color": "RGB",
        "scale": 1 / 255,
        "mean": [0, 0, 0],
        "std": [1, 1, 1],
    },
    "outputs": ["angle", "throttle"],
    "dataset": {"hash": "sha256:" + "ab" * 32, "frames": 20000},
    "metrics": {"heldout_mae_angle": 0.0138},
    "seed": 0,
}


def test_manifest_is_an_oci_artifact_with_metadata_config_and_one_onnx_layer() -> None:
    onnx = b"onnx bytes"
    built = build_model_artifact(onnx, validate_metadata(META))
    doc = json.loads(built.manifest)
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert doc["artifactType"] == MODEL_ARTIFACT_TYPE
    assert doc["config"]["mediaType"] == MODEL_CONFIG_TYPE
    assert doc["config"]["digest"] == "sha256:" + hashlib.sha256(built.config).hexdigest()
    assert json.loads(built.config)["seed"] == 0  # extra keys of model.json are kept
    assert doc["layers"] == [
        {
            "mediaType": ONNX_LAYER_TYPE,
            "digest": "sha256:" + hashlib.sha256(onnx).hexdigest(),
            "size": len(onnx),
            "annotations": {"org.opencontainers.image.title": "model.onnx"},
        }
    ]
    assert built.digest == "sha256:" + hashlib.sha256(built.manifest).hexdigest()
    # deterministic: the same model and metadata are the same artifact
    assert build_model_artifact(onnx, validate_metadata(META)).digest == built.digest
    assert build_model_artifact(b"other", validate_metadata(META)).digest != built.digest


def test_contents_read_back_the_files_to_place() -> None:
    built = build_model_artifact(b"onnx", validate_metadata(META))
    contents = artifact_contents(built.manifest)
    assert [f.name for f in contents.files] == ["model.onnx", METADATA_FILE]
    assert contents.files[0].sidecar and not contents.files[1].is_layer
    assert contents.layer_digests == {"sha256:" + hashlib.sha256(b"onnx").hexdigest()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("outputs"), "outputs"),
        (lambda m: m["input"].update(shape=[1, 0, 120]), "input.shape"),
        (lambda m: m["input"].update(scale=-1), "input.scale"),
        (lambda m: m["dataset"].update(hash="md5:x"), "dataset.hash"),
        (lambda m: m.pop("input"), "input"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(change: Any, message: str) -> None:
    meta = json.loads(json.dumps(META))
    change(meta)
    with pytest.raises(ArtifactFormatError) as err:
        validate_metadata(meta, "model.json")
    assert str(err.value).startswith("model.json: ") and message in str(err.value)


def _manifest(layers: list[dict[str, Any]], config_type: str = MODEL_CONFIG_TYPE,
              artifact_type: str | None = MODEL_ARTIFACT_TYPE) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": config_type, "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": layers,
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    return json.dumps(doc).encode()


def _layer(title: str | None, media_type: str = ONNX_LAYER_TYPE) -> dict[str, Any]:
    layer: dict[str, Any] = {"mediaType": media_type, "digest": "sha256:" + "1" * 64, "size": 3}
    if title is not None:
        layer["annotations"] = {"org.opencontainers.image.title": title}
    return layer


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([_layer(None)], "no org.opencontainers.image.title"),
        ([_layer("../etc/passwd")], "not a plain file name"),
        ([_layer(".current")], "not a plain file name"),
        ([_layer("a"), _layer("a")], "two layers place the file 'a'"),
        ([], "no layers"),
        ([_layer("model.json")], "two layers place the file 'model.json'"),
    ],
)
def test_unusable_artifact_manifests_are_refused(layers: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ArtifactFormatError) as err:
        artifact_contents(_manifest(layers))
    assert message in str(err.value)


IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (_manifest([_layer("model.onnx")], artifact_type=None), "artifactType is None"),
        (_manifest([_layer("model.onnx")], artifact_type="application/vnd.other.v1"), "artifactType is 'application/"),
        (_manifest([_layer("model.onnx")], artifact_type=IMAGE_CONFIG), "artifactType is"),
        (_manifest([_layer("model.onnx")], config_type=IMAGE_CONFIG), "config mediaType is"),
        (_manifest([_layer("model.onnx")], config_type="application/vnd.oci.empty.v1+json"), "config mediaType is"),
        (_manifest([_layer("model.onnx", "text/plain")]), "layers[0] mediaType is 'text/plain'"),
        (_manifest([_layer("model.onnx", IMAGE_LAYER)]), "layers[0] mediaType is"),
        (_manifest([_layer("model.onnx", "application/octet-stream")]), "layers[0] mediaType is"),
        (_manifest([_layer("model.onnx"), _layer("extra.bin", "text/plain")]), "layers[1] mediaType is 'text/plain'"),
    ],
)
def test_other_kinds_of_artifact_are_refused_as_the_wrong_type(manifest: bytes, message: str) -> None:
    with pytest.raises(ArtifactFormatError) as err:
        artifact_contents(manifest)
    assert message in str(err.value) and err.value.code == "artifact_wrong_type"


def test_a_model_artifact_places_every_layer_with_its_checksum_and_its_metadata() -> None:
    contents = artifact_contents(_manifest([_layer("model.onnx")]))
    assert contents.artifact_type == MODEL_ARTIFACT_TYPE
    assert [(f.name, f.sidecar, f.is_layer) for f in contents.files] == [
        ("model.onnx", True, True), (METADATA_FILE, False, False)]


def test_pinning_rewrites_only_the_artifact_refs() -> None:
    doc = {"modules": {"pilot": {"image": "r.local/p:1", "artifacts": [{"ref": "r.local/m:v2", "path": "/models"}]}}}
    pinned = pin_artifact_refs(doc, {("pilot", 0): "r.local/m:v2@sha256:" + "a" * 64})
    assert pinned["modules"]["pilot"]["artifacts"][0]["ref"] == "r.local/m:v2@sha256:" + "a" * 64
    assert doc["modules"]["pilot"]["artifacts"][0]["ref"] == "r.local/m:v2"  # the received document is untouched
