"""The simulated world: car + track + renderer, with lap counting and cross-track statistics."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np

from .car import CarParams, CarState, step
from .render import Lighting, TrackRenderer
from .track import Track

TRAIL_DT_S = 0.1
TRAIL_MAX = 600


@dataclass
class DriveStats:
    frames: int = 0
    progress: float = 0.0  # metres driven along the track (signed by direction)
    max_abs_cte: float = 0.0
    sum_abs_cte: float = 0.0
    off_road: int = 0  # frames with the car centre beyond the road edge

    @property
    def mean_abs_cte(self) -> float:
        return self.sum_abs_cte / max(1, self.frames)


@dataclass
class SimWorld:
    track: Track = field(default_factory=Track.default)
    direction: int = 1
    params: CarParams = field(default_factory=CarParams)
    light: Lighting = field(default_factory=Lighting)
    seed: int = 0

    def __post_init__(self) -> None:
        self.renderer = TrackRenderer(self.track)
        self.rng = np.random.default_rng(self.seed)
        self.stats = DriveStats()
        self._lock = threading.Lock()
        # Car positions every TRAIL_DT_S of simulated time, drained into the per-second stats so
        # the fleet side can draw the driven path (bounded: the oldest are dropped).
        self._trail: list[tuple[float, float]] = []
        self._trail_clock = 0.0
        self.reset(0.0)

    def reset(self, s: float, offset: float = 0.0, heading_error: float = 0.0) -> None:
        i = self.track.index_at(s)
        h = float(self.track.heading[i]) + (0.0 if self.direction > 0 else math.pi)
        p = self.track.points[i]
        x = p[0] - math.sin(h) * offset
        y = p[1] + math.cos(h) * offset
        with self._lock:
            self.car = CarState(float(x), float(y), h + heading_error)
            self._last_index = i
            self.stats = DriveStats()

    @property
    def laps(self) -> float:
        return self.stats.progress / self.track.length

    def cross_track(self) -> float:
        return self.track.pose_of(self.car.x, self.car.y, self.car.yaw, self.direction).cross_track

    def on_road(self) -> bool:
        return abs(self.cross_track()) <= self.track.width / 2.0

    def step(self, angle: float, throttle: float, dt: float) -> None:
        with self._lock:
            self.car = step(self.car, angle, throttle, dt, self.params)
            pose = self.track.pose_of(self.car.x, self.car.y, self.car.yaw, self.direction)
            n = self.track.samples
            di = (pose.index - self._last_index + n // 2) % n - n // 2
            self._last_index = pose.index
            seg = self.track.length / n
            st = self.stats
            st.progress += self.direction * di * seg
            st.frames += 1
            a = abs(pose.cross_track)
            st.sum_abs_cte += a
            st.max_abs_cte = max(st.max_abs_cte, a)
            if a > self.track.width / 2.0:
                st.off_road += 1
            self._trail_clock += dt
            if self._trail_clock >= TRAIL_DT_S:
                self._trail_clock = 0.0
                self._trail.append((round(self.car.x, 3), round(self.car.y, 3)))
                del self._trail[:-TRAIL_MAX]

    def telemetry(self) -> dict[str, object]:
        """Sim figures for the per-second stats: laps, cross-track error, the path since last call."""
        with self._lock:
            trail, self._trail = self._trail, []
            pose = self.track.pose_of(self.car.x, self.car.y, self.car.yaw, self.direction)
            return {"laps": round(self.laps, 3), "cte_m": round(float(pose.cross_track), 3),
                    "mean_abs_cte_m": round(self.stats.mean_abs_cte, 4), "off_road_steps": self.stats.off_road,
                    "path": [list(xy) for xy in trail]}

    def render(self, noise: bool = True) -> np.ndarray:
        with self._lock:
            car = self.car
        return self.renderer.render(car, self.light, self.rng if noise else None)
