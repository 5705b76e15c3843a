"""Drive loop timing: fixed rate, late ticks counted and skipped (never queued), newest frame used."""

from __future__ import annotations

from edge_pilot.drive import DriveLoop, LoopConfig
from edge_pilot.estop import EmergencyStop
from edge_pilot.hotswap import ModelSlot
from edge_pilot.model import PilotModel
from edge_pilot.sim.lockstep import LockStepSim
from edge_pilot.sim.world import SimWorld

from .conftest import SHIPPED_MODEL


class SimulatedClock:
    """Time that passes only when the loop sleeps or the actuator stalls: the test is exact on any machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.now += max(0.0, seconds)
        return False


class StallingActuator:
    """Records command times; stalls once for ``stall_s`` on the ``stall_at``-th command."""

    def __init__(self, clock: SimulatedClock, stall_at: int, stall_s: float):
        self.clock = clock
        self.calls: list[float] = []
        self.stall_at, self.stall_s = stall_at, stall_s
        self.throttle = 0.0

    def drive(self, angle: float, throttle: float) -> None:
        self.calls.append(self.clock())
        self.throttle = throttle
        if len(self.calls) == self.stall_at:
            self.clock.now += self.stall_s

    def stop(self) -> None:
        self.throttle = 0.0

    def close(self) -> None:
        pass


def test_late_ticks_are_skipped_not_queued() -> None:
    clock = SimulatedClock()
    sim = LockStepSim(SimWorld(), clock=clock)  # a fresh frame for every tick
    act = StallingActuator(clock, stall_at=10, stall_s=0.16)  # 3.2 periods lost once
    loop = DriveLoop(sim, act, ModelSlot(PilotModel.from_file(SHIPPED_MODEL)), EmergencyStop(), None,
                     LoopConfig(hz=20, frame_wait_s=0.0), clock=clock, sleep=clock.sleep)
    totals = loop.run(duration=1.5)
    # the stall ends at 0.61 s (tick 9's slot 0.45 s + 0.16 s): slots 10 and 11 (0.50, 0.55 s) are
    # skipped, slot 12 (0.60 s) runs at once
    assert totals["late"] == 2
    gaps = [round(b - a, 6) for a, b in zip(act.calls, act.calls[1:], strict=False)]
    # after the stall the loop resumes on the schedule: no burst of back-to-back catch-up ticks
    assert gaps[:9] == [0.05] * 9 and gaps[9:11] == [0.16, 0.04] and set(gaps[11:]) == {0.05}, gaps
    assert totals["frames"] == 31 - 2  # slots 0..30 of 1.5 s at 20 Hz, minus the skipped ones
    assert act.throttle == 0.0  # the loop ended with a stop
