"""In-memory counter store and sink: the embedded default, and the backends for users' tests.

They implement the same protocol as Redis and PostgreSQL (claims, ledger, idempotent pushes),
so code tested against them behaves the same in production. They hold data for the life of
the process only.
"""

from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from ..keys import Properties
from .base import (
    DEFAULT_MAX_BATCH_KEYS,
    Batch,
    Bucket,
    CounterStore,
    Delta,
    Pending,
    PropertyValue,
    Push,
    Retention,
    Sink,
    SinkSnapshot,
    UserDay,
    group_user_days_of,
    groups_of,
    hourly_of,
    in_range,
    matches,
    property_hours_of,
    range_index,
    rank_values,
    tally_retention,
    user_days_of,
    users_of,
)

__all__ = ["MemoryCounterStore", "MemorySink"]

K = TypeVar("K")


def _add(target: dict[K, int], counts: dict[K, int]) -> None:
    for key, value in counts.items():
        target[key] = target.get(key, 0) + value


def _take(source: dict[K, int], target: dict[K, int], room: int) -> int:
    """Move up to ``room`` counters from ``source`` to ``target``; return the room left."""
    while source and room:
        key, value = source.popitem()
        target[key] = value
        room -= 1
    return room


class MemoryCounterStore(CounterStore):
    """A counter store in this process's memory (``memory://``)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._live = Delta()
        self._claims: dict[str, Batch] = {}
        self._sequences: dict[str, int] = {}  # producer -> last sequence applied
        self._dedupe: dict[str, float] = {}  # dedupe key -> end of its window (clock time)
        self._dedupe_pruned = 0.0

    def __repr__(self) -> str:
        return "MemoryCounterStore()"

    def push(self, push: Push) -> bool:
        with self._lock:
            if push.sequence <= self._sequences.get(push.producer, -1):
                return False
            self._sequences[push.producer] = push.sequence
            _add(self._live.hourly, push.delta.hourly)
            _add(self._live.users, push.delta.users)
            _add(self._live.groups, push.delta.groups)
            if push.deduped:
                self._apply_deduped(push)
            return True

    def _apply_deduped(self, push: Push) -> None:
        """Add the calls whose dedupe key is not marked, and mark it (the lock is held)."""
        now = self._clock()
        marks = self._dedupe
        if len(marks) > 1024 and now - self._dedupe_pruned > 60:  # forget ended windows
            self._dedupe_pruned = now
            for key in [k for k, until in marks.items() if until <= now]:
                del marks[key]
        for call in push.deduped:
            until = marks.get(call.key)
            if until is not None and until > now:
                continue  # counted already within the window
            marks[call.key] = now + push.dedupe_window
            hour_key = (call.event, call.properties, call.hour)
            self._live.hourly[hour_key] = self._live.hourly.get(hour_key, 0) + call.value
            if call.user_id is not None:
                user_key = (call.event, call.user_id, call.hour // 24)
                self._live.users[user_key] = self._live.users.get(user_key, 0) + call.value
            groups = self._live.groups
            for group_type, group_id in call.groups:
                group_key = (call.event, group_type, group_id, call.user_id, call.hour // 24)
                groups[group_key] = groups.get(group_key, 0) + call.value

    def has_push(self, push: Push) -> bool:
        with self._lock:
            return push.sequence <= self._sequences.get(push.producer, -1)

    def claim_batches(self, max_keys: int = DEFAULT_MAX_BATCH_KEYS) -> Iterator[Batch]:
        while True:
            now = self._clock()
            with self._lock:
                if not self._live:
                    return
                delta = Delta()
                room = _take(self._live.hourly, delta.hourly, max_keys)
                room = _take(self._live.users, delta.users, room)
                room = _take(self._live.groups, delta.groups, room)
                batch = Batch(id=uuid.uuid4().hex, delta=delta, claimed_at=now)
                self._claims[batch.id] = batch
                drained = room > 0 or not self._live
            yield batch
            if drained:
                return

    def claimed_ids(self, older_than: float = 0.0) -> dict[str, float]:
        cutoff = self._clock() - older_than
        with self._lock:
            return {b.id: b.claimed_at for b in self._claims.values() if b.claimed_at <= cutoff}

    def read_claim(self, batch_id: str) -> Batch | None:
        with self._lock:
            return self._claims.get(batch_id)

    def ack(self, batch_id: str) -> None:
        with self._lock:
            self._claims.pop(batch_id, None)

    def pending_hourly(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> Pending[int]:
        with self._lock:
            return Pending(
                live=hourly_of(self._live.hourly, event, start, end, properties),
                claimed={
                    batch_id: hourly_of(batch.delta.hourly, event, start, end, properties)
                    for batch_id, batch in self._claims.items()
                },
            )

    def pending_property_hourly(
        self, event: str, by: str, start: int | None, end: int | None, properties: Properties
    ) -> Pending[tuple[PropertyValue, int]]:
        with self._lock:
            return Pending(
                live=property_hours_of(self._live.hourly, event, by, start, end, properties),
                claimed={
                    batch_id: property_hours_of(
                        batch.delta.hourly, event, by, start, end, properties
                    )
                    for batch_id, batch in self._claims.items()
                },
            )

    def pending_users(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> Pending[str]:
        with self._lock:
            return Pending(
                live=users_of(self._live.users, event, start, end, user_id),
                claimed={
                    batch_id: users_of(batch.delta.users, event, start, end, user_id)
                    for batch_id, batch in self._claims.items()
                },
            )

    def pending_user_days(
        self,
        events: Collection[str] | None,
        start: int | None,
        end: int | None,
        group: tuple[str, str] | None = None,
    ) -> Pending[UserDay]:
        def of(delta: Delta) -> dict[UserDay, int]:
            if group is None:
                return user_days_of(delta.users, events, start, end)
            return group_user_days_of(delta.groups, events, start, end, group)

        with self._lock:
            return Pending(
                live=of(self._live),
                claimed={batch_id: of(batch.delta) for batch_id, batch in self._claims.items()},
            )

    def pending_groups(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> Pending[str]:
        with self._lock:
            return Pending(
                live=groups_of(self._live.groups, event, group_type, start, end, group_id),
                claimed={
                    batch_id: groups_of(batch.delta.groups, event, group_type, start, end, group_id)
                    for batch_id, batch in self._claims.items()
                },
            )

    def pending_event_totals(self) -> Pending[str]:
        with self._lock:
            return Pending(
                live=_per_event(self._live),
                claimed={
                    batch_id: _per_event(batch.delta) for batch_id, batch in self._claims.items()
                },
            )

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


def _per_event(delta: Delta) -> dict[str, int]:
    out: dict[str, int] = {}
    for (event, _, _), value in delta.hourly.items():
        out[event] = out.get(event, 0) + value
    return out


class MemorySink(Sink):
    """A sink in this process's memory (``memory://``), with a real ledger."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._hourly: defaultdict[str, dict[tuple[Properties, int], int]] = defaultdict(dict)
        self._users: defaultdict[str, dict[tuple[str, int], int]] = defaultdict(dict)
        # (event, group type) -> (group id, user id or None, day) -> count
        self._groups: defaultdict[tuple[str, str], dict[tuple[str, str | None, int], int]] = (
            defaultdict(dict)
        )
        self._ledger: dict[str, float] = {}
        self._order: list[str] = []  # batch ids in commit order: a snapshot marks a length

    def __repr__(self) -> str:
        return "MemorySink()"

    def apply(self, batch: Batch) -> bool:
        with self._lock:
            if batch.id in self._ledger:
                return False
            self._ledger[batch.id] = self._clock()
            self._order.append(batch.id)
            for (event, properties, hour), value in batch.delta.hourly.items():
                rows = self._hourly[event]
                rows[properties, hour] = rows.get((properties, hour), 0) + value
            for (event, user_id, day), value in batch.delta.users.items():
                users = self._users[event]
                users[user_id, day] = users.get((user_id, day), 0) + value
            for (event, group_type, group_id, user, day), value in batch.delta.groups.items():
                counts = self._groups[event, group_type]
                counts[group_id, user, day] = counts.get((group_id, user, day), 0) + value
            return True

    def applied(self, batch_ids: Iterable[str]) -> set[str]:
        with self.snapshot() as snapshot:
            return snapshot.applied(batch_ids)

    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        with self.snapshot() as snapshot:
            return snapshot.hourly_counts(event, start, end, properties)

    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        with self.snapshot() as snapshot:
            return snapshot.user_counts(event, start, end, user_id)

    def event_totals(self) -> dict[str, int]:
        with self.snapshot() as snapshot:
            return snapshot.event_totals()

    @contextmanager
    def snapshot(self, *, fence: bool = False) -> Iterator[SinkSnapshot]:
        # Holding the lock is both a snapshot and a fence: nothing commits meanwhile. Without
        # the fence it is taken at the first read, so applies go on while the store is read.
        snapshot = _MemorySnapshot(self, fence=fence)
        try:
            yield snapshot
        finally:
            snapshot.release()

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


class _MemorySnapshot(SinkSnapshot):
    """Reads of a :class:`MemorySink` under its lock, held from the first read on."""

    def __init__(self, sink: MemorySink, *, fence: bool) -> None:
        self._sink = sink
        self._held = False
        if fence:
            self.hold()
            self._entered = len(sink._order)
        else:
            with sink._lock:
                self._entered = len(sink._order)

    def hold(self) -> None:
        """Take the sink's lock, if not held yet."""
        if not self._held:
            self._sink._lock.acquire()
            self._held = True

    def release(self) -> None:
        """Let go of the sink's lock, if held."""
        if self._held:
            self._held = False
            self._sink._lock.release()

    def hourly_counts(
        self, event: str, start: int | None, end: int | None, properties: Properties
    ) -> dict[int, int]:
        self.hold()
        out: dict[int, int] = {}
        for (props, hour), value in self._sink._hourly.get(event, {}).items():
            if in_range(hour, start, end) and matches(props, properties):
                out[hour] = out.get(hour, 0) + value
        return out

    def property_counts(
        self,
        event: str,
        by: str,
        bounds: Sequence[int | None],
        properties: Properties,
        limit: int | None,
        keep: Collection[str],
    ) -> dict[tuple[PropertyValue, int], int]:
        self.hold()
        starts = [b for b in bounds[1:-1] if b is not None]
        out: dict[tuple[PropertyValue, int], int] = {}
        for (props, hour), n in self._sink._hourly.get(event, {}).items():
            if in_range(hour, bounds[0], bounds[-1]) and matches(props, properties):
                key = (dict(props).get(by, Bucket.NONE), bisect_right(starts, hour))
                out[key] = out.get(key, 0) + n
        return rank_values(out, limit, keep)

    def user_counts(
        self, event: str, start: int | None, end: int | None, user_id: str | None
    ) -> dict[str, int]:
        self.hold()
        out: dict[str, int] = {}
        for (user, day), value in self._sink._users.get(event, {}).items():
            if in_range(day, start, end) and (user_id is None or user == user_id):
                out[user] = out.get(user, 0) + value
        return out

    def group_counts(
        self,
        event: str,
        group_type: str,
        start: int | None,
        end: int | None,
        group_id: str | None,
    ) -> dict[str, int]:
        self.hold()
        out: dict[str, int] = {}
        for (group, _, day), value in self._sink._groups.get((event, group_type), {}).items():
            if in_range(day, start, end) and (group_id is None or group == group_id):
                out[group] = out.get(group, 0) + value
        return out

    def _user_days(self, event: str | None) -> Iterator[tuple[str, int]]:
        """Yield ``(user, day)`` of every per-user count of ``event`` (any if None)."""
        for name, rows in self._sink._users.items():
            if event is None or name == event:
                yield from rows

    def _active_days(
        self, events: Collection[str] | None, group: tuple[str, str] | None
    ) -> Iterator[tuple[str, int]]:
        """Yield ``(user, day)`` of the per-user counts of ``events`` (any if None), or with
        ``group`` of that group's per-group counts that have a user."""
        if group is None:
            for name, rows in self._sink._users.items():
                if events is None or name in events:
                    yield from rows
            return
        for (name, kind), counts in self._sink._groups.items():
            if kind == group[0] and (events is None or name in events):
                for gid, user, day in counts:
                    if gid == group[1] and user is not None:
                        yield user, day

    def active_users(
        self,
        events: Collection[str] | None,
        ranges: Sequence[tuple[int, int]],
        users: Collection[str],
        group: tuple[str, str] | None = None,
    ) -> tuple[list[int], dict[str, set[int]]]:
        self.hold()
        excluded = set(users)
        active: list[set[str]] = [set() for _ in ranges]
        members: dict[str, set[int]] = {}
        for user, day in self._active_days(events, group):
            i = range_index(ranges, day)
            if 0 <= i < len(ranges):
                if user in excluded:
                    members.setdefault(user, set()).add(i)
                else:
                    active[i].add(user)
        return [len(found) for found in active], members

    def retention(
        self,
        cohort_event: str | None,
        return_event: str | None,
        ranges: Sequence[tuple[int, int]],
        cohorts: int,
        users: Collection[str],
    ) -> Retention:
        self.hold()
        first_days: dict[str, int] = {}
        for user, day in self._user_days(cohort_event):
            if day < first_days.get(user, day + 1):
                first_days[user] = day
        returns: dict[str, set[int]] = {}
        for user, day in self._user_days(return_event):
            i = range_index(ranges, day)
            if 0 <= i < len(ranges):
                returns.setdefault(user, set()).add(i)
        first = {user: range_index(ranges, day) for user, day in first_days.items()}
        excluded = set(users)
        kept = {u: c for u, c in first.items() if u not in excluded}
        sizes, retained = tally_retention(kept, returns, cohorts, len(ranges) - cohorts + 1)
        return Retention(
            sizes=sizes,
            retained=retained,
            first={u: c for u, c in first.items() if u in excluded and c < cohorts},
            returns={u: r for u, r in returns.items() if u in excluded},
        )

    def event_totals(self) -> dict[str, int]:
        self.hold()
        return {event: sum(rows.values()) for event, rows in self._sink._hourly.items() if rows}

    def applied(self, batch_ids: Iterable[str]) -> set[str]:
        self.hold()
        return {batch_id for batch_id in batch_ids if batch_id in self._sink._ledger}

    def committed_since_entered(self) -> set[str]:
        self.hold()
        return set(self._sink._order[self._entered :])
