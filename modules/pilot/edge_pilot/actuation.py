"""What the actuator is told for one model output, and when repeated faults trip the safety stop (pure).

A model's outputs are trained on labels in [-1, 1]. A finite output within ``OUTPUT_LIMIT`` is
regression overshoot and is clamped; anything else (NaN, +-inf, or a finite value beyond the
limit) is a fault: that tick commands neutral steering and zero throttle. Clamping a NaN would
be a lie: ``max(-1, min(1, nan))`` is 1.0, full lock.

Faults are counted per model; ``FaultPolicy.consecutive`` faults in a row, or ``in_window``
faults among the last ``window`` outputs, trip the safety stop, which holds until another model
is swapped in (the fault belongs to the model, not to the moment)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

OUTPUT_LIMIT = 1.25  # beyond this a trained [-1, 1] output is not overshoot but a broken model
NEUTRAL_ANGLE = 0.0
ZERO_THROTTLE = 0.0


@dataclass(frozen=True)
class Command:
    angle: float
    throttle: float


@dataclass(frozen=True)
class Fault:
    reason: str
    command: Command = Command(NEUTRAL_ANGLE, ZERO_THROTTLE)


def output_fault(angle: float, throttle: float, limit: float = OUTPUT_LIMIT) -> str | None:
    """Why these raw model outputs may not drive, or None."""
    bad = [f"{name}={value!r}" for name, value in (("angle", angle), ("throttle", throttle))
           if not math.isfinite(value) or abs(value) > limit]
    if not bad:
        return None
    kind = "non-finite" if any(not math.isfinite(v) for v in (angle, throttle)) else f"beyond +-{limit}"
    return f"model output {kind}: {', '.join(bad)}"


def decide(angle: float, throttle: float, max_throttle: float = 1.0,
           constant_throttle: float | None = None) -> Command | Fault:
    """The command for one model output: clamped when sound, neutral and zero throttle when not.

    The model's throttle is checked even when ``constant_throttle`` replaces it: a model whose
    throttle head gives NaN is broken, and its steering is not to be trusted either."""
    why = output_fault(angle, throttle)
    if why is not None:
        return Fault(why)
    if constant_throttle is not None:
        throttle = constant_throttle
    cap = max(0.0, min(1.0, max_throttle)) if math.isfinite(max_throttle) else 0.0
    return Command(max(-1.0, min(1.0, angle)), max(-cap, min(cap, throttle)))


@dataclass(frozen=True)
class FaultPolicy:
    consecutive: int = 3  # this many faulty outputs in a row trip the stop
    in_window: int = 5  # or this many among the last `window` outputs
    window: int = 100


@dataclass
class FaultCounter:
    """Faults of the model now driving; ``tripped`` holds the reason once the policy trips."""

    policy: FaultPolicy = FaultPolicy()
    total: int = 0
    run: int = 0
    recent: deque[bool] = field(default_factory=deque)
    tripped: str | None = None

    def record(self, fault: str | None) -> str | None:
        """Count one output (its fault reason or None); returns the trip reason when this output trips."""
        p = self.policy
        self.recent.append(fault is not None)
        if len(self.recent) > p.window:
            self.recent.popleft()
        if fault is None:
            self.run = 0
            return None
        self.total += 1
        self.run += 1
        if self.tripped is not None:
            return None
        in_window = sum(self.recent)
        if self.run >= p.consecutive:
            self.tripped = f"safety stop: {self.run} faulty model outputs in a row (last: {fault})"
        elif in_window >= p.in_window:
            self.tripped = (f"safety stop: {in_window} faulty model outputs in the last {len(self.recent)} "
                            f"(last: {fault})")
        return self.tripped

    def reset(self) -> None:
        """A different model drives now: its record starts clean."""
        self.total, self.run, self.tripped = 0, 0, None
        self.recent.clear()
