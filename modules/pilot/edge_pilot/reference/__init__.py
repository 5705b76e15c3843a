"""The reference frames every model is tested on before it drives: a small DonkeyCar tub v2
recorded from the simulator's expert (``edge-pilot reference --out DIR`` makes it again, byte for
byte the same records: tests/pilot/test_selftest.py checks the shipped one against a fresh one).

Short episodes (6 frames each) from random places, both directions and random lighting, so the
set covers the track rather than one stretch of it; labels are the expert's clean commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..tub import read_tub, tub_hash

TUB = Path(__file__).resolve().parent / "tub"
FRAMES = 48
SEED = 7_000  # not a training (0) or held-out (1000) seed of the shipped model
EPISODE_FRAMES = 6


@dataclass(frozen=True)
class ReferenceFrame:
    image: np.ndarray  # BGR uint8, decoded from the tub's JPEG as in training
    angle: float  # the expert's label
    throttle: float


def record(out: Path) -> str:
    """Write the reference tub to ``out``; returns its content hash (edge_pilot.tub.tub_hash)."""
    from ..sim.record import record_tub

    record_tub(out, FRAMES, SEED, episode_frames=EPISODE_FRAMES)
    return tub_hash(out)


def load(path: Path = TUB) -> list[ReferenceFrame]:
    return [ReferenceFrame(r.image(), r.angle, r.throttle) for r in read_tub(path)]
