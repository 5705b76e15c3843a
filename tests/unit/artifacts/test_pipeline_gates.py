"""scripts/model_pipeline.py's pure parts: the two gates and the deployment it publishes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "model_pipeline.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("model_pipeline", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("model_pipeline", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


mp = _load()


def test_heldout_gate() -> None:
    assert mp.heldout_gate({"mae_angle": 0.02, "frames": 300}, 0.05).passed
    failed = mp.heldout_gate({"mae_angle": 0.3, "frames": 300}, 0.05)
    assert not failed.passed and "0.3000 > 0.05" in failed.reason
    assert mp.heldout_gate({"mae_angle": 0.05, "frames": 300}, 0.05).passed  # the limit itself passes


@pytest.mark.parametrize(
    ("laps", "off_road", "passed", "reason"),
    [(3.0, 0, True, "no off-road"), (3.5, 1, False, "left the road: 1 off-road"), (2.9, 0, False, "2.90 of 3")],
)
def test_laps_gate(laps: float, off_road: int, passed: bool, reason: str) -> None:
    gate = mp.laps_gate({"laps": laps, "off_road_frames": off_road, "max_abs_cte_m": 0.1, "mean_abs_cte_m": 0.01}, 3.0)
    assert gate.passed is passed and reason in gate.reason


def test_deployment_with_sets_or_adds_the_artifact() -> None:
    doc = {"modules": {"pilot": {"image": "r/p:1", "artifacts": [{"ref": "old", "path": "/models"}]}}}
    assert mp.deployment_with(doc, "pilot", "/models", "new")["modules"]["pilot"]["artifacts"] == [
        {"ref": "new", "path": "/models"}
    ]
    assert doc["modules"]["pilot"]["artifacts"][0]["ref"] == "old"
    added = mp.deployment_with({"modules": {"pilot": {"image": "r/p:1"}}}, "pilot", "/models", "new")
    assert added["modules"]["pilot"]["artifacts"] == [{"ref": "new", "path": "/models", "confirm": True}]
    with pytest.raises(ValueError, match="no module 'x'"):
        mp.deployment_with(doc, "x", "/models", "new")


def test_fewer_than_three_laps_is_refused() -> None:
    with pytest.raises(SystemExit):
        mp.parse_args(["--model", "m", "--ref", "r/m:1", "--key", "k", "--deployment", "d", "--laps", "2", "dev"])
