"""The two pluggable parts and the exactly-once protocol between them.

A :class:`CounterStore` is the shared, fast tier that every process pushes deltas to. A
:class:`Sink` is the durable tier that dashboards query. The flusher moves counts from one to
the other in three steps:

1. ``store.claim_batches(max_keys)`` atomically moves live counters into claimed
   :class:`Batch` es of at most ``max_keys`` counters, each with a unique id (still visible
   to queries as pending), one batch at a time as the flusher asks for it, so neither a sink
   transaction nor the flusher's memory grows with the backlog;
2. ``sink.apply(batch)`` records the batch id in a ledger and adds the counts, in one
   transaction; a batch id already in the ledger is a no-op;
3. ``store.ack(batch_id)`` deletes the claim, only after the sink committed.

A flusher that dies between steps leaves a claim behind; ``store.claimed_ids(older_than=...)``
finds it, ``store.read_claim(batch_id)`` reads it back, and the next flush applies it again,
which the ledger makes safe (so applying a claim another flusher is still working on is
safe too, only wasted work).

A query enters a :class:`SinkSnapshot`, reads the store, then reads the sink in the
snapshot, where counts and ledger agree; the snapshot names the batches that committed
between its entry and its reads (see :mod:`analytics_sdk.query`).
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from bisect import bisect_right
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from enum import Enum
from typing import Generic, NamedTuple, TypeVar

import attrs

from ..keys import GroupKey, Groups, HourKey, Properties, UserKey

__all__ = [
    "DEFAULT_MAX_BATCH_KEYS",
    "Batch",
    "Bucket",
    "CounterStore",
    "Deduped",
    "Delta",
    "NotOneStatement",
    "Pending",
    "Push",
    "Retention",
    "Sink",
    "SinkSnapshot",
    "group_user_days_of",
    "groups_of",
    "matches",
    "periods_of",
    "property_hours_of",
    "range_index",
    "rank_values",
    "tally_retention",
    "user_days_of",
]

T = TypeVar("T")

DEFAULT_MAX_BATCH_KEYS = 50_000
"""Counters per claimed batch: a few seconds of PostgreSQL upsert at most, inside the
sink's default 30 s statement timeout, and about 20 MiB of flusher memory."""


@attrs.frozen(kw_only=True)
class Delta:
    """Counts to add: hourly counters, per-user daily counters and per-group daily
    counters."""

    hourly: dict[HourKey, int] = attrs.field(factory=dict)
    users: dict[UserKey, int] = attrs.field(factory=dict)
    groups: dict[GroupKey, int] = attrs.field(factory=dict)
    """Per group, day and user (or None): a group's count is the sum over its users."""

    def __bool__(self) -> bool:
        return bool(self.hourly or self.users or self.groups)

    @property
    def total(self) -> int:
        """The sum of the hourly counts (every tracked value is in exactly one of them)."""
        return sum(self.hourly.values())

    @property
    def keys(self) -> int:
        """How many counters the delta touches."""
        return len(self.hourly) + len(self.users) + len(self.groups)


DEFAULT_DEDUPE_WINDOW = 86400.0


class Deduped(NamedTuple):
    """A ``track()`` made with a ``dedupe_key``: the store adds its counts only if no count
    with that key was added within the push's ``dedupe_window``, and marks the key in the
    same atomic step as it adds the counts.

    A named tuple, not an attrs class: one is made per keyed ``track()`` call, and a tuple
    is built several times faster than a frozen attrs instance."""

    key: str
    event: str
    properties: Properties
    hour: int
    user_id: str | None
    value: int
    groups: Groups = ()
    """The call's groups: counted with it, per group, if the key is not marked."""


@attrs.frozen(kw_only=True)
class Push:
    """A delta sent from one process (a *producer*) to the store.

    A producer sends its pushes one at a time, retrying each until the store accepts it, so
    its sequence numbers reach the store in order: a store applies a push only if its
    sequence is above the last one it applied for that producer. A retried push is a no-op,
    and the store keeps one number per producer instead of one record per push.
    """

    producer: str
    sequence: int
    delta: Delta
    deduped: tuple[Deduped, ...] = ()
    """Calls made with a ``dedupe_key`` (one per key), applied with the push."""
    dedupe_window: float = DEFAULT_DEDUPE_WINDOW
    """Seconds a key of ``deduped`` stays marked in the store once counted."""

    @property
    def total(self) -> int:
        """The counts of the delta and of the calls with a ``dedupe_key`` (some of which the
        store may find already counted)."""
        return self.delta.total + sum(d.value for d in self.deduped)

    @property
    def id(self) -> str:
        """``producer.sequence``: unique across processes and restarts."""
        return f"{self.producer}.{self.sequence}"


@attrs.frozen(kw_only=True)
class Batch:
    """Counts claimed from the store under a unique id, on their way to the sink."""

    id: str
    delta: Delta
    claimed_at: float
    """Wall-clock time (Unix seconds) of the claim."""


@attrs.frozen(kw_only=True)
class Pending(Generic[T]):
    """Counts a store holds but the sink may not: live counters and claimed batches."""

    live: dict[T, int] = attrs.field(factory=dict)
    claimed: dict[str, dict[T, int]] = attrs.field(factory=dict)
    """Counts of each claimed batch, by batch id."""
    building: set[str] = attrs.field(factory=set)
    """Claimed batches that were still being built when read (a store that builds a batch
    in several steps): a counter read live may move into one later, so a query treats the
    commit of one like that of a batch it did not read."""


def matches(properties: Properties, wanted: Properties) -> bool:
    """Whether the property set ``properties`` contains every pair of ``wanted``."""
    return all(pair in properties for pair in wanted)


def in_range(bucket: int, start: int | None, end: int | None) -> bool:
    """Whether ``start <= bucket < end``, with ``None`` meaning unbounded."""
    return (start is None or bucket >= start) and (end is None or bucket < end)


def hourly_of(
    counts: dict[HourKey, int], event: str, start: int | None, end: int | None, wanted: Properties
) -> dict[int, int]:
    """Return the counts of ``event`` by hour in ``[start, end)`` whose properties match."""
    out: dict[int, int] = {}
    for (name, properties, hour), value in counts.items():
        if name == event and in_range(hour, start, end) and matches(properties, wanted):
            out[hour] = out.get(hour, 0) + value
    return out


class Bucket(Enum):
    """Counts of a breakdown that are not one property value's."""

    NONE = "(none)"
    """Events without the property."""
    OTHER = "(other)"
    """Events whose value is not listed on its own (not among the ranked values)."""


PropertyValue = str | Bucket
"""A breakdown's key: a property value (its stored text), or a :class:`Bucket`."""


def property_hours_of(
    counts: dict[HourKey, int],
    event: str,
    by: str,
    start: int | None,
    end: int | None,
    wanted: Properties,
) -> dict[tuple[PropertyValue, int], int]:
    """Return the counts of ``event`` in ``[start, end)`` whose properties match, by the
    value of property ``by`` (:attr:`Bucket.NONE` without it) and hour."""
    out: dict[tuple[PropertyValue, int], int] = {}
    for (name, properties, hour), value in counts.items():
        if name == event and in_range(hour, start, end) and matches(properties, wanted):
            key = (dict(properties).get(by, Bucket.NONE), hour)
            out[key] = out.get(key, 0) + value
    return out


def rank_values(
    counts: dict[tuple[PropertyValue, T], int], limit: int | None, keep: Collection[str]
) -> dict[tuple[PropertyValue, T], int]:
    """Return ``counts`` (by value and period) with only the ``limit`` values with the
    highest totals (ties: the smaller value by code point) and those in ``keep`` listed on
    their own; the others' counts are summed by period under :attr:`Bucket.OTHER`.

    ``limit`` None lists every value.
    """
    if limit is None:
        return dict(counts)
    totals: dict[str, int] = {}
    for (value, _), n in counts.items():
        if isinstance(value, str):
            totals[value] = totals.get(value, 0) + n
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
    listed = {value for value, _ in ranked} | set(keep)
    out: dict[tuple[PropertyValue, T], int] = {}
    for (value, period), n in counts.items():
        key = (value if not isinstance(value, str) or value in listed else Bucket.OTHER, period)
        out[key] = out.get(key, 0) + n
    return out


def periods_of(counts: dict[int, int], bounds: Sequence[int | None]) -> dict[int, int]:
    """Sum counts by hour into periods: period ``i`` holds the hours in
    ``[bounds[i], bounds[i + 1])`` (``None`` first or last: unbounded)."""
    starts = [b for b in bounds[1:-1] if b is not None]
    out: dict[int, int] = {}
    for hour, value in counts.items():
        period = bisect_right(starts, hour)
        out[period] = out.get(period, 0) + value
    return out


def users_of(
    counts: dict[UserKey, int], event: str, start: int | None, end: int | None, user: str | None
) -> dict[str, int]:
    """Return the counts of ``event`` by user over days ``[start, end)``."""
    out: dict[str, int] = {}
    for (name, user_id, day), value in counts.items():
        if name == event and in_range(day, start, end) and (user is None or user == user_id):
            out[user_id] = out.get(user_id, 0) + value
    return out


def groups_of(
    counts: dict[GroupKey, int],
    event: str,
    group_type: str,
    start: int | None,
    end: int | None,
    group_id: str | None,
) -> dict[str, int]:
    """Return the counts of ``event`` by group of ``group_type`` (one group if ``group_id``
    is given) over days ``[start, end)``, summed over the groups' users."""
    out: dict[str, int] = {}
    for (name, kind, group, _, day), value in counts.items():
        if (
            name == event
            and kind == group_type
            and in_range(day, start, end)
            and (group_id is None or group == group_id)
        ):
            out[group] = out.get(group, 0) + value
    return out


UserDay = tuple[str, str, int]
"""``(event, user_id, day)``: a user active on a day (days since the epoch, UTC)."""


def user_days_of(
    counts: dict[UserKey, int], events: Collection[str] | None, start: int | None, end: int | None
) -> dict[UserDay, int]:
    """Return the per-user daily counts of ``events`` (every event if None) over days
    ``[start, end)``, by ``(event, user_id, day)``."""
    return {
        key: value
        for key, value in counts.items()
        if (events is None or key[0] in events) and in_range(key[2], start, end)
    }


def range_index(ranges: Sequence[tuple[int, int]], day: int) -> int:
    """Return the index of the range of contiguous, ascending ``ranges`` (``[low, high)``)
    that holds ``day``: ``-1`` before the first, ``len(ranges)`` after the last."""
    if day < ranges[0][0]:
        return -1
    if day >= ranges[-1][1]:
        return len(ranges)
    return bisect_right([low for low, _ in ranges], day) - 1


def tally_retention(
    first: dict[str, int], returns: dict[str, set[int]], cohorts: int, periods: int
) -> tuple[list[int], list[list[int]]]:
    """Return cohort sizes and ``retained[c][k]`` of users by the range of their first day
    (``first``: users outside ``0 <= c < cohorts`` are in no cohort) and the ranges they
    returned in."""
    sizes = [0] * cohorts
    retained = [[0] * periods for _ in range(cohorts)]
    for user, c in first.items():
        if 0 <= c < cohorts:
            sizes[c] += 1
            row = retained[c]
            for j in returns.get(user, ()):
                if 0 <= j - c < periods:
                    row[j - c] += 1
    return sizes, retained


def group_user_days_of(
    counts: dict[GroupKey, int],
    events: Collection[str] | None,
    start: int | None,
    end: int | None,
    group: tuple[str, str],
) -> dict[UserDay, int]:
    """Return the per-group daily counts of ``group`` (``(type, id)``) that have a user, of
    ``events`` (every event if None) over days ``[start, end)``, by ``(event, user_id,
    day)``."""
    group_type, group_id = group
    out: dict[UserDay, int] = {}
    for (event, kind, gid, user, day), value in counts.items():
        if (
            user is not None
            and kind == group_type
            and gid == group_id
            and (events is None or event in events)
            and in_range(day, start, end)
        ):
            key = (event, user, day)
            out[key] = out.get(key, 0) + value
    return out


@attrs.frozen(kw_only=True)
class Retention:
    """What a sink holds of first-time retention (see :meth:`SinkSnapshot.retention`)."""

    sizes: list[int]
    """Users whose first ``cohort_event`` day is in cohort range ``c``, for each ``c``."""
    retained: list[list[int]]
    """``retained[c][k]``: of those, the users with ``return_event`` in range ``c + k``."""
    first: dict[str, int]
    """For each of the ``users`` asked about that the sink has done ``cohort_event``: the
    range of their first day, ``-1`` if before the first range; not listed if their first
    day is after the cohort ranges."""
    returns: dict[str, set[int]]
    """For each of those ``users``: the ranges in which the sink has them doing
    ``return_event`` (not listed if none)."""


class CounterStore(ABC):
    """The shared tier: receives pushes, hands out claims, answers pending counts."""

    @abstractmethod
    def push(self, push: Push) -> bool:
        """Add ``push.delta`` to the live counters, once per push however often called;
        return whether this call applied it (``False``: it, or a later push of its
        producer, was applied before)."""

    @abstractmethod
    def has_push(self, push: Push) -> bool:
        """Whether ``push`` (or a later push of its producer) was applied."""

    @abstractmethod
    def claim_batches(self, max_keys: int = DEFAULT_MAX_BATCH_KEYS) -> Iterator[Batch]:
        """Claim the live counters in batches of at most ``max_keys`` counters, each claimed
        atomically when the iteration reaches it; stop once every part of the store has been
        drained (counters pushed meanwhile may wait for the next call)."""

    def claim(self, max_keys: int = DEFAULT_MAX_BATCH_KEYS) -> list[Batch]:
        """Claim every live counter now, in batches of at most ``max_keys``; return them."""
        return list(self.claim_batches(max_keys))

    @abstractmethod
    def claimed_ids(self, older_than: float = 0.0) -> dict[str, float]:
        """Return ``{batch id: claimed_at}`` of the unacknowledged claims made at least
        ``older_than`` seconds ago."""

    @abstractmethod
    def read_claim(self, batch_id: str) -> Batch | None:
        """Return an unacknowledged claim, or ``None`` if ``batch_id`` is not (or no longer)
        claimed."""

    def take_claims_in_doubt(self) -> set[str]:
        """Return, and forget, the ids of claims that failed with their outcome unknown (the
        reply lost): they may exist, and the flusher that made them should apply them."""
        return set()

    def claimed(self, older_than: float = 0.0) -> list[Batch]:
        """Return the unacknowledged claims made at least ``older_than`` seconds ago."""
        found = (self.read_claim(i) for i in self.claimed_ids(older_than))
        return [batch for batch in found if batch is not None]

    @abstractmethod
    def ack(self, batch_id: str) -> None:
        """Delete a claim whose batch the sink has committed; unknown ids are ignored."""

    @abstractmethod
    def pending_hourly(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> Pending[int]:
        """Return pending counts of ``event`` by hour in ``[start, end)``, summed over the
        property sets that contain ``properties``."""

    @abstractmethod
    def pending_property_hourly(
        self, event: str, by: str, start: int | None, end: int | None, properties: Properties
    ) -> Pending[tuple[PropertyValue, int]]:
        """Return pending counts of ``event`` in ``[start, end)`` whose property sets contain
        ``properties``, by the value of property ``by`` (:attr:`Bucket.NONE` for the sets
        without it) and hour."""

    @abstractmethod
    def pending_users(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> Pending[str]:
        """Return pending counts of ``event`` by user over days ``[start, end)`` (one user if
        ``user_id`` is given)."""

    @abstractmethod
    def pending_user_days(
        self,
        events: Collection[str] | None,
        start: int | None,
        end: int | None,
        group: tuple[str, str] | None = None,
    ) -> Pending[UserDay]:
        """Return the pending per-user daily counts of ``events`` (every event if None)
        over days ``[start, end)``, by ``(event, user_id, day)``; with ``group`` (``(type,
        id)``), those the group's per-group counters hold."""

    @abstractmethod
    def pending_groups(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> Pending[str]:
        """Return pending counts of ``event`` by group of ``group_type`` over days ``[start,
        end)`` (one group if ``group_id`` is given), summed over the groups' users."""

    @abstractmethod
    def pending_event_totals(self) -> Pending[str]:
        """Return every pending count summed per event (for fleet totals)."""

    def for_asyncio(self) -> CounterStore:
        """Return the store the async API reads on the running event loop: a twin on an
        asyncio driver, with this store's settings, for a store that does network I/O; the
        store itself for one that answers from memory (the default)."""
        return self

    def check(self) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Raise :class:`~analytics_sdk.errors.StoreError`, with its cause, unless the store
        answers (a flush worker calls this before it reports itself started)."""

    def check_readable(self) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Check, changing nothing, that the store holds counters this SDK can read; from
        then on reads change nothing either (read commands call this first)."""

    evicted_keys: int = 0
    """Keys the store's server evicted since this store first used it (counts may be lost)."""

    def identity(self) -> str | None:
        """Return a stable name of the data this store holds (server and prefix, never
        credentials), or None if it lives only in this process; it keys the local spool."""
        return None

    def after_fork_in_child(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Drop what a forked child must not share with its parent (connections, locks)."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections."""


class SinkSnapshot(ABC):
    """Reads of a sink that all see one committed state: the counts and the ledger agree."""

    @abstractmethod
    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        """Return counts of ``event`` by hour, as :meth:`Sink.hourly_counts` does."""

    def period_counts(
        self, event: str, bounds: Sequence[int | None], properties: Properties
    ) -> dict[int, int]:
        """Return counts of ``event`` by period, as :meth:`Sink.period_counts` does."""
        hourly = self.hourly_counts(event, bounds[0], bounds[-1], properties)
        return periods_of(hourly, bounds)

    @abstractmethod
    def property_counts(
        self,
        event: str,
        by: str,
        bounds: Sequence[int | None],
        properties: Properties,
        limit: int | None,
        keep: Collection[str],
    ) -> dict[tuple[PropertyValue, int], int]:
        """Return counts of ``event`` by property value and period, as
        :meth:`Sink.property_counts` does."""

    def top_values(
        self,
        event: str,
        by: str,
        start: int | None,
        end: int | None,
        properties: Properties,
        limit: int,
        keep: Collection[str],
    ) -> dict[str, int]:
        """Return counts of ``event`` by value of ``by``, as :meth:`Sink.top_values` does."""
        counts = self.property_counts(event, by, [start, end], properties, limit, keep)
        return {value: n for (value, _), n in counts.items() if isinstance(value, str)}

    @abstractmethod
    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        """Return counts of ``event`` by user, as :meth:`Sink.user_counts` does."""

    def top_users(
        self, event: str, start: int, end: int, limit: int, users: Collection[str]
    ) -> dict[str, int]:
        """Return counts of ``event`` by user, as :meth:`Sink.top_users` does."""
        counts = self.user_counts(event, start, end, None)
        ranked = heapq.nsmallest(limit, counts.items(), key=lambda item: (-item[1], item[0]))
        out = dict(ranked)
        out.update((user, counts[user]) for user in users if user in counts)
        return out

    def distinct_users(self, event: str, start: int, end: int, exclude: Collection[str]) -> int:
        """Return how many users, as :meth:`Sink.distinct_users` does."""
        wanted = set(exclude)
        return sum(1 for user in self.user_counts(event, start, end, None) if user not in wanted)

    @abstractmethod
    def group_counts(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> dict[str, int]:
        """Return counts of ``event`` by group, as :meth:`Sink.group_counts` does."""

    def top_groups(
        self, event: str, group_type: str, start: int, end: int, limit: int, groups: Collection[str]
    ) -> dict[str, int]:
        """Return counts of ``event`` by group, as :meth:`Sink.top_groups` does."""
        counts = self.group_counts(event, group_type, start, end, None)
        ranked = heapq.nsmallest(limit, counts.items(), key=lambda item: (-item[1], item[0]))
        out = dict(ranked)
        out.update((group, counts[group]) for group in groups if group in counts)
        return out

    def distinct_groups(
        self, event: str, group_type: str, start: int, end: int, exclude: Collection[str]
    ) -> int:
        """Return how many groups, as :meth:`Sink.distinct_groups` does."""
        wanted = set(exclude)
        counts = self.group_counts(event, group_type, start, end, None)
        return sum(1 for group in counts if group not in wanted)

    @abstractmethod
    def active_users(
        self,
        events: Collection[str] | None,
        ranges: Sequence[tuple[int, int]],
        users: Collection[str],
        group: tuple[str, str] | None = None,
    ) -> tuple[list[int], dict[str, set[int]]]:
        """Return, for each range of days ``[low, high)``, how many users did any of
        ``events`` (any event if None) on a day in it (with ``group``: in that group, from
        its per-group counters), not counting those in ``users``; and, for each of ``users``
        the sink has active in some range, the indexes of those ranges."""

    @abstractmethod
    def retention(
        self,
        cohort_event: str | None,
        return_event: str | None,
        ranges: Sequence[tuple[int, int]],
        cohorts: int,
        users: Collection[str],
    ) -> Retention:
        """Return first-time retention over contiguous, ascending ranges of days: cohort
        ``c < cohorts`` holds the users whose first day with ``cohort_event`` (any event if
        None), over all time, is in range ``c``; ``retained[c][k]`` counts those with
        ``return_event`` (any event if None) in range ``c + k``. Users in ``users`` are not
        counted; what the sink knows of them is in :attr:`Retention.first` and
        :attr:`Retention.returns`."""

    @abstractmethod
    def event_totals(self) -> dict[str, int]:
        """Return the all-time count of every event, as :meth:`Sink.event_totals` does."""

    def will_ask(self, batch_ids: Collection[str], *, since: bool) -> None:  # noqa: B027
        """Say, before the first read, which batches :meth:`applied` will be asked about,
        and whether :meth:`committed_since_entered` will be: a sink may send those reads
        with its first (PostgreSQL does: one round trip for all). The answers are the same
        without it; by default it does nothing."""

    @abstractmethod
    def applied(self, batch_ids: Iterable[str]) -> set[str]:
        """Return those of ``batch_ids`` that are in the ledger (their counts are read here)."""

    @abstractmethod
    def committed_since_entered(self) -> set[str]:
        """Return the batches committed between entering the snapshot and its first read."""


class NotOneStatement(Exception):
    """Raised by a snapshot of :meth:`Sink.read_once` whose read needs more than one
    statement: the caller reads again with :meth:`Sink.snapshot`."""


class Sink(ABC):
    """The durable tier: applies claimed batches exactly once and answers queries."""

    connections: int | None = None
    """How many connections it reads on at most (its pool's size), or None (no pool). The
    async API runs at most twice that many queries of a client at once on an event loop."""

    @abstractmethod
    def apply(self, batch: Batch) -> bool:
        """Apply ``batch`` in one transaction; return ``False`` if its id was already applied."""

    @abstractmethod
    def applied(self, batch_ids: Iterable[str]) -> set[str]:
        """Return those of ``batch_ids`` that are in the ledger."""

    @abstractmethod
    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        """Return counts of ``event`` by hour in ``[start, end)``, summed over the property
        sets that contain ``properties``."""

    def period_counts(
        self, event: str, bounds: Sequence[int | None], properties: Properties
    ) -> dict[int, int]:
        """Return counts of ``event`` by period: period ``i`` (a key only if it has counts)
        sums the hours ``[bounds[i], bounds[i + 1])`` (hour buckets, ascending; ``None``
        first or last: unbounded), as :func:`periods_of` sums :meth:`hourly_counts`.

        A sink may answer whole days from a daily rollup instead of reading their hours.
        """
        with self.snapshot() as snapshot:
            return snapshot.period_counts(event, bounds, properties)

    def property_counts(
        self,
        event: str,
        by: str,
        bounds: Sequence[int | None],
        properties: Properties,
        limit: int | None = None,
        keep: Collection[str] = (),
    ) -> dict[tuple[PropertyValue, int], int]:
        """Return counts of ``event`` whose property sets contain ``properties``, by the
        value of property ``by`` and period (periods as :meth:`period_counts` has them),
        a key only if it has counts.

        Sets without ``by`` count under :attr:`Bucket.NONE`. The ``limit`` values with the
        highest totals over all periods (ties: the smaller value by code point) and those
        in ``keep`` count under their value; the other values' counts are summed by period
        under :attr:`Bucket.OTHER` (:func:`rank_values`). ``limit`` None lists them all.
        A sink answers whole days from a daily rollup where it has one, as
        :meth:`period_counts` does.
        """
        with self.snapshot() as snapshot:
            return snapshot.property_counts(event, by, bounds, properties, limit, keep)

    def top_values(
        self,
        event: str,
        by: str,
        start: int | None,
        end: int | None,
        properties: Properties,
        limit: int,
        keep: Collection[str],
    ) -> dict[str, int]:
        """Return the counts of ``event`` over the hours ``[start, end)`` (``None``:
        unbounded) whose property sets contain ``properties``, by value of property ``by``:
        of the ``limit`` values with the most (ties: the smaller value by code point), and
        of those in ``keep`` (the ones with counts) whatever their rank. Sets without
        ``by`` are left out, and so are the other values (no :attr:`Bucket.OTHER`)."""
        with self.snapshot() as snapshot:
            return snapshot.top_values(event, by, start, end, properties, limit, keep)

    @abstractmethod
    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        """Return counts of ``event`` by user over days ``[start, end)``."""

    def top_users(
        self, event: str, start: int, end: int, limit: int, users: Collection[str]
    ) -> dict[str, int]:
        """Return the counts of ``event`` over days ``[start, end)`` of the ``limit`` users
        with the most (ties: the smaller user id by code point), and those of ``users``
        (the ones with counts) whatever their rank."""
        with self.snapshot() as snapshot:
            return snapshot.top_users(event, start, end, limit, users)

    def distinct_users(self, event: str, start: int, end: int, exclude: Collection[str]) -> int:
        """Return how many users have counts of ``event`` over days ``[start, end)``, not
        counting those in ``exclude``."""
        with self.snapshot() as snapshot:
            return snapshot.distinct_users(event, start, end, exclude)

    def group_counts(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> dict[str, int]:
        """Return counts of ``event`` by group of ``group_type`` over days ``[start, end)``
        (one group if ``group_id`` is given)."""
        with self.snapshot() as snapshot:
            return snapshot.group_counts(event, group_type, start, end, group_id)

    def top_groups(
        self, event: str, group_type: str, start: int, end: int, limit: int, groups: Collection[str]
    ) -> dict[str, int]:
        """Return the counts of ``event`` over days ``[start, end)`` of the ``limit`` groups
        of ``group_type`` with the most (ties: the smaller id by code point), and those of
        ``groups`` (the ones with counts) whatever their rank."""
        with self.snapshot() as snapshot:
            return snapshot.top_groups(event, group_type, start, end, limit, groups)

    def distinct_groups(
        self, event: str, group_type: str, start: int, end: int, exclude: Collection[str]
    ) -> int:
        """Return how many groups of ``group_type`` have counts of ``event`` over days
        ``[start, end)``, not counting those in ``exclude``."""
        with self.snapshot() as snapshot:
            return snapshot.distinct_groups(event, group_type, start, end, exclude)

    @abstractmethod
    def event_totals(self) -> dict[str, int]:
        """Return the all-time count of every event (for fleet totals)."""

    def for_asyncio(self) -> Sink:
        """Return the sink the async API reads on the running event loop: a twin on an
        asyncio driver, with this sink's settings, for a sink that does network I/O; the
        sink itself for one that answers from memory (the default)."""
        return self

    def check(self) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Raise :class:`~analytics_sdk.errors.SinkError`, with its cause, unless the sink
        answers and is ready for writes (migrated, where it migrates on first use)."""

    def check_readable(self) -> None:  # noqa: B027 - optional hook, nothing to check by default
        """Check, changing nothing, that the sink holds data this SDK can read; from then on
        queries change nothing either (read commands call this first)."""

    @abstractmethod
    def snapshot(self, *, fence: bool = False) -> AbstractContextManager[SinkSnapshot]:
        """Return a context whose reads see one committed state, taken at its first read.

        Entering marks the ledger's commit order, for
        :meth:`SinkSnapshot.committed_since_entered`. With ``fence``, no batch commits from
        entering until leaving (applies in progress finish first, new ones wait).
        """

    def read_once(self) -> AbstractContextManager[SinkSnapshot]:
        """Return a context for a read that needs no ledger: one committed state, without
        the commit-order mark of :meth:`snapshot` (``committed_since_entered`` is not
        asked). A sink may answer a read of one statement without a transaction, and raise
        :class:`NotOneStatement` at the second; this one is :meth:`snapshot`."""
        return self.snapshot()

    def after_fork_in_child(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Drop what a forked child must not share with its parent (connections, locks)."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release connections."""
