"""Running many schedules of the explorer (sim.py) and printing what was covered."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from tests.explorer.sim import Fixture, Stats, run_schedule

DEFAULT_SCHEDULES = 2000
DEFAULT_STEPS = 40


def scratch_dir() -> Path:
    """tmpfs when there is one: the explorer's SQLite files are many and short-lived."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="edge-explorer-", dir=base))


def explore(seeds: Iterable[int], steps: int = DEFAULT_STEPS) -> tuple[Stats, float, float]:
    """Run the schedules of these seeds (one process, one core); raises Violation at the first
    broken invariant, naming its seed. Returns the summed counts, the wall time and the CPU time
    (on a shared machine the wall time says more about the neighbours than about the explorer)."""
    workdir = scratch_dir()
    quiet = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # the agent logs every transition; thousands of schedules
    started, cpu = time.monotonic(), time.process_time()
    try:
        fixture = Fixture(workdir)
        total = Stats()
        for seed in seeds:
            total.add(run_schedule(seed, fixture, steps))
        return total, time.monotonic() - started, time.process_time() - cpu
    finally:
        logging.disable(quiet)
        shutil.rmtree(workdir, ignore_errors=True)


def summary(stats: Stats, wall_s: float, cpu_s: float) -> str:
    features = ", ".join(f"{k}={v}" for k, v in sorted(stats.features.items()))
    return (f"explorer: {stats.schedules} schedules, {stats.steps} steps, {stats.crashes} crashes "
            f"({stats.crashes_at_writes} at a durable write), {stats.checks} invariant checks in {wall_s:.1f} s "
            f"({cpu_s:.1f} s of CPU)\n"
            f"explorer: covered {features}")
