"""Kinematic bicycle model of a 1:10 car. Angle convention is DonkeyCar's: -1 full left, +1 full right."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CarParams:
    wheelbase: float = 0.26  # m
    max_steer: float = math.radians(28.0)  # front wheel angle at |angle| == 1
    max_speed: float = 3.0  # m/s at throttle 1
    steer_rate: float = math.radians(360.0)  # servo slew rate, rad/s


@dataclass(frozen=True)
class CarState:
    x: float
    y: float
    yaw: float  # rad, counter-clockwise from +x
    speed: float = 0.0
    steer: float = 0.0  # current front wheel angle (rad), positive = left


def step(state: CarState, angle: float, throttle: float, dt: float, p: CarParams = CarParams()) -> CarState:
    """Advance the car by ``dt`` seconds under a (angle, throttle) command."""
    angle = max(-1.0, min(1.0, angle))
    throttle = max(-1.0, min(1.0, throttle))
    target_steer = -angle * p.max_steer  # DonkeyCar: positive angle steers right (clockwise)
    max_delta = p.steer_rate * dt
    steer = state.steer + max(-max_delta, min(max_delta, target_steer - state.steer))
    target_speed = throttle * p.max_speed
    # first-order motor response, time constant 0.25 s
    speed = state.speed + (target_speed - state.speed) * min(1.0, dt / 0.25)
    yaw = state.yaw + speed / p.wheelbase * math.tan(steer) * dt
    x = state.x + speed * math.cos(yaw) * dt
    y = state.y + speed * math.sin(yaw) * dt
    return CarState(x, y, math.atan2(math.sin(yaw), math.cos(yaw)), speed, steer)
