"""Integration: build the module image (local base), run it non-root with a read-only root
filesystem and no capabilities, and let it drive the simulator inside the container, with a
signed model delivered through the mounted models folder and telemetry over the mounted socket."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devinfra.pilot_image import ensure_pilot_image

from .conftest import REPO, SHIPPED_MODEL, container_models
from .helpers import stats_in
from .test_telemetry import IngestServer


def podman_env() -> dict[str, str]:
    out = subprocess.run(
        ["bash", "-c", f". {REPO}/scripts/podman-env.sh && echo $CONTAINERS_CONF"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {**os.environ, "CONTAINERS_CONF": out.stdout.strip()}


@pytest.fixture(scope="module")
def image() -> str:
    return ensure_pilot_image()


@pytest.fixture
def container_name() -> Iterator[str]:
    name = f"pilot-test-{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["podman", "rm", "-f", "-t", "0", name], env=podman_env(), capture_output=True)


def test_image_runs_non_root_read_only(image: str, container_name: str) -> None:
    r = subprocess.run(
        [
            "podman",
            "run",
            "--rm",
            "--name",
            container_name,
            "--read-only",
            "--cap-drop=all",
            "--network=none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            "id -u; touch /opt/edge-pilot/x 2>/dev/null && echo writable || echo readonly; "
            "grep CapEff /proc/self/status",
        ],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stdout.split()
    assert lines[0] == "10001" and "readonly" in lines
    assert r.stdout.strip().endswith("0000000000000000")  # no effective capabilities


def test_container_drives_the_simulator(
    image: str, container_name: str, tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey, public_key_pem: Path
) -> None:
    models = container_models(tmp_path, signing_key, public_key_pem)
    # The shipped settings with the simulator in lock step with the pilot (each frame advances the
    # simulated world by one 20 Hz tick, never by the wall clock), so the lap does not depend on how
    # busy the machine is; the real-time loop itself is tested in test_frame_pacing/test_drive_loop.
    settings = json.loads((REPO / "modules/pilot/config/sim.json").read_text())
    settings["actuator"] = {**settings["actuator"], "sim_clock": "lock_step", "sim_step_s": 0.05}
    settings["models"] = {**settings["models"], "check_timeout_s": 600}
    config = tmp_path / "lock-step.json"
    config.write_text(json.dumps(settings))
    config.chmod(0o644)
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir(mode=0o755)
    server = IngestServer(sock_dir / "telemetry.sock")
    os.chmod(server.path, 0o666)
    try:
        r = subprocess.run(
            [
                "podman",
                "run",
                "--rm",
                "--name",
                container_name,
                "--read-only",
                "--cap-drop=all",
                "--security-opt",
                "no-new-privileges",
                "--network=none",
                "--user",
                "10001:10001",
                "-v",
                f"{models}:/models:ro",
                "-v",
                f"{public_key_pem}:/etc/edge-pilot/trust/pilot.pub:ro",
                "-v",
                f"{server.path}:/run/edge-agent/telemetry.sock",
                "-v",
                f"{config}:/etc/edge-pilot/lock-step.json:ro",
                "-e",
                "EDGE_TELEMETRY_SOCKET=/run/edge-agent/telemetry.sock",
                image,
                "drive",
                "--config",
                "/etc/edge-pilot/lock-step.json",
                "--laps",
                "1",
                "--duration",
                "1200",  # a net for a hung pilot only: the lap ends the run
            ],
            env=podman_env(),
            capture_output=True,
            text=True,
            timeout=1500,
        )
    finally:
        server.close()
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["model"] == __import__("hashlib").sha256(SHIPPED_MODEL.read_bytes()).hexdigest()
    assert out["sim"]["clock"] == "lock_step", out
    assert out["sim"]["laps"] >= 1.0 and out["sim"]["off_road_steps"] == 0, out
    assert out["totals"]["frames"] > 100
    assert out["telemetry"]["sent"] >= 5 and len(server.records) >= 5
    # The pilot also re-sends its model report (module.artifacts) now and then: take its last stats.
    stats_records = [r for r in server.records if r["stream"] == "pilot.stats"]
    assert stats_records, [r["stream"] for r in server.records]
    stats = stats_records[-1]["payload"]
    assert {"fps", "late", "latency_ms", "angle", "throttle"} <= set(stats)
    assert {"capture", "preprocess", "inference", "actuation"} <= set(stats["latency_ms"])


def test_emergency_stop_from_outside_the_container(image: str, container_name: str) -> None:
    """The agent stops the car with ``podman kill --signal USR1``: throttle to stopped, reason logged."""
    import time

    env = podman_env()
    subprocess.run(
        [
            "podman",
            "run",
            "-d",
            "--name",
            container_name,
            "--read-only",
            "--cap-drop=all",
            "--network=none",
            image,
            "drive",
            "--config",
            "/etc/edge-pilot/config.json",
            "--duration",
            "600",  # a net only: the test stops it
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )

    def wait_for_stats(stopped: str | None) -> None:
        """Until a stats line says the car drove (5 frames or more) or stood stopped for that reason
        (no frame): a log line, not a time, so a slow start only makes it later."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            logs = subprocess.run(["podman", "logs", container_name], env=env, capture_output=True, text=True)
            for line in logs.stderr.splitlines():
                st = stats_in(line) or {}
                if st and st["stopped"] == stopped and (st["frames"] == 0 if stopped else st["frames"] >= 5):
                    return
            time.sleep(0.2)
        raise AssertionError(f"no stats line with stopped={stopped!r}:\n{logs.stderr[-2000:]}")

    wait_for_stats(None)
    subprocess.run(["podman", "kill", "--signal", "USR1", container_name], env=env, check=True, capture_output=True)
    wait_for_stats("emergency stop (SIGUSR1)")
    subprocess.run(["podman", "stop", "-t", "10", container_name], env=env, check=True, capture_output=True, timeout=30)
    logs = subprocess.run(["podman", "logs", container_name], env=env, capture_output=True, text=True, check=True)
    out = json.loads(logs.stdout.strip().splitlines()[-1])
    assert out["totals"]["frames"] >= 5  # it drove before the stop
    assert "emergency stop (SIGUSR1)" in out["stop_reasons"]
    assert out["last_stats"]["stopped"] == "emergency stop (SIGUSR1)" and out["last_stats"]["frames"] == 0
    assert out["final_throttle"] == 0.0
    assert "throttle stopped: emergency stop (SIGUSR1)" in logs.stderr


def test_the_pilot_reads_its_memory_limit_inside_its_container(image: str, container_name: str) -> None:
    """What a model is admitted against (edge_pilot.memory) is the container's own limit."""
    r = subprocess.run(
        ["podman", "run", "--rm", "--name", container_name, "--read-only", "--cap-drop=all", "--network=none",
         "--memory", "256m", "--entrypoint", "/opt/edge-pilot/bin/python3", image, "-c",
         "from edge_pilot.memory import read_state; s = read_state(); print(s.limit, s.used, s.available)"],
        env=podman_env(), capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    limit, used, available = r.stdout.split()
    assert int(limit) == 256 * 1024 * 1024, r.stdout
    assert 0 < int(used) < int(limit) and int(available) > 0, r.stdout
