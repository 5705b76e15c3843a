"""Train the linear pilot on simulator data, export ONNX with metadata, optionally quantize to int8.

    python -m edge_pilot.train.train --out models/ --frames 20000 --epochs 6 --seed 0 --quantize

Steps: record a training tub and a held-out tub (different seed) from the simulator's expert,
train with a fixed seed (deterministic algorithms, fixed thread count), export to ONNX, check
ONNX Runtime against PyTorch, evaluate on held-out frames, write ``model.onnx`` + ``model.json``."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from .. import FRAME_HEIGHT, FRAME_WIDTH
from ..model import INPUT_NAME, META_KEY, OUTPUT_NAMES, input_spec
from ..sim.record import record_tub
from ..tub import read_tub, tub_hash
from .net import LinearPilot


@dataclass(frozen=True)
class TrainConfig:
    frames: int = 20000
    heldout_frames: int = 2000
    epochs: int = 6
    batch: int = 64
    lr: float = 1e-3
    seed: int = 0
    threads: int = 2
    throttle_weight: float = 0.5


def load_tub(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images as (N, 120, 160, 3) uint8 RGB and targets (N, 2) float32 [angle, throttle]."""
    recs = list(read_tub(path))
    x = np.empty((len(recs), FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
    y = np.empty((len(recs), 2), np.float32)
    for i, r in enumerate(recs):
        img = r.image()
        if img.shape[:2] != (FRAME_HEIGHT, FRAME_WIDTH):
            img = cv2.resize(img, (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_AREA)
        x[i] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        y[i] = (r.angle, r.throttle)
    return x, y


def to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)


def set_determinism(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def train_model(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, log: Any = print) -> LinearPilot:
    set_determinism(cfg.seed, cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = LinearPilot()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * (len(x) // cfg.batch)))
    loss_fn = nn.MSELoss()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(x))
        flips = rng.random(len(x)) < 0.5
        total, n = 0.0, 0
        t0 = time.monotonic()
        for b in range(0, len(order) - cfg.batch + 1, cfg.batch):
            idx = order[b : b + cfg.batch]
            xb = to_tensor(x[idx])
            yb = torch.from_numpy(y[idx].copy())
            f = torch.from_numpy(flips[idx])
            # mirror images: the mirrored pose needs the mirrored steering (throttle unchanged)
            xb[f] = torch.flip(xb[f], dims=[3])
            yb[f, 0] = -yb[f, 0]
            a, t = model(xb)
            loss = loss_fn(a[:, 0], yb[:, 0]) + cfg.throttle_weight * loss_fn(t[:, 0], yb[:, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        log(f"epoch {epoch + 1}/{cfg.epochs} loss {total / max(1, n):.5f} ({time.monotonic() - t0:.0f} s)")
    model.eval()
    return model


@torch.no_grad()
def torch_predict(model: LinearPilot, x: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    for b in range(0, len(x), batch):
        a, t = model(to_tensor(x[b : b + batch]))
        out.append(torch.cat([a, t], dim=1).numpy())
    return np.concatenate(out)


def onnx_predict(path: Path, x: np.ndarray, batch: int = 64) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = []
    for b in range(0, len(x), batch):
        xb = x[b : b + batch].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        a, t = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: xb})
        out.append(np.concatenate([a, t], axis=1))
    return np.concatenate(out)


def export_onnx(model: LinearPilot, path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, FRAME_HEIGHT, FRAME_WIDTH),), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {0: "batch"}, "angle": {0: "batch"}, "throttle": {0: "batch"}},
                          opset_version=17, do_constant_folding=True)
    set_onnx_metadata(path, meta)


def set_onnx_metadata(path: Path, meta: dict[str, Any]) -> None:
    m = onnx.load(str(path))
    del m.metadata_props[:]
    entry = m.metadata_props.add()
    entry.key = META_KEY
    entry.value = json.dumps(meta, sort_keys=True)
    m.producer_name = "edge-pilot"
    onnx.save(m, str(path))


def quantize_int8(fp32: Path, out: Path, calib: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib[i : i + 1].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0) for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            nxt = next(self.items, None)
            return None if nxt is None else {INPUT_NAME: nxt}

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)


def time_session(path: Path, x: np.ndarray, runs: int = 200) -> float:
    from ..model import session_options

    sess = ort.InferenceSession(str(path), session_options(threads=1), providers=["CPUExecutionProvider"])
    xb = x[:1].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    for _ in range(10):
        sess.run(None, {INPUT_NAME: xb})
    t0 = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {INPUT_NAME: xb})
    return (time.perf_counter() - t0) / runs * 1000.0


def run(out: Path, cfg: TrainConfig, work: Path | None = None, quantize: bool = False, log: Any = print) -> dict[str, Any]:
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="edge-pilot-train-")) if work is None else work
    try:
        train_tub, held_tub = tmp / "tub_train", tmp / "tub_heldout"
        for p, n, s in ((train_tub, cfg.frames, cfg.seed), (held_tub, cfg.heldout_frames, cfg.seed + 1000)):
            if not (p / "manifest.json").exists():
                log(f"recording {n} simulator frames to {p} (seed {s})")
                record_tub(p, n, seed=s)
        x, y = load_tub(train_tub)
        xh, yh = load_tub(held_tub)
        data_hash, held_hash = tub_hash(train_tub), tub_hash(held_tub)
        model = train_model(x, y, cfg, log)
        pt = torch_predict(model, xh)
        out.mkdir(parents=True, exist_ok=True)
        onnx_path = out / "model.onnx"
        meta: dict[str, Any] = {
            "format": 1,
            "architecture": "donkeycar-linear",
            "input": input_spec(),
            "outputs": list(OUTPUT_NAMES),
            "dataset": {"hash": data_hash, "frames": len(x), "seed": cfg.seed, "source": "edge_pilot.sim expert",
                        "hash_of": "records in order: [index, angle, throttle] + JPEG bytes (edge_pilot.tub.tub_hash)"},
            "heldout": {"hash": held_hash, "frames": len(xh), "seed": cfg.seed + 1000},
            "training": {**asdict(cfg), "torch": torch.__version__},
        }
        export_onnx(model, onnx_path, meta)
        ox = onnx_predict(onnx_path, xh)
        metrics: dict[str, Any] = {
            "heldout_mae_angle": float(np.mean(np.abs(ox[:, 0] - yh[:, 0]))),
            "heldout_mae_throttle": float(np.mean(np.abs(ox[:, 1] - yh[:, 1]))),
            "onnx_vs_torch_max_abs_diff": float(np.max(np.abs(ox - pt))),
            "ort_fp32_ms_per_frame": time_session(onnx_path, xh),
        }
        if quantize:
            q_path = out / "model.int8.onnx"
            quantize_int8(onnx_path, q_path, x[np.random.default_rng(cfg.seed).choice(len(x), min(200, len(x)), replace=False)])
            qx = onnx_predict(q_path, xh)
            metrics["int8"] = {"heldout_mae_angle": float(np.mean(np.abs(qx[:, 0] - yh[:, 0]))),
                               "max_abs_diff_vs_fp32": float(np.max(np.abs(qx - ox))),
                               "ms_per_frame": time_session(q_path, xh), "calibration_frames": min(200, len(x))}
        metrics["train_seconds"] = round(time.monotonic() - t_start, 1)
        meta["metrics"] = metrics
        set_onnx_metadata(onnx_path, meta)
        if quantize:
            set_onnx_metadata(out / "model.int8.onnx", {**meta, "quantization": "int8 static QDQ per-channel"})
        (out / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        torch.save(model.state_dict(), tmp / "model.pt")
        log(json.dumps(metrics, sort_keys=True))
        return meta
    finally:
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="keep the recorded tubs here (reused when present)")
    ap.add_argument("--frames", type=int, default=TrainConfig.frames)
    ap.add_argument("--heldout-frames", type=int, default=TrainConfig.heldout_frames)
    ap.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--threads", type=int, default=TrainConfig.threads)
    ap.add_argument("--quantize", action="store_true", help="also write model.int8.onnx (static int8, QDQ)")
    a = ap.parse_args(argv)
    cfg = TrainConfig(a.frames, a.heldout_frames, a.epochs, a.batch, a.lr, a.seed, a.threads)
    run(a.out, cfg, a.work, a.quantize)


if __name__ == "__main__":
    main()
