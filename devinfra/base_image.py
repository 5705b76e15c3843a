"""The debootstrapped Debian base images every image we build starts from, one per architecture:
made by scripts/build-base-image.sh when missing (a foreign architecture through qemu-user), kept
in podman's store afterwards (the script skips an image that exists)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from devinfra.podman import podman

REPO = Path(__file__).resolve().parents[1]
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]


def base_image_name(arch: str = HOST_ARCH) -> str:
    return f"localhost/edge-base:bookworm-{arch}"


def ensure_base_image(arch: str = HOST_ARCH) -> str:
    """The base image for `arch` ("amd64" or "arm64"), built first when missing."""
    name = base_image_name(arch)
    if podman("image", "exists", name, check=False).returncode != 0:
        subprocess.run(
            ["bash", str(REPO / "scripts" / "build-base-image.sh"), "--arch", arch], check=True, timeout=1800
        )
    return name
