"""Loading and running the pilot model with ONNX Runtime (no torch on the device).

A model is usable only if its ONNX metadata (key ``edge_pilot.meta``) describes the input we
feed (shape, layout, colour, scale) and the outputs we read, and it passes the self-test on the
reference frames (edge_pilot.selftest)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from . import FRAME_HEIGHT, FRAME_WIDTH
from .actuation import output_fault
from .reference import ReferenceFrame
from .reference import load as load_reference
from .selftest import Verdict, judge

INPUT_NAME = "image"
OUTPUT_NAMES = ("angle", "throttle")
META_KEY = "edge_pilot.meta"


class ModelError(Exception):
    """The model file cannot drive: unreadable, wrong shape, bad metadata, or bad outputs."""


def input_spec() -> dict[str, Any]:
    return {"name": INPUT_NAME, "shape": [1, 3, FRAME_HEIGHT, FRAME_WIDTH], "dtype": "float32", "layout": "NCHW",
            "color": "RGB", "scale": 1.0 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime tuned for a small CPU: few threads, no spinning, full graph optimisation."""

    intra_threads: int = 2
    inter_threads: int = 1
    spinning: bool = False
    graph_optimization: str = "all"  # disable | basic | extended | all


_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session_options(threads: int = 2, opts: OrtOptions | None = None) -> ort.SessionOptions:
    o = opts or OrtOptions(intra_threads=threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = o.intra_threads
    so.inter_op_num_threads = o.inter_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _LEVELS[o.graph_optimization]
    spin = "1" if o.spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


def preprocess(frame_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 frame (any size) -> (1, 3, 120, 160) float32 RGB in [0, 1]."""
    if frame_bgr.shape[:2] != (FRAME_HEIGHT, FRAME_WIDTH):
        frame_bgr = cv2.resize(frame_bgr, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    return (rgb.transpose(2, 0, 1)[None].astype(np.float32)) * np.float32(1.0 / 255.0)


class PilotModel:
    """One loaded model: an ONNX Runtime session plus its metadata."""

    def __init__(self, data: bytes, source: str = "<bytes>", opts: OrtOptions | None = None):
        self.source = source
        self.sha256 = hashlib.sha256(data).hexdigest()
        try:
            self.session = ort.InferenceSession(data, session_options(opts=opts), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises several types for bad files
            raise ModelError(f"{source}: not a loadable ONNX model ({type(e).__name__}: {str(e)[:200]})") from e
        self.meta = self._read_meta()
        self._check_io()

    @classmethod
    def from_file(cls, path: Path, opts: OrtOptions | None = None) -> PilotModel:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ModelError(f"{path}: cannot read model file ({e.strerror})") from e
        return cls(data, str(path), opts)

    def _read_meta(self) -> dict[str, Any]:
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ModelError(f"{self.source}: ONNX metadata '{META_KEY}' missing")
        try:
            meta = json.loads(props[META_KEY])
        except json.JSONDecodeError as e:
            raise ModelError(f"{self.source}: metadata '{META_KEY}' is not JSON ({e})") from e
        want = input_spec()
        got = meta.get("input", {})
        for k in ("shape", "layout", "color"):
            if got.get(k) != want[k]:
                raise ModelError(f"{self.source}: metadata input.{k} is {got.get(k)!r}, this pilot feeds {want[k]!r}")
        if not math.isclose(float(got.get("scale", 0)), want["scale"], rel_tol=1e-6):
            raise ModelError(f"{self.source}: metadata input.scale {got.get('scale')!r} unsupported")
        return dict(meta)

    def _check_io(self) -> None:
        ins = self.session.get_inputs()
        if len(ins) != 1 or ins[0].name != INPUT_NAME:
            raise ModelError(f"{self.source}: expected one input named '{INPUT_NAME}', got {[i.name for i in ins]}")
        shape = ins[0].shape
        if list(shape[1:]) != [3, FRAME_HEIGHT, FRAME_WIDTH]:
            raise ModelError(f"{self.source}: input shape {shape} is not [N, 3, {FRAME_HEIGHT}, {FRAME_WIDTH}]")
        outs = [o.name for o in self.session.get_outputs()]
        if tuple(outs) != OUTPUT_NAMES:
            raise ModelError(f"{self.source}: outputs {outs}, expected {list(OUTPUT_NAMES)}")

    def predict(self, x: np.ndarray) -> tuple[float, float]:
        angle, throttle = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return float(angle.reshape(-1)[0]), float(throttle.reshape(-1)[0])

    def self_test(self) -> Verdict:
        """The reference self-test (edge_pilot.selftest): raises ModelError unless fit to drive."""
        frames = reference_frames()
        try:
            outputs = [self.predict(preprocess(f.image)) for f in frames]
        except Exception as e:
            raise ModelError(f"{self.source}: test inference failed ({type(e).__name__}: {str(e)[:200]})") from e
        verdict = judge(outputs, [(f.angle, f.throttle) for f in frames], self.meta)
        if verdict.failure is not None:
            raise ModelError(f"{self.source}: self-test failed: {verdict.failure}")
        return verdict


    def warm_up(self, frames: int = 3) -> None:
        """The first inferences (slow: memory planning), on reference frames; outputs must be sound."""
        for f in reference_frames()[:frames]:
            try:
                a, t = self.predict(preprocess(f.image))
            except Exception as e:
                raise ModelError(f"{self.source}: warm-up inference failed ({type(e).__name__}: {str(e)[:200]})") from e
            fault = output_fault(a, t)
            if fault is not None:
                raise ModelError(f"{self.source}: warm-up: {fault}")


@functools.cache
def reference_frames() -> tuple[ReferenceFrame, ...]:
    return tuple(load_reference())
