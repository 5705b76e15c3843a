"""Bytes a device downloads for a model update: the model as a signed OCI artifact against a new
pilot image carrying the new model. One command, one table; everything measured in this run
against a real registry (docker-registry, started here) with the real pilot image.

Rows:
  model artifact       what the agent fetched (counted on the wire by the registry client) to
                       place the new model: manifest + metadata config + ONNX layer
  pilot image, delta   a new pilot image whose only change is the model file (a cached rebuild):
                       the compressed layers a device that has the old image does not have yet,
                       plus manifest and config (what `podman pull` has to fetch at best)
  pilot image, rebuilt modules/pilot/build-image.sh run with the new model file (as a model is
                       shipped in an image today): the layers new against the old image
  pilot image, full    the whole compressed image: a device that does not have it, or any rebuild
                       that changes the dependency layer (the usual case for a code change)
The cosign signature (a few KB) is fetched for an artifact and an image alike and is left out.

Run: python bench/model_update_bytes.py [--image localhost/edge-pilot-artifacts-test:ci]
(the image is built with modules/pilot/build-image.sh when missing)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devinfra.registry import Registry
from edge_agent.artifacts.placement import ArtifactDirs
from edge_shared.artifacts.format import build_model_artifact, validate_metadata
from edge_shared.trust.registry import ImageRef, Manifest, RegistryClient, RegistrySettings, parse_reference
from edgectl.push import push_artifact

REPO = Path(__file__).resolve().parent.parent
PILOT = REPO / "modules" / "pilot"
ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


class CountingClient(RegistryClient):
    """The agent's registry client, counting the body bytes it reads."""

    def __init__(self, settings: RegistrySettings) -> None:
        super().__init__(settings)
        self.read = 0

    def get_manifest(self, ref: ImageRef, reference: str | None = None) -> Manifest:
        manifest = super().get_manifest(ref, reference)
        self.read += len(manifest.body)
        return manifest

    def download_blob(self, ref: ImageRef, digest: str, dest: BinaryIO, max_bytes: int) -> int:
        size = super().download_blob(ref, digest, dest, max_bytes)
        self.read += size
        return size


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


def image_blobs(client: RegistryClient, ref: str) -> tuple[int, dict[str, int]]:
    """(manifest + config bytes, {layer digest: compressed size}) of an image in the registry."""
    manifest = client.get_manifest(parse_reference(ref))
    doc: dict[str, Any] = json.loads(manifest.body)
    return len(manifest.body) + int(doc["config"]["size"]), {la["digest"]: int(la["size"]) for la in doc["layers"]}


def mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="localhost/edge-pilot-artifacts-test:ci")
    parser.add_argument("--no-rebuild", action="store_true", help="skip the build-image.sh rebuild row (slow)")
    args = parser.parse_args()
    subprocess.run(["bash", str(PILOT / "build-image.sh"), args.image], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="model-bytes-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry").start()
        try:
            host = registry.host
            settings = RegistrySettings(insecure_registries=frozenset({host}), max_blob_bytes=1 << 30)
            client = RegistryClient(settings)
            meta = validate_metadata(json.loads((PILOT / "models" / "model.json").read_text()))
            old_model = (PILOT / "models" / "model.onnx").read_bytes()
            new_model = (PILOT / "models" / "model.int8.onnx").read_bytes()

            # the model as an artifact: v1 placed on the "device", then v2 fetched, bytes counted
            ref = parse_reference(f"{host}/bench/models/pilot:v1")
            v1 = push_artifact(client, ref, build_model_artifact(old_model, meta))
            v2 = push_artifact(
                client, parse_reference(f"{host}/bench/models/pilot:v2"), build_model_artifact(new_model, meta)
            )
            counting = CountingClient(settings)
            dirs = ArtifactDirs(work / "device", counting)
            dirs.fetch("pilot", "models", v1.reference)
            dirs.switch("pilot", "models", v1.digest)
            counting.read = 0
            dirs.fetch("pilot", "models", v2.reference)
            artifact_bytes = counting.read

            # the model inside a new pilot image (only the model file differs)
            ctx = work / "ctx"
            ctx.mkdir()
            (ctx / "model.onnx").write_bytes(new_model)
            (ctx / "Containerfile").write_text(f"FROM {args.image}\nCOPY model.onnx /opt/edge-pilot/share/model.onnx\n")
            new_image = "localhost/bench-pilot-new-model:1"
            podman("build", "-q", "--pull=never", "-t", new_image, str(ctx))
            old_ref, new_ref = f"{host}/bench/pilot:1", f"{host}/bench/pilot:2"
            podman("push", "-q", "--tls-verify=false", args.image, old_ref)
            podman("push", "-q", "--tls-verify=false", new_image, new_ref)
            podman("rmi", new_image)
            _, old_layers = image_blobs(client, old_ref)
            head, new_layers = image_blobs(client, new_ref)
            delta = head + sum(size for digest, size in new_layers.items() if digest not in old_layers)
            full = head + sum(new_layers.values())

            # the way it is done today: modules/pilot/build-image.sh with the new model file (a copy
            # of the module's tree, so this checkout is not touched)
            rebuilt = None
            if not args.no_rebuild:
                tree = work / "tree"
                shutil.copytree(PILOT, tree / "modules" / "pilot", ignore=shutil.ignore_patterns("__pycache__"))
                (tree / "scripts").mkdir()
                shutil.copy(REPO / "scripts" / "podman-env.sh", tree / "scripts")
                (tree / "modules" / "pilot" / "models" / "model.onnx").write_bytes(new_model)
                rebuilt_image = "localhost/bench-pilot-rebuilt:1"
                subprocess.run(
                    ["bash", str(tree / "modules" / "pilot" / "build-image.sh"), rebuilt_image],
                    check=True,
                    capture_output=True,
                )
                podman("push", "-q", "--tls-verify=false", rebuilt_image, f"{host}/bench/pilot:3")
                podman("rmi", rebuilt_image)
                head3, layers3 = image_blobs(client, f"{host}/bench/pilot:3")
                rebuilt = head3 + sum(size for digest, size in layers3.items() if digest not in old_layers)
        finally:
            registry.stop()

    rows = [
        ("model artifact (new ONNX, signed OCI artifact)", artifact_bytes),
        ("pilot image, only the model layer changed (ideal delta)", delta),
        *([("pilot image rebuilt by build-image.sh with the new model (delta)", rebuilt)] if rebuilt else []),
        ("pilot image, full (device without it / dependency layer changed)", full),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'model update delivered as':<{width}}  {'downloaded':>12}  {'x artifact':>10}")
    for name, n in rows:
        print(f"{name:<{width}}  {mb(n):>12}  {n / artifact_bytes:>10.1f}")
    print(
        f"\n(new model: {len(new_model):,} bytes ONNX; image layers: {len(new_layers)}; "
        f"registry: docker-registry on {host})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
