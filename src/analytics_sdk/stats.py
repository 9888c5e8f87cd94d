"""The pipeline's own measurements, kept cheap to write and safe to read from a scrape.

Writers are the scheduler (pushes, flushes) and feature calls; the Prometheus collectors
read copies. A reader takes only the small lock of the value it reads, never one the
scheduler holds while it talks to a backend.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

import attrs

__all__ = ["DURATION_BUCKETS", "Histogram", "HistogramSnapshot", "PipelineStats"]

DURATION_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the duration histograms; a last bucket takes the rest."""


@attrs.frozen(kw_only=True)
class HistogramSnapshot:
    """A consistent copy of a histogram: per-bucket counts (not cumulative), sum, count."""

    buckets: tuple[int, ...]
    total: float
    count: int


class Histogram:
    """Counts of observations per bucket, their sum and their number."""

    __slots__ = ("_buckets", "_count", "_lock", "_total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self._total = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        index = bisect_left(DURATION_BUCKETS, value)
        with self._lock:
            self._buckets[index] += 1
            self._total += value
            self._count += 1

    def snapshot(self) -> HistogramSnapshot:
        """Return a consistent copy."""
        with self._lock:
            return HistogramSnapshot(buckets=tuple(self._buckets), total=self._total, count=self._count)


@attrs.define
class PipelineStats:
    """Counters of the scheduler's work (exported to Prometheus)."""

    pushes_ok: int = 0
    pushes_failed: int = 0
    flushes_ok: int = 0
    flushes_failed: int = 0
    counts_pushed: int = 0
    counts_flushed: int = 0
    batches_flushed: int = 0
    last_push_success: float | None = None
    """Wall-clock time of the last push that succeeded."""
    last_flush_success: float | None = None
    """Wall-clock time of the last flush that completed."""
    push_durations: Histogram = attrs.field(factory=Histogram)
    flush_durations: Histogram = attrs.field(factory=Histogram)
