"""Per-second drive statistics: fps, latency p50/p99 by stage, late/stale frames, last command."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAGES = ("capture", "preprocess", "inference", "actuation", "total", "frame_age", "capture_to_actuate")


@dataclass
class StatsWindow:
    started: float
    frames: int = 0
    late: int = 0  # ticks skipped because the loop was behind its deadline
    stale: int = 0  # ticks without a fresh frame
    errors: int = 0
    faults: int = 0  # model outputs that could not drive (non-finite, out of range, inference failed)
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    jitter_ms: list[float] = field(default_factory=list)
    angle: float = 0.0
    throttle: float = 0.0

    def add(self, stages: dict[str, float], jitter_ms: float, angle: float, throttle: float) -> None:
        self.frames += 1
        for k, v in stages.items():
            self.stage_ms[k].append(v)
        self.jitter_ms.append(jitter_ms)
        self.angle, self.throttle = angle, throttle

    def summary(self, now: float, **extra: Any) -> dict[str, Any]:
        span = max(1e-6, now - self.started)
        lat: dict[str, dict[str, float]] = {}
        for k, v in self.stage_ms.items():
            if v:
                a = np.asarray(v)
                lat[k] = {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}
        out = {"fps": round(self.frames / span, 2), "frames": self.frames, "late": self.late, "stale": self.stale,
               "errors": self.errors, "faults": self.faults, "latency_ms": lat,
               "jitter_ms_p99": round(float(np.percentile(np.abs(self.jitter_ms), 99)), 3) if self.jitter_ms else None,
               "angle": round(self.angle, 4), "throttle": round(self.throttle, 4),
               # every frame's end-to-end latency, so the fleet can draw a real histogram
               "total_ms": [round(v, 2) for v in self.stage_ms["total"]],
               # and from the start of each frame's capture to its command (frame age included)
               "capture_to_actuate_ms": [round(v, 2) for v in self.stage_ms["capture_to_actuate"]]}
        out.update(extra)
        return out
