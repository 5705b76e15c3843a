"""The agent's container image built from this tree, one tag per architecture, by
scripts/build-agent-image.sh (skipped when the image's content label matches the sources), on the
debootstrapped base of that architecture (built first when missing). The names share the tests'
prefix with the pilot's (devinfra/pilot_image.py), so scripts/build-images.sh --local-prefix
finds both."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devinfra.base_image import HOST_ARCH, ensure_base_image
from devinfra.pilot_image import TEST_PREFIX

REPO = Path(__file__).resolve().parents[1]


def agent_image_name(arch: str = HOST_ARCH) -> str:
    return f"{TEST_PREFIX}agent:{arch}"


def ensure_agent_image(arch: str = HOST_ARCH) -> str:
    ensure_base_image(arch)
    image = agent_image_name(arch)
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-agent-image.sh"), image, "--arch", arch],
        capture_output=True, text=True, timeout=1800,
    )
    if out.returncode != 0:
        raise AssertionError(f"build-agent-image.sh {image} --arch {arch} failed:\n{out.stdout}\n{out.stderr}")
    return image
