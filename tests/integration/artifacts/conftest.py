"""The desired-state tests' Device (real agent, broker, registry, podman, fleet keys), the pilot
image built from this tree, and an agent with telemetry on (the pilot confirms its model there)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devinfra.pilot_image import ensure_pilot_image
from devinfra.podman import podman
from tests.integration.desired.conftest import Device, device

__all__ = ["device", "pilot_image", "push_pilot_image", "runtime_dir", "start_agent_with_telemetry"]

REPO = Path(__file__).resolve().parents[3]
PILOT = REPO / "modules" / "pilot"


@pytest.fixture(scope="module")
def pilot_image() -> str:
    return ensure_pilot_image()


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ea-art-", dir="/tmp"))  # short: unix socket paths <= 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def push_pilot_image(device: Device, image: str) -> str:
    """The pilot image in the fleet's registry, signed with the fleet's image key."""
    ref = f"{device.registry.host}/dp/{device.run}-pilot:1"
    podman("push", "-q", "--tls-verify=false", image, ref)
    out = device.edgectl(
        "sign-image", ref, "--key", str(device.keys / "image.key"), "--insecure-registry", device.registry.host
    )
    assert out.returncode == 0, out.stderr
    return ref


def start_agent_with_telemetry(device: Device, runtime_dir: Path) -> None:
    config = device.config_text.replace(
        "[telemetry]\nenabled = false\n", f'[telemetry]\nruntime_dir = "{runtime_dir}"\n'
    )
    assert config != device.config_text
    device.agent.config_path.write_text(config)
    device.agent.start()
