"""The shipped model (modules/pilot/models/model.onnx): accuracy on fresh held-out simulator frames
and closed-loop driving in the simulator (ONNX Runtime drives, the simulator moves the car)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from edge_pilot.closed_loop import drive_laps, heldout_mae
from edge_pilot.model import PilotModel

from .conftest import SHIPPED_MODEL


@pytest.fixture(scope="module")
def model() -> PilotModel:
    return PilotModel.from_file(SHIPPED_MODEL)


def test_shipped_metadata_records_data_and_metrics(model: PilotModel) -> None:
    meta = json.loads((SHIPPED_MODEL.parent / "model.json").read_text())
    assert model.meta == meta
    assert meta["dataset"]["hash"].startswith("sha256:") and meta["dataset"]["frames"] >= 10000
    assert meta["metrics"]["heldout_mae_angle"] <= 0.05
    assert meta["metrics"]["onnx_vs_torch_max_abs_diff"] <= 1e-4
    assert "int8" in meta["metrics"]


def test_steering_error_on_fresh_heldout_frames(model: PilotModel) -> None:
    # seed 4242 was never used for training (seed 0) nor for the training-time held-out set (1000)
    r = heldout_mae(model, frames=600, seed=4242)
    assert r["mae_angle"] <= 0.05, r


def test_drives_three_laps_without_leaving_the_road(model: PilotModel) -> None:
    r = drive_laps(model, laps=3.0, direction=1, seed=99)
    assert r.laps >= 3.0 and r.off_road_frames == 0 and not r.left_road, r.as_dict()
    assert r.max_abs_cte < 0.4


def test_drives_a_lap_the_other_way(model: PilotModel) -> None:
    r = drive_laps(model, laps=1.0, direction=-1, seed=98)
    assert r.laps >= 1.0 and r.off_road_frames == 0, r.as_dict()


MAX_MAE_ANGLE = 0.05


def fresh_seed() -> int:
    """Frames generated for this run only (training used seeds 0 and 1000); printed on failure."""
    return 10_000 + secrets.randbelow(1_000_000)


def test_steering_error_on_frames_generated_for_this_run(model: PilotModel) -> None:
    seed = fresh_seed()
    r = heldout_mae(model, frames=400, seed=seed)
    assert r["mae_angle"] <= MAX_MAE_ANGLE, (seed, r)


def test_the_metrics_model_json_claims_hold_on_fresh_frames(model: PilotModel) -> None:
    """model.json's held-out MAE is a claim; a fresh measurement must not be far worse."""
    claimed = json.loads((SHIPPED_MODEL.parent / "model.json").read_text())["metrics"]["heldout_mae_angle"]
    seed = fresh_seed()
    measured = heldout_mae(model, frames=400, seed=seed)["mae_angle"]
    assert measured <= 2 * claimed + 0.005, (seed, measured, claimed)


def test_the_same_evaluation_fails_a_regressed_model(short_model: Path) -> None:
    """The check can fail: a model trained on 300 frames for one epoch does not pass it."""
    weak = PilotModel.from_file(short_model)
    seed = fresh_seed()
    r = heldout_mae(weak, frames=400, seed=seed)
    assert r["mae_angle"] > MAX_MAE_ANGLE, (seed, r)
    laps = drive_laps(weak, laps=3.0, direction=1, seed=seed)
    assert laps.off_road_frames > 0 or laps.laps < 3.0, laps.as_dict()
