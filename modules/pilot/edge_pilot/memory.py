"""How much memory a model may take before it is loaded: the module's memory limit and working
set from its cgroup (v2 or v1) and the machine's MemAvailable (reading), and the admission rule
(pure: ``admit``).

Loading an ONNX model with ONNX Runtime peaks at about 3x the file's size (the bytes, the parsed
graph, the session's weights and constant folding: 316 MB over the imports for a 108 MB model),
so a model is checked in a separate process (edge_pilot.model_check) only when that process's
imports plus ``LOAD_FACTOR`` times the file fit in what the module has left, less a reserve for
the drive loop; the check runs under a data-size limit of that budget, so a small file that
expands at load (a constant-folding bomb) fails the check instead of the module."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024
LOAD_FACTOR = 3.5
CHECK_BASE = 128 * MB  # the check process's own imports (python, numpy, OpenCV, ONNX Runtime: ~95 MB)
RESERVE = 32 * MB  # left for the running pilot while a model is checked and loaded
BUDGET_SLACK = 32 * MB


@dataclass(frozen=True)
class MemoryState:
    limit: int | None  # the module's memory limit in bytes (None: no cgroup limit)
    used: int  # the module's working set (usage less inactive page cache)
    available: int | None  # the machine's MemAvailable


@dataclass(frozen=True)
class Admit:
    check_budget: int  # bytes the check process may allocate beyond its imports


@dataclass(frozen=True)
class Refuse:
    reason: str


def _mb(n: float) -> str:
    return f"{n / MB:.0f} MB" if n < 10 * 1024 * MB else f"{n / (1024 * MB):.1f} GB"


def admit(name: str, size: int, max_model_bytes: int, mem: MemoryState) -> Admit | Refuse:
    """Pure: may a model file of ``size`` bytes be checked and loaded now?"""
    if size > max_model_bytes:
        return Refuse(f"{name} is {_mb(size)}, more than this pilot takes (models.max_model_mb {_mb(max_model_bytes)})")
    need = CHECK_BASE + math.ceil(LOAD_FACTOR * size)
    room = math.inf
    where = ""
    if mem.limit is not None:
        room = mem.limit - mem.used
        where = f"the module has {_mb(max(0, room))} free of its {_mb(mem.limit)} memory limit"
    if mem.available is not None and mem.available < room:
        room = mem.available
        where = f"the machine has {_mb(mem.available)} available"
    if need > room - RESERVE:
        return Refuse(f"{name} ({_mb(size)}) needs about {_mb(need)} to check and load; {where} "
                      f"(and keeps {_mb(RESERVE)} for driving)")
    return Admit(math.ceil(LOAD_FACTOR * size) + BUDGET_SLACK)


# --- reading the module's state ------------------------------------------------------------------

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < 1 << 60 else None  # cgroup v1 writes "no limit" as a huge number


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text(encoding="ascii").splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs(root: Path, proc_cgroup: str) -> list[tuple[str, Path]]:
    """("v2" | "v1", folder) candidates for this process's memory cgroup, most specific first."""
    out: list[tuple[str, Path]] = []
    for line in proc_cgroup.splitlines():
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.lstrip("/")
        if hid == "0" and controllers == "":
            out += [("v2", root / rel), ("v2", root)]
        elif "memory" in controllers.split(","):
            out += [("v1", root / "memory" / rel), ("v1", root / "memory")]
    return out


def read_state(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc")) -> MemoryState:
    """This process's cgroup memory limit and working set (inside a container the cgroup namespace
    puts the container's own cgroup at the root), and MemAvailable."""
    try:
        proc_cgroup = (proc / "self" / "cgroup").read_text(encoding="ascii")
    except OSError:
        proc_cgroup = ""
    limit: int | None = None
    used = 0
    for version, folder in _cgroup_dirs(root, proc_cgroup):
        if version == "v2" and (folder / "memory.current").exists():
            limit = _read_int(folder / "memory.max")
            used = (_read_int(folder / "memory.current") or 0) - _stat(folder / "memory.stat", "inactive_file")
            break
        if version == "v1" and (folder / "memory.usage_in_bytes").exists():
            limit = _read_int(folder / "memory.limit_in_bytes")
            used = (_read_int(folder / "memory.usage_in_bytes") or 0) - _stat(folder / "memory.stat", "total_inactive_file")
            break
    available: int | None = None
    try:
        for line in (proc / "meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        available = None
    return MemoryState(limit, max(0, used), available)


def data_size() -> int:
    """This process's VmData (private writable memory, what RLIMIT_DATA limits), in bytes."""
    with open(f"/proc/{os.getpid()}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise OSError("VmData missing from /proc/self/status")
