"""Record expert driving in the simulator as a DonkeyCar tub v2 data set.

Episodes start at random places and poses, in both directions, with random lighting. The car
executes the expert's steering plus slowly varying noise (so the data shows recoveries from
off-centre poses), while the label is always the clean expert steering for the pose."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..tub import TubWriter
from .expert import expert_command
from .render import Lighting, random_lighting
from .world import SimWorld

DT = 0.05  # 20 Hz


def record_frames(frames: int, seed: int, episode_frames: int = 300) -> Iterator[tuple[np.ndarray, float, float]]:
    """(BGR frame, expert angle, expert throttle) while the noisy expert drives; deterministic per seed."""
    for img, angle, throttle, _ in _episodes(frames, seed, episode_frames):
        yield img, angle, throttle


def record_tub(path: Path, frames: int, seed: int, episode_frames: int = 300) -> int:
    """Write ``frames`` records to a tub at ``path``; deterministic for a given seed."""
    written = 0
    with TubWriter(path, metadata={"source": "edge_pilot.sim", "seed": seed}, session=f"sim_seed{seed}") as tub:
        for img, angle, throttle, cte in _episodes(frames, seed, episode_frames):
            tub.write(img, angle, throttle, int(written * DT * 1000), extra={"sim/cross_track": round(cte, 4)})
            written += 1
    return written


def _episodes(frames: int, seed: int, episode_frames: int) -> Iterator[tuple[np.ndarray, float, float, float]]:
    rng = np.random.default_rng(seed)
    world = SimWorld(seed=seed)
    written = 0
    while written < frames:
        world.direction = 1 if rng.random() < 0.6 else -1
        world.reset(float(rng.uniform(0, world.track.length)), float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.3, 0.3)))
        base = random_lighting(rng)
        sigma = float(rng.uniform(0.0, 0.45))
        noise = 0.0
        for _ in range(min(episode_frames, frames - written)):
            world.light = Lighting(base.gain * float(rng.uniform(0.95, 1.05)), base.tint, base.noise, base.shadow, base.shadow_pos)
            img = world.render()
            angle, throttle = expert_command(world.track, world.car, world.direction)
            yield img, angle, throttle, world.cross_track()
            written += 1
            # Ornstein-Uhlenbeck steering noise, time constant ~0.5 s
            noise += -noise * DT / 0.5 + sigma * math.sqrt(2 * DT / 0.5) * float(rng.normal())
            world.step(angle + noise, throttle, DT)
            if abs(world.cross_track()) > world.track.width / 2.0 + 0.05:
                break
