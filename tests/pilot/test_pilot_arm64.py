"""The arm64 pilot image (modules/pilot/build-image.sh --arch arm64, on the debootstrapped arm64
base) drives the simulator for a lap under qemu-user emulation, with a signed model delivered
through the mounted models folder, the way the amd64 image does in test_pilot_container.py.

Emulation infers at 0.4-3 frames per second depending on how busy the machine is, so the
simulator runs in lock step with the pilot (actuator.sim_clock lock_step): each frame the pilot
takes advances the simulated world by 0.15 s, never the wall clock, and the car is steered about
7 times per simulated second however slowly the emulated CPU infers (a lap is about 110 frames).
The lap therefore proves that the arm64 image steers correctly, at any emulation speed. On a
Pi 4 the image runs at the shipped 20 Hz in real time; nothing in the image differs for
emulation but the mounted /proc/cpuinfo (devinfra/multiarch.py says why)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devinfra.multiarch import EMULATED_PILOT_CONFIG, emulated_arm64_cpuinfo, require_arm64_emulation
from devinfra.pilot_image import ensure_pilot_image
from devinfra.podman import podman

from .conftest import SHIPPED_MODEL, container_models


@pytest.fixture(scope="module")
def arm64_image(podman_env: Path) -> str:
    require_arm64_emulation()
    return ensure_pilot_image("arm64")


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"pilot-arm64-{uuid.uuid4().hex[:8]}"
    yield name
    podman("rm", "-f", "-t", "0", name, check=False)


def test_the_arm64_image_is_arm64_and_runs_non_root_read_only(arm64_image: str, container_name: str) -> None:
    assert podman("image", "inspect", "--format", "{{.Architecture}}", arm64_image).stdout.strip() == "arm64"
    out = podman("run", "--rm", "--name", container_name, "--read-only", "--cap-drop=all", "--network=none",
                 "--entrypoint", "sh", arm64_image, "-c",
                 "uname -m; id -u; touch /opt/edge-pilot/x 2>/dev/null && echo writable || echo readonly; "
                 "ls /opt/edge-pilot/bin/pip /opt/edge-pilot/lib/python3.11/site-packages/pip 2>&1 | grep -c 'No such'")
    assert out.stdout.split() == ["aarch64", "10001", "readonly", "2"], out.stdout


@pytest.mark.timeout(3600)  # no deadline of its own (any emulation speed); only a net for a hung emulator
def test_the_arm64_pilot_drives_a_lap_under_emulation(
    arm64_image: str, container_name: str, tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey,
    public_key_pem: Path,
) -> None:
    models = container_models(tmp_path, signing_key, public_key_pem)
    config = tmp_path / "emulated.json"
    config.write_text(json.dumps(EMULATED_PILOT_CONFIG))
    config.chmod(0o644)
    cpuinfo = emulated_arm64_cpuinfo(tmp_path / "cpuinfo")
    r = podman(
        "run", "--rm", "--name", container_name, "--read-only", "--cap-drop=all",
        "--security-opt", "no-new-privileges", "--network=none", "--user", "10001:10001",
        "-v", f"{models}:/models:ro", "-v", f"{public_key_pem}:/etc/edge-pilot/trust/pilot.pub:ro",
        "-v", f"{config}:/etc/edge-pilot/emulated.json:ro", "-v", f"{cpuinfo}:/proc/cpuinfo:ro",
        arm64_image, "drive", "--config", "/etc/edge-pilot/emulated.json", "--laps", "1", "--duration", "3000",
        check=False, timeout=3500,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps({"totals": out["totals"], "sim": out["sim"], "fps": out["last_stats"].get("fps"),
                      "inference_ms": out["last_stats"].get("latency_ms", {}).get("inference")}))
    assert out["model"] == hashlib.sha256(SHIPPED_MODEL.read_bytes()).hexdigest()
    assert out["sim"]["clock"] == "lock_step"
    assert out["sim"]["laps"] >= 1.0 and out["sim"]["off_road_steps"] == 0, out["sim"]
    totals = out["totals"]
    assert totals["frames"] > 80 and totals["errors"] == 0 and totals["faults"] == 0, totals
    assert out["safety_stop"] is None


def test_without_a_cpuinfo_of_its_own_onnx_runtime_fails_under_emulation(arm64_image: str, container_name: str) -> None:
    """Why the lap test mounts /proc/cpuinfo: under qemu-user 7.2 the container sees the x86 host's,
    and ONNX Runtime's CPU detection fails at import (a crash, or a hang: hence the kill). If a
    newer qemu emulates an ARM /proc/cpuinfo, this test fails and the mount can go."""
    probe = subprocess.run(
        ["timeout", "-s", "KILL", "20", "podman", "run", "--rm", "--name", container_name, "--network=none",
         "--entrypoint", "python3", arm64_image, "-c", "import onnxruntime; print('imported')"],
        capture_output=True, text=True, timeout=120,
    )
    assert probe.returncode != 0 and "imported" not in probe.stdout, (probe.returncode, probe.stdout)
