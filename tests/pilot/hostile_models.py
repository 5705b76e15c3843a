"""Hostile and broken variants of the shipped model, as real ONNX files (signed like any other in
the tests): the shipped network with extra nodes that spoil its outputs on some frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from edge_pilot.model import preprocess
from onnx import helper, numpy_helper

from .conftest import SHIPPED_MODEL


def _with_tail(nodes: list[onnx.NodeProto], consts: dict[str, float], src: Path = SHIPPED_MODEL) -> bytes:
    """The model at `src` with its `angle` and `throttle` outputs renamed to `raw_angle` and
    `raw_throttle` and recomputed by `nodes` (which may read `image` and `consts`)."""
    m = onnx.load(str(src))
    g = m.graph
    for node in g.node:
        node.output[:] = [{"angle": "raw_angle", "throttle": "raw_throttle"}.get(o, o) for o in node.output]
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return bytes(m.SerializeToString())


def nan_when_darker_than(threshold: float, src: Path = SHIPPED_MODEL) -> bytes:
    """Steering and throttle are NaN on every frame whose mean pixel (in [0, 1]) is below
    `threshold` (sqrt of a negative number), the shipped model's outputs otherwise."""
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["brightness"], keepdims=0),
        helper.make_node("Sub", ["brightness", "threshold"], ["margin"]),
        helper.make_node("Sqrt", ["margin"], ["root"]),  # NaN below the threshold
        helper.make_node("Mul", ["root", "zero"], ["poison"]),  # 0 or NaN
        helper.make_node("Add", ["raw_angle", "poison"], ["angle"]),
        helper.make_node("Add", ["raw_throttle", "poison"], ["throttle"]),
    ]
    return _with_tail(nodes, {"threshold": threshold, "zero": 0.0}, src)


def scaled(factor: float, src: Path = SHIPPED_MODEL) -> bytes:
    """Outputs multiplied by `factor` (inf for a factor of inf)."""
    nodes = [
        helper.make_node("Mul", ["raw_angle", "factor"], ["angle"]),
        helper.make_node("Mul", ["raw_throttle", "factor"], ["throttle"]),
    ]
    return _with_tail(nodes, {"factor": factor}, src)


def biased(angle_offset: float, src: Path = SHIPPED_MODEL) -> bytes:
    """Finite, in range, but steers `angle_offset` off what it learned: worse than its metrics say."""
    nodes = [
        helper.make_node("Add", ["raw_angle", "offset"], ["angle"]),
        helper.make_node("Identity", ["raw_throttle"], ["throttle"]),
    ]
    return _with_tail(nodes, {"offset": angle_offset}, src)


def brightness_quantile(frames: list[np.ndarray], q: float) -> float:
    """The q-quantile of the frames' mean pixel as the model sees it (for nan_when_darker_than)."""
    return float(np.quantile([float(preprocess(f).mean()) for f in frames], q))


__all__ = ["biased", "brightness_quantile", "nan_when_darker_than", "scaled"]


def padded(extra_mb: int, src: Path = SHIPPED_MODEL) -> bytes:
    """The shipped model's outputs, with `extra_mb` MB of weights that the graph reads (and
    multiplies by zero): a big model that loads, checks and drives like the small one."""
    big = np.random.default_rng(1).standard_normal(extra_mb * 262_144, dtype=np.float32)
    m = onnx.load(str(src))
    g = m.graph
    for node in g.node:
        node.output[:] = [{"angle": "raw_angle"}.get(o, o) for o in node.output]
    g.initializer.append(numpy_helper.from_array(big, "padding"))
    g.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    g.node.extend([
        helper.make_node("ReduceMax", ["padding"], ["padding_max"], keepdims=0),
        helper.make_node("Mul", ["padding_max", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw_angle", "nothing"], ["angle"]),
    ])
    return bytes(m.SerializeToString())


def expands_at_load(gigabytes: float, src: Path = SHIPPED_MODEL) -> bytes:
    """A file of a few MB whose graph makes a `gigabytes` GB tensor (ConstantOfShape, folded
    when ONNX Runtime loads the model, else made at the first inference)."""
    m = onnx.load(str(src))
    g = m.graph
    for node in g.node:
        node.output[:] = [{"angle": "raw_angle"}.get(o, o) for o in node.output]
    count = int(gigabytes * (1 << 30) / 4)
    g.initializer.append(numpy_helper.from_array(np.array([count], np.int64), "huge_shape"))
    g.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    g.node.extend([
        helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"],
                         value=helper.make_tensor("one", onnx.TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceMax", ["huge"], ["huge_max"], keepdims=0),
        helper.make_node("Mul", ["huge_max", "zero"], ["nothing"]),
        helper.make_node("Add", ["raw_angle", "nothing"], ["angle"]),
    ])
    return bytes(m.SerializeToString())
