"""A/B comparison of telemetry (pure): records of groups of devices, split by the deployment
version each record carries, reduced to a side-by-side table of metrics.

Input records are what the fleet receives on <prefix>/<device>/telemetry/<stream> (one dict per
record, as `edgectl telemetry --json` prints them: device, id, seq, deployment, payload, ...);
the metrics read the pilot's `pilot.stats` payload (docs/pilot.md): `total_ms` (every frame's
end-to-end latency), `fps`, `frames`, `late`, `errors`, `stopped` and `sim.cte_m`.

A column is one (group, deployment version) pair. Records are counted once per id (the uplink is
at-least-once). A record without a deployment version goes to the column of version None, shown
as "unknown".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    group: str
    version: int | None
    devices: tuple[str, ...]
    records: int

    @property
    def title(self) -> str:
        return f"{self.group} v{self.version if self.version is not None else 'unknown'}"


@dataclass(frozen=True)
class Row:
    metric: str  # the --metric name it belongs to
    label: str
    values: tuple[float | None, ...]  # one per column; None: no data


@dataclass(frozen=True)
class Comparison:
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default method); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _numbers(records: Iterable[Mapping[str, Any]], read: Callable[[Mapping[str, Any]], Any]) -> list[float]:
    out = []
    for rec in records:
        value = _number(read(rec["payload"]))
        if value is not None:
            out.append(value)
    return out


def _latencies(records: Sequence[Mapping[str, Any]]) -> list[float]:
    out: list[float] = []
    for rec in records:
        frames = rec["payload"].get("total_ms")
        if isinstance(frames, list):
            out.extend(v for v in (_number(f) for f in frames) if v is not None)
    return out


def _abs_cte(records: Sequence[Mapping[str, Any]]) -> list[float]:
    def read(payload: Mapping[str, Any]) -> Any:
        sim = payload.get("sim")
        value = _number(sim.get("cte_m")) if isinstance(sim, Mapping) else None
        return None if value is None else abs(value)

    return _numbers(records, read)


def _stops(records: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """(stop episodes, stopped records): an episode starts at a record with `stopped` set after
    one without (or at a device's first record), per device in sequence order."""
    episodes = stopped = 0
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        by_device.setdefault(str(rec.get("device")), []).append(rec)
    for device_records in by_device.values():
        before = False
        for rec in sorted(device_records, key=lambda r: r.get("seq", 0)):
            now = bool(rec["payload"].get("stopped"))
            stopped += now
            episodes += now and not before
            before = now
    return float(episodes), float(stopped)


def _late_percent(records: Sequence[Mapping[str, Any]]) -> float | None:
    late = sum(_numbers(records, lambda p: p.get("late")))
    frames = sum(_numbers(records, lambda p: p.get("frames")))
    return None if late + frames == 0 else 100.0 * late / (late + frames)


# name -> (help, [(row label, function of a column's records)])
RowFunction = Callable[[Sequence[Mapping[str, Any]]], float | None]
METRICS: dict[str, tuple[str, list[tuple[str, RowFunction]]]] = {
    "latency": (
        "end-to-end frame latency p50/p95/p99 in ms, over every frame (payload total_ms)",
        [
            ("latency p50 ms", lambda rs: percentile(_latencies(rs), 50)),
            ("latency p95 ms", lambda rs: percentile(_latencies(rs), 95)),
            ("latency p99 ms", lambda rs: percentile(_latencies(rs), 99)),
        ],
    ),
    "fps": (
        "frames per second, mean of the per-record fps",
        [("fps mean", lambda rs: _mean(_numbers(rs, lambda p: p.get("fps"))))],
    ),
    "cte": (
        "cross-track error |sim.cte_m| in m, mean and p95 of the per-record samples",
        [
            ("cte mean m", lambda rs: _mean(_abs_cte(rs))),
            ("cte p95 m", lambda rs: percentile(_abs_cte(rs), 95)),
        ],
    ),
    "stops": (
        "throttle stops: episodes (stopped set after a record without) and records with stopped set",
        [("stops", lambda rs: _stops(rs)[0]), ("stopped records", lambda rs: _stops(rs)[1])],
    ),
    "late": ("late ticks as a percentage of late ticks plus frames", [("late %", _late_percent)]),
    "errors": ("drive-loop errors, summed", [("errors", lambda rs: sum(_numbers(rs, lambda p: p.get("errors"))))]),
}
DEFAULT_METRICS = ("latency", "fps", "cte", "stops")


def compare(
    records: Iterable[Mapping[str, Any]],
    group_of: Mapping[str, str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    groups: Sequence[str] | None = None,
) -> Comparison:
    """The table. `group_of` maps device id -> group name (records of other devices are left
    out); `groups` gives the column order (default: sorted names). A group with devices but no
    records still gets a column (version None, zero records), so a silent group is visible."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
    order = list(groups) if groups is not None else sorted(set(group_of.values()))
    seen: set[str] = set()
    cells: dict[tuple[str, int | None], list[Mapping[str, Any]]] = {}
    for rec in records:
        group = group_of.get(str(rec.get("device")))
        if group is None or not isinstance(rec.get("payload"), Mapping):
            continue
        record_id = str(rec.get("id"))
        if record_id in seen:
            continue
        seen.add(record_id)
        version = rec.get("deployment")
        version = version if isinstance(version, int) and not isinstance(version, bool) else None
        cells.setdefault((group, version), []).append(rec)
    for group in order:
        if not any(g == group for g, _ in cells):
            cells[(group, None)] = []
    keys = sorted(
        cells, key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[0], k[1] is None, k[1] or 0)
    )
    columns = tuple(
        Column(
            group,
            version,
            tuple(sorted({str(r.get("device")) for r in cells[(group, version)]})),
            len(cells[(group, version)]),
        )
        for group, version in keys
    )
    rows = tuple(
        Row(metric, label, tuple(function(cells[key]) for key in keys))
        for metric in metrics
        for label, function in METRICS[metric][1]
    )
    return Comparison(columns, rows)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def render_table(comparison: Comparison, selectors: Mapping[str, str] | None = None) -> str:
    """Side by side: one column per (group, version), one line per metric row."""
    head = ["", *(c.title for c in comparison.columns)]
    lines = [head]
    if selectors:
        lines.append(["selector", *(selectors.get(c.group, "") for c in comparison.columns)])
    lines.append(["devices", *(str(len(c.devices)) for c in comparison.columns)])
    lines.append(["records", *(str(c.records) for c in comparison.columns)])
    lines.extend([r.label, *(_cell(v) for v in r.values)] for r in comparison.rows)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def as_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "columns": [
            {"group": c.group, "version": c.version, "devices": list(c.devices), "records": c.records}
            for c in comparison.columns
        ],
        "rows": [{"metric": r.metric, "label": r.label, "values": list(r.values)} for r in comparison.rows],
    }
