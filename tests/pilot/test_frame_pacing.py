"""The loop paced on new camera frames: a tick that finds the frame it already used waits (briefly)
for the next one instead of repeating it, and the loop's schedule follows the camera's phase, so
the frame age and the capture-to-actuate time are measured and small. Deterministic parts here;
the figures are in bench/pilot_bench.py."""

from __future__ import annotations

import threading
import time

import numpy as np
from edge_pilot.actuator import SimActuator
from edge_pilot.camera import FnSource, Frame
from edge_pilot.drive import DriveLoop, LoopConfig
from edge_pilot.estop import EmergencyStop
from edge_pilot.hotswap import ModelSlot
from edge_pilot.model import PilotModel
from edge_pilot.sim.world import SimWorld

from .conftest import SHIPPED_MODEL

GREY = np.full((120, 160, 3), 110, np.uint8)


class StepSource:
    """Frames only when the test says so; `wait_newer` like the threaded sources."""

    name = "step"

    def __init__(self) -> None:
        self.frame: Frame | None = None
        self.cond = threading.Condition()

    def push(self, t_capture: float) -> None:
        with self.cond:
            seq = self.frame.seq + 1 if self.frame else 1
            self.frame = Frame(GREY, seq, t_capture, 1.0)
            self.cond.notify_all()

    def start(self) -> None: ...

    def close(self) -> None: ...

    def latest(self) -> Frame | None:
        return self.frame

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        with self.cond:
            self.cond.wait_for(lambda: self.frame is not None and self.frame.seq > seq, timeout)
            return self.frame if self.frame is not None and self.frame.seq > seq else None


def _loop(src: StepSource, **cfg: float | bool) -> DriveLoop:
    return DriveLoop(
        src,
        SimActuator(SimWorld()),
        ModelSlot(PilotModel.from_file(SHIPPED_MODEL)),
        EmergencyStop(),
        None,
        LoopConfig(**cfg),
    )  # type: ignore[arg-type]


def test_a_tick_waits_for_the_next_frame_instead_of_repeating_one() -> None:
    src = StepSource()
    loop = _loop(src, frame_wait_s=0.5)
    src.push(time.monotonic())
    loop.tick(time.monotonic())
    assert loop.totals["frames"] == 1
    threading.Timer(0.05, lambda: src.push(time.monotonic())).start()
    loop.tick(time.monotonic())
    assert loop.totals["frames"] == 2 and loop.totals["repeats"] == 0 and loop.totals["waited"] == 1
    # the tick waited for the frame: it is early, so the schedule moves later (negative error)
    assert loop._phase_error is not None and loop._phase_error < 0
    ages = loop.window.stage_ms["frame_age"]
    assert len(ages) == 2 and ages[1] < 50  # measured from the frame's capture, not the tick's start


def test_without_waiting_the_same_frame_is_a_repeat() -> None:
    src = StepSource()
    loop = _loop(src, frame_wait_s=0.0)
    src.push(time.monotonic())
    loop.tick(time.monotonic())
    loop.tick(time.monotonic())
    assert loop.totals["frames"] == 1 and loop.totals["repeats"] == 1 and loop.totals["waited"] == 0


def test_an_old_frame_is_measured_as_old() -> None:
    src = StepSource()
    loop = _loop(src)
    src.push(time.monotonic() - 0.04)  # captured 40 ms ago (still fresh enough to drive on)
    loop.tick(time.monotonic())
    assert loop.window.stage_ms["frame_age"][0] >= 40
    c2a = loop.window.stage_ms["capture_to_actuate"][0]
    assert c2a >= 41 and c2a >= loop.window.stage_ms["total"][0]  # includes the frame's age and capture
    assert loop._phase_error is not None and loop._phase_error > 0.03  # the tick is late: move earlier


def test_phase_lock_moves_the_schedule_toward_the_camera() -> None:
    """A real threaded source at 20 Hz and the real loop: with phase_lock the schedule moves
    (in bounded steps); without it, it stays where it started."""
    for lock in (False, True):
        src = FnSource(lambda: GREY, fps=20.0)
        src.start()
        time.sleep(0.1)
        loop = DriveLoop(
            src,
            SimActuator(SimWorld()),
            ModelSlot(PilotModel.from_file(SHIPPED_MODEL)),
            EmergencyStop(),
            None,
            LoopConfig(phase_lock=lock, stats_interval_s=1e9),
        )
        def stop_after_frames(loop: DriveLoop = loop) -> None:  # a count of frames, not a time: any machine
            deadline = time.monotonic() + 120
            while loop.totals["frames"] < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            loop.stop()

        threading.Thread(target=stop_after_frames, daemon=True).start()
        loop.run()
        src.close()
        assert loop.totals["frames"] >= 20
        if lock:
            assert loop.phase != 0.0 and abs(loop.phase) <= loop.totals["ticks"] * 0.002 + 1e-9
        else:
            assert loop.phase == 0.0


def test_threaded_sources_wake_a_waiter_on_each_new_frame() -> None:
    src = FnSource(lambda: GREY, fps=20.0)
    src.start()
    try:
        first = src.wait_newer(0, 2.0)
        assert first is not None
        newer = src.wait_newer(first.seq, 2.0)
        assert newer is not None and newer.seq > first.seq and newer.t_capture >= first.t_capture
        assert src.wait_newer(10**9, 0.05) is None  # nothing that new: gives up at the timeout
    finally:
        src.close()
