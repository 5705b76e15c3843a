"""The pilot image built from this tree, for every test that runs the real pilot container: one tag,
made by modules/pilot/build-image.sh (which skips the build when the image's content label matches
the sources), on the debootstrapped base image (built first when missing)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.infra.base_image import ensure_base_image

REPO = Path(__file__).resolve().parents[2]
PILOT_TEST_IMAGE = "localhost/edge-pilot-test:ci"


def ensure_pilot_image() -> str:
    ensure_base_image()
    subprocess.run(
        ["bash", str(REPO / "modules" / "pilot" / "build-image.sh"), PILOT_TEST_IMAGE], check=True, timeout=1800
    )
    return PILOT_TEST_IMAGE
