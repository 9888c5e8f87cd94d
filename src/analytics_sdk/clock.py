"""Time, injectable: the scheduler and event timestamps read it through a :class:`Clock`.

Tests pass :class:`analytics_sdk.testing.ManualClock` and move time by hand, so nothing waits
on a real timer.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Clock", "SystemClock"]


class Clock:
    """Wall time for event timestamps, monotonic time and sleeping for the scheduler."""

    def time(self) -> float:
        """Return the wall-clock time in Unix seconds."""
        return time.time()

    def monotonic(self) -> float:
        """Return a monotonic time in seconds, for intervals and deadlines."""
        return time.monotonic()

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        """Return after ``seconds``, or earlier once ``wake`` is set."""
        wake.wait(max(0.0, seconds))

    def interrupt(self) -> None:
        """Make a thread in :meth:`sleep` re-check its ``wake`` event."""

    def attach(self) -> None:
        """Register the calling thread as one that sleeps on this clock."""

    def detach(self) -> None:
        """Undo :meth:`attach` for the calling thread."""


class SystemClock(Clock):
    """The real clock: ``time.time``, ``time.monotonic`` and real sleeps."""

    # The hot path reads the bound attribute directly; the builtin avoids a method frame.
    time = staticmethod(time.time)
