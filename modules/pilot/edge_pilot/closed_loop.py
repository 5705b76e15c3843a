"""Closed-loop evaluation in simulated time: the pilot drives, the simulator moves the car and
renders the next frame (lock-step at 20 Hz, as fast as the CPU allows), plus held-out accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import PilotModel, preprocess
from .sim.expert import expert_command
from .sim.record import DT
from .sim.render import Lighting
from .sim.world import SimWorld


@dataclass(frozen=True)
class LapResult:
    laps: float
    frames: int
    mean_abs_cte: float
    max_abs_cte: float
    off_road_frames: int
    left_road: bool

    def as_dict(self) -> dict[str, Any]:
        return {"laps": round(self.laps, 3), "frames": self.frames, "mean_abs_cte_m": round(self.mean_abs_cte, 4),
                "max_abs_cte_m": round(self.max_abs_cte, 4), "off_road_frames": self.off_road_frames,
                "left_road": self.left_road, "road_half_width_m": 0.4}


def drive_laps(model: PilotModel, laps: float = 3.0, direction: int = 1, seed: int = 123,
               light: Lighting = Lighting(gain=1.0, noise=3.0), max_frames: int | None = None) -> LapResult:
    world = SimWorld(direction=direction, light=light, seed=seed)
    world.reset(0.0)
    limit = max_frames or int(laps * world.track.length / 0.5 / DT) + 200  # generous: >= 0.5 m/s average
    while world.laps < laps and world.stats.frames < limit:
        angle, throttle = model.predict(preprocess(world.render()))
        world.step(angle, max(0.0, throttle), DT)
        if abs(world.cross_track()) > world.track.width / 2.0 + 0.3:
            break  # far off the road: no point continuing
    st = world.stats
    return LapResult(world.laps, st.frames, st.mean_abs_cte, st.max_abs_cte, st.off_road, st.off_road > 0 or world.laps < laps)


def heldout_mae(model: PilotModel, frames: int = 600, seed: int = 4242) -> dict[str, float]:
    """Fresh simulator frames (poses, lighting, noise never seen in training) vs expert labels."""
    from .sim.record import record_frames

    errs_a, errs_t = [], []
    for img, angle, throttle in record_frames(frames, seed):
        a, t = model.predict(preprocess(img))
        errs_a.append(abs(a - angle))
        errs_t.append(abs(t - throttle))
    return {"frames": frames, "mae_angle": float(np.mean(errs_a)), "mae_throttle": float(np.mean(errs_t)),
            "p95_abs_err_angle": float(np.percentile(errs_a, 95))}


def expert_laps(laps: float = 3.0, direction: int = 1) -> LapResult:
    world = SimWorld(direction=direction)
    world.reset(0.0)
    while world.laps < laps:
        a, t = expert_command(world.track, world.car, direction)
        world.step(a, t, DT)
    st = world.stats
    return LapResult(world.laps, st.frames, st.mean_abs_cte, st.max_abs_cte, st.off_road, st.off_road > 0)
