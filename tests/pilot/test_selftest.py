"""The self-test before a model drives: the reference frames shipped with the pilot (made again
here from the simulator), the pure verdict, and real models refused with the pilot's reason while
the old one keeps driving."""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from edge_pilot import reference
from edge_pilot.drive import DriveLoop, LoopConfig
from edge_pilot.estop import EmergencyStop
from edge_pilot.hotswap import CheckSettings, ModelSlot, ModelWatcher
from edge_pilot.model import ModelError, PilotModel, reference_frames
from edge_pilot.selftest import MARGIN, judge
from edge_pilot.signing import load_public_key
from edge_pilot.sim.lockstep import LockStepSim
from edge_pilot.sim.world import SimWorld
from edge_pilot.train.train import set_onnx_metadata
from edge_pilot.tub import tub_hash

from .conftest import SHIPPED_MODEL, deliver
from .hostile_models import biased, brightness_quantile, nan_when_darker_than, scaled
from .test_actuation_loop import RecordingTelemetry

META = {"metrics": {"heldout_mae_angle": 0.02, "heldout_mae_throttle": 0.01}}


def test_the_shipped_reference_frames_are_the_simulator_s(tmp_path: Path) -> None:
    fresh = tmp_path / "reference"
    assert reference.record(fresh) == tub_hash(reference.TUB)
    frames = reference.load()
    assert len(frames) == reference.FRAMES == 48
    assert len({round(f.angle, 3) for f in frames}) > 20  # many poses, not one frame repeated


def test_the_verdict_on_outputs() -> None:
    labels = [(0.1 * i - 0.2, 0.5) for i in range(5)]
    good = [(a + 0.02, t - 0.01) for a, t in labels]
    v = judge(good, labels, META)
    assert v.failure is None and math.isclose(v.mae["angle"], 0.02) and math.isclose(v.mae["throttle"], 0.01)
    for bad, what in [(math.nan, "non-finite: angle=nan"), (math.inf, "non-finite: angle=inf"), (1.3, "beyond")]:
        outputs = [*good[:3], (bad, 0.5), *good[4:]]
        v = judge(outputs, labels, META)
        assert v.failure is not None and v.failure.startswith("reference frame 3 of 5:") and what in v.failure
    off = [(a + 0.02 + MARGIN + 1e-6, t) for a, t in labels]
    v = judge(off, labels, META)
    assert v.failure is not None and "angle error (MAE 0.0500) exceeds its recorded held-out error 0.0200" in v.failure
    just = [(a + 0.02 + MARGIN - 1e-6, t) for a, t in labels]
    assert judge(just, labels, META).failure is None
    slow = [(a, t + 0.01 + MARGIN + 1e-6) for a, t in labels]
    assert "throttle error" in (judge(slow, labels, META).failure or "")
    for meta in ({}, {"metrics": None}, {"metrics": {"heldout_mae_angle": 0.1}},
                 {"metrics": {"heldout_mae_angle": True, "heldout_mae_throttle": 0.1}},
                 {"metrics": {"heldout_mae_angle": -0.1, "heldout_mae_throttle": 0.1}},
                 {"metrics": {"heldout_mae_angle": math.nan, "heldout_mae_throttle": 0.1}},
                 {"metrics": {"heldout_mae_angle": "0.1", "heldout_mae_throttle": 0.1}}):
        v = judge(good, labels, meta)
        assert v.failure is not None and "does not record the held-out error" in v.failure, meta
    with pytest.raises(ValueError):
        judge(good[:4], labels, META)
    with pytest.raises(ValueError):
        judge([], [], META)


def without_metrics(tmp_path: Path) -> bytes:
    m = PilotModel.from_file(SHIPPED_MODEL)
    meta = {k: v for k, v in m.meta.items() if k != "metrics"}
    path = tmp_path / "no-metrics.onnx"
    path.write_bytes(SHIPPED_MODEL.read_bytes())
    set_onnx_metadata(path, meta)
    return path.read_bytes()


def hostile(tmp_path: Path) -> list[tuple[str, bytes, str]]:
    images = [f.image for f in reference_frames()]
    return [
        ("NaN on a fifth of the frames", nan_when_darker_than(brightness_quantile(images, 0.2)), "non-finite"),
        ("inf everywhere", scaled(math.inf), "non-finite"),
        ("three times too large", scaled(3.0), "beyond +-1.25"),
        ("steers 0.1 off", biased(0.1), "angle error (MAE 0.1"),
        ("no recorded metrics", without_metrics(tmp_path), "does not record the held-out error"),
    ]


def test_the_shipped_model_passes_and_hostile_ones_fail(tmp_path: Path) -> None:
    v = PilotModel.from_file(SHIPPED_MODEL).self_test()
    assert v.failure is None and v.frames == 48
    print({"shipped_reference_mae": v.mae, "recorded": v.recorded}, file=sys.stderr)
    for name, data, why in hostile(tmp_path):
        with pytest.raises(ModelError, match="self-test failed") as err:
            PilotModel(data, name).self_test()
        assert why in str(err.value), (name, str(err.value))


def test_a_model_failing_its_self_test_is_refused_and_the_old_one_keeps_driving(
    tmp_path: Path, signing_key: ec.EllipticCurvePrivateKey, public_key_pem: Path
) -> None:
    models = tmp_path / "models"
    good = PilotModel.from_file(SHIPPED_MODEL)
    deliver(models, SHIPPED_MODEL.read_bytes(), signing_key)
    world = SimWorld(seed=5)
    sim = LockStepSim(world)
    slot = ModelSlot(good)
    telemetry = RecordingTelemetry()
    loop = DriveLoop(sim, sim, slot, EmergencyStop(), telemetry, LoopConfig())  # type: ignore[arg-type]
    watcher = ModelWatcher(models, slot, load_public_key(public_key_pem), poll_s=60, checks=CheckSettings())
    watcher.last_fingerprint = watcher.fingerprint()
    for i, (name, data, why) in enumerate(hostile(tmp_path), 1):
        deliver(models, data, signing_key)
        assert not watcher.check_once(), name
        for _ in range(10):
            loop.tick(loop.clock())
        assert len(watcher.refusals) == i and why in watcher.refusals[-1].reason, (name, watcher.refusals[-1].reason)
        assert "self-test failed" in watcher.refusals[-1].reason
        assert slot.current is good and slot.swaps == 0 and loop.stopped_reason is None, name
        loop._publish(loop.clock())
        report = telemetry.artifacts()[-1]
        assert report == {"using": [f"sha256:{good.sha256}"], "refused": [
            {"digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "reason": watcher.refusals[-1].reason[:400]}]}
    assert loop.totals["frames"] == 10 * len(hostile(tmp_path)) and loop.totals["faults"] == 0
    assert world.stats.off_road == 0


def test_the_check_process_refuses_what_the_self_test_refuses(tmp_path: Path) -> None:
    from edge_pilot.model_check import check_in_subprocess

    models = tmp_path / "models"
    models.mkdir()

    def place(data: bytes) -> None:
        (models / "model.onnx.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
        (models / "model.onnx").write_bytes(data)

    place(biased(0.1))
    r = check_in_subprocess(models, None, 256 << 20, 120)
    assert not r.ok and "self-test failed" in r.reason and "angle error" in r.reason
    place(SHIPPED_MODEL.read_bytes())
    r = check_in_subprocess(models, None, 256 << 20, 120, nice=0)
    assert r.ok and r.sha256 == hashlib.sha256(SHIPPED_MODEL.read_bytes()).hexdigest() and r.mae is not None


def test_a_fallback_model_failing_its_self_test_never_drives(tmp_path: Path) -> None:
    from .test_safety import run_cli

    fallback = tmp_path / "fallback.onnx"
    fallback.write_bytes(scaled(math.nan))
    out, err = run_cli(["--source", "sim", "--actuator", "sim", "--models", "", "--fallback-model", str(fallback),
                        "--duration", "1.0"])
    assert "fallback model refused" in err and "self-test failed" in err and "non-finite" in err
    assert "no model loaded" in out["stop_reasons"] and out["model"] is None
    assert out["totals"]["frames"] == 0 and out["final_throttle"] == 0.0
