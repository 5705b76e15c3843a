"""Module artifacts (models) as OCI artifacts: the manifest a model is pushed as, the metadata it
carries, and reading an artifact manifest back into the files it places. Pure: bytes in, bytes out.

A model is an OCI image manifest in the same registry as the images, signed the same way
(cosign signatures over the manifest digest, edgectl sign-image / push-model):

    artifactType  application/vnd.edge-agent.model.v1
    config        the metadata (ModelMetadata as JSON), application/vnd.edge-agent.model.config.v1+json
    layers[0]     the ONNX file, application/vnd.edge-agent.model.onnx.v1,
                  annotation org.opencontainers.image.title = model.onnx

On the device every titled layer becomes a file of that name and a model's config becomes
`model.json`; the `model.onnx.sha256` sidecar is written from the layer digest, so a module can
check the file it reads is the one the signed manifest names.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_shared.trust.cosign import OCI_MANIFEST, Descriptor, FormatError, parse_manifest_layers
from edge_shared.validation import summary

MODEL_ARTIFACT_TYPE = "application/vnd.edge-agent.model.v1"
MODEL_CONFIG_TYPE = "application/vnd.edge-agent.model.config.v1+json"
ONNX_LAYER_TYPE = "application/vnd.edge-agent.model.onnx.v1"
TITLE = "org.opencontainers.image.title"
MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
# A file name an artifact may place: one path component, no hidden files (the agent's own
# bookkeeping in the artifact directory starts with a dot).
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ArtifactFormatError(ValueError):
    """The artifact or its metadata is not usable; the message names the field. `code` is what
    the fleet sees: artifact_wrong_type for a manifest or layer of another kind, else artifact_invalid."""

    def __init__(self, message: str, code: str = "artifact_invalid") -> None:
        super().__init__(message)
        self.code = code


# What a model artifact may be made of: anything else (an image, a text/plain layer holding an
# ONNX file) is refused, so a module never gets a file the agent wrote no checksum for.
LAYER_TYPES = frozenset({ONNX_LAYER_TYPE})


def media_type_problem(artifact_type: str | None, config_type: str, layer_types: list[str]) -> str | None:
    """Why a manifest with these types is not a model artifact, or None."""
    if artifact_type != MODEL_ARTIFACT_TYPE:
        return f"artifactType is {artifact_type!r}; expected {MODEL_ARTIFACT_TYPE}"
    if config_type != MODEL_CONFIG_TYPE:
        return f"config mediaType is {config_type!r}; expected {MODEL_CONFIG_TYPE}"
    for i, media_type in enumerate(layer_types):
        if media_type not in LAYER_TYPES:
            return f"layers[{i}] mediaType is {media_type!r}; expected {ONNX_LAYER_TYPE}"
    return None


class ModelInput(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    shape: list[int] = Field(min_length=1, description="e.g. [1, 3, 120, 160]")
    dtype: str = "float32"
    layout: str = Field(min_length=1, description="e.g. NCHW")
    color: str = Field(min_length=1, description="e.g. RGB")
    scale: float = Field(gt=0)
    mean: list[float] = Field(default_factory=list)
    std: list[float] = Field(default_factory=list)

    @field_validator("shape")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(d < 1 for d in value):
            raise ValueError("every dimension must be >= 1")
        return value


class Dataset(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$", description="sha256:<hex> of the training data")


class ModelMetadata(BaseModel):
    """What a model says about itself (the trainer's model.json): extra keys are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    input: ModelInput
    outputs: list[str] = Field(min_length=1)
    dataset: Dataset
    metrics: dict[str, Any] = Field(default_factory=dict)


def validate_metadata(raw: Mapping[str, Any], source: str = "metadata") -> ModelMetadata:
    try:
        return ModelMetadata.model_validate(dict(raw))
    except ValidationError as exc:
        raise ArtifactFormatError(f"{source}: {summary(exc)}") from None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BuiltArtifact:
    manifest: bytes
    config: bytes
    layers: tuple[tuple[Descriptor, bytes], ...]

    @property
    def digest(self) -> str:
        return _digest(self.manifest)


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_model_artifact(
    onnx: bytes, metadata: ModelMetadata, annotations: Mapping[str, str] | None = None
) -> BuiltArtifact:
    """The manifest (deterministic: the same model and metadata give the same digest), its config
    and its one layer."""
    if not onnx:
        raise ArtifactFormatError("model file is empty")
    config = canonical_json(metadata.model_dump(mode="json"))
    layer = Descriptor(ONNX_LAYER_TYPE, _digest(onnx), len(onnx), {TITLE: MODEL_FILE})
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODEL_ARTIFACT_TYPE,
        "config": {"mediaType": MODEL_CONFIG_TYPE, "digest": _digest(config), "size": len(config)},
        "layers": [
            {
                "mediaType": layer.media_type,
                "digest": layer.digest,
                "size": layer.size,
                "annotations": dict(layer.annotations),
            }
        ],
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    return BuiltArtifact(canonical_json(doc), config, ((layer, onnx),))


@dataclass(frozen=True)
class ArtifactFile:
    """One file an artifact places: its name in the artifact directory and the blob it comes from."""

    name: str
    digest: str
    size: int
    is_layer: bool = True  # False: the manifest's config (a model's metadata)
    sidecar: bool = False  # also write `<name>.sha256` (what edge-pilot checks the file against)


@dataclass(frozen=True)
class ArtifactContents:
    artifact_type: str | None
    files: tuple[ArtifactFile, ...]

    @property
    def layer_digests(self) -> frozenset[str]:
        """The digests a module may report it uses (the config, i.e. metadata, does not count)."""
        return frozenset(f.digest for f in self.files if f.is_layer)


def artifact_contents(manifest: bytes, what: str = "artifact manifest") -> ArtifactContents:
    """The files an artifact manifest places. Raises ArtifactFormatError naming the problem."""
    try:
        config, layers, artifact_type = parse_manifest_layers(manifest, what)
    except (FormatError, KeyError) as exc:
        raise ArtifactFormatError(f"{what}: {exc}") from None
    if config is None:
        raise ArtifactFormatError(f"{what}: an index, not an artifact manifest (no config)")
    problem = media_type_problem(artifact_type, config.media_type, [layer.media_type for layer in layers])
    if problem is not None:
        raise ArtifactFormatError(f"{what}: {problem}", "artifact_wrong_type")
    files: list[ArtifactFile] = []
    for i, layer in enumerate(layers):
        name = layer.annotations.get(TITLE)
        if name is None:
            raise ArtifactFormatError(f"{what}: layers[{i}] has no {TITLE} annotation (the file name to place)")
        if not FILE_NAME.match(name) or name in (".", ".."):
            raise ArtifactFormatError(f"{what}: layers[{i}] file name {name!r} is not a plain file name")
        # Every layer gets its checksum file, written from the signed manifest's digest.
        files.append(ArtifactFile(name, layer.digest, layer.size, sidecar=True))
    if not files:
        raise ArtifactFormatError(f"{what}: no layers")
    files.append(ArtifactFile(METADATA_FILE, config.digest, config.size, is_layer=False))
    names = [f.name for f in files] + [f.name + ".sha256" for f in files if f.sidecar]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ArtifactFormatError(f"{what}: two layers place the file {dup!r}")
    return ArtifactContents(artifact_type, tuple(files))
