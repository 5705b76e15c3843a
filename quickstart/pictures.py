"""The story's pictures, drawn with OpenCV (already a dependency of the pilot module, so the
quickstart needs no plotting library): the track with the driven path, the latency histogram,
queue depth over time. Axes and labels are drawn by hand; that is all these three charts need.

Inputs are what the fleet side received (pilot.stats telemetry records, in upload order) and the
agent's queue depth sampled from `edge-agent status`, never anything simulated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

W, H = 900, 600
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 80, 30, 60, 60
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (30, 30, 30), (150, 150, 150), (225, 225, 225)
BLUE, RED, ORANGE, GREEN = (200, 110, 30), (40, 40, 210), (0, 140, 255), (60, 160, 60)
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class Axes:
    x0: float
    x1: float
    y0: float
    y1: float

    def px(self, x: float, y: float) -> tuple[int, int]:
        fx = (x - self.x0) / ((self.x1 - self.x0) or 1.0)
        fy = (y - self.y0) / ((self.y1 - self.y0) or 1.0)
        return (int(MARGIN_L + fx * (W - MARGIN_L - MARGIN_R)), int(H - MARGIN_B - fy * (H - MARGIN_T - MARGIN_B)))


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5, color: tuple[int, int, int] = BLACK,
          thickness: int = 1) -> None:
    cv2.putText(img, text, org, FONT, scale, color, thickness, cv2.LINE_AA)


def _canvas(title: str) -> np.ndarray:
    img = np.full((H, W, 3), 255, np.uint8)
    _text(img, title, (MARGIN_L, 35), 0.75, BLACK, 2)
    return img


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = hi - lo or 1.0
    raw = span / n
    mag = 10 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = np.ceil(lo / step) * step
    return [float(v) for v in np.arange(first, hi + step * 1e-6, step)]


def _axes(img: np.ndarray, ax: Axes, xlabel: str, ylabel: str) -> None:
    for x in _ticks(ax.x0, ax.x1):
        p = ax.px(x, ax.y0)
        cv2.line(img, (p[0], MARGIN_T), (p[0], H - MARGIN_B), LIGHT, 1)
        _text(img, f"{x:g}", (p[0] - 12, H - MARGIN_B + 20), 0.45, GREY)
    for y in _ticks(ax.y0, ax.y1):
        p = ax.px(ax.x0, y)
        cv2.line(img, (MARGIN_L, p[1]), (W - MARGIN_R, p[1]), LIGHT, 1)
        _text(img, f"{y:g}", (8, p[1] + 5), 0.45, GREY)
    cv2.rectangle(img, (MARGIN_L, MARGIN_T), (W - MARGIN_R, H - MARGIN_B), BLACK, 1)
    _text(img, xlabel, (W // 2 - 60, H - 15), 0.55)
    _text(img, ylabel, (8, MARGIN_T - 10), 0.55)


def track_picture(path: Sequence[tuple[float, float]], out: Path, caption: str,
                  marks: Sequence[tuple[tuple[float, float], str]] = ()) -> None:
    """Road (grey band with edges) and the car's driven path on it, from start (blue) to end (red),
    with labelled marks (e.g. where the car switched to a new model)."""
    from edge_pilot.sim.track import Track  # the same track the simulator drives

    track = Track.default()
    left, right = track.edges()
    pts = np.concatenate([left, right, np.asarray(path, float).reshape(-1, 2)])
    lo, hi = pts.min(axis=0) - 0.3, pts.max(axis=0) + 0.3
    # equal scale on both axes
    span = max((hi - lo) / np.array([W - MARGIN_L - MARGIN_R, H - MARGIN_T - MARGIN_B]))
    centre = (lo + hi) / 2
    half = span * np.array([W - MARGIN_L - MARGIN_R, H - MARGIN_T - MARGIN_B]) / 2
    ax = Axes(centre[0] - half[0], centre[0] + half[0], centre[1] - half[1], centre[1] + half[1])
    img = _canvas("Track and driven path (simulator, from pilot telemetry)")
    _axes(img, ax, "x (m)", "y (m)")
    # fill the larger edge loop with road grey, then clear the inside of the smaller one
    outer, inner = sorted((np.array([ax.px(*p) for p in edge], np.int32) for edge in (left, right)),
                          key=lambda c: -abs(cv2.contourArea(c)))
    cv2.fillPoly(img, [outer], (200, 200, 200))
    cv2.fillPoly(img, [inner], WHITE)
    cv2.polylines(img, [outer], True, GREY, 1, cv2.LINE_AA)
    cv2.polylines(img, [inner], True, GREY, 1, cv2.LINE_AA)
    centre_line = np.array([ax.px(*p) for p in track.points[::10]], np.int32)
    cv2.polylines(img, [centre_line], True, WHITE, 1, cv2.LINE_AA)
    n = len(path)
    for i in range(1, n):
        a, b = ax.px(*path[i - 1]), ax.px(*path[i])
        if abs(a[0] - b[0]) + abs(a[1] - b[1]) > 60:  # a gap in the telemetry: do not draw a chord
            continue
        f = i / max(1, n - 1)
        color = (int(BLUE[0] * (1 - f) + RED[0] * f), int(BLUE[1] * (1 - f) + RED[1] * f),
                 int(BLUE[2] * (1 - f) + RED[2] * f))
        cv2.line(img, a, b, color, 2, cv2.LINE_AA)
    if n:
        cv2.circle(img, ax.px(*path[0]), 6, BLUE, -1, cv2.LINE_AA)
        cv2.circle(img, ax.px(*path[-1]), 6, RED, -1, cv2.LINE_AA)
    for (x, y), label in marks:
        p = ax.px(x, y)
        cv2.drawMarker(img, p, BLACK, cv2.MARKER_DIAMOND, 18, 2, cv2.LINE_AA)
        _text(img, label, (p[0] + 12, p[1] - 10), 0.5, BLACK, 1)
    _text(img, caption, (MARGIN_L, H - MARGIN_B - 10), 0.5)
    _text(img, "start", (W - MARGIN_R - 140, MARGIN_T + 20), 0.5, BLUE, 1)
    _text(img, "end", (W - MARGIN_R - 70, MARGIN_T + 20), 0.5, RED, 1)
    _write(img, out)


def latency_picture(latencies_ms: Sequence[float], out: Path) -> dict[str, float]:
    """Histogram of per-frame latency from the start of a frame's capture to its actuator command
    (the frame's age included), p50 and p99 marked."""
    data = np.asarray(latencies_ms, float)
    img = _canvas(f"Pilot capture-to-actuate latency per frame ({len(data)} frames)")
    figures: dict[str, float] = {"frames": len(data)}
    if len(data) == 0:
        _text(img, "no latency samples were received", (MARGIN_L + 20, H // 2), 0.8, RED, 2)
        _write(img, out)
        return figures
    p50, p99 = float(np.percentile(data, 50)), float(np.percentile(data, 99))
    hi = max(float(np.percentile(data, 99.9)) * 1.1, p99 * 1.2, 1.0)
    counts, edges = np.histogram(np.clip(data, 0, hi), bins=40, range=(0, hi))
    ax = Axes(0, hi, 0, float(counts.max()) * 1.1)
    _axes(img, ax, "latency (ms)", "frames")
    for c, e0, e1 in zip(counts, edges[:-1], edges[1:], strict=True):
        if c:
            cv2.rectangle(img, ax.px(e0, 0), ax.px(e1, c), BLUE, -1)
            cv2.rectangle(img, ax.px(e0, 0), ax.px(e1, c), WHITE, 1)
    for value, name, color in ((p50, "p50", GREEN), (p99, "p99", RED)):
        x = ax.px(value, 0)[0]
        cv2.line(img, (x, MARGIN_T), (x, H - MARGIN_B), color, 2)
        _text(img, f"{name} {value:.1f} ms", (x + 5, MARGIN_T + (18 if name == "p50" else 38)), 0.55, color, 2)
    figures.update({"p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "max_ms": round(float(data.max()), 2)})
    _write(img, out)
    return figures


def queue_picture(samples: Sequence[tuple[float, int]], outage: tuple[float, float] | None, out: Path) -> None:
    """Telemetry queue depth (records waiting on the device) over time; the broker outage shaded."""
    img = _canvas("Telemetry queue depth on the device (edge-agent status)")
    if not samples:
        _text(img, "no queue samples", (MARGIN_L + 20, H // 2), 0.8, RED, 2)
        _write(img, out)
        return
    t = np.array([s[0] for s in samples], float)
    d = np.array([s[1] for s in samples], float)
    ax = Axes(0, max(float(t.max()), 1.0), 0, max(float(d.max()) * 1.15, 5.0))
    if outage:
        a, b = ax.px(outage[0], 0), ax.px(outage[1], ax.y1)
        cv2.rectangle(img, (a[0], b[1]), (b[0], a[1]), (210, 225, 255), -1)
        _text(img, "broker down", (a[0] + 5, MARGIN_T + 20), 0.55, ORANGE, 2)
    _axes(img, ax, "time since the pilot started (s)", "queued records")
    poly = np.array([ax.px(x, y) for x, y in zip(t, d, strict=True)], np.int32)
    cv2.polylines(img, [poly], False, BLUE, 2, cv2.LINE_AA)
    for p in poly:
        cv2.circle(img, tuple(int(v) for v in p), 3, BLUE, -1, cv2.LINE_AA)
    _write(img, out)


def _write(img: np.ndarray, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise RuntimeError(f"could not write {out}")
