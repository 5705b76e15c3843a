"""Training pipeline (short run for CI): tub -> train -> ONNX with metadata; reproducible from a seed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from edge_pilot.model import META_KEY, PilotModel
from edge_pilot.train.train import TrainConfig, run
from onnx import numpy_helper

CFG = TrainConfig(frames=300, heldout_frames=100, epochs=1, seed=21)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    meta = run(a, CFG, quantize=True, log=lambda *_: None)
    run(b, CFG, log=lambda *_: None)
    return a, b, meta


def test_export_has_metadata_and_matches_pytorch(two_runs: tuple[Path, Path, dict]) -> None:
    out, _, meta = two_runs
    on_disk = json.loads((out / "model.json").read_text())
    embedded = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(embedded[META_KEY]) == on_disk == meta
    assert meta["input"]["shape"] == [1, 3, 120, 160] and meta["input"]["scale"] == pytest.approx(1 / 255)
    assert meta["outputs"] == ["angle", "throttle"]
    assert meta["dataset"]["hash"].startswith("sha256:") and meta["dataset"]["frames"] == 300
    assert meta["metrics"]["onnx_vs_torch_max_abs_diff"] <= 1e-4
    assert 0 <= meta["metrics"]["heldout_mae_angle"] < 1
    PilotModel.from_file(out / "model.onnx").self_test()


def test_int8_quantized_model_loads_and_is_compared(two_runs: tuple[Path, Path, dict]) -> None:
    out, _, meta = two_runs
    q = meta["metrics"]["int8"]
    assert {"heldout_mae_angle", "max_abs_diff_vs_fp32", "ms_per_frame", "calibration_frames"} <= set(q)
    graph_ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert "QuantizeLinear" in graph_ops and "DequantizeLinear" in graph_ops
    PilotModel.from_file(out / "model.int8.onnx").self_test()


def test_training_is_reproducible_from_the_seed(two_runs: tuple[Path, Path, dict]) -> None:
    a, b, _ = two_runs
    wa = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(a / "model.onnx")).graph.initializer}
    wb = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(b / "model.onnx")).graph.initializer}
    assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((p / "model.json").read_text()) for p in (a, b))
    assert ma["dataset"]["hash"] == mb["dataset"]["hash"]
    assert ma["metrics"]["heldout_mae_angle"] == mb["metrics"]["heldout_mae_angle"]
