"""Known counts for the dashboard's tests: a Redis store and a PostgreSQL sink filled with
events at chosen hours, most flushed, a few still pending in the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone

import attrs

from analytics_sdk import Analytics
from analytics_sdk.testing import ManualClock

from .utils import redis_and_postgres

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=timezone.utc)
TODAY = NOW.date()
SCRIPT_EVENT = "<script>alert(1)</script>"
SCRIPT_USER = "<img src=x onerror=alert(2)>"


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


@attrs.frozen(kw_only=True)
class Known:
    """What was tracked, and a client reading it."""

    client: Analytics
    store: str
    sink: str
    clock: ManualClock
    page_views_by_day: dict[date, int]
    """UTC day -> page views (flushed and pending)."""


def fill(store: str, sink: str, clock: ManualClock) -> dict[date, int]:
    """Track the known counts; return page views by UTC day."""
    by_day: dict[date, int] = {}
    with Analytics(store=store, sink=sink, clock=clock, background=False) as writer:
        # page_view: on each of the last 10 days at 10:00 UTC, k + 1 views (k days ago).
        for k in range(10):
            day = TODAY - timedelta(days=k)
            writer.track(
                "page_view",
                user_id=f"u{k % 3}",
                properties={"path": "/a" if k % 2 == 0 else "/b"},
                value=k + 1,
                timestamp=at(day, 10),
            )
            by_day[day] = by_day.get(day, 0) + k + 1
        # Today 02:00 UTC is yesterday 18:00 in Los Angeles: time zones move it.
        writer.track(
            "page_view", user_id="u9", properties={"path": "/c"}, value=5, timestamp=at(TODAY, 2)
        )
        by_day[TODAY] += 5
        writer.track("signup", user_id="u1", value=2, timestamp=at(TODAY, 9))
        for feature, outcome, n in (
            ("export", "ok", 7),
            ("export", "error", 2),
            ("checkout", "ok", 4),
        ):
            writer.track(
                "feature_used",
                user_id="u2",
                properties={"feature": feature, "outcome": outcome},
                value=n,
                timestamp=at(TODAY, 11),
            )
        writer.track(SCRIPT_EVENT, user_id=SCRIPT_USER, value=3, timestamp=at(TODAY, 12))
        assert writer.flush(timeout=30).complete
    # Pushed to the store, not flushed: the pages count them, the health shows them pending.
    with Analytics(store=store, sink=sink, clock=clock, background=False, flusher=False) as app:
        app.track(
            "page_view", user_id="u0", properties={"path": "/a"}, value=4, timestamp=at(TODAY, 14)
        )
        by_day[TODAY] += 4
        app.flush(timeout=30)
    return by_day


@contextmanager
def known_data(tag: str = "dash") -> Iterator[Known]:
    """Yield the known counts in a private Redis prefix and PostgreSQL schema."""
    clock = ManualClock(NOW)
    with redis_and_postgres(tag) as (store, sink):
        by_day = fill(store, sink, clock)
        with Analytics(
            store=store, sink=sink, clock=clock, background=False, flusher=False
        ) as reader:
            yield Known(
                client=reader, store=store, sink=sink, clock=clock, page_views_by_day=by_day
            )
