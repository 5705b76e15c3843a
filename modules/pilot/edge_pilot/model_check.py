"""A delivered model is checked in a separate, lower-priority process before the pilot loads it:
signature, ONNX Runtime load and the reference self-test (edge_pilot.selftest), under a data-size
limit (RLIMIT_DATA, its imports plus the budget edge_pilot.memory admitted). So neither a model's
memory nor its CPU is taken from the drive loop, and a model that would exhaust the module's
memory fails this process, not the pilot.

Parent side: ``check_in_subprocess``. Child side: ``python -m edge_pilot.model_check FOLDER``
with the trusted key's PEM (or nothing: unsigned delivery) on stdin; one JSON line on stdout."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .memory import MB


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str  # why the model was refused ("" when ok)
    sha256: str | None = None  # of the bytes checked
    mae: dict[str, float] | None = None  # on the reference frames


def check_in_subprocess(folder: Path, key: ec.EllipticCurvePublicKey | None, budget: int, timeout_s: float,
                        intra_threads: int = 1, nice: int = 10) -> CheckResult:
    """``nice``: 10 while a model drives (the loop first), 0 at start (nothing drives yet, and a
    niced check would wait behind every other process of a busy machine)."""
    pem = b"" if key is None else key.public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    cmd = [sys.executable, "-m", "edge_pilot.model_check", str(folder), "--budget-bytes", str(budget),
           "--threads", str(intra_threads), "--nice", str(nice)]
    try:
        p = subprocess.run(cmd, input=pem, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"the model check did not finish within {timeout_s:.0f} s")
    except OSError as e:
        return CheckResult(False, f"cannot start the model check ({e})")
    lines = p.stdout.decode(errors="replace").strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("ok"), bool):
        return CheckResult(doc["ok"], str(doc.get("reason", "")), doc.get("sha256"), doc.get("mae"))
    if p.returncode < 0:
        died = f"was killed by {signal.Signals(-p.returncode).name}"
    else:
        died = f"exited {p.returncode}"
    tail = p.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return CheckResult(False, f"the model check {died} with a memory budget of {budget // MB} MB beyond its imports "
                              f"(the model needs more, or is malformed): {tail[0][:200]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_pilot.model_check")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--budget-bytes", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=10)
    a = ap.parse_args(argv)
    if a.nice > 0:
        try:
            os.nice(a.nice)  # the drive loop first
        except OSError:
            pass
    import resource

    from .hotswap import load_verified
    from .memory import data_size
    from .model import ModelError, OrtOptions
    from .signing import SignatureError, load_public_key_pem

    pem = sys.stdin.buffer.read()
    try:
        key = load_public_key_pem(pem, "trusted key") if pem.strip() else None
    except SignatureError as e:
        print(json.dumps({"ok": False, "reason": str(e)}))
        return 0
    limit = data_size() + a.budget_bytes
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        model, verdict = load_verified(a.folder, key, OrtOptions(intra_threads=a.threads))
    except ModelError as e:
        reason = str(e)
        if any(m in reason for m in ("bfc_arena", "bad_alloc", "Failed to allocate")):
            reason = (f"{a.folder / 'model.onnx'}: it needs more memory than its budget ({a.budget_bytes // MB} MB "
                      f"beyond the check's imports, from its size): {reason}")
        print(json.dumps({"ok": False, "reason": reason}))
        return 0
    except MemoryError:
        print(json.dumps({"ok": False, "reason": f"{a.folder / 'model.onnx'}: loading it needs more memory than its "
                                                 f"budget ({a.budget_bytes // MB} MB beyond the check's imports)"}))
        return 0
    print(json.dumps({"ok": True, "sha256": model.sha256, "mae": verdict.mae}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
