"""The in-process buffer: per-thread dictionaries of count deltas.

Each thread adds into its own shard under the shard's own lock, so threads never queue on a
shared lock (with the GIL, a contended lock turns every acquisition into a thread switch:
two threads sharing one lock ran 3x slower than one thread alone). The scheduler drains all
shards into one delta.

Memory grows with the number of distinct keys, never with the number of events. Limits
keep it bounded, and none loses a count silently:

- distinct event names (``max_event_names``): counts of further names fold into the event
  ``"(overflow)"``, without properties, and are counted;
- distinct property sets per event (``max_property_sets``): the excess folds into an
  ``{"overflow": "true"}`` series, and is counted;
- distinct buffered keys (``max_buffered_keys``): the thread that finds the buffer full
  pushes it to the store itself (the shard lock released meanwhile), then adds its key. A
  key is dropped (counted, and reported through ``on_drop``) only when that push cannot go
  through: the store is failing and the outbox already holds a buffer's worth.

The two registries behind the first two limits live as long as the process and hold at most
``max_event_names + 1`` names and ``max_property_sets`` sets for each of them.

A drained buffer becomes the *outbox*: one :class:`~analytics_sdk.backends.base.Push` of at
most ``max_push_keys`` counters (the rest stay buffered for the next push), retried until the
store accepts it, while new counts keep aggregating behind it.
"""

from __future__ import annotations

import itertools
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from . import _bridge
from .backends.base import DEFAULT_DEDUPE_WINDOW, Deduped, Delta, Push
from .keys import GroupKey, Groups, HourKey, Properties, UserKey

__all__ = ["MAX_PUSH_KEYS", "OVERFLOW_EVENT", "OVERFLOW_PROPERTIES", "Aggregator", "LocalCounts"]

K = TypeVar("K")
V = TypeVar("V")

OVERFLOW_PROPERTIES: Properties = (("overflow", "true"),)
OVERFLOW_EVENT = "(overflow)"
"""The reserved event that counts events whose name came after ``max_event_names``."""
MAX_PUSH_KEYS = 2_000
"""The most counters one push carries by default (the ``max_push_keys`` setting)."""


class LocalCounts:
    """What this process holds and the store may not have yet: buffer and outbox."""

    __slots__ = ("buffer", "outbox")

    def __init__(self, buffer: Delta, outbox: Push | None) -> None:
        self.buffer = buffer
        self.outbox = outbox


class _Shard:
    """One thread's part of the buffer."""

    __slots__ = (
        "deduped",
        "dropped",
        "groups",
        "hourly",
        "lock",
        "names_overflowed",
        "overflowed",
        "thread",
        "users",
    )

    def __init__(self, thread: threading.Thread) -> None:
        self.lock = threading.Lock()
        self.thread = thread
        self.hourly: dict[HourKey, int] = {}
        self.users: dict[UserKey, int] = {}
        self.groups: dict[GroupKey, int] = {}
        self.deduped: dict[str, Deduped] = {}  # dedupe key -> the first call with it
        self.overflowed = 0
        self.names_overflowed = 0
        self.dropped = 0


def _add(target: dict[Any, int], counts: dict[Any, int], /) -> None:
    for key, value in counts.items():
        target[key] = target.get(key, 0) + value


def _pop(entries: dict[K, V], keys: int) -> dict[K, V]:
    """Remove the first ``keys`` entries of ``entries`` (oldest first) and return them."""
    return {key: entries.pop(key) for key in list(itertools.islice(entries, keys))}


class Aggregator:
    """Sums ``track()`` calls per key until the scheduler pushes them."""

    def __init__(
        self,
        *,
        max_property_sets: int,
        max_buffered_keys: int,
        max_event_names: int = 1_000,
        on_full: Callable[[], bool] = lambda: False,
        on_drop: Callable[[int], None] = lambda count: None,
        on_drain: Callable[[Delta], None] = lambda delta: None,
        dedupe_window: float = DEFAULT_DEDUPE_WINDOW,
        max_push_keys: int = MAX_PUSH_KEYS,
    ) -> None:
        """``on_full`` pushes the buffer, in the calling thread, and returns whether the new
        key may go in; ``on_drop`` hears of each count that could not be held."""
        self.max_property_sets = max_property_sets
        self.max_buffered_keys = max_buffered_keys
        self.max_push_keys = max_push_keys
        """The most counters one push carries; a larger buffer goes in several pushes."""
        self.max_event_names = max_event_names
        self.dedupe_window = dedupe_window
        self._on_full = on_full
        self._on_drop = on_drop
        self._on_drain = on_drain
        self._events: set[str] = {OVERFLOW_EVENT}
        self._property_sets: dict[str, set[Properties]] = {}
        self._reset()

    def _reset(self) -> None:
        self._registry_lock = threading.Lock()  # admits names and property sets one at a time
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._shards_lock = threading.Lock()
        self._outbox_lock = threading.Lock()
        self._outbox: Push | None = None
        self._readers: dict[int, int] = {}  # reader (thread or greenlet) -> queries reading
        self._reader_threads: dict[int, int] = {}  # thread id -> queries reading on it
        self._no_readers = threading.Condition(self._outbox_lock)
        self._drains_waiting = 0  # drains (and spills) waiting for the readers to finish
        self._producer = uuid.uuid4().hex  # a forked child is a new producer
        self._sequence = 0
        self._new_keys = itertools.count(1)  # keys added since the last drain (approximate)
        self._overflowed_before = 0  # from shards of threads that ended
        self._names_overflowed_before = 0
        self._dropped_before = 0

    def _shard(self) -> _Shard:
        shard = _Shard(threading.current_thread())
        with self._shards_lock:
            self._shards.append(shard)
        self._local.shard = shard
        return shard

    def add(
        self, event: str, properties: Properties, hour: int, user_id: str | None, value: int
    ) -> None:
        """Add ``value`` to the hourly counter (and the per-user daily counter, if any)."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shard()
        key = (event, properties, hour)
        lock = shard.lock
        # acquire/release in try/finally costs half of `with lock:` on this path.
        lock.acquire()
        try:
            hourly = shard.hourly
            current = hourly.get(key)
            if current is not None:
                hourly[key] = current + value
            else:
                event = self._add_new(shard, key, value)
            if user_id is not None:
                user_key = (event, user_id, hour // 24)
                users = shard.users
                current = users.get(user_key)
                if current is not None:
                    users[user_key] = current + value
                elif self._has_room():
                    users[user_key] = value
                else:
                    self._add_when_full(shard, "users", user_key, value)
        finally:
            lock.release()

    def add_grouped(
        self,
        event: str,
        properties: Properties,
        hour: int,
        user_id: str | None,
        value: int,
        groups: Groups,
    ) -> None:
        """:meth:`add`, and add ``value`` to the per-group daily counter of each of
        ``groups`` (under the event name the hourly counter was counted under). A separate
        method, so that :meth:`add`, the call without groups, pays nothing for them."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shard()
        key = (event, properties, hour)
        with shard.lock:
            current = shard.hourly.get(key)
            if current is not None:
                shard.hourly[key] = current + value
            else:
                event = self._add_new(shard, key, value)
            day = hour // 24
            if user_id is not None:
                self._add_counter(shard, "users", (event, user_id, day), value)
            for group_type, group_id in groups:
                self._add_counter(
                    shard, "groups", (event, group_type, group_id, user_id, day), value
                )

    def _add_counter(self, shard: _Shard, kind: str, key: UserKey | GroupKey, value: int) -> None:
        """Add to a per-user or per-group counter (``kind`` names the shard's dict), with
        ``shard.lock`` held."""
        target = getattr(shard, kind)
        current = target.get(key)
        if current is not None:
            target[key] = current + value
        elif self._has_room():
            target[key] = value
        else:
            self._add_when_full(shard, kind, key, value)

    def add_deduped(
        self,
        dedupe_key: str,
        event: str,
        properties: Properties,
        hour: int,
        user_id: str | None,
        value: int,
        groups: Groups = (),
    ) -> None:
        """Hold a call made with ``dedupe_key`` for the next push (the first call with a key
        is kept; the store decides whether the key was counted already). The limits on
        event names and property sets apply as in :meth:`add`; each key takes a place in
        ``max_buffered_keys``, and the thread that finds the buffer full pushes it first
        (while the store fails, the call is kept all the same: the spool bounds memory)."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shard()
        if not self._has_room():
            self._on_full()  # push first, from this thread, as add() does; never drop the call
        with shard.lock:
            if dedupe_key in shard.deduped:
                return
            if event not in self._events and not self._admit_event(event):
                shard.names_overflowed += value
                event, properties = OVERFLOW_EVENT, ()
            if properties:
                seen = self._property_sets.get(event)
                if (seen is None or properties not in seen) and not self._admit_properties(
                    event, properties
                ):
                    shard.overflowed += value
                    properties = OVERFLOW_PROPERTIES
            shard.deduped[dedupe_key] = Deduped(
                dedupe_key, event, properties, hour, user_id, value, groups
            )

    def _has_room(self) -> bool:
        return next(self._new_keys) <= self.max_buffered_keys

    def _add_new(self, shard: _Shard, key: HourKey, value: int) -> str:
        """Add a key the buffer does not hold; return the event name it was counted under."""
        event, properties, hour = key
        if event not in self._events and not self._admit_event(event):
            shard.names_overflowed += value
            event, properties = OVERFLOW_EVENT, ()
            key = (event, properties, hour)
            current = shard.hourly.get(key)
            if current is not None:
                shard.hourly[key] = current + value
                return event
        if properties:
            seen = self._property_sets.get(event)
            if (seen is None or properties not in seen) and not self._admit_properties(
                event, properties
            ):
                shard.overflowed += value
                key = (event, OVERFLOW_PROPERTIES, hour)
                current = shard.hourly.get(key)
                if current is not None:
                    shard.hourly[key] = current + value
                    return event
        if self._has_room():
            shard.hourly[key] = value
        else:
            self._add_when_full(shard, "hourly", key, value)
        return event

    def _admit_event(self, event: str) -> bool:
        """Remember a new event name if there is room for it; return whether there was."""
        if len(self._events) > self.max_event_names:  # full: no lock needed to say no
            return False
        with self._registry_lock:
            if event in self._events:
                return True
            if len(self._events) > self.max_event_names:  # the overflow event is extra
                return False
            self._events.add(event)
            return True

    def _admit_properties(self, event: str, properties: Properties) -> bool:
        """Remember a new property set of ``event`` if it has room; return whether it had."""
        seen = self._property_sets.get(event)
        if seen is not None and len(seen) >= self.max_property_sets and properties not in seen:
            return False  # full: no lock needed to say no
        with self._registry_lock:
            seen = self._property_sets.setdefault(event, set())
            if properties in seen:
                return True
            if len(seen) >= self.max_property_sets:
                return False
            seen.add(properties)
            return True

    def _add_when_full(
        self, shard: _Shard, kind: str, key: HourKey | UserKey | GroupKey, value: int
    ) -> None:
        """Add a new key to the shard's ``kind`` dict (``hourly``, ``users``, ``groups``) of
        a full buffer: push first, from this thread; drop only if the push made no room.
        Called and returning with ``shard.lock`` held."""
        lock = shard.lock
        lock.release()  # the push drains this shard too, and user code may log or track
        try:
            admit = self._on_full()
        finally:
            lock.acquire()
        target = getattr(shard, kind)  # the dict now: a drain meanwhile replaced it
        current = target.get(key)
        if current is not None:  # the same key came in while the lock was released
            target[key] = current + value
        elif self._has_room() or admit:  # a push that went through just emptied the buffer
            target[key] = value
        else:
            shard.dropped += value
            lock.release()
            try:
                self._on_drop(value)
            finally:
                lock.acquire()

    def _take(self, deduped: dict[str, Deduped], keys: int | None = None) -> Delta:
        """Empty every shard into one delta (and ``deduped``), or only as many counters and
        calls with a dedupe key as ``keys``, the others left where they are; forget shards
        of threads that ended."""
        delta = Delta()
        room = sys.maxsize if keys is None else keys
        with self._shards_lock:
            shards = list(self._shards)
        for shard in shards:
            if room == 0:
                break
            with shard.lock:
                held = len(shard.hourly) + len(shard.users) + len(shard.groups)
                if held <= room:
                    hourly, users, groups = shard.hourly, shard.users, shard.groups
                    shard.hourly, shard.users, shard.groups = {}, {}, {}
                    room -= held
                else:
                    hourly = _pop(shard.hourly, room)
                    users = _pop(shard.users, room - len(hourly))
                    groups = _pop(shard.groups, room - len(hourly) - len(users))
                    room = 0
                if shard.deduped and room:  # calls with a dedupe key count as counters
                    calls = shard.deduped
                    if room < len(calls):
                        calls = _pop(calls, room)
                    else:
                        shard.deduped = {}
                    for key, call in calls.items():
                        deduped.setdefault(key, call)
                    room -= len(calls)
            if not delta:
                delta = Delta(hourly=hourly, users=users, groups=groups)  # no copy
            else:
                _add(delta.hourly, hourly)
                _add(delta.users, users)
                _add(delta.groups, groups)
        self._new_keys = itertools.count(1)
        self._forget_ended(shards)
        return delta

    def _forget_ended(self, shards: list[_Shard]) -> None:
        ended = [s for s in shards if not s.thread.is_alive()]
        if not ended:
            return
        with self._shards_lock:
            for shard in ended:
                with shard.lock:
                    if shard.hourly or shard.users or shard.groups or shard.deduped:
                        continue  # drained next time
                    self._shards.remove(shard)
                    self._overflowed_before += shard.overflowed
                    self._names_overflowed_before += shard.names_overflowed
                    self._dropped_before += shard.dropped

    @property
    def overflowed(self) -> int:
        """Counts folded into ``{"overflow": "true"}`` series since the start."""
        return self._overflowed_before + sum(s.overflowed for s in list(self._shards))

    @property
    def names_overflowed(self) -> int:
        """Counts folded into the ``"(overflow)"`` event since the start."""
        return self._names_overflowed_before + sum(s.names_overflowed for s in list(self._shards))

    @property
    def dropped(self) -> int:
        """Counts that found the buffer full while the store failed, since the start."""
        return self._dropped_before + sum(s.dropped for s in list(self._shards))

    @property
    def buffered_keys(self) -> int:
        """How many distinct keys the buffer holds now."""
        return sum(len(s.hourly) + len(s.users) + len(s.groups) for s in list(self._shards))

    @property
    def pushes_held(self) -> int:
        """How many pushes the buffer makes now (``max_push_keys`` counters and calls with a
        dedupe key each)."""
        held = self.buffered_keys + sum(len(s.deduped) for s in list(self._shards))
        return -(-held // self.max_push_keys)

    def next_push(self, *, wait: bool = True) -> Push | None:
        """Return the push to send: the unacknowledged outbox, else the drained buffer (its
        first ``max_push_keys`` counters; the others stay buffered).

        The buffer is not drained while a query reads it and the store (see
        :meth:`reading`): with ``wait`` the drain waits for the queries reading now (not for
        later ones, which wait for it), never for a push over the network; without it (a
        write-through push from track()), or in a thread pushing from inside its own query
        (a logging handler tracking an event), the buffer is left for the next push.
        """
        with self._outbox_lock:
            if self._outbox is None:
                if not self._buffered() or not self._readers_gone(wait):
                    return None  # nothing to drain (no need to wait), or left for later
                deduped: dict[str, Deduped] = {}
                # The counters past max_push_keys stay buffered for the next push (beside
                # them the buffer takes max_buffered_keys new keys, as it does beside an
                # outbox the store has not taken).
                delta = self._take(deduped, self.max_push_keys)
                if delta or deduped:
                    self._on_drain(delta)
                    self._sequence += 1
                    self._outbox = Push(
                        producer=self._producer,
                        sequence=self._sequence,
                        delta=delta,
                        deduped=tuple(deduped.values()),
                        dedupe_window=self.dedupe_window,
                    )
            return self._outbox

    def push_done(self, push: Push) -> None:
        """Forget the outbox once the store has accepted ``push``."""
        with self._outbox_lock:
            if self._outbox is push:
                self._outbox = None

    def spill(self, write: Callable[[list[Push]], object]) -> list[Push]:
        """Hand the outbox and the buffer to ``write`` (the spool) as pushes; return them.

        Like a drain for a push, it waits for the queries reading the buffer and the store
        (a spooled count may be replayed into the store by another process at once).

        If ``write`` returns, this process goes on as a new producer: the store drops a push
        whose sequence is not above its producer's last, so a later push of the old producer
        landing first would make the spooled ones no-ops. If it raises, the counts stay here.
        """
        with self._outbox_lock:
            if not self._readers_gone(wait=True):
                return []  # spilled from inside a query of this thread: kept for later
            pushes = [] if self._outbox is None else [self._outbox]
            deduped: dict[str, Deduped] = {}
            delta = self._take(deduped)
            if delta or deduped:
                sequence = self._sequence + 1
                pushes.append(
                    Push(
                        producer=self._producer,
                        sequence=sequence,
                        delta=delta,
                        deduped=tuple(deduped.values()),
                        dedupe_window=self.dedupe_window,
                    )
                )
            if not pushes:
                return []
            try:
                write(pushes)
            except BaseException:
                if delta or deduped:
                    self._put_back(delta, deduped)
                raise
            if delta:
                self._on_drain(delta)
            self._outbox = None  # a push of it still in flight is harmless: same sequence
            self._producer = uuid.uuid4().hex
            self._sequence = 0
            return pushes

    def _put_back(self, delta: Delta, deduped: dict[str, Deduped]) -> None:
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._shard()
        with shard.lock:
            _add(shard.hourly, delta.hourly)
            _add(shard.users, delta.users)
            _add(shard.groups, delta.groups)
            for key, call in deduped.items():
                shard.deduped.setdefault(key, call)

    @property
    def being_read(self) -> bool:
        """Whether a query is reading the buffer now (a drain without waiting would skip)."""
        return bool(self._readers)

    def _readers_gone(self, wait: bool) -> bool:
        """Whether the buffer may be drained now (called holding ``_outbox_lock``): no query
        is reading it, or, with ``wait``, none is once those reading now are done. A drain
        waiting holds new queries back, so a stream of overlapping queries cannot put it
        off for good; a thread inside its own query never waits for itself."""
        if not self._readers:
            return True
        if not wait or threading.get_ident() in self._reader_threads:
            return False  # this thread's own query (or a coroutine's, on its event loop)
        self._drains_waiting += 1
        try:
            while self._readers:
                self._no_readers.wait()
        finally:
            self._drains_waiting -= 1
            # The queries held back go on once the lock is released, after the drain.
            self._no_readers.notify_all()
        return True

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Keep the buffer from being drained into a new push (or spooled) while the caller
        reads it and then the store, so each buffered count is read once. A push already
        under way is not waited for: its outbox is in :meth:`local_counts`, and the caller
        asks the store whether it landed. A drain already waiting goes first (it waits only
        for the queries before it). track() never waits."""
        me, thread, in_coroutine = _reader()
        with self._outbox_lock:
            # A coroutine's query (a greenlet on the event loop's thread) never blocks that
            # thread: the queries it would wait behind may be other coroutines of the loop.
            if me not in self._readers and not in_coroutine:
                while self._drains_waiting:
                    self._no_readers.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
            self._reader_threads[thread] = self._reader_threads.get(thread, 0) + 1
        try:
            yield
        finally:
            with self._outbox_lock:
                _release(self._readers, me)
                _release(self._reader_threads, thread)
                if not self._readers:
                    self._no_readers.notify_all()

    def local_counts(self) -> LocalCounts:
        """Return a copy of the buffer and the outbox (each shard read consistently)."""
        buffer = Delta()
        with self._outbox_lock:
            outbox = self._outbox
            with self._shards_lock:
                shards = list(self._shards)
            for shard in shards:
                with shard.lock:
                    _add(buffer.hourly, shard.hourly)
                    _add(buffer.users, shard.users)
                    _add(buffer.groups, shard.groups)
        return LocalCounts(buffer, outbox)

    def holds_deduped(self) -> bool:
        """Whether the buffer holds calls made with a dedupe key (not yet pushed)."""
        return any(s.deduped for s in list(self._shards))

    def is_empty(self) -> bool:
        """Whether neither the buffer nor the outbox holds a count."""
        with self._outbox_lock:
            return self._outbox is None and not self._buffered()

    def _buffered(self) -> bool:
        """Whether the buffer holds a count (a count added meanwhile goes to the next push)."""
        return any(s.hourly or s.users or s.groups or s.deduped for s in list(self._shards))

    def before_fork(self) -> None:
        """Hold every lock across ``fork()`` so the child copies a consistent state."""
        self._outbox_lock.acquire()
        self._shards_lock.acquire()
        for shard in self._shards:
            shard.lock.acquire()

    def after_fork_in_parent(self) -> None:
        """Release the locks taken by :meth:`before_fork`."""
        for shard in self._shards:
            shard.lock.release()
        self._shards_lock.release()
        self._outbox_lock.release()

    def after_fork_in_child(self) -> None:
        """Start empty: the parent still owns (and will push) what was buffered."""
        self._reset()


def _reader() -> tuple[int, int, bool]:
    """Who reads: (reader id, thread id, whether it is a coroutine's query, run by the async
    API in a greenlet on the event loop's thread)."""
    thread = threading.get_ident()
    if _bridge.in_bridge():
        return _bridge.current_id(), thread, True
    return thread, thread, False


def _release(holders: dict[int, int], key: int) -> None:
    left = holders.pop(key) - 1
    if left:
        holders[key] = left
