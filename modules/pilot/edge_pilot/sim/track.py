"""A closed track: a smooth centreline with curves both ways, and geometry queries on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TrackPose:
    """Where a point is relative to the track."""

    index: int  # nearest centreline sample
    s: float  # arc length of that sample (m)
    cross_track: float  # signed lateral offset, positive = left of the driving direction (m)
    heading_error: float  # car heading minus track heading, wrapped to [-pi, pi]


@dataclass(frozen=True)
class Track:
    """Centreline sampled densely, counter-clockwise; ``width`` is the road width in metres."""

    points: np.ndarray  # (N, 2)
    width: float = 0.8
    samples: int = 0
    _cum: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _heading: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _curvature: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @staticmethod
    def default(width: float = 0.8, scale: float = 2.5, samples: int = 3000) -> Track:
        """A bean-shaped loop: mostly left turns plus two right-hand bends (counter-clockwise)."""
        th = np.linspace(0.0, 2.0 * np.pi, samples, endpoint=False)
        r = scale * (1.0 + 0.28 * np.cos(2.0 * th) + 0.12 * np.sin(3.0 * th))
        pts = np.stack([1.4 * r * np.cos(th), r * np.sin(th)], axis=1)
        return Track.from_points(pts, width)

    @staticmethod
    def from_points(points: np.ndarray, width: float) -> Track:
        pts = np.asarray(points, dtype=np.float64)
        nxt = np.roll(pts, -1, axis=0)
        seg = np.hypot(*(nxt - pts).T)
        cum = np.concatenate([[0.0], np.cumsum(seg)])  # N+1, last = length
        d = (np.roll(pts, -1, axis=0) - np.roll(pts, 1, axis=0)) / 2.0
        heading = np.arctan2(d[:, 1], d[:, 0])
        dh = np.angle(np.exp(1j * (np.roll(heading, -1) - np.roll(heading, 1)))) / 2.0
        curvature = dh / np.maximum(seg, 1e-9)
        return Track(pts, width, len(pts), cum, heading, curvature)

    @property
    def length(self) -> float:
        return float(self._cum[-1])

    @property
    def heading(self) -> np.ndarray:
        return self._heading

    @property
    def curvature(self) -> np.ndarray:
        return self._curvature

    def index_at(self, s: float) -> int:
        s = s % self.length
        return int(np.searchsorted(self._cum, s, side="right") - 1) % self.samples

    def s_at(self, index: int) -> float:
        return float(self._cum[index % self.samples])

    def pose_of(self, x: float, y: float, yaw: float, direction: int = 1) -> TrackPose:
        """Nearest centreline point; ``direction`` -1 means the car drives clockwise."""
        d2 = (self.points[:, 0] - x) ** 2 + (self.points[:, 1] - y) ** 2
        i = int(np.argmin(d2))
        h = self._heading[i] + (0.0 if direction > 0 else np.pi)
        dx, dy = x - self.points[i, 0], y - self.points[i, 1]
        cross = -np.sin(h) * dx + np.cos(h) * dy
        err = float(np.angle(np.exp(1j * (yaw - h))))
        return TrackPose(i, float(self._cum[i]), float(cross), err)

    def point_ahead(self, index: int, distance: float, direction: int = 1) -> np.ndarray:
        s = self.s_at(index) + direction * distance
        return self.points[self.index_at(s)]

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Left and right road edges (for the counter-clockwise direction)."""
        n = np.stack([-np.sin(self._heading), np.cos(self._heading)], axis=1)
        half = self.width / 2.0
        return self.points + half * n, self.points - half * n
