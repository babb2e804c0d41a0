"""Charts drawn as SVG on the server: no JavaScript, nothing loaded from elsewhere.

A line chart places one point per snapshot at its window's start on a fixed time axis
(72 hours or 30 days), so a missing window shows as a gap, not as a squeezed axis.
Every point is a ``<circle class="point">`` carrying its series, window and value as
data attributes (and a tooltip), which is also what the browser test counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28
COLORS = ("#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2")


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    points: Sequence[tuple[datetime, float]]


def _nice_max(value: float) -> float:
    """A round upper bound of the y axis at or above VALUE (1 for an all-zero chart)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def line_chart(
    chart_id: str,
    series: Sequence[Series],
    start: datetime,
    end: datetime,
    fmt: Callable[[float], str],
    x_label: Callable[[datetime], str],
    api: str,
) -> Markup:
    """An SVG line chart of SERIES over [start, end); FMT formats values, X_LABEL axis ticks."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = (end - start).total_seconds() or 1.0
    top = _nice_max(max((v for s in series for _, v in s.points), default=0.0))

    def x(ts: datetime) -> float:
        return LEFT + plot_w * (ts - start).total_seconds() / span

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    out = [
        (f'<svg class="chart" id="{escape(chart_id)}" data-api="{escape(api)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" role="img" xmlns="http://www.w3.org/2000/svg">')
    ]
    for i in range(5):  # horizontal grid lines and y labels
        value = top * i / 4
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        out.append(f'<text class="tick" x="{LEFT - 4}" y="{y(value) + 4:.1f}" text-anchor="end">'
                   f"{escape(fmt(value))}</text>")
    for i in range(5):  # time ticks; the outer ones anchored inside the plot
        ts = start + (end - start) * i / 4
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(f'<text class="tick" x="{x(ts):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                   f"{escape(x_label(ts))}</text>")
    for n, s in enumerate(series):
        color = COLORS[n % len(COLORS)]
        pts = sorted(s.points)
        if len(pts) > 1:
            path = " ".join(f"{x(ts):.1f},{y(v):.1f}" for ts, v in pts)
            out.append(f'<polyline class="line" data-series="{escape(s.key)}" points="{path}" '
                       f'fill="none" stroke="{color}" stroke-width="1.5"/>')
        for ts, v in pts:
            out.append(
                f'<circle class="point" data-series="{escape(s.key)}" data-x="{ts.isoformat()}" '
                f'data-value="{v!r}" cx="{x(ts):.1f}" cy="{y(v):.1f}" r="2.2" fill="{color}">'
                f"<title>{escape(s.label)} {escape(x_label(ts))}: {escape(fmt(v))}</title></circle>"
            )
    out.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{COLORS[n % len(COLORS)]}"></i>{escape(s.label)}</span>'
        for n, s in enumerate(series)
    )
    return Markup(f'<div class="legend">{legend}</div>' + "".join(out))


def bar_chart(chart_id: str, bars: Sequence[tuple[str, float]], fmt: Callable[[float], str], api: str) -> Markup:
    """Horizontal bars, one per (label, value)."""
    row_h, label_w, value_w = 22, 150, 90
    height = max(1, len(bars)) * row_h + 4
    top = max((v for _, v in bars), default=0.0) or 1.0
    plot_w = WIDTH - label_w - value_w
    out = [
        (f'<svg class="chart bars" id="{escape(chart_id)}" data-api="{escape(api)}" viewBox="0 0 {WIDTH} {height}" '
        f'width="100%" role="img" xmlns="http://www.w3.org/2000/svg">')
    ]
    for i, (label, value) in enumerate(bars):
        y0 = 2 + i * row_h
        w = plot_w * value / top
        out.append(f'<text class="tick" x="{label_w - 6}" y="{y0 + 15}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect class="bar" data-label="{escape(label)}" data-value="{value!r}" x="{label_w}" '
                   f'y="{y0 + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{COLORS[0]}">'
                   f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>")
        out.append(f'<text class="tick" x="{label_w + w + 6:.1f}" y="{y0 + 15}">{escape(fmt(value))}</text>')
    out.append("</svg>")
    return Markup("".join(out))
