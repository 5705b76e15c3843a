"""Multi-arch test images: a real image index (manifest list) of a linux/amd64 image that runs
here (the busybox test image plus a label) and a linux/arm64 image, built with
`podman build --platform linux/arm64` (FROM scratch, files copied: nothing of arm64 runs while
building), joined with `podman manifest create/add` and pushed with `podman manifest push --all`.

The arm64 image holds an arm64 busybox when `arm64_busybox` is given (it runs under qemu-user
emulation), else only a marker file (enough for resolution and signatures)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from devinfra.podman import podman as _podman
from edge_shared.trust.platforms import OCI_INDEX, is_index, parse_index
from edge_shared.trust.registry import RegistryClient, RegistrySettings, parse_reference


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """podman, its stderr in the error (a failed build says why)."""
    try:
        return _podman(*args, check=check)
    except subprocess.CalledProcessError as exc:
        raise AssertionError(f"podman {' '.join(args)} failed ({exc.returncode}): {exc.stderr}") from None

BINFMT_AARCH64 = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def arm64_busybox() -> Path:
    """The arm64 busybox scripts/install-deps.sh fetched (Debian's busybox-static:arm64), after
    checking that arm64 binaries run here (qemu-user-static's binfmt handler is enabled)."""
    path = Path(sys.prefix) / "share" / "arm64" / "busybox"
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: run scripts/install-deps.sh (it fetches busybox-static:arm64)")
    require_arm64_emulation()
    return path


def require_arm64_emulation() -> None:
    """Fail clearly unless arm64 binaries run here (qemu-user-static's binfmt handler is enabled)."""
    if not BINFMT_AARCH64.is_file() or "enabled" not in BINFMT_AARCH64.read_text():
        raise RuntimeError(f"{BINFMT_AARCH64} is not enabled: run scripts/install-deps.sh (qemu-user-static)")


ARM64_APPLETS = ("sh", "sleep", "cat", "echo", "uname", "true", "date", "ls")


@dataclass(frozen=True)
class MultiArch:
    reference: str  # registry/repo:tag of the index
    repository: str
    index_digest: str
    digests: dict[str, str]  # "amd64" / "arm64" -> platform manifest digest

    def pinned(self, which: str) -> str:
        return f"{self.repository}@{self.digests[which] if which != 'index' else self.index_digest}"


def build_multiarch(
    registry_host: str,
    repo_path: str,
    tag: str,
    amd64_base: str,
    *,
    marker: str = "",
    arm64_busybox: Path | None = None,
    script: str | None = None,
    local_prefix: str = "localhost/multiarch-test",
    list_format: str = "oci",
) -> MultiArch:
    """Build, push (`podman manifest push --all`, OCI index) and return the digests the registry
    holds. Local images and the local list are removed again; `local_prefix` names them.
    `list_format` "v2s2" pushes a Docker manifest list of Docker image manifests instead."""
    run = uuid.uuid4().hex[:8]
    marker = marker or run
    amd64, arm64, listed = f"{local_prefix}-amd64:{run}", f"{local_prefix}-arm64:{run}", f"{local_prefix}-list:{run}"
    reference = f"{registry_host}/{repo_path}:{tag}"
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        copy_script = ""
        if script is not None:
            (ctx / "run.sh").write_text(script)
            copy_script = 'COPY run.sh /run.sh\nCMD ["/bin/sh", "/run.sh"]\n'
        (ctx / "marker").write_text(marker)
        (ctx / "Containerfile.amd64").write_text(
            f"FROM {amd64_base}\nLABEL multiarch.marker={marker}\nCOPY marker /marker\n{copy_script}"
        )
        if arm64_busybox is not None:
            # applet links made here, so building runs nothing of arm64
            (ctx / "root" / "bin").mkdir(parents=True)
            shutil.copy2(arm64_busybox, ctx / "root" / "bin" / "busybox")
            for applet in ARM64_APPLETS:
                (ctx / "root" / "bin" / applet).symlink_to("busybox")
            arm64_file = f"FROM scratch\nCOPY root/ /\nCOPY marker /marker\n{copy_script}"
        else:
            arm64_file = "FROM scratch\nCOPY marker /marker\n"
        (ctx / "Containerfile.arm64").write_text(arm64_file + f"LABEL multiarch.marker={marker}\n")
        podman("build", "-q", "--pull=never", "-f", str(ctx / "Containerfile.amd64"), "-t", amd64, str(ctx))
        podman("build", "-q", "--pull=never", "--platform", "linux/arm64", "-f", str(ctx / "Containerfile.arm64"),
               "-t", arm64, str(ctx))
    try:
        podman("manifest", "create", listed)
        podman("manifest", "add", listed, f"containers-storage:{amd64}")
        podman("manifest", "add", "--arch", "arm64", "--variant", "v8", listed, f"containers-storage:{arm64}")
        podman("manifest", "push", "--all", "--format", list_format, "--tls-verify=false", "-q", listed,
               f"docker://{reference}")
    finally:
        podman("manifest", "rm", listed, check=False)
        podman("rmi", "-f", amd64, arm64, check=False)
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({registry_host})))
    ref = parse_reference(reference)
    top = client.get_manifest(ref)
    assert is_index(top.media_type, top.body), top.body[:300]
    digests = {e.platform.architecture: e.digest for e in parse_index(top.body) if e.platform is not None}
    assert set(digests) == {"amd64", "arm64"}, digests
    return MultiArch(reference, ref.repository, top.digest, digests)


def forge_index(registry_host: str, image: MultiArch, arm64_digest: str, tag: str) -> str:
    """Push, under `tag`, a copy of the image's index whose arm64 entry names `arm64_digest` (a
    manifest in the same repository) instead: what someone who can push but not sign could do.
    Returns the new index's digest."""
    client = RegistryClient(RegistrySettings(insecure_registries=frozenset({registry_host})))
    ref = parse_reference(image.reference)
    doc = json.loads(client.get_manifest(ref, image.index_digest).body)
    replacement = client.get_manifest(ref, arm64_digest)
    for entry in doc["manifests"]:
        if entry.get("platform", {}).get("architecture") == "arm64":
            entry.update(digest=replacement.digest, size=len(replacement.body), mediaType=replacement.media_type)
    return client.put_manifest(ref, tag, json.dumps(doc).encode(), OCI_INDEX)


def emulated_arm64_cpuinfo(path: Path) -> Path:
    """A Raspberry Pi 4's /proc/cpuinfo (Cortex-A72 cores), one entry per CPU of this machine.

    Only for arm64 containers under qemu-user 7.2 (Debian bookworm's), whose /proc/cpuinfo is the
    x86 host's: ONNX Runtime's CPU detection finds no ARM core there and crashes at import. A test
    mounts this file over /proc/cpuinfo, as LXCFS does; a real Pi has its own."""
    import os

    entry = (
        "processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    )
    text = "".join(entry.format(n=n) for n in range(os.cpu_count() or 1))
    path.write_text(text + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    path.chmod(0o644)
    return path


def push_multiarch(name: str, destination: str, tag: str) -> tuple[str, str]:
    """Build (or reuse) this tree's amd64 and arm64 images of `name` ("pilot" or "agent", the
    tests' tags) and push them as one OCI index with scripts/build-images.sh to
    `destination`/edge-`name`:`tag` (an insecure registry). Returns the reference and the index digest."""
    from devinfra.agent_image import ensure_agent_image
    from devinfra.pilot_image import REPO, TEST_PREFIX, ensure_pilot_image

    ensure = {"pilot": ensure_pilot_image, "agent": ensure_agent_image}[name]
    for arch in ("amd64", "arm64"):
        ensure(arch)
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh"), "--only", name, "--tag", tag, "--local-prefix",
         TEST_PREFIX, "--push", destination, "--insecure"],
        capture_output=True, text=True, timeout=1800,
    )
    pushed = re.search(r"^pushed (\S+)@(sha256:[0-9a-f]{64})$", out.stdout, re.MULTILINE)
    assert out.returncode == 0 and pushed, out.stdout + out.stderr
    return pushed.group(1), pushed.group(2)


# The pilot's settings for an arm64 container under qemu-user, where inference runs at 0.1-3 frames
# per second depending on how busy the machine is: the simulator runs in lock step with the pilot
# (each frame the pilot takes advances the simulated world by 0.15 s, never the wall clock), and
# the model check (a separate process: import, 48 reference inferences) gets the time emulation
# needs (tests/pilot/test_pilot_arm64.py, the multi-arch deploy test).
EMULATED_PILOT_CONFIG = {
    "source": {"kind": "sim", "fps": 20},
    "actuator": {"kind": "sim", "sim_clock": "lock_step", "sim_step_s": 0.15},
    "loop": {"hz": 20, "stale_after_s": 1.5, "error_hold_s": 0.5, "max_throttle": 1.0},
    "ort": {"intra_threads": 1, "inter_threads": 1, "spinning": False, "graph_optimization": "all"},
    "models": {"dir": "/models", "public_key": "/etc/edge-pilot/trust/pilot.pub", "poll_s": 1.0,
               "fallback": "/opt/edge-pilot/share/model.onnx", "check_timeout_s": 1200},
    "telemetry": {"stream": "pilot.stats", "priority": 5, "interval_s": 5.0},
}
