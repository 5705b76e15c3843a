"""Artifacts the device refuses before anything changes, through the real agent, registry and
broker: another kind of artifact (a text/plain layer holding the ONNX file, an image), a path that
is reserved or spelled to dodge the check, a state filesystem too small for the model. Each is
reported as the version's reason within the deployment's wait, `edgectl deploy --until good`
exits 1, the running module and its placed model stay, and nothing of the refused one stays on disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from edge_shared.artifacts.format import (
    MODEL_ARTIFACT_TYPE,
    MODEL_CONFIG_TYPE,
    TITLE,
    BuiltArtifact,
    canonical_json,
    validate_metadata,
)
from edge_shared.trust.cosign import OCI_MANIFEST, Descriptor
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference
from edgectl.push import push_artifact
from tests.integration.artifacts.test_model_delivery import PILOT, model_variant, push_model
from tests.integration.desired.conftest import SLEEP, Device

WAIT = "120"


def doc(device: Device, image: str, model_ref: str, path: str, version: int) -> Path:
    spec = {"image": image, **SLEEP, "network": "none", "artifacts": [{"ref": model_ref, "path": path}]}
    out = device.workdir / f"art-{version}.json"
    out.write_text(json.dumps({"modules": {"app": spec}}))
    return out


def version_entry(device: Device, version: int) -> dict[str, Any]:
    reported = asyncio.run(device.reported())
    return dict(reported["deployment"]["versions"][str(version)])


def push_text_plain_model(device: Device, tag: str) -> str:
    """The shipped model as a text/plain layer of an otherwise model-shaped manifest, signed with
    the fleet's image key: only its media type is wrong."""
    onnx = (PILOT / "models" / "model.onnx").read_bytes()
    config = canonical_json(validate_metadata(json.loads((PILOT / "models" / "model.json").read_text()))
                            .model_dump(mode="json"))
    digest = "sha256:" + hashlib.sha256(onnx).hexdigest()
    layer = Descriptor("text/plain", digest, len(onnx), {TITLE: "model.onnx"})
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MODEL_ARTIFACT_TYPE,
        "config": {"mediaType": MODEL_CONFIG_TYPE, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                   "size": len(config)},
        "layers": [{"mediaType": "text/plain", "digest": digest, "size": len(onnx),
                    "annotations": {TITLE: "model.onnx"}}],
    })
    ref = f"{device.registry.host}/dp/{device.run}-models/pilot:{tag}"
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({device.registry.host})))
    push_artifact(client, parse_reference(ref), BuiltArtifact(manifest, config, ((layer, onnx),)))
    out = device.edgectl("sign-image", ref, "--key", str(device.keys / "image.key"),
                         "--insecure-registry", device.registry.host)
    assert out.returncode == 0, out.stderr
    return ref


def slot_listing(device: Device) -> list[str]:
    slot = device.agent.state_dir / "artifacts" / "app" / "models"
    return sorted(p.name for p in slot.iterdir()) if slot.exists() else []


def refused(device: Device, path: Path, version: int, code: str) -> dict[str, Any]:
    out = device.deploy(path, "--wait", WAIT, "--until", "good")
    assert out.returncode == 1, out.stdout + out.stderr + device.agent.log()[-3000:]
    assert code in out.stdout + out.stderr, out.stdout + out.stderr
    entry = version_entry(device, version)
    assert entry["state"] == "rejected" and entry["code"] == code and entry["module"] == "app", entry
    return entry


def refused_document(device: Device, path: Path, version: int, code: str) -> dict[str, Any]:
    """Refused when the document is read (never admitted, nothing verified or removed)."""
    out = device.deploy(path, "--wait", WAIT, "--until", "good")
    assert out.returncode == 1, out.stdout + out.stderr + device.agent.log()[-3000:]
    assert code in out.stdout + out.stderr, out.stdout + out.stderr
    reported = asyncio.run(device.reported())
    last = reported["deployment"]["lastRefused"]
    assert last["code"] == code and last["version"] == version, last
    assert str(version) not in reported["deployment"]["versions"]
    return dict(last)


def test_wrong_media_types_and_bad_paths_are_refused_and_the_old_model_stays(
    device: Device, tmp_path: Path
) -> None:
    image = device.image("app", "1", signed=True)
    good = push_model(device, model_variant(tmp_path / "v1", "first"), "v1")
    device.agent.start()
    out = device.deploy(doc(device, image, good["ref"], "/models", 1), "--wait", WAIT, "--until", "good")
    assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-3000:]
    running = device.containers()["app"]
    placed = slot_listing(device)
    assert placed == ["current", "sha256-" + good["digest"].removeprefix("sha256:")]

    # another kind of artifact: a text/plain layer holding the ONNX file; an image
    text_ref = push_text_plain_model(device, "text")
    entry = refused(device, doc(device, image, text_ref, "/models", 2), 2, "artifact_wrong_type")
    assert "layers[0] mediaType is 'text/plain'" in entry["description"], entry
    entry = refused(device, doc(device, image, image, "/models", 3), 3, "artifact_wrong_type")
    assert "artifactType" in entry["description"], entry

    # paths that are or hide a reserved place (normalised first)
    for version, path in enumerate(("//tmp", "/run", "/tmp/", "/models/../run/edge-agent", "//proc/x"), start=4):
        entry = refused_document(device, doc(device, image, good["ref"], path, version), version,
                                 "artifact_path_refused")
        assert "is not a place for artifacts" in entry["description"], entry

    assert device.containers()["app"] == running, "a refused version touched the running module"
    assert slot_listing(device) == placed, "a refused artifact left something on disk"


def test_a_state_filesystem_too_small_for_the_model_is_refused_with_nothing_left(
    device: Device, tmp_path: Path
) -> None:
    image = device.image("app", "1", signed=True)
    model = push_model(device, model_variant(tmp_path / "v1", "big"), "v1")  # about 3.2 MB
    state = device.agent.state_dir
    state.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(state)], check=True)
    try:
        # 3.2 MB + 6 MB kept free cannot fit in 8 MB, whatever is removed.
        device.agent.config_path.write_text(device.config_text + "[state]\nmin_free_mb = 6\n")
        device.agent.start()
        entry = refused(device, doc(device, image, model["ref"], "/models", 1), 1, "artifact_no_space")
        assert "state.min_free_mb=6" in entry["description"], entry
        assert slot_listing(device) == []
        free_after = shutil.disk_usage(state).free
        assert free_after > 6 * 1024 * 1024, free_after  # nothing of the model was written
        assert "app" not in device.containers()
    finally:
        device.agent.stop()
        subprocess.run(["umount", "-l", str(state)], check=False)
