"""The pilot image built from this tree, for every test that runs the real pilot container: one tag
per architecture, made by modules/pilot/build-image.sh (which skips the build when the image's
content label matches the sources) on the debootstrapped base of that architecture (built first
when missing). devinfra/multiarch.py pushes them as one multi-arch image."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devinfra.base_image import HOST_ARCH, ensure_base_image

REPO = Path(__file__).resolve().parents[1]
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
