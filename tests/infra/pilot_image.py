"""The pilot image built from this tree, for every test that runs the real pilot container: one tag,
made by modules/pilot/build-image.sh (which skips the build when the image's content label matches
the sources), on the debootstrapped base image (built first when missing)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.infra.podman import podman

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/edge-base:bookworm"
PILOT_TEST_IMAGE = "localhost/edge-pilot-test:ci"


def ensure_pilot_image() -> str:
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        subprocess.run(["bash", str(REPO / "scripts" / "build-base-image.sh"), BASE_IMAGE], check=True, timeout=1800)
    subprocess.run(["bash", str(REPO / "modules" / "pilot" / "build-image.sh"), PILOT_TEST_IMAGE], check=True,
                   timeout=1800)
    return PILOT_TEST_IMAGE
