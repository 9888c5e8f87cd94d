"""Exact queries: sink + the store's pending counts + this process's buffer.

The three tiers are read in an order that can lag the truth but never exceed it:

1. the sink's counts;
2. the store's live counters and claimed batches;
3. the sink's ledger, for those claimed batches: a batch committed after step 1 is dropped
   from the pending counts (it is not in step 1 either: a lag, never a double count);
4. this process's buffer and outbox; an outbox the store already applied is skipped.

Time is bucketed by UTC hour; day, week and month periods in other time zones are built from
those hours (in a zone whose offset is not a whole hour, the UTC hour that straddles a
period boundary counts toward the later period).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .aggregator import Aggregator
from .backends.base import CounterStore, Pending, Sink, hourly_of, users_of
from .keys import Properties, day_of, hour_of

__all__ = ["GRANULARITIES", "Granularity", "QueryEngine", "periods", "resolve_tz"]

Granularity = Literal["hour", "day", "week", "month"]
GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")
K = TypeVar("K")


def _add(target: dict[K, int], counts: dict[K, int]) -> None:
    for key, value in counts.items():
        target[key] = target.get(key, 0) + value


class QueryEngine:
    """Merges the three tiers into exact counts."""

    def __init__(self, aggregator: Aggregator, store: CounterStore, sink: Sink) -> None:
        self.aggregator = aggregator
        self.store = store
        self.sink = sink

    def _merge(self, durable: dict[K, int], pending: Pending[K]) -> dict[K, int]:
        out = dict(durable)
        _add(out, pending.live)
        committed = self.sink.applied(pending.claimed) if pending.claimed else set()
        for batch_id, counts in pending.claimed.items():
            if batch_id not in committed:
                _add(out, counts)
        return out

    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        """Return exact counts of ``event`` by hour bucket in ``[start, end)``."""
        durable = self.sink.hourly_counts(event, start, end, properties)
        out = self._merge(durable, self.store.pending_hourly(event, start, end, properties))
        local = self.aggregator.local_counts()
        _add(out, hourly_of(local.buffer.hourly, event, start, end, properties))
        if local.outbox is not None and not self.store.has_push(local.outbox):
            _add(out, hourly_of(local.outbox.delta.hourly, event, start, end, properties))
        return out

    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        """Return exact counts of ``event`` by user over day buckets ``[start, end)``."""
        durable = self.sink.user_counts(event, start, end, user_id)
        out = self._merge(durable, self.store.pending_users(event, start, end, user_id))
        local = self.aggregator.local_counts()
        _add(out, users_of(local.buffer.users, event, start, end, user_id))
        if local.outbox is not None and not self.store.has_push(local.outbox):
            _add(out, users_of(local.outbox.delta.users, event, start, end, user_id))
        return out

    def fleet_totals(self) -> dict[str, int]:
        """Return the all-time count of every event that reached the store or the sink.

        Counts still in some process's buffer are not included (they arrive within a push
        interval); the same read order as the other queries keeps it from exceeding the truth.
        """
        durable = self.sink.event_totals()
        return self._merge(durable, self.store.pending_event_totals())


def resolve_tz(tz: str | tzinfo) -> tzinfo:
    """Return the ``tzinfo`` for an IANA name (``"Europe/Paris"``) or pass one through."""
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str):
        raise TypeError(
            f"tz {tz!r} is of type {type(tz).__name__}; accepted: an IANA name or tzinfo"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"tz {tz!r} is not a known time zone; accepted: an IANA name such as 'UTC' or "
            "'Europe/Paris', or a tzinfo"
        ) from None


def check_day(day: object, name: str = "day") -> date:
    """Return ``day`` if it is a ``date`` (and not a ``datetime``), or raise."""
    if isinstance(day, datetime) or not isinstance(day, date):
        raise TypeError(
            f"{name} {day!r} is of type {type(day).__name__}; accepted: a datetime.date "
            "(use hour= for a datetime)"
        )
    return day


def check_moment(moment: object, name: str) -> datetime:
    """Return ``moment`` if it is an aware ``datetime``, or raise."""
    if not isinstance(moment, datetime):
        raise TypeError(
            f"{name} {moment!r} is of type {type(moment).__name__}; accepted: an aware datetime"
        )
    if moment.utcoffset() is None:
        raise ValueError(f"{name} {moment.isoformat()} is naive; accepted: an aware datetime")
    return moment


def day_hours(day: date) -> tuple[int, int]:
    """Return the hour buckets ``[start, end)`` of a UTC calendar day."""
    start = day_of(day) * 24
    return start, start + 24


def _local(moment: date | datetime, tz: tzinfo, name: str) -> datetime:
    if isinstance(moment, datetime):
        return check_moment(moment, name).astimezone(tz)
    if isinstance(moment, date):
        return datetime.combine(moment, time(0), tzinfo=tz)
    raise TypeError(
        f"{name} {moment!r} is of type {type(moment).__name__}; accepted: a date or an aware datetime"
    )


def _period_start(moment: datetime, granularity: str) -> datetime:
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    elif granularity == "month":
        day = day.replace(day=1)
    return datetime.combine(day, time(0), tzinfo=moment.tzinfo)


def _next_period(start: datetime, granularity: str) -> datetime:
    tz = start.tzinfo
    if granularity == "hour":
        # Step in UTC so that hours repeated or skipped by a DST change are handled.
        utc = start.astimezone(ZoneInfo("UTC")) + timedelta(hours=1)
        return utc.astimezone(tz)
    day = start.date()
    if granularity == "day":
        day += timedelta(days=1)
    elif granularity == "week":
        day += timedelta(days=7)
    else:
        day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return datetime.combine(day, time(0), tzinfo=tz)


def periods(
    start: date | datetime, end: date | datetime, granularity: str, tz: tzinfo
) -> Iterator[tuple[datetime, int, int]]:
    """Yield ``(period start, first hour bucket, end hour bucket)`` for every period from
    the one containing ``start`` to the one containing ``end``, both included."""
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity {granularity!r} is not accepted; accepted: {', '.join(GRANULARITIES)}"
        )
    first = _period_start(_local(start, tz, "start"), granularity)
    last = _period_start(_local(end, tz, "end"), granularity)
    if hour_of(first) > hour_of(last):
        raise ValueError(
            f"start {first.isoformat()} is after end {last.isoformat()}; accepted: start <= end"
        )
    current, last_hour = first, hour_of(last)
    while hour_of(current) <= last_hour:
        following = _next_period(current, granularity)
        yield current, hour_of(current), hour_of(following)
        current = following
