"""``Analytics``: the object that owns one pipeline (buffer, scheduler, store, sink)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import date, datetime, tzinfo
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

import attrs

from . import _bridge, process
from .aggregator import Aggregator
from .backends import sink_from_url, store_from_url
from .backends.base import Bucket, CounterStore, Delta, PropertyValue, Sink
from .config import Config
from .errors import ConfigurationError
from .events import (
    MAX_VALUE,
    Validator,
    check_group_type,
    validate_dedupe_key,
    validate_group,
    validate_property_key,
    validate_timestamp,
    validate_value,
)
from .feature import FEATURE_EVENT, NO_NAME, FeatureTracker, feature_name, no_name_given
from .keys import Groups, Properties, day_of, hour_of
from .query import (
    MAX_RETENTION_PERIODS,
    MAX_VALUES,
    Cohort,
    QueryEngine,
    check_day,
    check_moment,
    day_hours,
    day_periods,
    periods,
    resolve_tz,
)
from .scheduler import ASYNC_BACKENDS, FlushResult, Scheduler
from .scope import Scope, current_scope, merge_groups, merge_properties
from .stats import EventTotals, FeatureStats

if TYPE_CHECKING:
    from .prometheus import MetricsServer

__all__ = ["NONE", "OTHER", "Analytics"]

OTHER = Bucket.OTHER.value
"""``"(other)"``: a breakdown's key for the values not listed on their own."""
NONE = Bucket.NONE.value
"""``"(none)"``: a breakdown's key for the events without the property."""

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("analytics_sdk")
_HOOKED: Any = object()
"""Passed by :meth:`Analytics._track_hooked` as ``dedupe_key``: no key, but run the hook."""
_ASYNC_QUERY: contextvars.ContextVar[QueryEngine | None] = contextvars.ContextVar(
    "analytics_sdk_async_query", default=None
)
"""The query engine on the event loop's backends, inside an async query's bridge."""


class Analytics:
    """One analytics pipeline: ``track()`` into a buffer, pushed, flushed, queried.

    Construct it with a :class:`~analytics_sdk.config.Config` or with its settings as keyword
    arguments (``Analytics(store="memory://", flush_interval=30)``); settings not given are
    read from ``ANALYTICS_*`` variables, then defaults. Use it as a context manager to shut it
    down on exit.
    """

    def __init__(self, config: Config | None = None, **settings: Any) -> None:
        if config is not None and settings:
            raise ConfigurationError("pass either a Config or keyword settings, not both")
        self.config = config if config is not None else Config.load(**settings)
        if not self.config.enabled:
            # Off: the same object over empty memory backends, with nothing started.
            self.config = attrs.evolve(
                self.config,
                store="memory://",
                sink="memory://",
                background=False,
                metrics_port=None,
                spool_dir=None,
            )
        clock = self.config.clock
        self._now = clock.time
        store, sink = self.config.store, self.config.sink
        self.store: CounterStore = (
            store_from_url(store, clock.time) if isinstance(store, str) else store
        )
        self.sink: Sink = sink_from_url(sink, clock.time) if isinstance(sink, str) else sink
        self._validator = Validator(self.config.max_properties, self.config.group_types)
        self._names = self._validator.names
        self._property_sets = self._validator.property_sets
        self._user_ids = self._validator.user_ids
        self._group_sets = self._validator.group_sets
        self.event_totals = EventTotals(self.config.prometheus_labels)
        self.features = FeatureStats(max_features=self.config.max_property_sets)
        self.aggregator = Aggregator(
            max_property_sets=self.config.max_property_sets,
            max_buffered_keys=self.config.max_buffered_keys,
            max_push_keys=self.config.max_push_keys,
            max_event_names=self.config.max_event_names,
            on_full=self._buffer_full,
            on_drop=self._dropped,
            on_drain=self._drained,
            dedupe_window=self.config.dedupe_window,
        )
        self.scheduler = Scheduler(self.aggregator, self.store, self.sink, self.config)
        self._sync_query = QueryEngine(self.aggregator, self.store, self.sink)
        # The async API's backends, per event loop (their connections belong to one).
        self._twins: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[CounterStore, Sink]
        ] = weakref.WeakKeyDictionary()
        self._twins_lock = threading.Lock()
        self._flush_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._query_turns: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()
        self._add = self.aggregator.add
        self._add_grouped = self.aggregator.add_grouped
        if self.config.push_interval == 0:
            self._add = self._add_write_through
            self._add_grouped = self._add_grouped_through
        self._before_track = self.config.before_track
        self._hook_failures = 0
        if self._before_track is not None:
            self.track = self._track_hooked  # type: ignore[method-assign]
        if not self.config.enabled:
            self.track = self._track_disabled  # type: ignore[method-assign]
            self._add = self._add_disabled
            self._add_grouped = self._add_grouped_disabled
            self._record_feature = self._record_feature_disabled  # type: ignore[method-assign]
        self.scheduler.on_error = self.config.on_error
        self._sync_query.on_error = self.scheduler.report_error
        self._hour_cache: tuple[float, float, int] = (0.0, 0.0, 0)
        self._enter_hour(self._now())
        self.closed = False
        self._warned_after_shutdown = False
        self._warned_incomplete: str | None = None  # why the last shutdown was incomplete
        self._settled = False  # closed, its last flush complete, nothing tracked since
        process.register(self)
        if self.config.background:
            self.scheduler.start()
        self.metrics_server: MetricsServer | None = None
        if self.config.metrics_port is not None:
            from .prometheus import start_http_server

            try:
                self.metrics_server = start_http_server(
                    self.config.metrics_port, self.config.metrics_addr, client=self
                )
            except OSError:  # the port is taken: leave no thread behind
                self.shutdown(timeout=1.0)
                raise

    def __repr__(self) -> str:
        return f"Analytics(store={self.store!r}, sink={self.sink!r})"

    def __enter__(self) -> Analytics:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    # -- recording --------------------------------------------------------------------------

    def track(
        self,
        event: str,
        *,
        user_id: str | None = None,
        properties: Mapping[str, str | int | bool] | None = None,
        value: int = 1,
        timestamp: datetime | None = None,
        dedupe_key: str | None = None,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        """Count ``value`` occurrences of ``event`` (now, or at an aware ``timestamp``).

        ``groups`` (``{group type: group id}``, types from the ``group_types`` setting) also
        counts the call for each group, per day, on top of those of a ``context()``.

        With ``dedupe_key``, the call counts once however many times it is made with that key
        (in any process sharing the store) within ``dedupe_window``; it shows in queries once
        pushed to the store. ``before_track``, if configured, may rewrite or drop the call.
        """
        try:
            name = self._names[event]
        except (KeyError, TypeError):
            name = self._validator.event_name(event)
        if properties is None:
            props: Properties = ()
        else:
            try:
                props = self._property_sets[tuple(properties.items())]
            except (KeyError, TypeError, AttributeError):
                props = self._validator.properties(properties)
        if user_id is not None:
            try:
                user_id = self._user_ids[user_id]
            except (KeyError, TypeError):
                user_id = self._validator.user_id(user_id)
        scope = current_scope()
        if scope is not None:
            if user_id is None:
                user_id = scope.user_id
            props = merge_properties(scope.properties, props)
        if value.__class__ is not int or value < 1 or value > MAX_VALUE:
            validate_value(value)
        if timestamp is None:
            now = self._now()
            start, end, hour = self._hour_cache  # one tuple: read atomically across threads
            if not start <= now < end:
                hour = self._enter_hour(now)
        else:
            hour = hour_of(validate_timestamp(timestamp, self._now()))
        if dedupe_key is None and groups is None and (scope is None or not scope.groups):
            self._add(name, props, hour, user_id, value)
        else:  # a key, groups, or _HOOKED: before_track is set (see _track_hooked)
            grouped = self._groups(groups, scope)
            self._track_special(name, props, hour, user_id, value, dedupe_key, grouped)

    def _groups(self, groups: Mapping[str, str] | None, scope: Scope | None) -> Groups:
        """Return the groups of a call: the context's, updated with ``groups`` (validated
        against the configured group types)."""
        if groups is None:
            checked: Groups = ()
        else:
            try:
                checked = self._group_sets[tuple(groups.items())]
            except (KeyError, TypeError, AttributeError):
                checked = self._validator.groups(groups)
        if scope is None or not scope.groups:
            return checked
        types = self.config.group_types
        for group_type, _ in scope.groups:
            if group_type not in types:
                check_group_type(group_type, types)  # raises, naming the configured types
        return merge_groups(scope.groups, checked)

    def _track_hooked(
        self,
        event: str,
        *,
        user_id: str | None = None,
        properties: Mapping[str, str | int | bool] | None = None,
        value: int = 1,
        timestamp: datetime | None = None,
        dedupe_key: str | None = None,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        """``track()`` of a client with ``before_track``: the plain ``track()`` pays nothing
        for the hook, this one sends every call to :meth:`_track_special`."""
        Analytics.track(
            self,
            event,
            user_id=user_id,
            properties=properties,
            value=value,
            timestamp=timestamp,
            dedupe_key=_HOOKED if dedupe_key is None else dedupe_key,
            groups=groups,
        )

    def _track_special(
        self,
        event: str,
        properties: Properties,
        hour: int,
        user_id: str | None,
        value: int,
        dedupe_key: str | None,
        groups: Groups = (),
    ) -> None:
        """The end of a ``track()`` that has a ``before_track`` hook, a ``dedupe_key`` or
        groups (the hook does not see or change the groups)."""
        if dedupe_key is _HOOKED:
            dedupe_key = None
        elif dedupe_key is not None:
            dedupe_key = validate_dedupe_key(dedupe_key)
        if self._before_track is not None:
            rewritten = self._run_before_track(event, user_id, properties)
            if rewritten is None:
                return
            event, user_id, properties = rewritten
        if dedupe_key is None:
            if not groups:
                self._add(event, properties, hour, user_id, value)
                return
            self._add_grouped(event, properties, hour, user_id, value, groups)
        else:
            self.aggregator.add_deduped(dedupe_key, event, properties, hour, user_id, value, groups)
            if self.closed:
                self._settled = False  # as _add_after_shutdown
            if self._add != self.aggregator.add:  # write-through, or after shutdown()
                self.scheduler.push_through()

    def _run_before_track(
        self, event: str, user_id: str | None, properties: Properties
    ) -> tuple[str, str | None, Properties] | None:
        """Return what ``before_track`` makes of a call (validated), or None to drop it.

        A hook that raises, or returns something that is not a valid call, drops the call:
        a scrubbing hook that fails must not let through what it was there to remove."""
        hook = self._before_track
        assert hook is not None
        try:
            out = hook(event, user_id, dict(properties))
            if out is None:
                return None
            if not isinstance(out, tuple) or len(out) != 3:
                raise TypeError(
                    f"before_track returned {out!r}; accepted: None (drop the call) or a "
                    "tuple (event, user_id, properties)"
                )
            new_event, new_user, new_props = out
            name = self._validator.event_name(new_event)
            user = None if new_user is None else self._validator.user_id(new_user)
            props = () if new_props is None else self._validator.properties(new_props)
        except Exception:
            self._hook_failures += 1
            log = logger.exception if self._hook_failures == 1 else logger.debug
            log(
                "before_track failed on %r (%d failures so far); the call is dropped",
                event,
                self._hook_failures,
            )
            return None
        return name, user, props

    def _track_disabled(
        self,
        event: str,
        *,
        user_id: str | None = None,
        properties: Mapping[str, str | int | bool] | None = None,
        value: int = 1,
        timestamp: datetime | None = None,
        dedupe_key: str | None = None,
        groups: Mapping[str, str] | None = None,
    ) -> None:
        """``track()`` of a client configured with ``enabled=False``: nothing."""

    def _add_disabled(
        self, event: str, properties: Properties, hour: int, user_id: str | None, value: int
    ) -> None:
        pass

    def _record_feature_disabled(
        self, name: str, outcome: Properties, ok: bool, duration: float
    ) -> None:
        pass

    def _add_write_through(
        self, event: str, properties: Properties, hour: int, user_id: str | None, value: int
    ) -> None:
        self.aggregator.add(event, properties, hour, user_id, value)
        self.scheduler.push_through()

    def _add_grouped_disabled(
        self,
        event: str,
        properties: Properties,
        hour: int,
        user_id: str | None,
        value: int,
        groups: Groups,
    ) -> None:
        pass

    def _add_grouped_through(
        self,
        event: str,
        properties: Properties,
        hour: int,
        user_id: str | None,
        value: int,
        groups: Groups,
    ) -> None:
        """A call with groups, write-through or after shutdown(): pushed from the caller."""
        if self.closed:
            self._settled = False  # as _add_after_shutdown
        self.aggregator.add_grouped(event, properties, hour, user_id, value, groups)
        self.scheduler.push_through()

    def _add_after_shutdown(
        self, event: str, properties: Properties, hour: int, user_id: str | None, value: int
    ) -> None:
        self._settled = False  # pushed now, flushed by the next shutdown (at exit, if not before)
        self.aggregator.add(event, properties, hour, user_id, value)
        if not self._warned_after_shutdown:
            self._warned_after_shutdown = True
            logger.warning(
                "track(%r) after shutdown(): pushed from the calling thread; what a failing "
                "store leaves buffered is flushed at exit or by flush()",
                event,
            )
        self.scheduler.push_through()

    def _enter_hour(self, now: float) -> int:
        """Recompute the current hour bucket (once an hour, or when the clock jumps)."""
        hour = int(now // 3600)
        self._hour_cache = (hour * 3600.0, hour * 3600.0 + 3600.0, hour)
        return hour

    @overload
    def track_feature(self, name: str) -> FeatureTracker: ...

    @overload
    def track_feature(self, name: Callable[P, R]) -> Callable[P, R]: ...

    def track_feature(
        self, name: str | Callable[P, R] = NO_NAME
    ) -> FeatureTracker | Callable[P, R]:
        """Return a decorator / context manager recording ``feature_used`` on this client;
        bare, ``@client.track_feature`` names the feature after the function."""
        if name is NO_NAME:
            raise no_name_given()
        if callable(name) and not isinstance(name, str):
            return FeatureTracker(feature_name(name), lambda: self)(name)
        return FeatureTracker(name, lambda: self)

    def _record_feature(self, name: str, outcome: Properties, ok: bool, duration: float) -> None:
        scope = current_scope()
        user_id = None
        groups: Groups = ()
        if scope is not None:
            user_id = scope.user_id
            outcome = merge_properties(scope.properties, outcome)
            if scope.groups:
                # Never raises into the tracked function: a type not configured is left out.
                types = self.config.group_types
                groups = tuple(pair for pair in scope.groups if pair[0] in types)
        event = FEATURE_EVENT
        if self._before_track is not None:
            rewritten = self._run_before_track(event, user_id, outcome)
            if rewritten is None:
                self.features.observe(name, ok, duration)
                return
            event, user_id, outcome = rewritten
        hour = int(self._now() // 3600)
        if groups:
            self._add_grouped(event, outcome, hour, user_id, 1, groups)
        else:
            self._add(event, outcome, hour, user_id, 1)
        self.features.observe(name, ok, duration)

    def _buffer_full(self) -> bool:
        return self.scheduler.push_when_full()

    def _dropped(self, count: int) -> None:
        self.scheduler.note_dropped(count)

    def _drained(self, delta: Delta) -> None:
        self.event_totals.account(delta)
        self._validator.prune()

    # -- moving counts ----------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> FlushResult:
        """Push the buffer and flush the store into the sink now; return what moved."""
        return self.scheduler.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> FlushResult:
        """Flush a last time within ``timeout`` seconds, stop the thread, close backends."""
        if self._settled and self.aggregator.is_empty():
            # Shut down already, completely, and nothing tracked since (the exit hook calls
            # this again): no connection is opened, no key written.
            return FlushResult(complete=True)
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = self.config.clock.monotonic() + timeout
        return self._finish_shutdown(self.scheduler.flush(timeout), deadline)

    def _finish_shutdown(self, result: FlushResult, deadline: float) -> FlushResult:
        """After the final flush (``result``): stop the thread, close the backends, spool
        what the store did not take."""
        clock = self.config.clock
        if not self.closed:
            self.closed = True
            # From here on, track() pushes in the caller: the thread is about to stop.
            self._add = self._add_after_shutdown
            self._add_grouped = self._add_grouped_through
            self.scheduler.stop(deadline - clock.monotonic())
            if not result.timed_out and not self.aggregator.is_empty():
                # Tracked while the final flush ran: the thread is gone, flush here.
                late = self.scheduler.flush_now(deadline)
                result = FlushResult(
                    pushed=result.pushed + late.pushed,
                    flushed=result.flushed + late.flushed,
                    batches=result.batches + late.batches,
                    complete=late.complete,
                    timed_out=late.timed_out,
                    error=late.error or result.error,
                    replayed=result.replayed + late.replayed,
                )
            self.store.close()  # connections reopen if a late track() pushes
            self.sink.close()
            if self.metrics_server is not None:
                self.metrics_server.close()
        if not self.aggregator.is_empty():
            result = self._spool_rest(result)
        self.scheduler.report_errors()
        self._settled = result.complete
        if not result.complete:
            # The exit hook shuts down again: the same failure, with nothing moved this time,
            # is not news (whether it was reported as incomplete or as spooled).
            why = result.error or ("timed out" if result.timed_out else "incomplete")
            repeated = why == self._warned_incomplete and not (result.pushed or result.flushed)
            if not result.spooled:
                log = logger.debug if repeated else logger.warning
                log("shutdown flush incomplete: %s", result)
            self._warned_incomplete = why
        return result

    async def aflush(self, timeout: float = 10.0) -> FlushResult:
        """Awaitable :meth:`flush`: the client's flush thread pushes and flushes while the
        event loop runs on; returns within ``timeout`` seconds whatever happens.

        Without the thread (``background=False``) the flush's own code runs here, its push,
        claims, applies and acks awaited on the running loop's asyncio backends (one such
        flush at a time per loop).
        """
        deadline = self.config.clock.monotonic() + timeout
        return await self._aflush(deadline, stop=False)

    async def _aflush(self, deadline: float, *, stop: bool) -> FlushResult:
        future = self.scheduler.request_flush(deadline, stop=stop)
        if future is None:
            # No thread: the flush's own code, its I/O on the loop's asyncio backends, one
            # flush at a time on a loop (a second would wait for the first's locks).
            async with self._asyncio_flush_lock():
                return await self._in_bridge(self.scheduler.flush_now, deadline)
        timeout = max(0.0, deadline - self.config.clock.monotonic())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            return FlushResult(
                timed_out=True,
                error=f"flush did not finish within {timeout} s; it goes on in the background",
            )

    def _asyncio_flush_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._twins_lock:
            lock = self._flush_locks.get(loop)
            if lock is None:
                lock = self._flush_locks[loop] = asyncio.Lock()
        return lock

    async def _in_bridge(self, function: Callable[..., R], *args: Any) -> R:
        """Run ``function`` with the scheduler's pushes and flushes on the running loop's
        asyncio backends (see :mod:`analytics_sdk._bridge`)."""
        context = contextvars.copy_context()
        context.run(ASYNC_BACKENDS.set, self._asyncio_backends())
        return await _bridge.run(function, *args, context=context)

    async def ashutdown(self, timeout: float | None = None) -> FlushResult:
        """Awaitable :meth:`shutdown`: the final flush runs on the client's flush thread,
        which then stops, while the event loop runs on; then the backends close, the
        asyncio connections of the running loop included.

        A count tracked while the final flush ran is flushed after it on the loop's asyncio
        backends, as :meth:`shutdown` does in the caller; the sync backends' pools close in
        the caller (their threads end at once).
        """
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        deadline = self.config.clock.monotonic() + timeout
        try:
            result = await self._aflush(deadline, stop=not self.closed)
            # A flush of what was tracked meanwhile runs on the loop's asyncio backends.
            return await self._in_bridge(self._finish_shutdown, result, deadline)
        finally:
            await self.aclose_connections()

    async def aclose_connections(self) -> None:
        """Close the asyncio connections the async API opened on the running event loop
        (:meth:`ashutdown` does); the next async call opens new ones."""
        with self._twins_lock:
            twins = self._twins.pop(asyncio.get_running_loop(), None)
        if twins is None:
            return
        for backend in twins:
            if backend is not self.store and backend is not self.sink:
                await _bridge.run(backend.close)

    def _spool_rest(self, result: FlushResult) -> FlushResult:
        """Write what the store did not take to the local spool, and say so once."""
        spilled = self.scheduler.spill(exiting=True)
        if spilled is None:
            return result
        counts, path = spilled
        logger.warning(
            "the store could not take %d counts at shutdown (%s); spooled to %s, replayed "
            "into %r at the next start or by the flush worker",
            counts,
            "no answer within the shutdown timeout"
            if result.timed_out
            else (result.error or "incomplete"),
            path,
            self.store,
        )
        return attrs.evolve(result, spooled=result.spooled + counts)

    def stats(self) -> dict[str, float | int | None]:
        """Return the pipeline's own counters: buffer size, overflow, drops, pushes, flushes,
        spool."""
        s = self.scheduler.stats
        return {
            "buffered_keys": self.aggregator.buffered_keys,
            "overflowed": self.aggregator.overflowed,
            "event_names_overflowed": self.aggregator.names_overflowed,
            "dropped": self.aggregator.dropped,
            "pushes_ok": s.pushes_ok,
            "pushes_failed": s.pushes_failed,
            "flushes_ok": s.flushes_ok,
            "flushes_failed": s.flushes_failed,
            "counts_pushed": s.counts_pushed,
            "counts_flushed": s.counts_flushed,
            "batches_flushed": s.batches_flushed,
            "last_flush_success": s.last_flush_success,
            "counts_spooled": self.scheduler.counts_spooled,
            "counts_replayed": self.scheduler.counts_replayed,
        }

    # -- queries ----------------------------------------------------------------------------

    @property
    def _query(self) -> QueryEngine:
        """The engine reading the backends: inside an async query (``acount()``...), the
        one on the running event loop's asyncio backends."""
        engine = _ASYNC_QUERY.get()
        return self._sync_query if engine is None else engine

    def _asyncio_backends(self) -> tuple[CounterStore, Sink]:
        """Return the store and sink the async API reads on the running event loop (made on
        the loop's first async call; see :meth:`CounterStore.for_asyncio
        <analytics_sdk.backends.base.CounterStore.for_asyncio>`)."""
        loop = asyncio.get_running_loop()
        with self._twins_lock:  # no I/O: making a twin connects nothing yet
            twins = self._twins.get(loop)
            if twins is None:
                twins = self._twins[loop] = (self.store.for_asyncio(), self.sink.for_asyncio())
        return twins

    def _query_turn(self) -> AbstractAsyncContextManager[Any]:
        """Wait for a turn to query on the running loop: at most twice as many queries run
        at once as the sink reads on connections (one reading the store while another reads
        the sink); the rest wait here, costing the loop nothing. Without a limit, hundreds
        of queries reading the store at once made single loop iterations run for tens of
        milliseconds (measured: the worst stall 54 to 62 ms with 200 queries, 16 to 18 ms
        with the limit)."""
        if self.sink.connections is None:
            return nullcontext()
        loop = asyncio.get_running_loop()
        turns = self._query_turns.get(loop)
        if turns is None:
            turns = self._query_turns[loop] = asyncio.Semaphore(2 * self.sink.connections)
        return turns

    async def _aquery(self, method: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run the synchronous query ``method`` with its reads on the running event loop's
        asyncio backends (see :mod:`analytics_sdk._bridge`)."""
        store, sink = self._asyncio_backends()
        engine = QueryEngine(self.aggregator, store, sink)
        sync = self._sync_query
        engine.attempts = sync.attempts
        engine.on_error = sync.on_error
        engine.quiet_first = sync.quiet_first
        engine._skip_quiet = sync._skip_quiet  # whether the last reads found counts pending
        context = contextvars.copy_context()
        context.run(_ASYNC_QUERY.set, engine)
        try:
            async with self._query_turn():
                return await _bridge.run(method, *args, context=context, **kwargs)
        finally:
            sync.retries += engine.retries
            sync.fenced += engine.fenced
            sync.quiet += engine.quiet
            sync._skip_quiet = engine._skip_quiet

    async def acount(
        self,
        event: str,
        *,
        day: date | None = None,
        hour: datetime | None = None,
        properties: Mapping[str, str | int | bool] | None = None,
        user_id: str | None = None,
        group: tuple[str, str] | None = None,
    ) -> int:
        """Awaitable :meth:`count`: the same answer and errors, read on asyncio drivers."""
        return await self._aquery(
            self.count,
            event,
            day=day,
            hour=hour,
            properties=properties,
            user_id=user_id,
            group=group,
        )

    async def ahourly(
        self,
        event: str,
        *,
        day: date,
        properties: Mapping[str, str | int | bool] | None = None,
    ) -> dict[int, int]:
        """Awaitable :meth:`hourly`: the same answer and errors, read on asyncio drivers."""
        return await self._aquery(self.hourly, event, day=day, properties=properties)

    async def aseries(
        self,
        event: str,
        start: date | datetime,
        end: date | datetime,
        *,
        granularity: str = "day",
        tz: str | tzinfo = "UTC",
        properties: Mapping[str, str | int | bool] | None = None,
    ) -> list[tuple[datetime, int]]:
        """Awaitable :meth:`series`: the same answer and errors, read on asyncio drivers."""
        return await self._aquery(
            self.series, event, start, end, granularity=granularity, tz=tz, properties=properties
        )

    async def aunique_users(self, event: str, start: date, end: date) -> int:
        """Awaitable :meth:`unique_users`: the same answer and errors, read on asyncio
        drivers."""
        return await self._aquery(self.unique_users, event, start, end)

    async def atop_users(self, event: str, *, day: date, limit: int = 10) -> list[tuple[str, int]]:
        """Awaitable :meth:`top_users`: the same answer and errors, read on asyncio drivers."""
        return await self._aquery(self.top_users, event, day=day, limit=limit)

    async def atop_groups(
        self, event: str, group_type: str, *, day: date, limit: int = 10
    ) -> list[tuple[str, int]]:
        """Awaitable :meth:`top_groups`: the same answer and errors, read on asyncio drivers."""
        return await self._aquery(self.top_groups, event, group_type, day=day, limit=limit)

    async def aunique_groups(self, event: str, group_type: str, start: date, end: date) -> int:
        """Awaitable :meth:`unique_groups`: the same answer and errors, read on asyncio
        drivers."""
        return await self._aquery(self.unique_groups, event, group_type, start, end)

    async def abreakdown(
        self,
        event: str,
        by: str,
        start: date | datetime,
        end: date | datetime,
        *,
        granularity: str = "day",
        tz: str | tzinfo = "UTC",
        properties: Mapping[str, str | int | bool] | None = None,
        limit: int = 10,
    ) -> dict[str, list[tuple[datetime, int]]]:
        """Awaitable :meth:`breakdown`: the same answer and errors, read on asyncio drivers."""
        return await self._aquery(
            self.breakdown,
            event,
            by,
            start,
            end,
            granularity=granularity,
            tz=tz,
            properties=properties,
            limit=limit,
        )

    async def atop_values(
        self,
        event: str,
        by: str,
        *,
        day: date | None = None,
        start: date | datetime | None = None,
        end: date | datetime | None = None,
        limit: int = 10,
    ) -> list[tuple[str, int]]:
        """Awaitable :meth:`top_values`: the same answer and errors, read on asyncio
        drivers."""
        return await self._aquery(
            self.top_values, event, by, day=day, start=start, end=end, limit=limit
        )

    async def aactive_users(
        self,
        start: date | datetime,
        end: date | datetime,
        *,
        granularity: str = "day",
        tz: str | tzinfo = "UTC",
        events: str | Iterable[str] | None = None,
        group: tuple[str, str] | None = None,
    ) -> list[tuple[datetime, int]]:
        """Awaitable :meth:`active_users`: the same answer and errors, read on asyncio
        drivers."""
        return await self._aquery(
            self.active_users,
            start,
            end,
            granularity=granularity,
            tz=tz,
            events=events,
            group=group,
        )

    async def aretention(
        self,
        start: date | datetime,
        end: date | datetime,
        *,
        cohort_event: str | None = None,
        return_event: str | None = None,
        period: str = "week",
        periods: int = 8,
        tz: str | tzinfo = "UTC",
    ) -> list[Cohort]:
        """Awaitable :meth:`retention`: the same answer and errors, read on asyncio drivers."""
        return await self._aquery(
            self.retention,
            start,
            end,
            cohort_event=cohort_event,
            return_event=return_event,
            period=period,
            periods=periods,
            tz=tz,
        )

    def _event(self, event: object) -> str:
        try:
            return self._names[event]  # validated before (by track() or a query)
        except (KeyError, TypeError):
            return self._validator.event_name(event)

    def _filter(self, properties: Mapping[str, Any] | None) -> Properties:
        return () if properties is None else self._validator.properties(properties)

    def count(
        self,
        event: str,
        *,
        day: date | None = None,
        hour: datetime | None = None,
        properties: Mapping[str, str | int | bool] | None = None,
        user_id: str | None = None,
        group: tuple[str, str] | None = None,
    ) -> int:
        """Return the exact count of ``event`` on a UTC ``day``, in an ``hour``, or all time.

        ``properties`` matches every property set containing those pairs; ``user_id`` counts
        one user's events (per-user counts are daily and not split by properties);
        ``group=(group_type, group_id)`` counts one group's events (daily, like per-user
        counts, and not split by properties either).
        """
        name = self._event(event)
        if day is not None and hour is not None:
            raise ValueError("pass day= or hour=, not both")
        if group is not None:
            if hour is not None or properties is not None or user_id is not None:
                raise ValueError(
                    "per-group counts are daily and not split by properties or users; "
                    "accepted with group: day= only"
                )
            group_type, group_id = validate_group(group, self.config.group_types)
            start, end = (None, None) if day is None else (day_of(check_day(day)), day_of(day) + 1)
            counts = self._query.group_counts(name, group_type, start, end, group_id)
            return counts.get(group_id, 0)
        if user_id is not None:
            if hour is not None or properties is not None:
                raise ValueError(
                    "per-user counts are daily and not split by properties; "
                    "accepted with user_id: day= only"
                )
            user = self._validator.user_id(user_id)
            start, end = (None, None) if day is None else (day_of(check_day(day)), day_of(day) + 1)
            return self._query.user_counts(name, start, end, user).get(user, 0)
        if day is not None:
            start, end = day_hours(check_day(day))
        elif hour is not None:
            start = hour_of(check_moment(hour, "hour"))
            end = start + 1
        else:
            start = end = None
        return sum(self._query.period_counts(name, [start, end], self._filter(properties)).values())

    def hourly(
        self,
        event: str,
        *,
        day: date,
        properties: Mapping[str, str | int | bool] | None = None,
    ) -> dict[int, int]:
        """Return ``{0: n, ..., 23: n}``: the counts of each UTC hour of ``day``."""
        start, end = day_hours(check_day(day))
        counts = self._query.hourly_counts(self._event(event), start, end, self._filter(properties))
        return {h: counts.get(start + h, 0) for h in range(24)}

    def series(
        self,
        event: str,
        start: date | datetime,
        end: date | datetime,
        *,
        granularity: str = "day",
        tz: str | tzinfo = "UTC",
        properties: Mapping[str, str | int | bool] | None = None,
    ) -> list[tuple[datetime, int]]:
        """Return ``[(period start, count)]`` for every period from the one containing
        ``start`` to the one containing ``end``, zeros included.

        ``granularity`` is ``"hour"``, ``"day"``, ``"week"`` (ISO, from Monday) or
        ``"month"``; periods begin at midnight in ``tz``. At most ``MAX_PERIODS`` (10,000)
        periods, on days from 2000-01-01.
        """
        name = self._event(event)
        spans = list(periods(start, end, granularity, resolve_tz(tz)))
        # Periods are contiguous: their starts and the last one's end bound them all.
        bounds: list[int | None] = [first for _, first, _ in spans]
        bounds.append(spans[-1][2])
        counts = self._query.period_counts(name, bounds, self._filter(properties))
        return [(label, counts.get(i, 0)) for i, (label, _, _) in enumerate(spans)]

    def unique_users(self, event: str, start: date, end: date) -> int:
        """Return the exact number of distinct users with ``event`` on UTC days start..end."""
        first, last = day_of(check_day(start, "start")), day_of(check_day(end, "end"))
        if first > last:
            raise ValueError(f"start {start} is after end {end}; accepted: start <= end")
        return self._query.unique_users(self._event(event), first, last + 1)

    def top_users(self, event: str, *, day: date, limit: int = 10) -> list[tuple[str, int]]:
        """Return the ``limit`` users with the most ``event`` on a UTC ``day``, most first."""
        if type(limit) is not int or limit < 1:
            raise ValueError(f"limit {limit!r} is not accepted; accepted: an int >= 1")
        first = day_of(check_day(day))
        return self._query.top_users(self._event(event), first, first + 1, limit)

    def top_groups(
        self, event: str, group_type: str, *, day: date, limit: int = 10
    ) -> list[tuple[str, int]]:
        """Return ``[(group_id, count)]``: the ``limit`` groups of ``group_type`` with the
        most ``event`` on a UTC ``day``, most first (ties: the smaller id by code point)."""
        name = self._event(event)
        kind = check_group_type(group_type, self.config.group_types)
        _check_limit(limit)
        first = day_of(check_day(day))
        return self._query.top_groups(name, kind, first, first + 1, limit)

    def unique_groups(self, event: str, group_type: str, start: date, end: date) -> int:
        """Return the exact number of distinct groups of ``group_type`` with ``event`` on
        UTC days ``start`` to ``end``, both included."""
        name = self._event(event)
        kind = check_group_type(group_type, self.config.group_types)
        first, last = day_of(check_day(start, "start")), day_of(check_day(end, "end"))
        if first > last:
            raise ValueError(f"start {start} is after end {end}; accepted: start <= end")
        return self._query.unique_groups(name, kind, first, last + 1)

    def breakdown(
        self,
        event: str,
        by: str,
        start: date | datetime,
        end: date | datetime,
        *,
        granularity: str = "day",
        tz: str | tzinfo = "UTC",
        properties: Mapping[str, str | int | bool] | None = None,
        limit: int = 10,
    ) -> dict[str, list[tuple[datetime, int]]]:
        """Return ``{value: [(period start, count)]}``: the series of ``event`` of each of
        the ``limit`` values of property ``by`` with the most counts over the range, most
        first, then ``"(other)"`` (the other values summed) and ``"(none)"`` (events without
        ``by``), each present only if it has counts.

        Periods, ``start``, ``end``, ``granularity``, ``tz`` and ``properties`` are as in
        :meth:`series`, whose counts the series add up to. A value is keyed by the text
        ``track()`` stores for it (``True`` -> ``"true"``, ``7`` -> ``"7"``, as the
        ``properties`` filter matches it); ties in the ranking go to the smaller value by
        code point. ``limit`` is 1 to ``MAX_VALUES`` (1,000).
        """
        name = self._event(event)
        key = validate_property_key(by, "by (a property key)")
        _check_limit(limit)
        spans = list(periods(start, end, granularity, resolve_tz(tz)))
        bounds: list[int | None] = [first for _, first, _ in spans]
        bounds.append(spans[-1][2])
        counts = self._query.property_counts(name, key, bounds, self._filter(properties), limit)
        series: dict[PropertyValue, list[int]] = {}
        for (value, period), n in counts.items():
            series.setdefault(value, [0] * len(spans))[period] += n
        totals = {value: sum(ns) for value, ns in series.items() if isinstance(value, str)}
        ranked = sorted(totals, key=lambda v: (-totals[v], v))
        order: list[PropertyValue] = [*ranked]
        order += [b for b in (Bucket.OTHER, Bucket.NONE) if b in series]
        merged: dict[str, list[int]] = {}
        for v in order:
            # A value spelled "(other)" or "(none)" shares that bucket's key: summed.
            text = v if isinstance(v, str) else v.value
            column = merged.setdefault(text, [0] * len(spans))
            for i, n in enumerate(series[v]):
                column[i] += n
        labels = [label for label, _, _ in spans]
        return {text: list(zip(labels, ns, strict=True)) for text, ns in merged.items()}

    def top_values(
        self,
        event: str,
        by: str,
        *,
        day: date | None = None,
        start: date | datetime | None = None,
        end: date | datetime | None = None,
        limit: int = 10,
    ) -> list[tuple[str, int]]:
        """Return ``[(value, count)]``: the ``limit`` values of property ``by`` with the most
        ``event``, most first (ties: the smaller value by code point).

        Over a UTC ``day``; or from ``start`` to ``end``, both included (a date is its UTC
        day, an aware datetime its hour; either may be left open); or all time. Values are
        keyed as in :meth:`breakdown`; events without ``by`` are not ranked. ``limit`` is
        1 to ``MAX_VALUES`` (1,000).
        """
        name = self._event(event)
        key = validate_property_key(by, "by (a property key)")
        _check_limit(limit)
        if day is not None:
            if start is not None or end is not None:
                raise ValueError("pass day= or start=/end=, not both")
            bounds: list[int | None] = list(day_hours(check_day(day)))
        else:
            bounds = [
                None if start is None else _hour_bound(start, "start", last=False),
                None if end is None else _hour_bound(end, "end", last=True),
            ]
            if (
                start is not None
                and end is not None
                and _hour_bound(start, "start", last=False) >= _hour_bound(end, "end", last=True)
            ):
                raise ValueError(
                    f"start {start.isoformat()} is after end {end.isoformat()}; "
                    "accepted: start <= end"
                )
        return self._query.top_values(name, key, bounds[0], bounds[1], limit)

    def _events(self, events: object) -> tuple[str, ...] | None:
        """Validate ``events``: None (any event), one event name, or several."""
        if events is None:
            return None
        if isinstance(events, str) or not isinstance(events, Iterable):
            return (self._event(events),)
        names = tuple(dict.fromkeys(self._event(event) for event in events))
        if not names:
            raise ValueError(
                "events is empty; accepted: None (any event), an event name, or event names"
            )
        return names

    def active_users(
        self,
        start: date | datetime,
        end: date | datetime,
        *,
        granularity: str = "day",
        tz: str | tzinfo = "UTC",
        events: str | Iterable[str] | None = None,
        group: tuple[str, str] | None = None,
    ) -> list[tuple[datetime, int]]:
        """Return ``[(period start, active users)]`` for every period from the one
        containing ``start`` to the one containing ``end``: daily, weekly or monthly active
        users (``granularity`` ``"day"``, ``"week"`` or ``"month"``), exact.

        A user is active in a period if they did any of ``events`` (any event if None) on a
        day in it; with ``group=(group_type, group_id)``, any of them tracked with that
        group (an account's active users). Users' activity is kept by UTC day: with another
        ``tz``, a period holds the UTC days with its dates in ``tz`` and starts at midnight
        there.
        """
        names = self._events(events)
        checked = None if group is None else validate_group(group, self.config.group_types)
        labels, ranges = day_periods(start, end, granularity, resolve_tz(tz))
        counts = self._query.active_users(names, ranges, checked)
        return list(zip(labels, counts, strict=True))

    def retention(
        self,
        start: date | datetime,
        end: date | datetime,
        *,
        cohort_event: str | None = None,
        return_event: str | None = None,
        period: str = "week",
        periods: int = 8,
        tz: str | tzinfo = "UTC",
    ) -> list[Cohort]:
        """Return first-time retention: a :class:`~analytics_sdk.query.Cohort` ``(start,
        size, retained)`` for every period from the one containing ``start`` to the one
        containing ``end``.

        A user's cohort is the period of their first day with ``cohort_event`` (any event if
        None) ever, not only within the range; ``retained[k]``, for ``k`` from 0 to
        ``periods - 1``, counts the cohort's users who did ``return_event`` (any event if
        None) in the ``k``-th period after the cohort's (0: the cohort's own). ``period``
        is ``"day"``, ``"week"`` or ``"month"``, kept by UTC day as in :meth:`active_users`;
        ``periods`` is 1 to ``MAX_RETENTION_PERIODS`` (366).
        """
        first = None if cohort_event is None else self._event(cohort_event)
        back = None if return_event is None else self._event(return_event)
        if type(periods) is not int or not 1 <= periods <= MAX_RETENTION_PERIODS:
            raise ValueError(
                f"periods {periods!r} is not accepted; accepted: an int from 1 to "
                f"{MAX_RETENTION_PERIODS}"
            )
        labels, ranges = day_periods(
            start, end, period, resolve_tz(tz), name="period", after=periods - 1
        )
        cohorts = len(labels) - periods + 1
        sizes, retained = self._query.retention(first, back, ranges, cohorts)
        return [Cohort(labels[c], sizes[c], retained[c]) for c in range(cohorts)]

    # -- process life ------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self.aggregator.before_fork()

    def _after_fork_in_parent(self) -> None:
        self.aggregator.after_fork_in_parent()

    def _after_fork_in_child(self) -> None:
        self.aggregator.after_fork_in_child()
        self.event_totals.reset()
        self.features.reset()
        self.store.after_fork_in_child()
        self.sink.after_fork_in_child()
        if self.metrics_server is not None:
            # The port is the parent's; a child serves its own only if it configures one.
            self.metrics_server.close()
            self.metrics_server = None
        if not self.closed:
            self.scheduler.after_fork_in_child()


def _check_limit(limit: object) -> None:
    if type(limit) is not int or not 1 <= limit <= MAX_VALUES:
        raise ValueError(
            f"limit {limit!r} is not accepted; accepted: an int from 1 to {MAX_VALUES:,}"
        )


def _hour_bound(moment: date | datetime, name: str, *, last: bool) -> int:
    """Return the first hour bucket of ``moment`` (its hour, or its UTC day's first hour), or
    with ``last`` the bucket after its last hour."""
    if isinstance(moment, datetime):
        hour = hour_of(check_moment(moment, name))
        return hour + 1 if last else hour
    if not isinstance(moment, date):
        raise TypeError(
            f"{name} {moment!r} is of type {type(moment).__name__}; "
            "accepted: a date or an aware datetime"
        )
    first, after = day_hours(check_day(moment, name))
    return after if last else first
