"""Actuation safety in the drive loop, with real ONNX models in the lock-step simulator: a faulty
output commands neutral steering and zero throttle that tick, repeated faults trip the safety stop,
which is reported (stats, module.artifacts) and holds until another model is swapped in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from edge_pilot.drive import DriveLoop, LoopConfig
from edge_pilot.estop import EmergencyStop
from edge_pilot.hotswap import ModelSlot
from edge_pilot.model import PilotModel
from edge_pilot.sim.lockstep import LockStepSim
from edge_pilot.sim.world import SimWorld

from .conftest import SHIPPED_MODEL
from .hostile_models import brightness_quantile, nan_when_darker_than, scaled


@dataclass
class Counters:
    dropped: int = 0


@dataclass
class RecordingTelemetry:
    """What the loop publishes (the real client is tested against a real socket in test_telemetry)."""

    records: list[tuple[str | None, Any]] = field(default_factory=list)
    counters: Counters = field(default_factory=Counters)

    def publish(self, payload: Any, stream: str | None = None, priority: int | None = None) -> bool:
        self.records.append((stream, payload))
        return True

    def artifacts(self) -> list[Any]:
        return [p for s, p in self.records if s == "module.artifacts"]

    def stats(self) -> list[Any]:
        return [p for s, p in self.records if s is None]


class Ticks:
    """The loop ticked by hand: no wall clock anywhere (the lock-step world moves per frame)."""

    def __init__(self, model: PilotModel) -> None:
        self.world = SimWorld(seed=3)
        self.sim = LockStepSim(self.world)
        self.slot = ModelSlot(model)
        self.telemetry = RecordingTelemetry()
        self.loop = DriveLoop(self.sim, self.sim, self.slot, EmergencyStop(), self.telemetry,  # type: ignore[arg-type]
                              LoopConfig(hz=20, error_hold_s=0.0))
        self.commands: list[tuple[float, float, bool]] = []  # (angle, throttle, faulty tick)

    def run(self, n: int) -> None:
        for _ in range(n):
            faults = self.loop.totals["faults"]
            self.loop.tick(self.loop.clock())
            self.commands.append((self.sim.angle, self.sim.throttle, self.loop.totals["faults"] > faults))

    def publish(self) -> None:
        self.loop._publish(self.loop.clock())


def stop_state(loop: DriveLoop) -> tuple[str | None, str | None]:
    return loop.faults.tripped, loop.stopped_reason


@pytest.fixture(scope="module")
def nan_on_a_fifth(tmp_path_factory: pytest.TempPathFactory) -> PilotModel:
    world = SimWorld(seed=3)
    frames = []
    shipped = PilotModel.from_file(SHIPPED_MODEL)
    for _ in range(200):  # the frames the shipped model sees on this track
        img = world.render()
        frames.append(img)
        from edge_pilot.model import preprocess

        a, t = shipped.predict(preprocess(img))
        world.step(a, max(0.0, t), 0.05)
    threshold = brightness_quantile(frames, 0.2)
    return PilotModel(nan_when_darker_than(threshold), "nan-on-a-fifth.onnx")


def test_a_model_giving_nan_on_some_frames_never_steers_and_trips_the_safety_stop(nan_on_a_fifth: PilotModel) -> None:
    t = Ticks(nan_on_a_fifth)
    t.run(400)
    faulty = [c for c in t.commands if c[2]]
    assert faulty, "the model never gave a NaN: the test proves nothing"
    assert all(a == 0.0 and th == 0.0 for a, th, _ in faulty)  # neutral, zero throttle on every faulty tick
    assert all(math.isfinite(a) and math.isfinite(th) for a, th, _ in t.commands)
    loop = t.loop
    assert loop.faults.tripped is not None and loop.faults.tripped.startswith("safety stop:")
    assert loop.stopped_reason == loop.faults.tripped
    assert t.sim.throttle == 0.0 and t.sim.angle == 0.0
    assert t.world.stats.off_road == 0
    # tripped within the policy: 5 faults at most
    assert loop.totals["faults"] == 5 or loop.faults.run == 3, loop.totals
    t.publish()
    stats = t.telemetry.stats()[-1]
    assert stats["safety_stop"] == loop.faults.tripped and stats["stopped"] == loop.faults.tripped
    assert stats["faults_total"] == loop.totals["faults"] and stats["faults"] == loop.totals["faults"]
    report = t.telemetry.artifacts()[-1]
    assert report["using"] == []
    assert report["refused"] == [{"digest": f"sha256:{nan_on_a_fifth.sha256}", "reason": loop.faults.tripped}]


@pytest.mark.parametrize(("factor", "kind"), [(math.inf, "non-finite"), (3.0, "beyond +-1.25")])
def test_a_hot_swapped_model_with_bad_outputs_stops_the_car_and_a_good_one_clears_it(factor: float, kind: str) -> None:
    good = PilotModel.from_file(SHIPPED_MODEL)
    t = Ticks(good)
    t.run(40)
    assert t.loop.totals["frames"] == 40 and t.loop.stopped_reason is None
    bad = PilotModel(scaled(factor), "bad.onnx")
    t.slot.offer(bad)
    t.run(10)
    assert t.loop.faults.tripped is not None and kind in t.loop.faults.tripped
    assert t.loop.totals["faults"] == 3  # three in a row trip it; the stop holds without more faults
    assert t.commands[-1][:2] == (0.0, 0.0)
    frames = t.loop.totals["frames"]
    t.slot.offer(good)
    t.run(20)
    assert stop_state(t.loop) == (None, None)  # cleared by the swap
    assert t.loop.totals["frames"] == frames + 20
    assert t.world.stats.off_road == 0
    t.publish()
    assert t.telemetry.artifacts()[-1]["using"] == [f"sha256:{good.sha256}"]


def test_rare_faults_do_not_trip_but_each_faulty_tick_is_neutral(tmp_path: Path) -> None:
    """A model that faults once every 25 frames keeps driving (under the policy) and never gets a
    faulty command through."""
    good = PilotModel.from_file(SHIPPED_MODEL)

    class EveryTwentyFifth:
        sha256 = "f" * 64
        n = 0

        def predict(self, x: Any) -> tuple[float, float]:
            self.n += 1
            a, th = good.predict(x)
            return (math.nan, th) if self.n % 25 == 0 else (a, th)

    t = Ticks(EveryTwentyFifth())  # type: ignore[arg-type]
    t.run(300)
    assert t.loop.faults.tripped is None and t.loop.totals["faults"] == 12
    assert all(c[:2] == (0.0, 0.0) for c in t.commands if c[2])
    assert t.loop.totals["frames"] == 288
    assert t.world.stats.off_road == 0


def test_an_inference_error_is_a_fault(tmp_path: Path) -> None:
    class Raises:
        sha256 = "e" * 64

        def predict(self, x: Any) -> tuple[float, float]:
            raise RuntimeError("kernel failed")

    t = Ticks(Raises())  # type: ignore[arg-type]
    t.run(3)
    tripped = t.loop.faults.tripped
    assert tripped is not None and "model inference failed: RuntimeError: kernel failed" in tripped
