#!/usr/bin/env python3
"""From a model to every car, in one command (the source design's "from commit to production"):

    scripts/model-pipeline --model OUT | --train OUT [--frames N --epochs E --seed S]
        --ref registry.example.com/models/pilot:v7 --key cosign.key
        --deployment pilot-deployment.json --deploy-key fleet.key DEVICE... [-- edgectl broker flags]

Stages, each printed as one JSON line; the first that fails stops the pipeline (exit 1) with its
reason, and nothing after it happens (a model that fails a gate is never pushed or deployed):

  1. model      take OUT/model.onnx + OUT/model.json, or train them (edge_pilot.train)
  2. heldout    mean absolute steering error on fresh simulator frames (never seen in training)
                <= --max-mae-angle
  3. laps       closed-loop simulator run of --laps (>= 3) laps with no off-road frame
  4. push       edgectl push-model: the signed OCI artifact (same cosign signatures as images)
  5. deploy     edgectl deploy --wait --until good to the named devices, the deployment's
                `--module` artifact at --path replaced by the pushed digest

Needs the pilot package (edge_pilot, with the `train` extra for --train) and edge_agent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_LAPS = 3.0


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str


def heldout_gate(result: Mapping[str, float], max_mae_angle: float) -> Gate:
    mae = float(result["mae_angle"])
    if mae > max_mae_angle:
        return Gate(False, f"held-out steering MAE {mae:.4f} > {max_mae_angle:g} on {result['frames']} fresh frames")
    return Gate(True, f"held-out steering MAE {mae:.4f} <= {max_mae_angle:g} on {result['frames']} fresh frames")


def laps_gate(result: Mapping[str, Any], laps: float) -> Gate:
    done, off = float(result["laps"]), int(result["off_road_frames"])
    if off > 0:
        return Gate(
            False, f"left the road: {off} off-road frames in {done:.2f} laps (max |cte| {result['max_abs_cte_m']} m)"
        )
    if done < laps:
        return Gate(False, f"drove {done:.2f} of {laps:g} laps")
    return Gate(True, f"{done:.2f} laps, no off-road frame, mean |cte| {result['mean_abs_cte_m']} m")


def deployment_with(document: Mapping[str, Any], module: str, path: str, ref: str) -> dict[str, Any]:
    """The deployment with `module`'s artifact at `path` set to `ref` (added when missing)."""
    doc = json.loads(json.dumps(document))
    modules = doc.get("modules")
    if not isinstance(modules, dict) or module not in modules:
        raise ValueError(f"deployment: no module {module!r}")
    artifacts = modules[module].setdefault("artifacts", [])
    for artifact in artifacts:
        if artifact.get("path") == path:
            artifact["ref"] = ref
            break
    else:
        artifacts.append({"ref": ref, "path": path, "confirm": True})
    return doc


def say(stage: str, ok: bool, **fields: Any) -> None:
    print(json.dumps({"stage": stage, "ok": ok, **fields}), flush=True)


def edgectl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, timeout=1800
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="model-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="folder with model.onnx and model.json")
    src.add_argument("--train", type=Path, metavar="OUT", help="train a model into OUT first")
    p.add_argument("--frames", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout-frames", type=int, default=600)
    p.add_argument("--max-mae-angle", type=float, default=0.05)
    p.add_argument("--laps", type=float, default=MIN_LAPS)
    p.add_argument("--ref", required=True, help="registry/repository:tag to push the model to")
    p.add_argument("--key", type=Path, required=True, help="cosign.key signing the model (image key)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT")
    p.add_argument("--deployment", type=Path, required=True, help="the deployment (JSON) to update and publish")
    p.add_argument("--module", default="pilot")
    p.add_argument("--path", default="/models", help="the artifact's path in the module")
    p.add_argument("--deploy-key", type=Path, help="document signing key for edgectl deploy --key")
    p.add_argument("--wait", type=float, default=300.0)
    p.add_argument("devices", nargs="*", help="device ids (then -- and edgectl's broker flags)")
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.broker = argv[cut + 1 :]
    if args.laps < MIN_LAPS:
        p.error(f"--laps must be at least {MIN_LAPS:g}")
    if not args.devices:
        p.error("name at least one device")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    # 1. the model
    folder = args.model
    if args.train is not None:
        from edge_pilot.train.train import TrainConfig, run

        run(args.train, TrainConfig(frames=args.frames, epochs=args.epochs, seed=args.seed), log=lambda *_: None)
        folder = args.train
    onnx, meta = folder / "model.onnx", folder / "model.json"
    from edge_pilot.closed_loop import drive_laps, heldout_mae
    from edge_pilot.model import ModelError, PilotModel

    try:
        model = PilotModel.from_file(onnx)
        model.self_test()
        json.loads(meta.read_text())
    except (ModelError, OSError, ValueError) as exc:
        say("model", False, reason=str(exc))
        return 1
    say("model", True, sha256=model.sha256, trained=args.train is not None)
    # 2. held-out accuracy on fresh frames
    held = heldout_mae(model, args.heldout_frames)
    gate = heldout_gate(held, args.max_mae_angle)
    say("heldout", gate.passed, reason=gate.reason, **{k: round(v, 5) for k, v in held.items()})
    if not gate.passed:
        return 1
    # 3. closed-loop simulator
    laps = drive_laps(model, args.laps).as_dict()
    gate = laps_gate(laps, args.laps)
    say("laps", gate.passed, reason=gate.reason, **laps)
    if not gate.passed:
        return 1
    # 4. push and sign
    insecure = [f"--insecure-registry={r}" for r in args.insecure_registry]
    out = edgectl(
        "push-model",
        args.ref,
        "--model",
        str(onnx),
        "--metadata",
        str(meta),
        "--key",
        str(args.key),
        "--json",
        *insecure,
    )
    if out.returncode != 0:
        say("push", False, reason=out.stderr.strip() or out.stdout.strip())
        return 1
    pushed = json.loads(out.stdout)
    say("push", True, reference=pushed["reference"], layer=pushed["layer"], uploadedBytes=pushed["uploadedBytes"])
    # 5. deploy, pinned to what was pushed and signed
    tag_ref = args.ref.split("@")[0] + "@" + pushed["digest"]
    document = deployment_with(json.loads(args.deployment.read_text()), args.module, args.path, tag_ref)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(document, fh)
    signing = ["--key", str(args.deploy_key)] if args.deploy_key else []
    out = edgectl("deploy", *args.broker, *args.devices, fh.name, *signing, "--wait", str(args.wait), "--until", "good")
    Path(fh.name).unlink()
    say(
        "deploy",
        out.returncode == 0,
        devices=args.devices,
        reference=tag_ref,
        output=(out.stdout + out.stderr).strip()[-2000:],
    )
    return 0 if out.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
