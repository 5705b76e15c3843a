"""Pilot benchmark: one command, prints tables.

    python bench/pilot_bench.py [--seconds 10] [--frames 300]

1. The shipped model under ONNX Runtime fp32 (baseline), ONNX Runtime int8, OpenCV DNN and
   PyTorch eager, measured in this run on the same simulator frames: latency per frame and ratio
   to the baseline, plus output difference against the baseline.
2. The real drive loop at 20 Hz (simulator camera + simulated actuator, ONNX Runtime fp32 and
   int8): per-frame latency by stage (capture, preprocess, inference, actuation), `total` (the
   tick: capture read to actuator), `frame_age` (how old the camera frame was when the tick took
   it) and `capture_to_actuate` (start of the frame's capture to the command: the reaction time),
   loop jitter and the share of ticks that found no new frame; the fixed-timer loop that repeats
   such a frame (before) against the loop paced on new frames (now: its ticks move to just after
   the camera's frames, and it waits up to 30 ms for a frame rather than repeat one), same run.
Needs the ``train`` extra for the PyTorch row (torch); other rows run on device dependencies."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "modules" / "pilot" / "models"


def percentiles(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms)
    return float(np.mean(a)), float(np.percentile(a, 50)), float(np.percentile(a, 99))


def time_fn(fn: Callable[[np.ndarray], np.ndarray], xs: list[np.ndarray]) -> tuple[list[float], np.ndarray]:
    for x in xs[:10]:
        fn(x)
    ms, outs = [], []
    for x in xs:
        t0 = time.perf_counter()
        y = fn(x)
        ms.append((time.perf_counter() - t0) * 1000.0)
        outs.append(np.asarray(y, np.float32).reshape(-1)[:2])
    return ms, np.stack(outs)


def backends(threads: int) -> dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]]:
    import onnxruntime as ort
    from edge_pilot.model import INPUT_NAME, OUTPUT_NAMES, OrtOptions, session_options

    def ort_backend(path: Path) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
        def make() -> Callable[[np.ndarray], np.ndarray]:
            if not path.exists():
                raise FileNotFoundError(f"{path} missing (train with --quantize)")
            s = ort.InferenceSession(
                str(path), session_options(opts=OrtOptions(intra_threads=threads)), providers=["CPUExecutionProvider"]
            )
            return lambda x: np.concatenate([o.reshape(-1) for o in s.run(list(OUTPUT_NAMES), {INPUT_NAME: x})])

        return make

    def cv_dnn() -> Callable[[np.ndarray], np.ndarray]:
        import cv2

        cv2.setNumThreads(threads)
        net = cv2.dnn.readNetFromONNX(str(MODELS / "model.onnx"))
        names = list(OUTPUT_NAMES)

        def run(x: np.ndarray) -> np.ndarray:
            net.setInput(x)
            return np.concatenate([np.asarray(o).reshape(-1) for o in net.forward(names)])

        return run

    def torch_eager() -> Callable[[np.ndarray], np.ndarray]:
        import onnx
        import torch
        from edge_pilot.train.net import LinearPilot
        from onnx import numpy_helper

        torch.set_num_threads(threads)
        m = LinearPilot()
        inits = {
            i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
            for i in onnx.load(str(MODELS / "model.onnx")).graph.initializer
        }
        sd = m.state_dict()
        missing = [k for k in sd if k not in inits]
        if missing:
            raise KeyError(f"ONNX initializers lack {missing[:3]}")
        m.load_state_dict({k: inits[k] for k in sd})
        m.eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                a, t = m(torch.from_numpy(x))
            return np.concatenate([a.numpy().reshape(-1), t.numpy().reshape(-1)])

        return run

    return {
        "onnxruntime fp32": ort_backend(MODELS / "model.onnx"),
        "onnxruntime int8": ort_backend(MODELS / "model.int8.onnx"),
        "opencv dnn": cv_dnn,
        "pytorch eager": torch_eager,
    }


def drive_loop_run(model_path: Path, seconds: float, frame_wait_s: float,
                   phase_lock: bool) -> dict[str, tuple[float, float, float]]:
    from edge_pilot.actuator import SimActuator
    from edge_pilot.camera import SimCamera
    from edge_pilot.drive import DriveLoop, LoopConfig
    from edge_pilot.estop import EmergencyStop
    from edge_pilot.hotswap import ModelSlot
    from edge_pilot.model import PilotModel
    from edge_pilot.sim.world import SimWorld

    world = SimWorld()
    src = SimCamera(world, 20)
    act = SimActuator(world)
    src.start()
    act.start_physics()
    loop = DriveLoop(
        src, act, ModelSlot(PilotModel.from_file(model_path)), EmergencyStop(), None,
        LoopConfig(stats_interval_s=1e9, frame_wait_s=frame_wait_s, phase_lock=phase_lock)
    )
    t = threading.Timer(seconds, loop.stop)
    t.start()
    totals = loop.run()
    src.close()
    act.close()
    out = {k: percentiles(v) for k, v in loop.window.stage_ms.items() if v}
    out["jitter (|start - deadline|)"] = percentiles([abs(j) for j in loop.window.jitter_ms])
    out["_totals"] = (float(totals["frames"]), float(totals["late"]), float(totals["repeats"]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    from edge_pilot.model import preprocess
    from edge_pilot.sim.record import record_frames

    xs = [preprocess(img) for img, _, _ in record_frames(a.frames, seed=777)]
    print(f"# Inference backends, {a.frames} simulator frames, batch 1, {a.threads} threads (same run)\n")
    print("| backend | mean ms | p50 ms | p99 ms | time ratio vs ORT fp32 | max |out - ORT fp32| |")
    print("|---|---:|---:|---:|---:|---:|")
    base: tuple[float, np.ndarray] | None = None
    for name, make in backends(a.threads).items():
        try:
            fn = make()
            ms, outs = time_fn(fn, xs)
        except Exception as e:  # report, don't hide: e.g. OpenCV DNN not supporting an op
            print(f"| {name} | - | - | - | failed | {type(e).__name__}: {str(e).splitlines()[0][:90]} |")
            continue
        mean, p50, p99 = percentiles(ms)
        if base is None:
            base = (mean, outs)
        diff = float(np.max(np.abs(outs - base[1])))
        print(f"| {name} | {mean:.3f} | {p50:.3f} | {p99:.3f} | {mean / base[0]:.2f} | {diff:.2e} |")

    runs = (("ORT fp32, fixed timer, repeats a frame the camera has not replaced (before)", MODELS / "model.onnx",
             0.0, False),
            ("ORT fp32, paced on new frames (now)", MODELS / "model.onnx", 0.03, True),
            ("ORT int8, paced on new frames", MODELS / "model.int8.onnx", 0.03, True))
    for label, path, wait, lock in runs:
        if not path.exists():
            continue
        r = drive_loop_run(path, a.seconds, wait, lock)
        frames, late, repeats = r.pop("_totals")
        print(
            f"\n# Drive loop at 20 Hz, {label}, {a.seconds:.0f} s: {frames:.0f} frames, {late:.0f} late (skipped), "
            f"{repeats:.0f} ticks on a repeated camera frame ({100 * repeats / max(1.0, frames + repeats):.1f} %)\n"
        )
        print("| stage | mean ms | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|")
        for k, (mean, p50, p99) in r.items():
            print(f"| {k} | {mean:.3f} | {p50:.3f} | {p99:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
