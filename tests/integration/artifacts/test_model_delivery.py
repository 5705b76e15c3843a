"""A model delivered as a signed OCI artifact to the real pilot container, through the real agent,
registry, broker and podman: it reaches the running pilot without restarting its container, the
pilot reports the digest that was signed, and a model signed by a wrong key, one with a corrupted
layer and one the pilot refuses (wrong input shape) each leave the old model driving, with the
deployment status saying why."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import onnx

from tests.integration.artifacts.conftest import push_pilot_image, start_agent_with_telemetry
from tests.integration.desired.conftest import Device

REPO = Path(__file__).resolve().parents[3]
PILOT = REPO / "modules" / "pilot"
META_KEY = "edge_pilot.meta"
WAIT = "240"


def model_variant(out: Path, note: str, *, shape: list[int] | None = None, source: Path | None = None) -> Path:
    """The shipped model with a note in its metadata (a distinct valid model), or with another input
    shape in its metadata (one the pilot must refuse)."""
    model = onnx.load(str(source or PILOT / "models" / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            meta = json.loads(prop.value)
            meta["note"] = note
            if shape is not None:
                meta["input"]["shape"] = shape
            prop.value = json.dumps(meta)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    meta_file = json.loads((PILOT / "models" / "model.json").read_text())
    meta_file["note"] = note
    if shape is not None:
        meta_file["input"]["shape"] = shape
    (out / "model.json").write_text(json.dumps(meta_file))
    return out


def push_model(device: Device, folder: Path, tag: str, key: str = "image") -> dict[str, Any]:
    ref = f"{device.registry.host}/dp/{device.run}-models/pilot:{tag}"
    out = device.edgectl(
        "push-model",
        ref,
        "--model",
        str(folder / "model.onnx"),
        "--metadata",
        str(folder / "model.json"),
        "--key",
        str(device.keys / f"{key}.key"),
        "--insecure-registry",
        device.registry.host,
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    result["ref"] = ref
    return result


def deployment(device: Device, image: str, model_ref: str, version: int) -> Path:
    doc = {
        "modules": {
            "pilot": {
                "image": image,
                "args": [
                    "drive",
                    "--config",
                    "/etc/edge-pilot/config.json",
                    "--models",
                    "/models/current",
                    "--allow-unsigned",
                ],
                "network": "none",
                "artifacts": [{"ref": model_ref, "path": "/models", "confirm": True}],
            }
        }
    }
    path = device.workdir / f"pilot-{version}.json"
    path.write_text(json.dumps(doc))
    return path


def pilot_state(device: Device) -> dict[str, Any]:
    reported = asyncio.run(device.reported())
    return dict(reported.get("modules", {}).get("pilot", {}))


def container(device: Device) -> tuple[str, str]:
    cid, _, started = device.containers()["pilot"]
    return cid, started


def wait_for_use(device: Device, layer: str, timeout: float = 120) -> dict[str, Any]:
    def uses(reported: dict[str, Any]) -> bool:
        entry = reported.get("modules", {}).get("pilot", {})
        return layer in (entry.get("moduleReport") or {}).get("using", [])

    reported = asyncio.run(device.wait_reported(uses, f"the pilot driving with {layer[:19]}", timeout))
    return dict(reported["modules"]["pilot"])


def corrupt_blob(device: Device, digest: str) -> None:
    hexd = digest.removeprefix("sha256:")
    blobs = device.registry.workdir / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    path = blobs / hexd[:2] / hexd / "data"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_models_reach_the_running_pilot_and_bad_ones_leave_the_old_one_driving(
    device: Device, pilot_image: str, runtime_dir: Path, tmp_path: Path
) -> None:
    # ---- the fleet: the pilot image and a first model, both signed with the fleet's image key
    image_ref = push_pilot_image(device, pilot_image)
    v1 = push_model(device, model_variant(tmp_path / "v1", "first"), "v1")
    verify = device.edgectl(
        "verify-image", v1["ref"], "--key", str(device.keys / "image.pub"), "--insecure-registry", device.registry.host
    )
    assert verify.returncode == 0 and v1["digest"] in verify.stdout, verify.stdout + verify.stderr
    wrong = device.edgectl(
        "verify-image",
        v1["ref"],
        "--key",
        str(device.keys / "stranger.pub"),
        "--insecure-registry",
        device.registry.host,
    )
    assert wrong.returncode == 1 and "untrusted_key" in wrong.stdout

    start_agent_with_telemetry(device, runtime_dir)

    out = device.deploy(deployment(device, image_ref, v1["ref"], 1), "--wait", WAIT, "--until", "good")
    assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-4000:]
    state = wait_for_use(device, v1["layer"])
    assert state["artifacts"]["/models"]["module"] == "confirmed"
    assert state["artifacts"]["/models"]["placed"] == v1["digest"]
    first = container(device)

    # ---- a new model: switched under the running container, confirmed by the pilot
    v2 = push_model(device, model_variant(tmp_path / "v2", "second", source=PILOT / "models" / "model.int8.onnx"), "v2")
    out = device.deploy(deployment(device, image_ref, v2["ref"], 2), "--wait", WAIT, "--until", "good")
    assert out.returncode == 0, out.stdout + out.stderr + device.agent.log()[-4000:]
    state = wait_for_use(device, v2["layer"])
    assert container(device) == first, "the model update re-created or restarted the pilot container"
    # the digest the pilot reports is the ONNX layer of the manifest that was signed
    manifest = json.loads(
        subprocess.run(
            [
                "curl",
                "-sf",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                f"http://{device.registry.host}/v2/dp/{device.run}-models/pilot/manifests/{v2['digest']}",
            ],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert state["moduleReport"]["using"] == [manifest["layers"][0]["digest"]] == [v2["layer"]]
    assert state["artifacts"]["/models"]["previous"] == v1["digest"]

    def still_v2(expect_state: str, code: str, version: int) -> dict[str, Any]:
        reported = asyncio.run(device.reported())
        entry = reported["deployment"]["versions"][str(version)]
        assert entry["state"] == expect_state and entry["code"] == code and entry["module"] == "pilot", entry
        pilot = reported["modules"]["pilot"]
        assert pilot["moduleReport"]["using"] == [v2["layer"]], pilot
        assert pilot["artifacts"]["/models"]["placed"] == v2["digest"], pilot
        assert container(device) == first
        return dict(entry)

    # ---- signed by a key the device does not trust: rejected before anything changes
    v3 = push_model(device, model_variant(tmp_path / "v3", "stranger"), "v3", key="stranger")
    out = device.deploy(deployment(device, image_ref, v3["ref"], 3), "--wait", WAIT, "--until", "good")
    assert out.returncode == 1 and "artifact_untrusted_key" in out.stdout + out.stderr, out.stdout + out.stderr
    entry = still_v2("rejected", "artifact_untrusted_key", 3)
    assert v3["ref"] in entry["description"]

    # ---- a correctly signed model whose layer is corrupted in the registry
    v4 = push_model(device, model_variant(tmp_path / "v4", "corrupted"), "v4")
    corrupt_blob(device, v4["layer"])
    out = device.deploy(deployment(device, image_ref, v4["ref"], 4), "--wait", WAIT, "--until", "good")
    assert out.returncode == 1 and "artifact_digest_mismatch" in out.stdout + out.stderr, out.stdout + out.stderr
    still_v2("rejected", "artifact_digest_mismatch", 4)

    # ---- a correctly signed, intact model the pilot refuses (wrong input shape): rolled back
    v5 = push_model(device, model_variant(tmp_path / "v5", "small", shape=[1, 3, 64, 64]), "v5")
    out = device.deploy(deployment(device, image_ref, v5["ref"], 5), "--wait", WAIT, "--until", "good")
    assert out.returncode == 1 and "artifact_refused" in out.stdout + out.stderr, out.stdout + out.stderr
    entry = still_v2("rolled_back", "artifact_refused", 5)
    assert "input.shape" in entry["description"], entry
    reported = asyncio.run(device.reported())
    refused = reported["modules"]["pilot"]["moduleReport"]["refused"]
    assert [r["digest"] for r in refused] == [v5["layer"]]
    # the fleet's view says which model each module drives with, and what it refused
    show = device.edgectl("show", *device.flags(), device.id)
    assert show.returncode == 0, show.stderr
    assert f"module drives with {v2['layer'][:19]}" in show.stdout, show.stdout
    assert f"pilot refused {v5['layer'][:19]}: " in show.stdout and "input.shape" in show.stdout, show.stdout
