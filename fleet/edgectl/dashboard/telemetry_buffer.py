"""Recent pilot telemetry per device, in memory, for the dashboard's charts and its A/B compare
(pure: no I/O). Telemetry is not retained by the broker: the dashboard shows what arrived since
it started, at most `per_device` records per device (the oldest are dropped).

A record is what `edgectl telemetry --json` prints (device, stream, id, seq, ts, deployment,
payload); the pilot's `pilot.stats` payload is read as docs/pilot.md describes it. Records are
taken once per id (the uplink is at-least-once).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgectl.telemetry_cmd import Deduplicator

# The payload keys edgectl compare reads (edgectl/compare.py): kept, the rest dropped.
COMPARE_KEYS = ("fps", "total_ms", "stopped", "late", "frames", "errors")
PATH_POINTS = 2000  # the driven path kept per device (the pilot sends one point per 0.1 s)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _dig(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(key)
    return doc


@dataclass(frozen=True)
class Sample:
    """One pilot.stats record, reduced to what the device page draws."""

    ts: float
    version: int | None
    fps: float | None
    c2a_p50: float | None  # capture-to-actuate latency, ms
    c2a_p99: float | None
    cte: float | None  # cross-track error, m (signed)
    model: str | None
    stopped: str | None


def sample_of(record: Mapping[str, Any]) -> Sample | None:
    payload = record.get("payload")
    ts = _number(record.get("ts"))
    if not isinstance(payload, Mapping) or ts is None:
        return None
    version = record.get("deployment")
    stopped = payload.get("stopped")
    model = payload.get("model")
    return Sample(
        ts=ts,
        version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        fps=_number(payload.get("fps")),
        c2a_p50=_number(_dig(payload, "latency_ms", "capture_to_actuate", "p50")),
        c2a_p99=_number(_dig(payload, "latency_ms", "capture_to_actuate", "p99")),
        cte=_number(_dig(payload, "sim", "cte_m")),
        model=str(model) if model is not None else None,
        stopped=str(stopped) if stopped else None,
    )


def _path_points(payload: Any) -> list[tuple[float, float]]:
    raw = _dig(payload, "sim", "path")
    out: list[tuple[float, float]] = []
    if isinstance(raw, list):
        for point in raw:
            if isinstance(point, list | tuple) and len(point) == 2:
                x, y = _number(point[0]), _number(point[1])
                if x is not None and y is not None:
                    out.append((x, y))
    return out


class TelemetryBuffer:
    def __init__(self, per_device: int = 600, dedup_window: int = 200_000) -> None:
        self.per_device = per_device
        self._samples: dict[str, deque[Sample]] = {}
        self._records: dict[str, deque[dict[str, Any]]] = {}
        self._paths: dict[str, deque[tuple[float, float]]] = {}
        self._dedup = Deduplicator(dedup_window)

    def add(self, record: Mapping[str, Any]) -> bool:
        """Take one record; False when it was seen before or is not a pilot record."""
        device = record.get("device")
        if not isinstance(device, str) or not self._dedup.first_time(str(record.get("id"))):
            return False
        sample = sample_of(record)
        if sample is None:
            return False
        self._samples.setdefault(device, deque(maxlen=self.per_device)).append(sample)
        payload = record["payload"]
        compact = {k: payload[k] for k in COMPARE_KEYS if k in payload}
        cte = _dig(payload, "sim", "cte_m")
        if cte is not None:
            compact["sim"] = {"cte_m": cte}
        self._records.setdefault(device, deque(maxlen=self.per_device)).append(
            {"device": device, "id": record.get("id"), "seq": record.get("seq"), "ts": sample.ts,
             "deployment": sample.version, "payload": compact}
        )
        points = _path_points(payload)
        if points:
            self._paths.setdefault(device, deque(maxlen=PATH_POINTS)).extend(points)
        return True

    def samples(self, device: str) -> list[Sample]:
        return list(self._samples.get(device, ()))

    def path(self, device: str) -> list[tuple[float, float]]:
        return list(self._paths.get(device, ()))

    def records(self, since: float | None = None) -> list[dict[str, Any]]:
        """Every device's records (compact, as edgectl compare reads them), newer than `since`."""
        return [r for rs in self._records.values() for r in rs if since is None or r["ts"] >= since]

    def devices(self) -> list[str]:
        return sorted(self._samples)
