"""The expert driver: pure pursuit on the centreline, the steering a geometric controller would use."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .car import CarParams, CarState
from .track import Track


@dataclass(frozen=True)
class ExpertParams:
    lookahead: float = 0.7  # m; constant so the label depends only on what the camera sees
    throttle_straight: float = 0.5
    throttle_curve: float = 0.38


def expert_command(track: Track, car: CarState, direction: int = 1, p: ExpertParams = ExpertParams(),
                   cp: CarParams = CarParams()) -> tuple[float, float]:
    """(angle, throttle) in DonkeyCar units for the car's current pose."""
    pose = track.pose_of(car.x, car.y, car.yaw, direction)
    tx, ty = track.point_ahead(pose.index, p.lookahead, direction)
    alpha = math.atan2(ty - car.y, tx - car.x) - car.yaw
    alpha = math.atan2(math.sin(alpha), math.cos(alpha))
    dist = max(0.2, math.hypot(tx - car.x, ty - car.y))
    delta = math.atan2(2.0 * cp.wheelbase * math.sin(alpha), dist)  # positive = left
    angle = max(-1.0, min(1.0, -delta / cp.max_steer))
    ahead = track.index_at(pose.s + direction * 0.8)
    k = abs(float(track.curvature[ahead]))
    throttle = p.throttle_straight + (p.throttle_curve - p.throttle_straight) * min(1.0, k / 0.9)
    return angle, throttle
