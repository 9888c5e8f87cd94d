"""SVG charts rendered on the server: sparklines, bar charts and line charts.

Every text that reaches the SVG (labels, titles) is escaped; numbers are formatted here.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["PALETTE", "bars", "lines", "sparkline"]

PALETTE = (
    "#2563eb",
    "#f97316",
    "#16a34a",
    "#dc2626",
    "#9333ea",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
    "#7c3aed",
    "#0d9488",
)


def _scale(peak: int, height: float) -> float:
    return height / peak if peak > 0 else 0.0


def sparkline(
    values: Sequence[int], width: int = 120, height: int = 24, color: str = PALETTE[0]
) -> str:
    """Return a small SVG line of ``values`` scaled to the largest, with an accessible label."""
    n = len(values)
    peak = max(values, default=0)
    k = _scale(peak, height - 2)
    step = width / max(n - 1, 1)
    points = " ".join(f"{i * step:.1f},{height - 1 - v * k:.1f}" for i, v in enumerate(values))
    label = escape(f"{n} values, peak {peak:,}, last {values[-1] if values else 0:,}")
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><polyline fill="none" stroke="{color}" '
        f'stroke-width="1.5" points="{points}"/></svg>'
    )


def _axis(peak: int, width: int, top: int, bottom: int, left: int) -> str:
    mid = (top + bottom) / 2
    half = f"{peak // 2:,}" if peak % 2 == 0 else f"{peak / 2:,.1f}"
    return (
        f'<line class="axis" x1="{left}" y1="{bottom}" x2="{width}" y2="{bottom}"/>'
        f'<line class="grid" x1="{left}" y1="{top}" x2="{width}" y2="{top}"/>'
        f'<line class="grid" x1="{left}" y1="{mid}" x2="{width}" y2="{mid}"/>'
        f'<text class="tick" x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:,}</text>'
        f'<text class="tick" x="{left - 4}" y="{mid + 4}" text-anchor="end">{half}</text>'
        f'<text class="tick" x="{left - 4}" y="{bottom + 4}" text-anchor="end">0</text>'
    )


def _x_labels(labels: Sequence[str], x_of: list[float], bottom: int) -> str:
    """Up to 8 evenly spaced period labels under the axis."""
    n = len(labels)
    if not n:
        return ""
    every = max(1, -(-n // 8))
    return "".join(
        f'<text class="tick" x="{x_of[i]:.1f}" y="{bottom + 16}" text-anchor="middle">'
        f"{escape(labels[i])}</text>"
        for i in range(0, n, every)
    )


def bars(
    labels: Sequence[str], values: Sequence[int], *, width: int = 900, height: int = 240, title: str
) -> str:
    """Return an SVG bar chart, one bar per period (its label and count in a tooltip)."""
    left, top, bottom = 56, 10, height - 24
    peak = max(values, default=0)
    k = _scale(peak, bottom - top)
    n = max(len(values), 1)
    slot = (width - left) / n
    gap = min(2.0, slot * 0.2)
    out, centers = [], []
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        h = v * k
        x = left + i * slot
        centers.append(x + slot / 2)
        out.append(
            f'<rect class="bar" x="{x + gap / 2:.1f}" y="{bottom - h:.1f}" '
            f'width="{max(slot - gap, 0.5):.1f}" height="{h:.1f}"><title>'
            f"{escape(label)}: {v:,}</title></rect>"
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">{_axis(peak, width, top, bottom, left)}{"".join(out)}'
        f"{_x_labels(labels, centers, bottom)}</svg>"
    )


def lines(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    width: int = 900,
    height: int = 240,
    title: str,
) -> str:
    """Return an SVG line chart of several named series over the same periods."""
    left, top, bottom = 56, 10, height - 24
    peak = max((max(values, default=0) for _, values in series), default=0)
    k = _scale(peak, bottom - top)
    n = len(labels)
    step = (width - left) / max(n - 1, 1)
    xs = [left + i * step for i in range(n)]
    out = []
    for j, (name, values) in enumerate(series):
        color = PALETTE[j % len(PALETTE)]
        points = " ".join(f"{xs[i]:.1f},{bottom - v * k:.1f}" for i, v in enumerate(values))
        out.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}">'
            f"<title>{escape(name)}</title></polyline>"
        )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">{_axis(peak, width, top, bottom, left)}{"".join(out)}'
        f"{_x_labels(labels, xs, bottom)}</svg>"
    )
