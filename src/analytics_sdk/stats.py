"""The pipeline's own measurements, kept cheap to write and safe to read from a scrape.

Writers are the scheduler (pushes, flushes) and feature calls; the Prometheus collectors
read copies. A reader takes only the small lock of the value it reads, never one the
scheduler holds while it talks to a backend.
"""

from __future__ import annotations

import threading
from bisect import bisect_left

import attrs

from .backends.base import Delta

__all__ = [
    "DURATION_BUCKETS",
    "OVERFLOW_FEATURE",
    "EventTotals",
    "FeatureStats",
    "Histogram",
    "HistogramSnapshot",
    "PipelineStats",
]

DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
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
            return HistogramSnapshot(
                buckets=tuple(self._buckets), total=self._total, count=self._count
            )


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
    last_flush_round: float | None = None
    """Wall-clock time of the last flush that tried every batch it could and committed some,
    even if others failed: the flusher is alive, though a batch may be stuck."""
    push_durations: Histogram = attrs.field(factory=Histogram)
    flush_durations: Histogram = attrs.field(factory=Histogram)


class EventTotals:
    """Events tracked in this process, per event (and allowlisted property labels).

    Counted when the scheduler drains the buffer, so ``track()`` pays nothing for it; the
    totals lag the buffer by at most one push interval. Bounded by what the buffer admits:
    at most ``max_event_names + 1`` events, each with at most ``max_property_sets + 1``
    label values.
    """

    def __init__(self, labels: tuple[str, ...] = ()) -> None:
        self.labels = labels
        self.reset()

    def reset(self) -> None:
        """Start from zero with a fresh lock (a forked child is a new process)."""
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, tuple[str, ...]], int] = {}

    def account(self, delta: Delta) -> None:
        """Add a drained delta."""
        labels = self.labels
        with self._lock:
            totals = self._totals
            for (event, properties, _hour), value in delta.hourly.items():
                if labels:
                    values = dict(properties)
                    key = (event, tuple(values.get(name, "") for name in labels))
                else:
                    key = (event, ())
                totals[key] = totals.get(key, 0) + value

    def snapshot(self) -> dict[tuple[str, tuple[str, ...]], int]:
        """Return a copy of the totals."""
        with self._lock:
            return dict(self._totals)


OVERFLOW_FEATURE = "(overflow)"
"""The feature label of calls of features beyond ``max_features``."""


class FeatureStats:
    """Calls of each feature by outcome, and their durations, for at most ``max_features``
    feature names; calls of further ones are counted under ``"(overflow)"``."""

    def __init__(self, max_features: int = 1_000) -> None:
        self.max_features = max_features
        self.reset()

    def reset(self) -> None:
        """Start from zero with a fresh lock (a forked child is a new process)."""
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, str], int] = {}
        self._durations: dict[str, Histogram] = {}

    def observe(self, feature: str, ok: bool, duration: float) -> None:
        """Record one call of ``feature``."""
        with self._lock:
            histogram = self._durations.get(feature)
            if histogram is None:
                if len(self._durations) >= self.max_features:
                    feature = OVERFLOW_FEATURE
                    histogram = self._durations.get(feature)
                if histogram is None:
                    histogram = self._durations[feature] = Histogram()
            key = (feature, "ok" if ok else "error")
            self._calls[key] = self._calls.get(key, 0) + 1
        histogram.observe(duration)

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, HistogramSnapshot]]:
        """Return copies of the call counts and the duration histograms."""
        with self._lock:
            calls = dict(self._calls)
            histograms = dict(self._durations)
        return calls, {feature: h.snapshot() for feature, h in histograms.items()}
