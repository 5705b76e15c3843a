"""The pilot image built from this tree, for every test that runs the real pilot container: one tag
per architecture, made by modules/pilot/build-image.sh (which skips the build when the image's
content label matches the sources) on the debootstrapped base of that architecture (built first
when missing), and the multi-arch pilot that scripts/build-images.sh makes and pushes from them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.infra.base_image import HOST_ARCH, ensure_base_image

REPO = Path(__file__).resolve().parents[2]
# scripts/build-images.sh --local-prefix: the tests' images never take the names a user builds
TEST_PREFIX = "localhost/edge-test-"


def pilot_image_name(arch: str = HOST_ARCH) -> str:
    return f"{TEST_PREFIX}pilot:{arch}"


PILOT_TEST_IMAGE = pilot_image_name()


def ensure_pilot_image(arch: str = HOST_ARCH) -> str:
    ensure_base_image(arch)
    image = pilot_image_name(arch)
    subprocess.run(
        ["bash", str(REPO / "modules" / "pilot" / "build-image.sh"), image, "--arch", arch], check=True, timeout=1800
    )
    return image


def push_multiarch_pilot(destination: str, tag: str) -> tuple[str, str]:
    """Build (or reuse) the amd64 and arm64 pilot images and push them as one OCI index with
    scripts/build-images.sh to `destination`/edge-pilot:`tag` (an insecure registry). Returns the
    pushed reference and the index digest."""
    for arch in ("amd64", "arm64"):
        ensure_pilot_image(arch)
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh"), "--only", "pilot", "--tag", tag, "--local-prefix",
         TEST_PREFIX, "--push", destination, "--insecure"],
        check=True, capture_output=True, text=True, timeout=1800,
    )
    pushed = re.search(r"^pushed (\S+)@(sha256:[0-9a-f]{64})$", out.stdout, re.MULTILINE)
    assert pushed, out.stdout + out.stderr
    return pushed.group(1), pushed.group(2)
