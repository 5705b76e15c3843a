"""Safety: the throttle ends at stopped, with the reason logged, on every failure path."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from edge_pilot.actuator import Calibration, PCA9685Actuator, SimActuator
from edge_pilot.camera import FnSource, SimCamera
from edge_pilot.drive import DriveLoop, LoopConfig
from edge_pilot.estop import EmergencyStop
from edge_pilot.hotswap import ModelSlot
from edge_pilot.model import PilotModel
from edge_pilot.sim.world import SimWorld

from .conftest import deliver
from .fakes import FakeI2CBus
from .helpers import LoopThread, stats_in, wait_for

EDGE_PILOT = [sys.executable, "-m", "edge_pilot.cli"]


def run_cli(args: list[str], signals: list[tuple[float, int]] = (), timeout: float = 60) -> tuple[dict, str]:  # type: ignore[assignment]
    env = {**os.environ}
    env.pop("EDGE_TELEMETRY_SOCKET", None)
    p = subprocess.Popen(
        [*EDGE_PILOT, "drive", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for delay, sig in signals:
            time.sleep(delay)
            p.send_signal(sig)
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def test_corrupt_model_file_keeps_throttle_stopped(
    tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey, public_key_pem: Path
) -> None:
    models = tmp_path / "models"
    deliver(models, b"\x08\x07not an onnx model at all" * 50, signing_key)  # correctly signed, but garbage
    out, err = run_cli(
        [
            "--source",
            "sim",
            "--actuator",
            "sim",
            "--models",
            str(models),
            "--public-key",
            str(public_key_pem),
            "--duration",
            "1.5",
        ]
    )
    assert "model in" in err and "refused" in err and "not a loadable ONNX model" in err
    assert "no model loaded" in out["stop_reasons"]
    assert out["totals"]["frames"] == 0 and out["final_throttle"] == 0.0


def test_missing_camera_keeps_throttle_stopped(short_model: Path) -> None:
    out, err = run_cli(
        [
            "--source",
            "v4l2",
            "--device",
            "/dev/video97",
            "--actuator",
            "sim",
            "--models",
            "",
            "--fallback-model",
            str(short_model),
            "--duration",
            "1.0",
        ]
    )
    assert "camera unavailable: /dev/video97: camera device not present" in err
    assert any(r.startswith("stale frame from camera /dev/video97") for r in out["stop_reasons"])
    assert out["totals"]["frames"] == 0 and out["final_throttle"] == 0.0


def run_cli_until(args: list[str], steps: list[tuple[Callable[[str], bool], int]],
                  timeout: float = 300) -> tuple[dict[str, Any], str]:
    """Run `edge-pilot drive` and send each signal once a log line satisfies its condition (no fixed
    sleeps: a busy machine only makes it slower)."""
    env = {**os.environ}
    env.pop("EDGE_TELEMETRY_SOCKET", None)
    p = subprocess.Popen([*EDGE_PILOT, "drive", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    killer = threading.Timer(timeout, p.kill)
    killer.start()
    lines: list[str] = []
    try:
        assert p.stderr is not None and p.stdout is not None
        pending = list(steps)
        for line in p.stderr:
            lines.append(line)
            if pending and pending[0][0](line):
                p.send_signal(pending.pop(0)[1])
        out = p.stdout.read()
        p.wait()
    finally:
        killer.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
    err = "".join(lines)
    assert p.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def test_emergency_stop_signal_stops_a_driving_car(short_model: Path) -> None:
    def stats_line(line: str, *, stopped: str | None, frames: int) -> bool:
        st = stats_in(line)
        if st is None:
            return False
        return bool(st["stopped"] == stopped and (st["frames"] == 0 if frames == 0 else st["frames"] >= frames))

    out, err = run_cli_until(
        ["--source", "sim", "--actuator", "sim", "--models", "", "--fallback-model", str(short_model)],
        [  # a second of driving, then the stop, then a whole second stopped, then the end
            (lambda line: stats_line(line, stopped=None, frames=5), signal.SIGUSR1),
            (lambda line: stats_line(line, stopped="emergency stop (SIGUSR1)", frames=0), signal.SIGTERM),
        ],
    )
    assert out["totals"]["frames"] > 10  # it was driving before the stop
    assert "emergency stop (SIGUSR1)" in out["stop_reasons"]
    assert out["last_stats"]["stopped"] == "emergency stop (SIGUSR1)" and out["last_stats"]["frames"] == 0
    assert "throttle stopped: emergency stop (SIGUSR1)" in err


def _sim_loop(model: PilotModel, actuator, source=None, estop=None, **cfg):  # type: ignore[no-untyped-def]
    world = SimWorld()
    src = source or SimCamera(world, 20)
    src.start()
    return DriveLoop(src, actuator, ModelSlot(model), estop or EmergencyStop(), None, LoopConfig(**cfg)), world, src


def test_emergency_stop_control_file(tmp_path: Path, short_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    act = SimActuator()
    loop, _, src = _sim_loop(PilotModel.from_file(short_model), act, estop=EmergencyStop(tmp_path))
    with LoopThread(loop):
        assert wait_for(lambda: loop.totals["frames"] > 5 and act.throttle > 0)
        (tmp_path / "estop").touch()
        assert wait_for(lambda: loop.stopped_reason is not None and "control file" in loop.stopped_reason)
        time.sleep(0.3)
        assert act.throttle == 0.0  # stays stopped while the file exists
        (tmp_path / "estop").unlink()
        assert wait_for(lambda: loop.stopped_reason is None and act.throttle > 0)
    src.close()
    assert any("throttle stopped: emergency stop (control file" in r.getMessage() for r in caplog.records)


def test_camera_that_stops_delivering(short_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    world = SimWorld()
    state = {"frames": 0}

    def frames() -> np.ndarray | None:
        state["frames"] += 1
        if state["frames"] > 20:
            time.sleep(60)  # the camera hangs: no error, just no more frames
        return world.render()

    act = SimActuator()
    src = FnSource(frames, fps=20, name="hanging-cam")
    src.start()
    loop = DriveLoop(src, act, ModelSlot(PilotModel.from_file(short_model)), EmergencyStop(), None, LoopConfig())
    with LoopThread(loop):
        assert wait_for(lambda: act.throttle > 0)
        assert wait_for(lambda: loop.stopped_reason is not None and "stale frame" in loop.stopped_reason, 5)
        time.sleep(0.3)
        assert act.throttle == 0.0
    assert any("stale frame from camera hanging-cam (last frame" in r.getMessage() for r in caplog.records)


def test_camera_error_stops(short_model: Path) -> None:
    world = SimWorld()
    n = {"i": 0}

    def frames() -> np.ndarray:
        n["i"] += 1
        if n["i"] > 15:
            raise OSError(19, "No such device")
        return world.render()

    act = SimActuator()
    src = FnSource(frames, fps=20, name="unplugged")
    src.start()
    loop = DriveLoop(src, act, ModelSlot(PilotModel.from_file(short_model)), EmergencyStop(), None, LoopConfig())
    with LoopThread(loop):
        assert wait_for(lambda: act.throttle > 0)
        assert wait_for(lambda: loop.stopped_reason is not None and "No such device" in loop.stopped_reason, 5)
        assert act.throttle == 0.0


def test_actuator_error_puts_throttle_to_stopped(short_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    cal = Calibration()
    bus = FakeI2CBus()
    act = PCA9685Actuator(cal, bus)
    world = SimWorld()
    src = SimCamera(world, 20)
    src.start()
    loop = DriveLoop(
        src, act, ModelSlot(PilotModel.from_file(short_model)), EmergencyStop(), None, LoopConfig(constant_throttle=0.4)
    )
    with LoopThread(loop):
        assert wait_for(lambda: bus.channel_off(cal.throttle_channel) > 370)
        bus.fail_register = 0x06 + 4 * cal.steering_channel  # the steering servo write starts failing
        assert wait_for(lambda: loop.totals["errors"] > 0)
        time.sleep(0.3)
        assert bus.channel_off(cal.throttle_channel) == 370
    src.close()
    assert loop.reasons and any("ActuatorError: PCA9685 channel 1: write failed" in r for r in loop.reasons)
    assert any("throttle stopped: error in drive tick" in r.getMessage() for r in caplog.records)
