"""The dashboard's charts as SVG, drawn on the server (pure functions returning markup).

Every chart has its title, axes with tick values, axis labels with units, and a legend; every
text in it (device names, group names, version labels) is escaped here, since it may come from
a device. Colours are presentation attributes, never `style`, so the page's Content-Security-
Policy can refuse inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from edgectl.compare import Comparison

PALETTE = ("#1f6fb4", "#e8710a", "#2e8b3d", "#c0392b", "#8e44ad", "#7f7f7f")
INK, GRID, MUTED = "#222", "#ddd", "#777"


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    colour: str = PALETTE[0]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 times a power of ten apart), the first at or below `lo`, the
    last at or above `hi`: an axis from the first to the last holds every value."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo <= 1e-9 * max(1.0, abs(lo), abs(hi)):  # (nearly) one value: a unit around it
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    last = math.ceil(hi / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(round((last - first) / step) + 1)]


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _text(x: float, y: float, text: object, *, size: int = 12, anchor: str = "start", fill: str = INK,
          weight: str = "normal", css: str = "") -> str:
    klass = f' class="{escape(css)}"' if css else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}"{klass}>{escape(str(text))}</text>')


def _frame(width: int, height: int, title: str, label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" aria-label="{escape(label)}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        _text(10, 18, title, size=14, weight="bold"),
    ]


def line_chart(
    title: str, series: Sequence[Series], *, x_label: str, y_label: str, width: int = 560, height: int = 240,
    empty: str = "no data yet",
) -> Markup:
    """Lines over a shared x axis (e.g. seconds relative to now), with a legend of the series."""
    left, right, top, bottom = 58, 14, 48, 40
    out = _frame(width, height, title, f"{title}: {y_label} over {x_label}")
    points = [p for s in series for p in s.points]
    legend_x = left
    for s in series:
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<line x1="{legend_x}" y1="34" x2="{legend_x + 18}" y2="34" stroke="{s.colour}" '
                   f'stroke-width="3"{dash}/>')
        out.append(_text(legend_x + 22, 38, s.name, size=11, css="legend"))
        legend_x += 30 + 7 * len(s.name)
    plot_w, plot_h = width - left - right, height - top - bottom
    if not points:
        out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="{GRID}"/>')
        out.append(_text(left + plot_w / 2, top + plot_h / 2, empty, anchor="middle", fill=MUTED))
        out.append("</svg>")
        return Markup("".join(out))  # noqa: S704 - every text above went through escape()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y_lo, y_hi = min(0.0, min(ys)), max(ys)
    yt = nice_ticks(y_lo, y_hi if y_hi > y_lo else y_lo + 1)
    y0, y1 = yt[0], yt[-1] if yt[-1] > yt[0] else yt[0] + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    for t in yt:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" stroke="{GRID}"/>')
        out.append(_text(left - 6, py(t) + 4, _num(t), size=11, anchor="end", fill=MUTED))
    for t in nice_ticks(x0, x1, 6):
        if x0 - 1e-9 <= t <= x1 + 1e-9:
            out.append(f'<line x1="{px(t):.1f}" y1="{top + plot_h}" x2="{px(t):.1f}" y2="{top + plot_h + 4}" '
                       f'stroke="{MUTED}"/>')
            out.append(_text(px(t), top + plot_h + 16, _num(t), size=11, anchor="middle", fill=MUTED))
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="{MUTED}"/>')
    for s in series:
        if not s.points:
            continue
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<polyline points="{coords}" fill="none" stroke="{s.colour}" stroke-width="2"{dash}/>')
    out.append(_text(left + plot_w / 2, height - 6, x_label, size=12, anchor="middle"))
    out.append(f'<text x="14" y="{top + plot_h / 2:.1f}" font-size="12" text-anchor="middle" fill="{INK}" '
               f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_label)}</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text above went through escape()


def path_chart(path: Sequence[tuple[float, float]], *, title: str = "Driven path (simulator)",
               size: int = 360) -> Markup:
    """The car's positions on an equal-scale x/y plot in metres, start and end marked."""
    left, right, top, bottom = 50, 14, 48, 40
    out = _frame(size + left + right - 40, size + top + bottom - 40, title, title)
    plot = size - 40
    out.append(f'<circle cx="{left + 4}" cy="32" r="5" fill="{PALETTE[0]}"/>')
    out.append(_text(left + 14, 36, "start", size=11))
    out.append(f'<circle cx="{left + 64}" cy="32" r="5" fill="{PALETTE[3]}"/>')
    out.append(_text(left + 74, 36, "end (now)", size=11))
    if not path:
        out.append(f'<rect x="{left}" y="{top}" width="{plot}" height="{plot}" fill="none" stroke="{GRID}"/>')
        out.append(_text(left + plot / 2, top + plot / 2, "no path reported", anchor="middle", fill=MUTED))
        out.append("</svg>")
        return Markup("".join(out))  # noqa: S704 - every text above went through escape()
    xs, ys = [p[0] for p in path], [p[1] for p in path]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 0.5) * 1.1
    cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    ticks = nice_ticks(cx - span / 2, cx + span / 2, 4)
    x0, x1 = cx - span / 2, cx + span / 2
    y0, y1 = cy - span / 2, cy + span / 2

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot

    def py(y: float) -> float:
        return top + plot - (y - y0) / (y1 - y0) * plot

    out.append(f'<rect x="{left}" y="{top}" width="{plot}" height="{plot}" fill="none" stroke="{MUTED}"/>')
    for t in ticks:
        if x0 <= t <= x1:
            out.append(_text(px(t), top + plot + 16, _num(t), size=11, anchor="middle", fill=MUTED))
    for t in nice_ticks(y0, y1, 4):
        if y0 <= t <= y1:
            out.append(_text(left - 6, py(t) + 4, _num(t), size=11, anchor="end", fill=MUTED))
    coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in path)
    out.append(f'<polyline points="{coords}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    out.append(f'<circle cx="{px(path[0][0]):.1f}" cy="{py(path[0][1]):.1f}" r="5" fill="{PALETTE[0]}"/>')
    out.append(f'<circle cx="{px(path[-1][0]):.1f}" cy="{py(path[-1][1]):.1f}" r="5" fill="{PALETTE[3]}"/>')
    out.append(_text(left + plot / 2, top + plot + 32, "x (m)", anchor="middle"))
    out.append(f'<text x="14" y="{top + plot / 2:.1f}" font-size="12" text-anchor="middle" fill="{INK}" '
               f'transform="rotate(-90 14 {top + plot / 2:.1f})">y (m)</text>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text above went through escape()


def compare_bars(comparison: Comparison, *, panel_w: int = 300, panel_h: int = 190) -> list[Markup]:
    """One small bar chart per metric row of `edgectl compare`: one bar per (group, version)
    column, its value written above it, the columns named in the legend."""
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(dict.fromkeys(c.group for c in comparison.columns))}
    charts = []
    n = max(1, len(comparison.columns))
    legend_h = 16 * len(comparison.columns)
    for row in comparison.rows:
        height = panel_h + legend_h
        out = _frame(panel_w, height, row.label, f"{row.label} per group and version")
        for i, column in enumerate(comparison.columns):
            y = 34 + 16 * i
            out.append(f'<rect x="10" y="{y - 9}" width="12" height="10" fill="{colours[column.group]}"/>')
            out.append(_text(28, y, f"{column.title} ({len(column.devices)} devices, {column.records} records)",
                             size=11, css="legend"))
        top, base = 40 + legend_h, height - 24
        values = [v for v in row.values if v is not None]
        peak = max((abs(v) for v in values), default=0.0) or 1.0
        out.append(f'<line x1="10" y1="{base}" x2="{panel_w - 10}" y2="{base}" stroke="{MUTED}"/>')
        slot = (panel_w - 20) / n
        for i, value in enumerate(row.values):
            cx0 = 10 + i * slot + slot * 0.2
            out.append(_text(cx0 + slot * 0.3, base + 14, comparison.columns[i].title, size=10, anchor="middle",
                             fill=MUTED))
            if value is None:
                out.append(_text(cx0 + slot * 0.3, base - 6, "no data", size=11, anchor="middle", fill=MUTED))
                continue
            bar_h = abs(value) / peak * (base - top - 14)
            out.append(f'<rect x="{cx0:.1f}" y="{base - bar_h:.1f}" width="{slot * 0.6:.1f}" height="{bar_h:.1f}" '
                       f'fill="{colours[comparison.columns[i].group]}"/>')
            out.append(_text(cx0 + slot * 0.3, base - bar_h - 4, _num(value), size=11, anchor="middle"))
        out.append("</svg>")
        charts.append(Markup("".join(out)))  # noqa: S704 - every text above went through escape()
    return charts
