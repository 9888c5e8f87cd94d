"""Exact queries: sink + the store's pending counts + this process's buffer.

A count travels buffer -> outbox (a push in flight) -> store live -> claimed -> applied but
not acknowledged -> acknowledged, and other processes move counts along this path while a
query reads. A query returns, for each key, every count that was readable when it started,
once, and counts that arrived meanwhile at most once: it never exceeds the truth and never
goes backwards. How (``docs/concepts.md`` tells the same with the reasons):

1. enter a sink :meth:`~analytics_sdk.backends.base.Sink.snapshot`, which marks its
   ledger's commit order now;
2. with this process's pushes held (``track()`` never waits), copy the buffer and outbox,
   then read the store (live counters and claimed batches, consistently per shard). The outbox
   counts here unless the store had applied it before the read;
3. read the sink in the snapshot (taken now): its counts, and which of the claimed batches
   its ledger holds (those are in its counts, so their pending counts are skipped);
4. if a batch the store read did not show as claimed committed after step 1, it may hold
   counts the store read saw live (or a push made after step 2): read again. After
   ``attempts`` reads, read once behind the sink's fence, under which nothing commits.

A query first tries the sink alone (:meth:`QueryEngine._read_quiet`): if neither this
process nor the store holds a count of what it asks, the sink is read once, without the mark,
the snapshot or the check, which then have nothing to guard.

Reading the store before the sink is what makes a count that moves during the read seen
rather than missed; the ledger tells the one case where it could be seen twice.

Time is bucketed by UTC hour; day, week and month periods in other time zones are built from
those hours (in a zone whose offset is not a whole hour, the UTC hour that straddles a
period boundary counts toward the later period).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import nullcontext
from datetime import date, datetime, time, timedelta, tzinfo
from itertools import pairwise
from typing import Generic, Literal, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from .aggregator import Aggregator
from .backends.base import (
    CounterStore,
    Delta,
    NotOneStatement,
    Pending,
    PropertyValue,
    Retention,
    Sink,
    SinkSnapshot,
    UserDay,
    group_user_days_of,
    groups_of,
    hourly_of,
    periods_of,
    property_hours_of,
    range_index,
    rank_values,
    tally_retention,
    user_days_of,
    users_of,
)
from .errors import BackendError
from .events import MIN_TIMESTAMP
from .keys import Properties, day_of, hour_of

__all__ = [
    "DAY_GRANULARITIES",
    "FIRST_DAY",
    "GRANULARITIES",
    "LAST_DAY",
    "MAX_PERIODS",
    "MAX_RETENTION_PERIODS",
    "MAX_VALUES",
    "READ_ATTEMPTS",
    "Cohort",
    "Granularity",
    "QueryEngine",
    "day_periods",
    "periods",
    "resolve_tz",
]

Granularity = Literal["hour", "day", "week", "month"]
GRANULARITIES: tuple[str, ...] = ("hour", "day", "week", "month")
MAX_VALUES = 1_000
"""The most values one breakdown or top_values lists on their own (``limit``)."""
MAX_PERIODS = 10_000
"""The most periods one series returns: a year by hour (8,784), 27 years by day."""
FIRST_DAY = MIN_TIMESTAMP.date()
"""The earliest day a query accepts: the earliest event time ``track()`` accepts."""
LAST_DAY = date(9998, 12, 31)
"""The latest day a query accepts (the period after it must still be a valid date)."""
MAX_RETENTION_PERIODS = 366
"""The most periods after its start that retention follows a cohort (``periods``)."""
DAY_GRANULARITIES: tuple[str, ...] = ("day", "week", "month")
"""Granularities of the queries of users' activity, which is kept by UTC day."""
READ_ATTEMPTS = 4
"""Reads a query makes before it reads behind the sink's fence (which always succeeds)."""
QUIET_SKIPS = 8
"""Queries that read the usual way, after one found counts pending or buffered, before the
next tries the sink alone again (a miss costs a read of the buffer and store)."""
K = TypeVar("K")


class Cohort(NamedTuple):
    """One row of :meth:`~analytics_sdk.Analytics.retention`."""

    start: datetime
    """The start of the cohort's period (midnight in the query's time zone)."""
    size: int
    """The users whose first day with the cohort event is in this period."""
    retained: list[int]
    """``retained[k]``: how many of them did the return event in the ``k``-th period from
    this one (``k = 0``: this period itself)."""


def _add(target: dict[K, int], counts: dict[K, int]) -> None:
    for key, value in counts.items():
        target[key] = target.get(key, 0) + value


def _value_periods(
    counts: dict[tuple[PropertyValue, int], int], bounds: Sequence[int | None]
) -> dict[tuple[PropertyValue, int], int]:
    """Sum counts by (value, hour) into (value, period), as :func:`periods_of` does."""
    starts = [b for b in bounds[1:-1] if b is not None]
    out: dict[tuple[PropertyValue, int], int] = {}
    for (value, hour), n in counts.items():
        key = (value, bisect_right(starts, hour))
        out[key] = out.get(key, 0) + n
    return out


@attrs.frozen(kw_only=True)
class _Read(Generic[K]):
    """One query's reads of each tier, by the same keys."""

    pending: Callable[[], Pending[K]]
    durable: Callable[[SinkSnapshot], dict[K, int]]
    local: Callable[[Delta], dict[K, int]] | None
    """Counts of a buffer or outbox; None: this process's buffer is not read."""


class QueryEngine:
    """Merges the three tiers into exact counts that never go backwards."""

    def __init__(
        self,
        aggregator: Aggregator,
        store: CounterStore,
        sink: Sink,
    ) -> None:
        self.aggregator = aggregator
        self.store = store
        self.sink = sink
        self.attempts = READ_ATTEMPTS
        self.retries = 0
        """Reads started again because a batch committed under them."""
        self.fenced = 0
        """Queries that read behind the sink's fence after ``attempts`` reads."""
        self.quiet_first = True
        """Whether a query first tries to answer from the sink alone (:meth:`_read_quiet`)."""
        self.quiet = 0
        """Queries answered from the sink alone (nothing pending or buffered)."""
        self._skip_quiet = 0
        self.on_error: Callable[[BaseException, str], None] | None = None
        """Told of each read that failed (``on_error(exc, "query")``), before it raises."""

    def _read(self, read: _Read[K]) -> dict[K, int]:
        try:
            return self._read_tiers(read)
        except BackendError as exc:
            if self.on_error is not None:
                self.on_error(exc, "query")
            raise

    def _read_tiers(self, read: _Read[K]) -> dict[K, int]:
        if self.quiet_first and self._skip_quiet:
            self._skip_quiet -= 1
        elif self.quiet_first:
            out = self._read_quiet(read)
            if out is not None:
                return out
            self._skip_quiet = QUIET_SKIPS
        for _ in range(self.attempts):
            out = self._attempt(read, fence=False)
            if out is not None:
                return out
            self.retries += 1
        self.fenced += 1
        out = self._attempt(read, fence=True)
        assert out is not None  # nothing commits behind the fence
        return out

    def _read_quiet(self, read: _Read[K]) -> dict[K, int] | None:
        """Answer from the sink alone if neither this process nor the store holds counts of
        the read (its buffer and outbox, then the store, read with this process's pushes
        held); else return None.

        A count that existed when the read started and is in neither is in the sink (counts
        only move on), and none can be read twice, so the sink is read once, with no mark and
        no ledger (:meth:`~analytics_sdk.backends.base.Sink.read_once`: one round trip to
        PostgreSQL instead of four).

        With this process's buffer and outbox empty, the store is read without holding
        pushes: a count tracked since can reach the store, or even the sink, during the
        read, and is then read once or not at all, as any count tracked during a query
        may be; none that existed before is in the buffer.
        """
        local = read.local if read.local is not None and not self.aggregator.is_empty() else None
        with self.aggregator.reading() if local is not None else nullcontext():
            if local is not None:
                held = self.aggregator.local_counts()
                if local(held.buffer):
                    return None
                if held.outbox is not None and local(held.outbox.delta):
                    return None
            pending = read.pending()
        if pending.live or any(pending.claimed.values()):
            return None
        try:
            with self.sink.read_once() as snapshot:
                out = dict(read.durable(snapshot))
        except NotOneStatement:
            return None
        self.quiet += 1
        return out

    def _attempt(self, read: _Read[K], *, fence: bool) -> dict[K, int] | None:
        """Read every tier once; return the counts, or None if a batch committed under the
        read in a way that could count something twice."""
        # Entering the snapshot marks the ledger's commit order (or, with the fence, stops
        # commits); its reads come after the store's.
        with self.sink.snapshot(fence=fence) as snapshot:
            local: dict[K, int] = {}
            with self.aggregator.reading() if read.local is not None else nullcontext():
                # No push of ours drains the buffer until the store is read; the outbox, of a
                # push under way or of one that failed (its reply lost), may land on the
                # store before or during the read: ask the store.
                outbox = None
                if read.local is not None:
                    held = self.aggregator.local_counts()
                    local = read.local(held.buffer)
                    outbox = held.outbox
                while True:
                    outbox_read = outbox is not None and self.store.has_push(outbox)
                    pending = read.pending()
                    if outbox is None or outbox_read or not self.store.has_push(outbox):
                        break
                    # That earlier attempt landed during this read: read the store again.
                if outbox is not None and not outbox_read and read.local is not None:
                    _add(local, read.local(outbox.delta))
            snapshot.will_ask(pending.claimed.keys(), since=bool(pending.live or local))
            durable = read.durable(snapshot)
            # A batch that was not claimed when the store was read but committed since may
            # hold counts read live, or pushed from this buffer after the read; so may a batch
            # that was still being built (a later step may have moved a counter read live).
            settled = pending.claimed.keys() - pending.building
            if (pending.live or local) and snapshot.committed_since_entered() - settled:
                return None
            committed = snapshot.applied(pending.claimed) if pending.claimed else set()
        out = dict(durable)
        _add(out, pending.live)
        for batch_id, counts in pending.claimed.items():
            if batch_id not in committed:
                _add(out, counts)
        _add(out, local)
        return out

    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        """Return exact counts of ``event`` by hour bucket in ``[start, end)``."""
        return self._read(
            _Read(
                pending=lambda: self.store.pending_hourly(event, start, end, properties),
                durable=lambda sink: sink.hourly_counts(event, start, end, properties),
                local=lambda delta: hourly_of(delta.hourly, event, start, end, properties),
            )
        )

    def period_counts(
        self, event: str, bounds: Sequence[int | None], properties: Properties
    ) -> dict[int, int]:
        """Return exact counts of ``event`` by period ``i``: the hours ``[bounds[i],
        bounds[i + 1])`` (see :meth:`~analytics_sdk.backends.base.Sink.period_counts`).

        The sink plans its own read (whole days from its daily rollup); pending and buffered
        counts are by hour and summed into the same periods, under the same read fence.
        """
        start, end = bounds[0], bounds[-1]

        def pending() -> Pending[int]:
            read = self.store.pending_hourly(event, start, end, properties)
            return Pending(
                live=periods_of(read.live, bounds),
                claimed={i: periods_of(c, bounds) for i, c in read.claimed.items()},
                building=read.building,
            )

        return self._read(
            _Read(
                pending=pending,
                durable=lambda sink: sink.period_counts(event, bounds, properties),
                local=lambda delta: periods_of(
                    hourly_of(delta.hourly, event, start, end, properties), bounds
                ),
            )
        )

    def property_counts(
        self,
        event: str,
        by: str,
        bounds: Sequence[int | None],
        properties: Properties,
        limit: int | None,
    ) -> dict[tuple[PropertyValue, int], int]:
        """Return exact counts of ``event`` by value of property ``by`` and period (periods
        as :meth:`period_counts` has them): the ``limit`` values with the most counts over
        all periods (ties: the smaller value by code point) on their own, the others under
        ``Bucket.OTHER``, events without ``by`` under ``Bucket.NONE``.

        The sink ranks its own counts (:meth:`~analytics_sdk.backends.base.Sink.
        property_counts`) and lists besides every value with pending or buffered counts:
        counts only grow, so a value outside the sink's top ``limit`` and without other
        counts cannot be in the answer. The ranking is then redone on the merged counts.
        """
        counts = self._values_read(
            event,
            by,
            bounds,
            properties,
            lambda sink, keep: sink.property_counts(event, by, bounds, properties, limit, keep),
        )
        return rank_values(counts, limit, ())

    def top_values(
        self, event: str, by: str, start: int | None, end: int | None, limit: int
    ) -> list[tuple[str, int]]:
        """Return the exact ``limit`` values of property ``by`` with the most ``event`` over
        the hours ``[start, end)``, most first (ties: the smaller value by code point).

        As :meth:`property_counts` ranks, with the sink's top values only
        (:meth:`~analytics_sdk.backends.base.Sink.top_values`): neither the other values'
        sum nor the sets without ``by`` are read.
        """

        def durable(sink: SinkSnapshot, keep: set[str]) -> dict[tuple[PropertyValue, int], int]:
            top = sink.top_values(event, by, start, end, (), limit, keep)
            return {(value, 0): n for value, n in top.items()}

        counts = self._values_read(event, by, [start, end], (), durable)
        ranked = [(value, n) for (value, _), n in counts.items() if isinstance(value, str)]
        return heapq.nsmallest(limit, ranked, key=lambda item: (-item[1], item[0]))

    def _values_read(
        self,
        event: str,
        by: str,
        bounds: Sequence[int | None],
        properties: Properties,
        durable: Callable[[SinkSnapshot, set[str]], dict[tuple[PropertyValue, int], int]],
    ) -> dict[tuple[PropertyValue, int], int]:
        """Read counts by (value of ``by``, period): pending and buffered ones whole, durable
        ones through ``durable(snapshot, keep)``, ``keep`` holding at least every value with
        pending or buffered counts (as :meth:`_users_read` has its users)."""
        start, end = bounds[0], bounds[-1]
        seen: set[str] = set()

        def note(
            counts: dict[tuple[PropertyValue, int], int],
        ) -> dict[tuple[PropertyValue, int], int]:
            out = _value_periods(counts, bounds)
            seen.update(value for value, _ in out if isinstance(value, str))
            return out

        def pending() -> Pending[tuple[PropertyValue, int]]:
            read = self.store.pending_property_hourly(event, by, start, end, properties)
            return Pending(
                live=note(read.live),
                claimed={i: note(c) for i, c in read.claimed.items()},
                building=read.building,
            )

        return self._read(
            _Read(
                pending=pending,
                durable=lambda sink: durable(sink, set(seen)),
                local=lambda delta: note(
                    property_hours_of(delta.hourly, event, by, start, end, properties)
                ),
            )
        )

    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        """Return exact counts of ``event`` by user over day buckets ``[start, end)``."""
        return self._read(
            _Read(
                pending=lambda: self.store.pending_users(event, start, end, user_id),
                durable=lambda sink: sink.user_counts(event, start, end, user_id),
                local=lambda delta: users_of(delta.users, event, start, end, user_id),
            )
        )

    def _users_read(
        self,
        event: str,
        start: int,
        end: int,
        durable: Callable[[SinkSnapshot, set[str]], dict[str, int]],
    ) -> dict[str, int]:
        """Read users' counts over days ``[start, end)``: pending and buffered ones whole,
        durable ones through ``durable(snapshot, users)``, ``users`` holding at least every
        user with pending or buffered counts (each attempt reads those tiers first; users
        of an earlier attempt stay: reading more users' durable counts is still exact)."""
        seen: set[str] = set()

        def pending() -> Pending[str]:
            read = self.store.pending_users(event, start, end, None)
            seen.update(read.live)
            for counts in read.claimed.values():
                seen.update(counts)
            return read

        def local(delta: Delta) -> dict[str, int]:
            counts = users_of(delta.users, event, start, end, None)
            seen.update(counts)
            return counts

        def durable_read(snapshot: SinkSnapshot) -> dict[str, int]:
            return durable(snapshot, set(seen))

        return self._read(_Read(pending=pending, durable=durable_read, local=local))

    def top_users(self, event: str, start: int, end: int, limit: int) -> list[tuple[str, int]]:
        """Return the exact ``limit`` users with the most ``event`` over days ``[start, end)``.

        The sink ranks its own counts (in SQL) and adds those of every user with pending or
        buffered counts: counts only grow, so a user outside the sink's top ``limit`` and
        without other counts cannot be in the answer.
        """
        counts = self._users_read(
            event, start, end, lambda sink, users: sink.top_users(event, start, end, limit, users)
        )
        # The first ``limit`` of the ranking, without sorting every pending user.
        return heapq.nsmallest(limit, counts.items(), key=lambda item: (-item[1], item[0]))

    def unique_users(self, event: str, start: int, end: int) -> int:
        """Return the exact number of users with ``event`` over days ``[start, end)``.

        The sink counts its users (its per-day bitmaps) but for those with pending or
        buffered counts in the range, which are added here, once. Every such user has a
        count in the range (pending and buffered counts are positive, and a count that
        moved on to the sink stays there), so their durable counts need not be read: with
        100,000 users pending, reading them took 1.3 s.
        """
        found = [0]

        def durable(sink: SinkSnapshot, users: set[str]) -> dict[str, int]:
            found[0] = sink.distinct_users(event, start, end, users) + len(users)
            return {}

        self._users_read(event, start, end, durable)
        return found[0]

    def group_counts(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> dict[str, int]:
        """Return exact counts of ``event`` by group of ``group_type`` over day buckets
        ``[start, end)`` (one group if ``group_id`` is given)."""
        return self._read(
            _Read(
                pending=lambda: self.store.pending_groups(event, group_type, start, end, group_id),
                durable=lambda sink: sink.group_counts(event, group_type, start, end, group_id),
                local=lambda delta: groups_of(
                    delta.groups, event, group_type, start, end, group_id
                ),
            )
        )

    def _groups_read(
        self,
        event: str,
        group_type: str,
        start: int,
        end: int,
        durable: Callable[[SinkSnapshot, set[str]], dict[str, int]],
    ) -> dict[str, int]:
        """Read groups' counts over days ``[start, end)`` as :meth:`_users_read` reads
        users': pending and buffered ones whole, durable ones through ``durable(snapshot,
        groups)``, ``groups`` holding at least every group with pending or buffered counts."""
        seen: set[str] = set()

        def pending() -> Pending[str]:
            read = self.store.pending_groups(event, group_type, start, end, None)
            seen.update(read.live)
            for counts in read.claimed.values():
                seen.update(counts)
            return read

        def local(delta: Delta) -> dict[str, int]:
            counts = groups_of(delta.groups, event, group_type, start, end, None)
            seen.update(counts)
            return counts

        def durable_read(snapshot: SinkSnapshot) -> dict[str, int]:
            return durable(snapshot, set(seen))

        return self._read(_Read(pending=pending, durable=durable_read, local=local))

    def top_groups(
        self, event: str, group_type: str, start: int, end: int, limit: int
    ) -> list[tuple[str, int]]:
        """Return the exact ``limit`` groups of ``group_type`` with the most ``event`` over
        days ``[start, end)``, as :meth:`top_users` ranks users."""
        counts = self._groups_read(
            event,
            group_type,
            start,
            end,
            lambda sink, groups: sink.top_groups(event, group_type, start, end, limit, groups),
        )
        return heapq.nsmallest(limit, counts.items(), key=lambda item: (-item[1], item[0]))

    def unique_groups(self, event: str, group_type: str, start: int, end: int) -> int:
        """Return the exact number of groups of ``group_type`` with ``event`` over days
        ``[start, end)``: the sink's, but for those with pending or buffered counts, which
        are counted here, once (as :meth:`unique_users` counts users)."""
        found = [0]

        def durable(sink: SinkSnapshot, groups: set[str]) -> dict[str, int]:
            found[0] = sink.distinct_groups(event, group_type, start, end, groups) + len(groups)
            return {}

        self._groups_read(event, group_type, start, end, durable)
        return found[0]

    def _user_days_read(
        self,
        events: Collection[str] | None,
        start: int | None,
        end: int,
        durable: Callable[[SinkSnapshot, set[str]], None],
        group: tuple[str, str] | None = None,
    ) -> dict[UserDay, int]:
        """Return the pending and buffered per-user daily counts of ``events`` (every event
        if None) over days ``[start, end)`` that the sink does not hold, by ``(event, user,
        day)``; ``durable(snapshot, users)`` reads the sink in the same snapshot, ``users``
        holding at least every user with such counts (as in :meth:`_users_read`)."""
        seen: set[str] = set()

        def pending() -> Pending[UserDay]:
            read = self.store.pending_user_days(events, start, end, group)
            seen.update(user for _, user, _ in read.live)
            for counts in read.claimed.values():
                seen.update(user for _, user, _ in counts)
            return read

        def local(delta: Delta) -> dict[UserDay, int]:
            if group is None:
                counts = user_days_of(delta.users, events, start, end)
            else:
                counts = group_user_days_of(delta.groups, events, start, end, group)
            seen.update(user for _, user, _ in counts)
            return counts

        def durable_read(snapshot: SinkSnapshot) -> dict[UserDay, int]:
            durable(snapshot, set(seen))
            return {}

        return self._read(_Read(pending=pending, durable=durable_read, local=local))

    def active_users(
        self,
        events: Collection[str] | None,
        ranges: Sequence[tuple[int, int]],
        group: tuple[str, str] | None = None,
    ) -> list[int]:
        """Return, for each of contiguous, ascending ranges of days ``[low, high)``, the
        exact number of users who did any of ``events`` (any event if None) in it (with
        ``group``, ``(type, id)``: in that group).

        The sink counts its users (its per-day bitmaps) but for those with pending or
        buffered counts, and tells in which ranges it has those; their pending and buffered
        days are added here, each user once per range.
        """
        found: list[tuple[list[int], dict[str, set[int]]]] = []

        def durable(snapshot: SinkSnapshot, users: set[str]) -> None:
            found[:] = [snapshot.active_users(events, ranges, users, group)]

        pending = self._user_days_read(events, ranges[0][0], ranges[-1][1], durable, group)
        counts, members = found[0]
        for _, user, day in pending:
            members.setdefault(user, set()).add(range_index(ranges, day))
        out = list(counts)
        for indexes in members.values():
            for i in indexes:
                out[i] += 1
        return out

    def retention(
        self,
        cohort_event: str | None,
        return_event: str | None,
        ranges: Sequence[tuple[int, int]],
        cohorts: int,
    ) -> tuple[list[int], list[list[int]]]:
        """Return first-time retention over contiguous, ascending ranges of days: the sizes
        of cohorts ``0 <= c < cohorts`` (the users whose first day with ``cohort_event``,
        any event if None, is in range ``c``) and ``retained[c][k]``, those of cohort ``c``
        with ``return_event`` (any if None) in range ``c + k``.

        A user's first day is the earliest of the sink's (kept per user at flush time) and
        of their pending and buffered days, which are read back to the first day there is:
        the sink counts every other user, as :meth:`active_users` does.
        """
        found: list[Retention] = []

        def durable(snapshot: SinkSnapshot, users: set[str]) -> None:
            found[:] = [snapshot.retention(cohort_event, return_event, ranges, cohorts, users)]

        events = (
            None if cohort_event is None or return_event is None else {cohort_event, return_event}
        )
        pending = self._user_days_read(events, None, ranges[-1][1], durable)
        sink = found[0]
        first = dict(sink.first)
        returns = {user: set(r) for user, r in sink.returns.items()}
        for event, user, day in pending:
            i = range_index(ranges, day)
            if cohort_event is None or event == cohort_event:
                first[user] = min(first.get(user, i), i)
            if (return_event is None or event == return_event) and 0 <= i < len(ranges):
                returns.setdefault(user, set()).add(i)
        sizes, retained = tally_retention(first, returns, cohorts, len(ranges) - cohorts + 1)
        for c in range(cohorts):
            sizes[c] += sink.sizes[c]
            for k, n in enumerate(sink.retained[c]):
                retained[c][k] += n
        return sizes, retained

    def fleet_totals(self) -> dict[str, int]:
        """Return the all-time count of every event that reached the store or the sink.

        Counts still in some process's buffer are not included (they arrive within a push
        interval); the same reads as the other queries keep it from exceeding the truth.
        """
        return self._read(
            _Read(
                pending=self.store.pending_event_totals,
                durable=lambda sink: sink.event_totals(),
                local=None,
            )
        )


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


def _check_range(name: str, value: date | datetime, day: date) -> None:
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(
            f"{name} {value.isoformat()} is out of range; accepted: days from {FIRST_DAY} "
            f"(the earliest event time track() accepts) to {LAST_DAY}"
        )


def check_day(day: object, name: str = "day") -> date:
    """Return ``day`` if it is a ``date`` (and not a ``datetime``) from 2000 on, or raise."""
    if isinstance(day, datetime) or not isinstance(day, date):
        raise TypeError(
            f"{name} {day!r} is of type {type(day).__name__}; accepted: a datetime.date "
            "(use hour= for a datetime)"
        )
    _check_range(name, day, day)
    return day


def check_moment(moment: object, name: str) -> datetime:
    """Return ``moment`` if it is an aware ``datetime`` on a day from 2000 on, or raise."""
    if not isinstance(moment, datetime):
        raise TypeError(
            f"{name} {moment!r} is of type {type(moment).__name__}; accepted: an aware datetime"
        )
    if moment.utcoffset() is None:
        raise ValueError(f"{name} {moment.isoformat()} is naive; accepted: an aware datetime")
    _check_range(name, moment, moment.date())  # the caller's calendar day, in its own offset
    return moment


def day_hours(day: date) -> tuple[int, int]:
    """Return the hour buckets ``[start, end)`` of a UTC calendar day."""
    start = day_of(day) * 24
    return start, start + 24


def _local(moment: date | datetime, tz: tzinfo, name: str) -> datetime:
    if isinstance(moment, datetime):
        return check_moment(moment, name).astimezone(tz)
    if isinstance(moment, date):
        return datetime.combine(check_day(moment, name), time(0), tzinfo=tz)
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


def count_periods(first: datetime, last: datetime, granularity: str) -> int:
    """Return how many periods run from the one starting at ``first`` to the one starting at
    ``last``, both included (without listing them)."""
    if granularity == "hour":
        return hour_of(last) - hour_of(first) + 1
    if granularity == "month":
        return (last.year - first.year) * 12 + last.month - first.month + 1
    days = (last.date() - first.date()).days
    return days // 7 + 1 if granularity == "week" else days + 1


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
    count = count_periods(first, last, granularity)
    if count > MAX_PERIODS:
        raise ValueError(
            f"series from {first.isoformat()} to {last.isoformat()} by {granularity} has "
            f"{count:,} periods; accepted: at most {MAX_PERIODS:,} (a shorter range or a "
            "coarser granularity)"
        )
    current, last_hour = first, hour_of(last)
    while hour_of(current) <= last_hour:
        following = _next_period(current, granularity)
        yield current, hour_of(current), hour_of(following)
        current = following


def day_periods(
    start: date | datetime,
    end: date | datetime,
    granularity: str,
    tz: tzinfo,
    *,
    name: str = "granularity",
    after: int = 0,
) -> tuple[list[datetime], list[tuple[int, int]]]:
    """Return the starts of the periods from the one containing ``start`` to the one
    containing ``end`` (then ``after`` more), and each one's UTC days ``[first, end)``.

    Users' activity is kept by UTC day, so a period holds the UTC days whose dates are its
    dates in ``tz`` (``granularity``: day, week or month)."""
    if granularity not in DAY_GRANULARITIES:
        raise ValueError(
            f"{name} {granularity!r} is not accepted; accepted: "
            f"{', '.join(DAY_GRANULARITIES)} (users' activity is kept by UTC day)"
        )
    spans = list(periods(start, end, granularity, tz))
    labels = [label for label, _, _ in spans]
    following = _next_period(labels[-1], granularity)
    try:
        for _ in range(after):
            labels.append(following)
            following = _next_period(following, granularity)
        if following.date() > LAST_DAY:
            raise ValueError
    except (OverflowError, ValueError):
        raise ValueError(
            f"{after} periods after {labels[len(spans) - 1].date()} by {granularity} end "
            f"out of range; accepted: periods ending by {LAST_DAY}"
        ) from None
    days = [day_of(label.date()) for label in labels] + [day_of(following.date())]
    return labels, list(pairwise(days))
