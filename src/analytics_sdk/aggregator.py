"""The in-process buffer: a thread-safe dictionary of count deltas.

Memory grows with the number of distinct keys, never with the number of events. Two limits
keep it bounded: distinct property sets per event (the excess folds into an
``{"overflow": "true"}`` series, and is counted) and distinct buffered keys (what does not fit
is counted as dropped and an early push is requested). A drained buffer becomes the
*outbox*: one :class:`~analytics_sdk.backends.base.Push` with an id, retried until the store
accepts it, while new counts keep aggregating behind it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from .backends.base import Delta, Push
from .keys import HourKey, Properties, UserKey

__all__ = ["OVERFLOW_PROPERTIES", "Aggregator", "LocalCounts"]

OVERFLOW_PROPERTIES: Properties = (("overflow", "true"),)


class LocalCounts:
    """What this process holds and the store may not have yet: buffer and outbox."""

    __slots__ = ("buffer", "outbox")

    def __init__(self, buffer: Delta, outbox: Push | None) -> None:
        self.buffer = buffer
        self.outbox = outbox


class Aggregator:
    """Sums ``track()`` calls per key until the scheduler pushes them."""

    def __init__(
        self,
        *,
        max_property_sets: int,
        max_buffered_keys: int,
        on_full: Callable[[], None] = lambda: None,
    ) -> None:
        self.max_property_sets = max_property_sets
        self.max_buffered_keys = max_buffered_keys
        self._on_full = on_full
        self._reset()

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.hourly: dict[HourKey, int] = {}
        self.users: dict[UserKey, int] = {}
        self._outbox: Push | None = None
        self._producer = uuid.uuid4().hex  # a forked child is a new producer
        self._sequence = 0
        self._property_sets: dict[str, set[Properties]] = {}
        self.overflowed = 0
        self.dropped = 0

    def add(
        self, event: str, properties: Properties, hour: int, user_id: str | None, value: int
    ) -> None:
        """Add ``value`` to the hourly counter (and the per-user daily counter, if any)."""
        key = (event, properties, hour)
        lock = self.lock
        # acquire/release in try/finally costs half of `with lock:` on this path.
        lock.acquire()
        try:
            hourly = self.hourly
            current = hourly.get(key)
            if current is not None:
                hourly[key] = current + value
            else:
                self._add_new(key, value)
            if user_id is not None:
                user_key = (event, user_id, hour // 24)
                users = self.users
                current = users.get(user_key)
                if current is not None:
                    users[user_key] = current + value
                elif self._has_room():
                    users[user_key] = value
                else:
                    self.dropped += value
        finally:
            lock.release()

    def _has_room(self) -> bool:
        if len(self.hourly) + len(self.users) < self.max_buffered_keys:
            return True
        self._on_full()
        return False

    def _add_new(self, key: HourKey, value: int) -> None:
        event, properties, hour = key
        if properties:
            seen = self._property_sets.setdefault(event, set())
            if properties not in seen:
                if len(seen) >= self.max_property_sets:
                    self.overflowed += value
                    key = (event, OVERFLOW_PROPERTIES, hour)
                    current = self.hourly.get(key)
                    if current is not None:
                        self.hourly[key] = current + value
                        return
                else:
                    seen.add(properties)
        if self._has_room():
            self.hourly[key] = value
        else:
            self.dropped += value

    @property
    def buffered_keys(self) -> int:
        """How many distinct keys the buffer holds now."""
        return len(self.hourly) + len(self.users)

    def next_push(self) -> Push | None:
        """Return the push to send: the unacknowledged outbox, else the drained buffer."""
        with self.lock:
            if self._outbox is None and (self.hourly or self.users):
                delta = Delta(hourly=self.hourly, users=self.users)
                self._sequence += 1
                self._outbox = Push(producer=self._producer, sequence=self._sequence, delta=delta)
                self.hourly = {}
                self.users = {}
            return self._outbox

    def push_done(self, push: Push) -> None:
        """Forget the outbox once the store has accepted ``push``."""
        with self.lock:
            if self._outbox is push:
                self._outbox = None

    def local_counts(self) -> LocalCounts:
        """Return a consistent copy of the buffer and the outbox."""
        with self.lock:
            return LocalCounts(
                Delta(hourly=dict(self.hourly), users=dict(self.users)), self._outbox
            )

    def is_empty(self) -> bool:
        """Whether neither the buffer nor the outbox holds a count."""
        with self.lock:
            return self._outbox is None and not self.hourly and not self.users

    def before_fork(self) -> None:
        """Hold the lock across ``fork()`` so the child copies a consistent state."""
        self.lock.acquire()

    def after_fork_in_parent(self) -> None:
        """Release the lock taken by :meth:`before_fork`."""
        self.lock.release()

    def after_fork_in_child(self) -> None:
        """Start empty: the parent still owns (and will push) what was buffered."""
        limits = self._property_sets
        self._reset()
        self._property_sets = limits
