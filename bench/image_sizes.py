"""Image sizes per architecture, and the bytes a device pulls for an update that changes only code.

One command, one table, everything measured in this run: each image is built by the project's own
scripts (modules/pilot/build-image.sh, scripts/build-agent-image.sh) for linux/amd64 and
linux/arm64 (arm64 under qemu-user), pushed to a docker-registry started here, and measured there.

Columns:
  size          uncompressed, as `podman images` shows it (what the device stores)
  pulled        compressed layers + manifest + config: what a device without the image downloads
  code update   a rebuild after a one-line change to the code (edge_pilot/drive.py or
                edge_agent/cli.py, in a copy of this tree): the layers the device does not have yet,
                plus manifest and config (what `podman pull` fetches at best)
The "before" row builds the pilot the way commit e1f4ac1 did (one image, wheels copied in, the
pilot installed with its dependencies in one layer), from that commit's files, on this run's base.

Run: python bench/image_sizes.py [--arch amd64,arm64] [--before-ref e1f4ac1] [--no-before]
Cold (no base, no build cache) this takes about 10 minutes on 2 cores; warm about 3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devinfra.registry import Registry
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference

REPO = Path(__file__).resolve().parent.parent
PREFIX = "localhost/bench-size-"


def sh(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def copy_tree(dest: Path, ref: str | None = None) -> Path:
    """This checkout's tracked and new files (or commit `ref`'s) in `dest`, so edits leave it alone."""
    dest.mkdir(parents=True)
    if ref is None:
        files = sh("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=REPO).split("\0")
        for name in filter(None, files):
            src = REPO / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:
        archive = subprocess.run(["git", "archive", ref], capture_output=True, cwd=REPO, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def registry_blobs(client: RegistryClient, ref: str) -> tuple[int, dict[str, int]]:
    """(manifest + config bytes, {layer digest: compressed size}) of a pushed single-platform image."""
    manifest = client.get_manifest(parse_reference(ref))
    doc: dict[str, Any] = json.loads(manifest.body)
    return len(manifest.body) + int(doc["config"]["size"]), {la["digest"]: int(la["size"]) for la in doc["layers"]}


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


class Bench:
    def __init__(self, host: str) -> None:
        self.host = host
        self.client = RegistryClient(RegistrySettings(insecure_registries=frozenset({host}), max_blob_bytes=1 << 31))
        self.rows: list[tuple[str, str, int, int, int, str]] = []

    def push(self, local: str, name: str) -> tuple[int, dict[str, int]]:
        ref = f"{self.host}/bench/{name}"
        sh("podman", "push", "-q", "--tls-verify=false", local, ref)
        return registry_blobs(self.client, ref)

    def measure(self, label: str, arch: str, build: Any, tree: Path, change: Path, note: str) -> None:
        """build(tree, image) builds `image` from `tree`; `change` (in tree) gets a one-line edit."""
        image, changed = f"{PREFIX}{label}:{arch}", f"{PREFIX}{label}:{arch}-changed"
        started = time.monotonic()
        build(tree, image)
        built_s = time.monotonic() - started
        size = int(sh("podman", "image", "inspect", "--format", "{{.Size}}", image).strip())
        head, layers = self.push(image, f"{label}-{arch}:1")
        original = change.read_text()
        change.write_text(original + "\n# bench/image_sizes.py: a code-only change\n")
        try:
            build(tree, changed)
        finally:
            change.write_text(original)
        head2, layers2 = self.push(changed, f"{label}-{arch}:2")
        update = head2 + sum(size for digest, size in layers2.items() if digest not in layers)
        sh("podman", "rmi", "-f", image, changed)
        self.rows.append((label, arch, size, head + sum(layers.values()), update, f"{note}; built in {built_s:.0f} s"))


def pilot_build(arch: str):  # type: ignore[no-untyped-def]
    def build(tree: Path, image: str) -> None:
        sh("bash", str(tree / "modules/pilot/build-image.sh"), image, "--arch", arch)
    return build


def old_pilot_build(tree: Path, image: str) -> None:
    # that commit's script took only IMAGE and built on localhost/edge-base:bookworm (this machine's)
    sh("env", "EDGE_PILOT_REBUILD=1", "bash", str(tree / "modules/pilot/build-image.sh"), image)


def agent_build(arch: str):  # type: ignore[no-untyped-def]
    def build(tree: Path, image: str) -> None:
        sh("bash", str(tree / "scripts/build-agent-image.sh"), image, "--arch", arch)
    return build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="amd64,arm64")
    parser.add_argument("--before-ref", default="e1f4ac1")
    parser.add_argument("--no-before", action="store_true")
    args = parser.parse_args()
    arches = args.arch.split(",")
    for arch in arches:
        sh("bash", str(REPO / "scripts/build-base-image.sh"), "--arch", arch)
    with tempfile.TemporaryDirectory(prefix="image-sizes-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry").start()
        try:
            bench = Bench(registry.host)
            if not args.no_before:
                old = copy_tree(work / "before", args.before_ref)
                bench.measure(f"pilot-{args.before_ref}", "amd64", old_pilot_build, old,
                              old / "modules/pilot/edge_pilot/drive.py", "before: one stage, wheels in a layer")
            tree = copy_tree(work / "tree")
            for arch in arches:
                base = f"localhost/edge-base:bookworm-{arch}"
                base_size = int(sh("podman", "image", "inspect", "--format", "{{.Size}}", base).strip())
                head, layers = bench.push(base, f"base-{arch}:1")
                bench.rows.append(("base", arch, base_size, head + sum(layers.values()), 0,
                                   "debootstrapped bookworm minbase + python3"))
                bench.measure("pilot", arch, pilot_build(arch), tree, tree / "modules/pilot/edge_pilot/drive.py",
                              "multi-stage: base, user, libraries, model, code")
                bench.measure("agent", arch, agent_build(arch), tree, tree / "edge_agent/cli.py",
                              "multi-stage: base, user, venv, config")
        finally:
            registry.stop()
    print(f"{'image':<16} {'arch':<6} {'size':>10} {'pulled':>10} {'code update':>12}  notes")
    for label, arch, size, pulled, update, note in bench.rows:
        upd = mb(update) + f" {update / pulled:>4.0%}" if update else "-"
        print(f"{label:<16} {arch:<6} {mb(size):>10} {mb(pulled):>10} {upd:>12}  {note}")
    print("\n(code update % = share of the full pull; registry: docker-registry on loopback, started here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
