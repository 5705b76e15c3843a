"""Is a loaded model fit to drive? Its outputs on the reference frames (edge_pilot.reference) must
all be sound (edge_pilot.actuation) and its errors against the expert's labels within
``MARGIN`` of the held-out errors it records about itself (ONNX metadata ``metrics``).

A model that does not record its held-out errors cannot be checked against them and is refused."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .actuation import output_fault

# Declared error: on the reference frames a model's mean absolute error (steering, throttle) may
# exceed the held-out one it recorded by this much (the reference set is small: 48 frames, not
# 2000; the shipped model is 0.004 below its record in steering and 0.001 above in throttle).
MARGIN = 0.03
METRICS = {"angle": "heldout_mae_angle", "throttle": "heldout_mae_throttle"}


@dataclass(frozen=True)
class Verdict:
    frames: int
    mae: dict[str, float]  # "angle"/"throttle" -> mean absolute error on the reference frames
    recorded: dict[str, float]  # the model's own held-out errors
    failure: str | None  # None: fit to drive


def judge(outputs: Sequence[tuple[float, float]], labels: Sequence[tuple[float, float]],
          meta: Mapping[str, Any], margin: float = MARGIN) -> Verdict:
    """Pure: the verdict on a model's outputs for the reference frames."""
    if len(outputs) != len(labels) or not labels:
        raise ValueError(f"{len(outputs)} outputs for {len(labels)} reference frames")
    for i, (a, t) in enumerate(outputs):
        fault = output_fault(a, t)
        if fault is not None:
            return Verdict(len(labels), {}, {}, f"reference frame {i} of {len(labels)}: {fault}")
    mae = {name: sum(abs(o[k] - lab[k]) for o, lab in zip(outputs, labels, strict=True)) / len(labels)
           for k, name in enumerate(("angle", "throttle"))}
    metrics = meta.get("metrics")
    recorded: dict[str, float] = {}
    for name, key in METRICS.items():
        value = metrics.get(key) if isinstance(metrics, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            return Verdict(len(labels), mae, recorded,
                           f"metadata metrics.{key} is {value!r}: the model does not record the held-out error "
                           "it is checked against")
        recorded[name] = float(value)
    for name in ("angle", "throttle"):
        if mae[name] > recorded[name] + margin:
            return Verdict(len(labels), mae, recorded,
                           f"on the {len(labels)} reference frames its {name} error (MAE {mae[name]:.4f}) exceeds "
                           f"its recorded held-out error {recorded[name]:.4f} by more than {margin}")
    return Verdict(len(labels), mae, recorded, None)
