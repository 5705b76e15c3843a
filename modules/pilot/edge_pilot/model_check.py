"""A delivered model is checked in a separate, lower-priority process before the pilot loads it:
signature, ONNX Runtime load and the reference self-test (edge_pilot.selftest), under a data-size
limit (RLIMIT_DATA, its imports plus the budget edge_pilot.memory admitted). So neither a model's
memory nor its CPU is taken from the drive loop, and a model that would exhaust the module's
memory fails this process, not the pilot.

Parent side: ``check_in_subprocess``. Child side: ``python -m edge_pilot.model_check FOLDER``
with the trusted key's PEM (or nothing: unsigned delivery) on stdin; one JSON line on stdout.

A check process can also be started ahead of time (``StandbyCheck``: ``--standby``): it does its
imports (numpy, OpenCV, ONNX Runtime: most of a check's cost on a small CPU) and loads the reference
frames, then waits for one job line on stdin; the memory limit is set when the job arrives, as in
a fresh check. Each process checks one model and exits: a model never shares a process with
another.
"""

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


def _command(intra_threads: int, nice: int) -> list[str]:
    return [sys.executable, "-m", "edge_pilot.model_check", "--threads", str(intra_threads), "--nice", str(nice)]


def _pem(key: ec.EllipticCurvePublicKey | None) -> bytes:
    return b"" if key is None else key.public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)


class StandbyCheck:
    """A check process started before a model arrives, its imports done, waiting for one job."""

    def __init__(self, intra_threads: int = 1, nice: int = 10) -> None:
        self.proc = subprocess.Popen([*_command(intra_threads, nice), "--standby"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def usable(self) -> bool:
        return self.proc.poll() is None

    def run(self, folder: Path, key: ec.EllipticCurvePublicKey | None, budget: int, timeout_s: float) -> CheckResult:
        job = json.dumps({"folder": str(folder), "budget_bytes": budget, "pem": _pem(key).decode()}).encode() + b"\n"
        try:
            out, err = self.proc.communicate(job, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            return CheckResult(False, f"the model check did not finish within {timeout_s:.0f} s")
        except OSError as e:  # it died while waiting (e.g. killed for memory): its answer says how
            out, err = b"", str(e).encode()
            self.proc.wait()
        return _result(self.proc.returncode, out, err, budget)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=5)
        except (subprocess.TimeoutExpired, OSError, ValueError):
            pass


def check_in_subprocess(folder: Path, key: ec.EllipticCurvePublicKey | None, budget: int, timeout_s: float,
                        intra_threads: int = 1, nice: int = 10, standby: StandbyCheck | None = None) -> CheckResult:
    """``nice``: 10 while a model drives (the loop first), 0 at start (nothing drives yet, and a
    niced check would wait behind every other process of a busy machine). ``standby``: a process
    started ahead to use (its own nice and threads), when it is still alive."""
    if standby is not None and standby.usable():
        return standby.run(folder, key, budget, timeout_s)
    cmd = [*_command(intra_threads, nice), str(folder), "--budget-bytes", str(budget)]
    try:
        p = subprocess.run(cmd, input=_pem(key), capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"the model check did not finish within {timeout_s:.0f} s")
    except OSError as e:
        return CheckResult(False, f"cannot start the model check ({e})")
    return _result(p.returncode, p.stdout, p.stderr, budget)


def _result(returncode: int, stdout: bytes, stderr: bytes, budget: int) -> CheckResult:
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("ok"), bool):
        return CheckResult(doc["ok"], str(doc.get("reason", "")), doc.get("sha256"), doc.get("mae"))
    if returncode < 0:
        died = f"was killed by {signal.Signals(-returncode).name}"
    else:
        died = f"exited {returncode}"
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return CheckResult(False, f"the model check {died} with a memory budget of {budget // MB} MB beyond its imports "
                              f"(the model needs more, or is malformed): {tail[0][:200]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_pilot.model_check")
    ap.add_argument("folder", type=Path, nargs="?")
    ap.add_argument("--budget-bytes", type=int)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--standby", action="store_true", help="import, then read one job line (JSON) on stdin")
    a = ap.parse_args(argv)
    if not a.standby and (a.folder is None or a.budget_bytes is None):
        ap.error("FOLDER and --budget-bytes are required without --standby")
    if a.nice > 0:
        try:
            os.nice(a.nice)  # the drive loop first
        except OSError:
            pass
    import resource

    from .hotswap import load_verified
    from .memory import data_size
    from .model import ModelError, OrtOptions, reference_frames
    from .signing import SignatureError, load_public_key_pem

    if a.standby:
        reference_frames()  # decoded now, not when a model is waiting
        line = sys.stdin.buffer.readline()
        if not line:
            return 0  # the pilot closed it without a job
        try:
            job = json.loads(line)
            folder, budget, pem = Path(job["folder"]), int(job["budget_bytes"]), str(job["pem"]).encode()
        except (ValueError, KeyError, TypeError) as e:
            print(json.dumps({"ok": False, "reason": f"the model check got an unusable job ({e})"}))
            return 0
    else:
        folder, budget, pem = a.folder, a.budget_bytes, sys.stdin.buffer.read()
    try:
        key = load_public_key_pem(pem, "trusted key") if pem.strip() else None
    except SignatureError as e:
        print(json.dumps({"ok": False, "reason": str(e)}))
        return 0
    limit = data_size() + budget
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        model, verdict = load_verified(folder, key, OrtOptions(intra_threads=a.threads))
    except ModelError as e:
        reason = str(e)
        if any(m in reason for m in ("bfc_arena", "bad_alloc", "Failed to allocate")):
            reason = (f"{folder / 'model.onnx'}: it needs more memory than its budget ({budget // MB} MB "
                      f"beyond the check's imports, from its size): {reason}")
        print(json.dumps({"ok": False, "reason": reason}))
        return 0
    except MemoryError:
        print(json.dumps({"ok": False, "reason": f"{folder / 'model.onnx'}: loading it needs more memory than its "
                                                 f"budget ({budget // MB} MB beyond the check's imports)"}))
        return 0
    print(json.dumps({"ok": True, "sha256": model.sha256, "mae": verdict.mae}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
