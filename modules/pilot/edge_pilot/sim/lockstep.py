"""The simulator in lock step with the drive loop: camera and actuator of a world whose time
advances by ``step_s`` per frame taken, never by the wall clock.

Taking a frame first moves the car by ``step_s`` of simulated time under the last command, then
renders it; commands only set what the next step executes. So the car is steered once per
``step_s`` of simulated time however slowly the pilot infers (arm64 under qemu emulation, a busy
machine), and what the loop does between frames costs no simulated time. A real camera and car
move on regardless: use the wall-clock simulator (SimCamera + SimActuator) to see timing effects."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from ..actuator import check_finite
from ..camera import Frame
from .record import DT
from .world import SimWorld


class LockStepSim:
    """Both a FrameSource and an Actuator (edge_pilot.camera, edge_pilot.actuator)."""

    def __init__(self, world: SimWorld, step_s: float = DT, clock: Callable[[], float] = time.monotonic):
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s must be a positive number of seconds, got {step_s!r}")
        self.world, self.step_s, self.clock = world, step_s, clock
        self.name = "sim-lockstep"
        self.angle = 0.0
        self.throttle = 0.0
        self.frames = 0  # frames taken = simulated steps of step_s
        self.error: str | None = None
        self._lock = threading.Lock()

    # --- FrameSource ------------------------------------------------------------------------
    def start(self) -> None:
        pass

    def latest(self) -> Frame:
        with self._lock:
            if self.frames > 0:
                substeps = max(1, math.ceil(self.step_s / DT - 1e-9))  # physics at most DT per step
                for _ in range(substeps):
                    self.world.step(self.angle, self.throttle, self.step_s / substeps)
            self.frames += 1
            seq = self.frames
        t0 = self.clock()
        image = self.world.render()
        t1 = self.clock()
        return Frame(image, seq, t1, (t1 - t0) * 1000.0)

    # --- Actuator ---------------------------------------------------------------------------
    def drive(self, angle: float, throttle: float) -> None:
        finite = math.isfinite(angle) and math.isfinite(throttle)
        with self._lock:
            self.angle, self.throttle = (float(angle), float(throttle)) if finite else (0.0, 0.0)
        check_finite(angle, throttle)

    def stop(self) -> None:
        with self._lock:
            self.throttle = 0.0

    def close(self) -> None:
        self.stop()
