"""Drive loop timing: fixed rate, late ticks counted and skipped (never queued), newest frame used."""

from __future__ import annotations

import time
from pathlib import Path

from edge_pilot.camera import SimCamera
from edge_pilot.drive import DriveLoop, LoopConfig
from edge_pilot.estop import EmergencyStop
from edge_pilot.hotswap import ModelSlot
from edge_pilot.model import PilotModel
from edge_pilot.sim.world import SimWorld

from .conftest import SHIPPED_MODEL


class StallingActuator:
    """Records call times; stalls once for ``stall_s`` on the ``stall_at``-th command."""

    def __init__(self, stall_at: int, stall_s: float):
        self.calls: list[float] = []
        self.stall_at, self.stall_s = stall_at, stall_s
        self.throttle = 0.0

    def drive(self, angle: float, throttle: float) -> None:
        self.calls.append(time.monotonic())
        self.throttle = throttle
        if len(self.calls) == self.stall_at:
            time.sleep(self.stall_s)

    def stop(self) -> None:
        self.throttle = 0.0

    def close(self) -> None:
        pass


def test_late_ticks_are_skipped_not_queued(tmp_path: Path) -> None:
    world = SimWorld()
    src = SimCamera(world, 40)  # camera faster than the loop: every tick has a fresh frame
    src.start()
    time.sleep(0.1)
    act = StallingActuator(stall_at=10, stall_s=0.16)  # ~3 periods lost once
    loop = DriveLoop(src, act, ModelSlot(PilotModel.from_file(SHIPPED_MODEL)), EmergencyStop(), None, LoopConfig(hz=20))
    totals = loop.run(duration=1.5)
    src.close()
    assert 2 <= totals["late"] <= 4
    gaps = [b - a for a, b in zip(act.calls, act.calls[1:], strict=False)]
    # after the stall the loop resumes on the schedule: no burst of back-to-back catch-up ticks
    assert min(gaps[10:]) > 0.025, gaps
    assert 24 <= totals["frames"] <= 29  # 1.5 s at 20 Hz = 30 slots, minus the skipped ones
    assert act.throttle == 0.0  # the loop ended with a stop
