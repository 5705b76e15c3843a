"""The simulator in lock step with the pilot: simulated time advances per frame taken, so a lap
proves steering however slowly the pilot infers (tests/pilot/test_pilot_arm64.py runs it under
emulation)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
from edge_pilot.actuator import ActuatorError
from edge_pilot.config import ConfigError, load_config
from edge_pilot.sim.lockstep import LockStepSim
from edge_pilot.sim.world import SimWorld

from .conftest import SHIPPED_MODEL
from .test_safety import run_cli

LOCK_STEP = {"source": {"kind": "sim", "fps": 20},
             "actuator": {"kind": "sim", "sim_clock": "lock_step", "sim_step_s": 0.1},
             "loop": {"hz": 200}, "models": {"dir": None, "fallback": str(SHIPPED_MODEL)}}


def test_the_world_moves_per_frame_taken_not_per_second() -> None:
    world = SimWorld()
    sim = LockStepSim(world, step_s=0.1)
    first = sim.latest()
    sim.drive(0.0, 0.5)
    time.sleep(0.05)  # wall-clock time passes: the world does not move
    assert world.stats.frames == 0
    second = sim.latest()
    assert second.seq == first.seq + 1 and world.stats.frames == 2  # 0.1 s in two physics steps of 0.05
    sim.stop()
    assert sim.throttle == 0.0
    with pytest.raises(ActuatorError, match="non-finite"):
        sim.drive(math.nan, 1.0)
    assert (sim.angle, sim.throttle) == (0.0, 0.0)


def test_lock_step_needs_the_simulator_for_camera_and_car(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**LOCK_STEP, "source": {"kind": "v4l2"}}))
    with pytest.raises(ConfigError, match=r"lock_step needs source\.kind sim"):
        load_config(cfg)


def test_the_pilot_drives_a_lap_in_lock_step(tmp_path: Path) -> None:
    cfg = tmp_path / "lockstep.json"
    cfg.write_text(json.dumps(LOCK_STEP))
    out, _ = run_cli(["--config", str(cfg), "--laps", "1", "--duration", "300"], timeout=300)
    print(json.dumps({"totals": out["totals"], "sim": out["sim"]}), file=sys.stderr)
    assert out["sim"]["clock"] == "lock_step" and out["sim"]["laps"] >= 1.0 and out["sim"]["off_road_steps"] == 0
    assert out["totals"]["errors"] == 0 and out["totals"]["faults"] == 0
    # one frame per 0.1 s of simulated time, whatever the wall clock did
    assert math.isclose(out["sim"]["simulated_s"], 0.1 * (out["totals"]["frames"] + 1), abs_tol=0.2)
