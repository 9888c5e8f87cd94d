"""Text charts for terminal reports: bars and sparklines."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["bar", "sparkline"]


def bar(value: int, peak: int, width: int = 40) -> str:
    """Return a horizontal bar of ``value`` against ``peak``, ``width`` cells at most."""
    if peak <= 0:
        return ""
    eighths = round(value / peak * width * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int]) -> str:
    """Return one block character per value, scaled to the largest."""
    peak = max(values, default=0)
    if peak <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(7, round(v / peak * 7))] for v in values)
