"""The A/B comparison as a PNG, drawn with OpenCV (as quickstart/pictures.py draws its charts; no
plotting library): one small bar chart per metric row, one bar per (group, version) column, the
value written above each bar. Imported only when `edgectl compare --png` is asked for, so edgectl
itself does not need OpenCV.
"""

from __future__ import annotations

import math
from pathlib import Path

from edgectl.compare import Comparison

PANEL_W, PANEL_H = 480, 210
PANELS_PER_LINE = 2
TOP, LEGEND_LINE, GAP = 60, 24, 20
# BGR; one colour per group, in column order.
PALETTE = [(200, 110, 30), (0, 140, 255), (60, 160, 60), (40, 40, 210), (150, 80, 150), (120, 120, 120)]
WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (30, 30, 30), (150, 150, 150), (225, 225, 225)


def chart_size(comparison: Comparison) -> tuple[int, int]:
    """(width, height) in pixels of the picture `draw_chart` makes."""
    lines = max(1, math.ceil(len(comparison.rows) / PANELS_PER_LINE))
    width = GAP + PANELS_PER_LINE * (PANEL_W + GAP)
    height = TOP + LEGEND_LINE * len(comparison.columns) + GAP + lines * (PANEL_H + GAP)
    return width, height


def group_colours(comparison: Comparison) -> dict[str, tuple[int, int, int]]:
    groups = list(dict.fromkeys(c.group for c in comparison.columns))
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}


def draw_chart(comparison: Comparison, out: Path, title: str) -> tuple[int, int]:
    """Write the PNG; returns its (width, height)."""
    try:
        import cv2
        import numpy as np
    except ImportError as exc:
        raise RuntimeError(
            f"--png needs OpenCV and numpy ({exc}); install opencv-python-headless (the pilot module has it)"
        ) from None

    font = cv2.FONT_HERSHEY_SIMPLEX
    width, height = chart_size(comparison)
    img = np.full((height, width, 3), 255, np.uint8)

    def text(
        s: str, org: tuple[int, int], scale: float = 0.45, colour: tuple[int, int, int] = BLACK, thick: int = 1
    ) -> None:
        cv2.putText(img, s, org, font, scale, colour, thick, cv2.LINE_AA)

    text(title, (GAP, 36), 0.75, BLACK, 2)
    colours = group_colours(comparison)
    # Bars of one version of a group are shaded lighter for each further version.
    shade: dict[int, float] = {}
    seen_in_group: dict[str, int] = {}
    for i, c in enumerate(comparison.columns):
        k = seen_in_group.get(c.group, 0)
        seen_in_group[c.group] = k + 1
        shade[i] = 1.0 - 0.3 * min(k, 2)
    fills = [
        tuple(int(255 - (255 - ch) * shade[i]) for ch in colours[c.group]) for i, c in enumerate(comparison.columns)
    ]
    for i, c in enumerate(comparison.columns):
        y = TOP + i * LEGEND_LINE
        cv2.rectangle(img, (GAP, y - 12), (GAP + 16, y + 2), fills[i], -1)
        text(f"{c.title}: {len(c.devices)} devices, {c.records} records", (GAP + 24, y), 0.5)
    top = TOP + LEGEND_LINE * len(comparison.columns) + GAP
    n = len(comparison.columns)
    for r, row in enumerate(comparison.rows):
        x0 = GAP + (r % PANELS_PER_LINE) * (PANEL_W + GAP)
        y0 = top + (r // PANELS_PER_LINE) * (PANEL_H + GAP)
        cv2.rectangle(img, (x0, y0), (x0 + PANEL_W, y0 + PANEL_H), LIGHT, 1)
        text(row.label, (x0 + 8, y0 + 20), 0.55, BLACK, 1)
        base = y0 + PANEL_H - 28
        plot_top = y0 + 48
        values = [v for v in row.values if v is not None]
        peak = max((abs(v) for v in values), default=0.0) or 1.0
        cv2.line(img, (x0 + 8, base), (x0 + PANEL_W - 8, base), GREY, 1)
        slot = (PANEL_W - 16) / max(1, n)
        for i, value in enumerate(row.values):
            cx0 = int(x0 + 8 + i * slot + slot * 0.2)
            cx1 = int(x0 + 8 + (i + 1) * slot - slot * 0.2)
            text(comparison.columns[i].title, (cx0, base + 18), 0.4, GREY)
            if value is None:
                text("no data", (cx0, base - 6), 0.45, GREY)
                continue
            top_y = int(base - (abs(value) / peak) * (base - plot_top))
            cv2.rectangle(img, (cx0, min(top_y, base - 1)), (cx1, base), fills[i], -1)
            label = f"{value:.3g}" if value != int(value) else str(int(value))
            text(label, (cx0, max(plot_top - 6, top_y - 6)), 0.5, BLACK, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise RuntimeError(f"cannot write {out}")
    return width, height
