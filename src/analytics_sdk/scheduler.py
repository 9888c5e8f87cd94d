"""The scheduler: one daemon thread per client that moves counts along the pipeline.

Every ``push_interval`` it pushes the buffer to the store; every ``flush_interval`` it runs
the exactly-once flush (claim -> apply -> ack) from the store into the sink. Failures back
off exponentially with jitter; nothing is dropped, the counts wait in the outbox or in the
claim. ``flush()`` and ``shutdown()`` requests are served by the same thread, so a caller
can stop waiting at its deadline even while a backend hangs.
"""

from __future__ import annotations

import contextvars
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import attrs

from .aggregator import Aggregator
from .backends.base import Batch, CounterStore, Push, Sink
from .clock import Clock
from .config import Config
from .errors import BackendError, SinkError, StoreError
from .spool import ReplayResult, Spool
from .stats import PipelineStats

__all__ = ["FlushResult", "Scheduler"]

logger = logging.getLogger("analytics_sdk")
T = TypeVar("T")

WRITE_THROUGH_SWEEP = 1.0
"""Seconds between the timer's pushes in write-through mode."""
FAILURE_LOG_INTERVAL = 60.0
"""While pushes or flushes keep failing, a warning with the count so far at most this often
(the first failure is always logged; the ones between go to debug)."""
FULL_BUFFER_WAIT = 10.0
"""Seconds a thread that found the buffer full waits for a push already under way (a push
is bounded by the store's own timeout; this bounds a store that has none)."""
DROP_WARNING_INTERVAL = 60.0
"""Seconds between two warnings about dropped counts; the second one sums what it held back."""
TRIM_AFTER_KEYS = 50_000
"""Keys pushed or flushed after which the memory they used is handed back to the system."""


def _no_trim(pad: int) -> int:
    return 0


_malloc_trim: Callable[[int], int] | None = None


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    glibc keeps what a burst's buffers and batches freed for reuse: a 2M-user burst left a
    process 80 MiB larger with nothing in it; trimmed, it is back within 10 MiB of the start.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError, TypeError):  # not glibc
            _malloc_trim = _no_trim
    _malloc_trim(0)


@attrs.frozen(kw_only=True)
class FlushResult:
    """What a ``flush()`` or ``shutdown()`` moved, and whether it finished."""

    pushed: int = 0
    """Counts pushed from this process's buffer to the store."""
    flushed: int = 0
    """Counts committed into the sink (batches already in the ledger not included)."""
    batches: int = 0
    """Batches applied to the sink."""
    complete: bool = False
    """True if the buffer was pushed and every claim this flush saw was committed."""
    timed_out: bool = False
    """True if the deadline passed first; the rest goes on in the background."""
    error: str | None = None
    """The backend failure that stopped the flush, if any; the counts are kept."""
    spooled: int = 0
    """Counts the store could not take, written to the local spool (at shutdown)."""
    replayed: int = 0
    """Counts pushed from the local spool into the store."""


FAILURES_IN_A_ROW = 2
"""Batches failing one after the other that stop a flush: the sink is likely down."""


@attrs.define
class _Moved:
    """What a flush has committed so far, kept when it stops early."""

    counts: int = 0
    batches: int = 0


class _Deadline(Exception):
    """The deadline passed between two steps of a flush."""


@contextmanager
def _holding(lock: threading.Lock, deadline: float, clock: Clock) -> Iterator[None]:
    """Hold ``lock``, waiting for it until ``deadline`` at most."""
    # A lock wait longer than TIMEOUT_MAX (flush(timeout=inf)) raises OverflowError.
    wait = min(max(0.0, deadline - clock.monotonic()), threading.TIMEOUT_MAX)
    if not lock.acquire(timeout=wait):
        raise _Deadline
    try:
        yield
    finally:
        lock.release()


def _check(deadline: float, now: float) -> None:
    if now >= deadline:
        raise _Deadline


ASYNC_BACKENDS: contextvars.ContextVar[tuple[CounterStore, Sink] | None] = contextvars.ContextVar(
    "analytics_sdk_async_backends", default=None
)
"""Set inside the async API's bridge: the event loop's asyncio store and sink, which the
scheduler's work then uses instead of its own (see :mod:`analytics_sdk._bridge`)."""


class Scheduler:
    """Pushes and flushes on a timer, with backoff; serves ``flush()`` requests."""

    def __init__(
        self,
        aggregator: Aggregator,
        store: CounterStore,
        sink: Sink,
        config: Config,
        rng: random.Random | None = None,
    ) -> None:
        self.aggregator = aggregator
        self._store = store
        self._sink = sink
        self.config = config
        self.clock = config.clock
        self.stats = PipelineStats()
        self.on_flush: Callable[[tuple[int, int], float], None] | None = None
        """Called after each flush that succeeded with ``((counts, batches), seconds)``."""
        self.on_error: Callable[[BaseException, str], object] | None = None
        """The ``on_error(exc, operation)`` hook: told of each failure, with no lock held."""
        self._errors: list[tuple[BaseException, str]] = []  # failures not yet reported
        self._rng = rng or random.Random()
        # In write-through mode (push_interval=0) track() pushes; the timer only sweeps up
        # what a failing store left in the buffer.
        self._push_period = config.push_interval or WRITE_THROUGH_SWEEP
        self.spool = Spool.for_store(config.spool_dir, store)
        self._init_state()

    def _init_state(self) -> None:
        self._push_lock = threading.Lock()  # one push at a time (the outbox is sequential)
        self._flush_lock = threading.Lock()  # one store -> sink flush at a time
        self._wake = threading.Event()
        self._requests: list[tuple[Future[FlushResult], float]] = []
        self._requests_lock = threading.Lock()
        self._stopping = False
        self._accepting = False  # whether the thread takes flush() requests
        self._thread: threading.Thread | None = None
        self._own_claims: set[str] = set()
        self._failed_claims: set[str] = set()  # applied last by the next flush
        self._claims_left = False  # whether the last flush left a claim it saw
        self._push_requested = False
        self._in_doubt: Push | None = None  # a push whose last attempt failed in doubt
        self._pusher: int | None = None  # the thread holding the push lock
        self._push_stalled = False  # a full-buffer push gave up waiting for the push lock
        self._drops_lock = threading.Lock()  # never held across I/O or logging
        self._drops_unreported = 0
        self._next_drop_warning = -math.inf
        self._freed_keys = 0  # keys pushed or flushed since the heap was last trimmed
        now = self.clock.monotonic()
        self.next_push = now + self._jittered(self._push_period)
        self.next_flush = now + self._jittered(self.config.flush_interval)
        self.push_failures = 0
        self.flush_failures = 0
        self._warned_at = {"push": -math.inf, "flush": -math.inf}
        # The spool: replayed at start, by a flusher after each flush, and by a process that
        # spooled once its store is back; written at exit and every spool_after of failures.
        self._replay_lock = threading.Lock()
        self._replay_due = self.spool is not None
        self.next_replay = now
        self.replay_failures = 0
        self._outage = False  # until the store takes a push again (an empty one proves nothing)
        self._spill_at = math.inf
        self._outage_spills = 0
        self.counts_spooled = 0
        self.counts_replayed = 0

    @property
    def store(self) -> CounterStore:
        """The store pushes and flushes use: inside the async API's ``aflush()`` (a client
        without the flush thread), the running event loop's asyncio twin."""
        backends = ASYNC_BACKENDS.get()
        return self._store if backends is None else backends[0]

    @store.setter
    def store(self, store: CounterStore) -> None:
        self._store = store

    @property
    def sink(self) -> Sink:
        """The sink flushes use (see :attr:`store`)."""
        backends = ASYNC_BACKENDS.get()
        return self._sink if backends is None else backends[1]

    @sink.setter
    def sink(self, sink: Sink) -> None:
        self._sink = sink

    # -- the work -------------------------------------------------------------------------

    def push(self, deadline: float = math.inf, *, wait: bool = True) -> int:
        """Push the outbox, then the buffer, to the store; return the counts pushed.

        The buffer goes in pushes of at most ``max_push_keys`` counters (and calls with a
        dedupe key), as many as it held when this started (counts tracked meanwhile may wait
        for the next push). Without
        ``wait`` (write-through, in track()) a buffer that queries are reading is left for
        the timer's push instead of waiting for them."""
        pushed = 0
        # The outbox a failed push left behind goes first; then the buffer behind it.
        for _ in range(1 + self.aggregator.pushes_held):
            _check(deadline, self.clock.monotonic())
            push = self.aggregator.next_push(wait=wait)
            if push is None:
                break
            try:
                applied = self.store.push(push)
            except BackendError:
                self._in_doubt = push
                raise
            except Exception as exc:
                self._in_doubt = push
                raise StoreError(f"push to {self.store!r} failed: {exc!r}") from exc
            self.aggregator.push_done(push)
            self._freed_keys += push.delta.keys
            # Skipped as a duplicate: applied by an attempt of ours whose reply was lost
            # (counted now, once), or by another sender, such as a replay (not ours to count).
            if applied is not False or push is self._in_doubt:
                pushed += push.total
                self.stats.counts_pushed += push.total
            self._in_doubt = None
        return pushed

    def flush_store(
        self, deadline: float = math.inf, moved: _Moved | None = None
    ) -> tuple[int, int]:
        """Move claims from the store into the sink exactly once, one bounded batch at a time;
        return (counts, batches) committed.

        Each batch is applied on its own: one that fails stays claimed, is tried again after
        the others by the next flush, and does not stop this one, which raises its first
        failure at the end. Two failures in a row stop the flush early (the sink is likely
        down: no point claiming more). ``moved`` receives the progress as it is made.
        """
        moved = moved if moved is not None else _Moved()
        failures: list[BackendError] = []
        streak = succeeded = 0

        def apply(batch: Batch | None, batch_id: str) -> bool:
            """Apply and ack one batch; return whether the flush should go on."""
            nonlocal streak, succeeded
            error = self._apply_one(batch, batch_id, moved)
            if error is None:
                streak = 0
                succeeded += 1
                return True
            failures.append(error)
            streak += 1
            return streak < FAILURES_IN_A_ROW

        todo, seen = self._store_step("claim from", self._claims_to_apply)
        earlier = [i for i in todo if i not in self._failed_claims]
        later = [i for i in todo if i in self._failed_claims]
        going = True
        for batch_id in earlier:
            _check(deadline, self.clock.monotonic())
            if not (going := apply(None, batch_id)):
                break
        if going:
            claims: Iterator[Batch] | None = None
            while True:
                _check(deadline, self.clock.monotonic())
                try:
                    if claims is None:
                        claims = self._store_step(
                            "claim from",
                            lambda: self.store.claim_batches(self.config.max_batch_keys),
                        )
                    batch = self._store_step("claim from", partial(next, claims, None))
                except StoreError as exc:
                    # A claim whose reply was lost may exist: ours to apply next time.
                    self._own_claims |= self.store.take_claims_in_doubt()
                    failures.append(exc)
                    going = False
                    break
                if batch is None:
                    break
                self._own_claims.add(batch.id)
                if not (going := apply(batch, batch.id)):
                    break
        if going:
            for batch_id in later:
                _check(deadline, self.clock.monotonic())
                if not apply(None, batch_id):
                    break
        if going and (succeeded or not failures):
            # Every batch was tried and the sink took some: a failing batch is stuck, the
            # flusher is not (a restart would not help).
            self.stats.last_flush_round = self.clock.time()
        if failures:
            raise failures[0]
        try:
            # Complete means every claim this flush saw is gone, ours or not (a claim whose
            # reply was lost by another process is no less pending).
            self._claims_left = bool(seen & set(self.store.claimed_ids()))
        except Exception:
            self._claims_left = True
        return moved.counts, moved.batches

    def _store_step(self, what: str, step: Callable[[], T]) -> T:
        try:
            return step()
        except BackendError:
            raise
        except Exception as exc:
            raise StoreError(f"{what} {self.store!r} failed: {exc!r}") from exc

    def _apply_one(self, batch: Batch | None, batch_id: str, moved: _Moved) -> BackendError | None:
        """Read (if not given), apply and ack one claimed batch; return the failure, if any."""
        try:
            if batch is None:
                batch = self._store_step("read from", lambda: self.store.read_claim(batch_id))
                if batch is None:  # acknowledged by another flusher meanwhile
                    self._own_claims.discard(batch_id)
                    self._failed_claims.discard(batch_id)
                    return None
            try:
                applied = self.sink.apply(batch)
            except BackendError:
                raise
            except Exception as exc:
                raise SinkError(f"apply to {self.sink!r} failed: {exc!r}") from exc
            self._store_step("ack on", lambda: self.store.ack(batch_id))
        except BackendError as exc:
            self._failed_claims.add(batch_id)
            # Kept until the flush ends: without its traceback, which holds the batch and
            # the sink's rows, so failures cost no memory beyond the batch in hand.
            return type(exc)(str(exc))
        self._own_claims.discard(batch_id)
        self._failed_claims.discard(batch_id)
        if applied:
            moved.counts += batch.delta.total
            moved.batches += 1
            self.stats.counts_flushed += batch.delta.total
            self.stats.batches_flushed += 1
        return None

    def _claims_to_apply(self) -> tuple[list[str], set[str]]:
        """Ids of the claims to apply (ours left by a failed flush or a lost reply, and
        orphans of flushers that died, past the lease); and of every claim there is now."""
        self._own_claims |= self.store.take_claims_in_doubt()
        current = self.store.claimed_ids()
        stale = self.store.claimed_ids(older_than=self.config.claim_lease) if current else {}
        # A claim of ours that another flusher applied and acknowledged is done.
        self._own_claims &= current.keys()
        self._failed_claims &= current.keys()
        todo = [i for i in current if i in stale or i in self._own_claims]
        return todo, set(current)

    def flush_now(self, deadline: float) -> FlushResult:
        """Push and flush in the calling thread, stopping at ``deadline`` (monotonic)."""
        pushed = replayed = 0
        progress = _Moved()
        moved: tuple[tuple[int, int], float] | None = None
        stage = "push"
        try:
            with _holding(self._push_lock, deadline, self.clock):
                self._pusher = threading.get_ident()
                try:
                    pushed = self._measured("push", lambda: self.push(deadline))[0]
                finally:
                    self._pusher = None
                    self._push_stalled = False
            if self.spool is not None and (self._replay_due or self.config.flusher):
                stage = "replay"
                with _holding(self._replay_lock, deadline, self.clock):
                    replayed = self.replay(deadline).counts
            if self.config.flusher:
                stage = "flush"
                with _holding(self._flush_lock, deadline, self.clock):
                    moved = self._measured("flush", lambda: self.flush_store(deadline, progress))
        except _Deadline:
            self.report_errors()
            return FlushResult(
                pushed=pushed,
                flushed=progress.counts,
                batches=progress.batches,
                replayed=replayed,
                timed_out=True,
            )
        except BackendError as exc:
            self._note_error(exc, stage)
            self.report_errors()
            return FlushResult(
                pushed=pushed,
                flushed=progress.counts,
                batches=progress.batches,
                replayed=replayed,
                error=str(exc),
            )
        if moved is not None and self.on_flush is not None:
            self.on_flush(*moved)
        self._release_memory(moved)
        self.report_errors()
        complete = self.aggregator.is_empty() and not self._own_claims and not self._claims_left
        return FlushResult(
            pushed=pushed,
            flushed=progress.counts,
            batches=progress.batches,
            replayed=replayed,
            complete=complete,
        )

    # -- failures -------------------------------------------------------------------------

    def _note_error(self, exc: BaseException, operation: str) -> None:
        """Remember a failure for ``on_error``, told once no lock is held."""
        if self.on_error is not None:
            self._errors.append((exc, operation))

    def report_errors(self) -> None:
        """Tell ``on_error`` of the failures noted so far (the caller holds no lock)."""
        while self._errors:
            try:
                exc, operation = self._errors.pop(0)
            except IndexError:  # another thread reported it meanwhile
                return
            self.report_error(exc, operation)

    def report_error(self, exc: BaseException, operation: str) -> None:
        """Call ``on_error(exc, operation)`` now; what it raises is logged, not raised."""
        hook = self.on_error
        if hook is None:
            return
        try:
            hook(exc, operation)
        except Exception:
            logger.exception("on_error raised while told of a %s failure; ignored", operation)

    # -- the spool ------------------------------------------------------------------------

    def replay(self, deadline: float = math.inf) -> ReplayResult:
        """Push the spooled pushes into the store (the caller holds the replay lock)."""
        if self.spool is None:
            return ReplayResult()
        try:
            result = self.spool.replay(
                self.store, deadline=deadline, monotonic=self.clock.monotonic
            )
        except BackendError:
            raise
        except OSError as exc:  # the disk, not the store: retried on the next occasion
            logger.error("cannot read the spool %s: %s", self.spool.directory, exc)
            self._note_error(exc, "spool")
            return ReplayResult()
        except Exception as exc:
            raise StoreError(f"replay to {self.store!r} failed: {exc!r}") from exc
        self._replay_due = self.clock.monotonic() >= deadline  # cut short: go on later
        if result.pushes:
            self._outage = False
        self.counts_replayed += result.counts
        if result.files:
            logger.info(
                "replayed %d counts from %d spool files in %s",
                result.counts,
                result.files,
                self.spool.directory,
            )
        return result

    def _timed_replay(self, now: float) -> None:
        """Replay on the timer's behalf; back off while the store fails."""
        if not self._replay_lock.acquire(blocking=False):
            return  # a flush() replays right now
        try:
            self.replay()
        except BackendError as exc:
            self._note_error(exc, "replay")
            self.replay_failures += 1
            self.next_replay = now + self.backoff(self.replay_failures)
            log = logger.warning if self.replay_failures == 1 else logger.debug
            log("spool replay failed, retrying later; the spooled counts are kept: %s", exc)
        else:
            self.replay_failures = 0
        finally:
            self._replay_lock.release()
        self.report_errors()

    def spill(self, *, exiting: bool = False) -> tuple[int, str] | None:
        """Write the outbox and the buffer to the spool; return ``(counts, path)``, or None
        if there was nothing to spool, no spool, or the disk refused (the counts stay).

        A process that goes on replays its spool once the store is back; one that is
        ``exiting`` leaves that to the next start or a worker."""
        spool = self.spool
        if spool is None:
            return None
        paths: list[str] = []
        try:
            pushes = self.aggregator.spill(lambda p: paths.append(spool.write(p)))
        except OSError as exc:
            logger.error("cannot write to the spool %s: %s; counts stay in memory", spool, exc)
            self._note_error(exc, "spool")
            return None
        if not pushes:
            return None
        counts = sum(p.total for p in pushes)
        self.counts_spooled += counts
        if not exiting:
            self._replay_due = True
        return counts, paths[0]

    def _spill_if_due(self, now: float) -> tuple[Any, ...] | None:
        """During a long outage, move the outbox and buffer to the spool: memory stays
        bounded and nothing is dropped for want of room."""
        if self.spool is None or now < self._spill_at:
            return None
        self._spill_at = now + self.config.spool_after
        spilled = self.spill()
        if spilled is None:
            return None
        self._outage_spills += 1
        return (
            logger.warning if self._outage_spills == 1 else logger.debug,
            "store failing for over %.0f s: %d counts spooled to %s; replayed once it is back",
            self.config.spool_after,
            spilled[0],
            spilled[1],
        )

    # -- the timer ------------------------------------------------------------------------

    def backoff(self, failures: int) -> float:
        """Return the delay before retry number ``failures``: doubling, capped, jittered."""
        ceiling = min(self.config.backoff_max, self.config.backoff_initial * 2.0 ** (failures - 1))
        jitter: float = self._rng.random()
        return ceiling * (0.5 + 0.5 * jitter)

    def _jittered(self, interval: float) -> float:
        jitter = self.config.schedule_jitter
        if not jitter:
            return interval
        spread: float = self._rng.uniform(-jitter, jitter)
        return interval * (1.0 + spread)

    def run_pending(self) -> None:
        """Push and flush if their time has come (the thread calls this; tests may too)."""
        now = self.clock.monotonic()
        if now >= self.next_push or (self._push_requested and not self.push_failures):
            self._push_requested = False
            self._timed("push")
        if now >= self.next_flush and self.config.flusher:
            self._timed("flush")
        if self._replay_due and not self.push_failures and now >= self.next_replay:
            self._timed_replay(now)
        self.report_drops()

    def _measured(self, kind: str, step: Callable[[], T]) -> tuple[T, float]:
        """Run a push or flush step; record its duration and result; return both."""
        stats = self.stats
        started = time.perf_counter()
        try:
            result = step()
        except BackendError:
            if kind == "push":
                stats.pushes_failed += 1
            else:
                stats.flushes_failed += 1
            raise
        finally:
            elapsed = time.perf_counter() - started
            (stats.push_durations if kind == "push" else stats.flush_durations).observe(elapsed)
        if kind == "push":
            stats.pushes_ok += 1
            stats.last_push_success = self.clock.time()
        else:
            stats.flushes_ok += 1
            stats.last_flush_success = self.clock.time()
        return result, elapsed

    def _timed(self, kind: str, *, blocking: bool = True, wait: float = -1) -> bool:
        """Push or flush on the timer's behalf, then reschedule: backoff or next interval.
        Return whether it went through.

        ``blocking=False`` is write-through (skip a push while another runs or while backing
        off); ``wait`` bounds the wait for the lock of a full-buffer push, which also skips
        while backing off, until the retry is due. Logging and ``on_flush`` run after the
        lock is released: a logging handler that tracks an event must not find the
        scheduler holding anything.
        """
        lock = self._push_lock if kind == "push" else self._flush_lock
        if not lock.acquire(blocking, wait):
            if blocking:
                self._push_stalled = True  # later full-buffer pushes do not wait again
            else:
                self.request_push()  # write-through while a push runs: the next push takes it
            return False
        messages: list[tuple[Any, ...] | None] = []
        moved: tuple[tuple[int, int], float] | None = None
        ok = False
        try:
            now = self.clock.monotonic()
            if kind == "push":
                self._pusher = threading.get_ident()
                if self.push_failures and (not blocking or (wait >= 0 and now < self.next_push)):
                    return False  # backing off: the buffer (or the outbox) keeps the counts
            try:
                if kind == "push":
                    if self._measured("push", lambda: self.push(wait=blocking))[0]:
                        self._outage = False
                    if not blocking and self.aggregator.being_read:
                        self.request_push()  # queries held the buffer: the timer pushes it
                else:
                    moved = self._measured("flush", self.flush_store)
            except BackendError as exc:
                self._note_error(exc, kind)
                messages.append(self._failed(kind, now, exc))
                if kind == "push" and blocking and wait < 0:  # the timer's: never track()'s
                    messages.append(self._spill_if_due(now))
            else:
                messages.append(self._succeeded(kind, now))
                ok = True
        finally:
            if kind == "push":
                self._pusher = None
                self._push_stalled = False
            lock.release()
        for message in messages:
            if message is not None:
                log, *args = message
                log(*args)
        if moved is not None and self.on_flush is not None:
            self.on_flush(*moved)
        self._release_memory(moved)
        self.report_errors()
        return ok

    def _release_memory(self, moved: tuple[tuple[int, int], float] | None) -> None:
        """Trim the heap once a burst's worth of keys has been pushed or flushed (and freed);
        called with no lock held."""
        if moved is not None:
            self._freed_keys += moved[0][0]  # counts flushed: at least the keys
        if self._freed_keys >= TRIM_AFTER_KEYS:
            self._freed_keys = 0
            _trim_heap()

    def _failed(self, kind: str, now: float, exc: BackendError) -> tuple[Any, ...]:
        if kind == "push":
            self.push_failures += 1
            if not self._outage:  # an outage starts: spool if it lasts
                self._outage = True
                self._spill_at = now + self.config.spool_after
                self._outage_spills = 0
            delay = self.backoff(self.push_failures)
            self.next_push = now + delay
            failures = self.push_failures
        else:
            self.flush_failures += 1
            delay = self.backoff(self.flush_failures)
            self.next_flush = now + delay
            failures = self.flush_failures
        log = logger.debug
        if failures == 1 or now - self._warned_at[kind] >= FAILURE_LOG_INTERVAL:
            log = logger.warning
            self._warned_at[kind] = now
        return (
            log,
            "%s failed (%d in a row), retrying in %.1f s; counts are kept: %s",
            kind,
            failures,
            delay,
            exc,
        )

    def _succeeded(self, kind: str, now: float) -> tuple[Any, ...] | None:
        message = None
        if kind == "push":
            if self.push_failures:
                message = (logger.info, "push recovered after %d failures", self.push_failures)
            self.push_failures = 0
            self.next_push = now + self._jittered(self._push_period)
        else:
            if self.flush_failures:
                message = (logger.info, "flush recovered after %d failures", self.flush_failures)
            self.flush_failures = 0
            self.next_flush = now + self._jittered(self.config.flush_interval)
            if self.spool is not None:  # a flusher replays what exited processes spooled
                self._replay_due = True
        return message

    def push_through(self) -> None:
        """Push now, in the caller (write-through), never waiting on another push or on a
        failing store: then the counts stay buffered for the timer."""
        if self.push_failures:
            return
        self._timed("push", blocking=False)

    def push_when_full(self) -> bool:
        """Push from the thread that found the buffer full; return whether its new key may
        go in (the push went through and emptied the buffer, or this thread is pushing).

        Waits (bounded) for a push under way, which drains the buffer too; gives up at once
        while the store is failing and its retry is not yet due. A thread that tracks from
        inside its own push (a logging handler) never waits on itself: its few keys go over
        the cap, and the next push takes them.
        """
        if self._pusher == threading.get_ident():
            return True
        if self._push_stalled:
            return False
        if self.push_failures and self.clock.monotonic() < self.next_push:
            return False
        return self._timed("push", wait=FULL_BUFFER_WAIT)

    def note_dropped(self, count: int) -> None:
        """Count ``count`` counts the full buffer could not hold; warn, at most once a minute."""
        with self._drops_lock:
            self._drops_unreported += count
        if not self.report_drops():
            self._wake_thread()  # to report what is held back once the minute is over

    def report_drops(self) -> bool:
        """Warn about counts dropped since the last warning, if one is due; return whether
        nothing is left to report."""
        with self._drops_lock:
            dropped = self._drops_unreported
            if not dropped:
                return True
            now = self.clock.monotonic()
            if now < self._next_drop_warning:
                return False
            self._drops_unreported = 0
            self._next_drop_warning = now + DROP_WARNING_INTERVAL
        logger.warning(
            "the buffer is full (max_buffered_keys=%d, and the outbox holds as many) while the "
            "store is failing: dropped %d count%s since the last warning (%d since the start)",
            self.config.max_buffered_keys,
            dropped,
            "" if dropped == 1 else "s",
            self.aggregator.dropped,
        )
        return True

    def request_push(self) -> None:
        """Ask for an early push (the buffer is full)."""
        if not self._push_requested:
            self._push_requested = True
            self._wake_thread()

    def _wake_thread(self) -> None:
        self._wake.set()
        self.clock.interrupt()

    # -- the thread -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the scheduler thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the daemon thread."""
        self._stopping = False
        self._accepting = True
        self._thread = threading.Thread(
            target=self._run, name="analytics-sdk-scheduler", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError:
            # Interpreter shutdown (Python 3.12+ start no thread then): flush() and
            # shutdown() run in their caller, and the exit hook flushes.
            self._thread = None
            self._accepting = False

    def _run(self) -> None:
        self.clock.attach()
        try:
            while True:
                self._wake.clear()
                if self._stopping:
                    with self._requests_lock:
                        self._accepting = False  # later flush() calls run in their caller
                    self._serve_requests()
                    return
                self._serve_requests()
                try:
                    self.run_pending()
                except Exception:  # never let the thread die: counts would stop moving
                    logger.exception("unexpected error in the analytics scheduler")
                with self._requests_lock:
                    if self._requests or self._stopping:
                        continue
                due = (
                    min(self.next_push, self.next_flush) if self.config.flusher else self.next_push
                )
                if self._drops_unreported:
                    due = min(due, self._next_drop_warning)
                delay = due - self.clock.monotonic()
                if self._push_requested and not self.push_failures:
                    delay = 0.0
                self.clock.sleep(delay, self._wake)
        finally:
            with self._requests_lock:
                self._accepting = False
            self.clock.detach()

    def _serve_requests(self) -> None:
        with self._requests_lock:
            requests, self._requests = self._requests, []
        # A request whose caller gave up (cancelled) is dropped; the others are now running.
        requests = [(f, d) for f, d in requests if f.set_running_or_notify_cancel()]
        if not requests:
            return
        try:
            result = self.flush_now(max(deadline for _, deadline in requests))
        except Exception as exc:  # a bug must not leave callers waiting for their deadline
            logger.exception("unexpected error in flush()")
            result = FlushResult(error=f"unexpected error: {exc!r}")
        for future, _ in requests:
            future.set_result(result)

    def request_flush(self, deadline: float, *, stop: bool = False) -> Future[FlushResult] | None:
        """Ask the thread to push and flush now, before ``deadline`` (monotonic); return the
        future of its result, or None if the thread takes no requests (not started, stopped,
        or the caller is the thread): then the caller flushes. With ``stop``, the thread
        stops once it has served the request."""
        future: Future[FlushResult] = Future()
        with self._requests_lock:
            queued = self._accepting and threading.current_thread() is not self._thread
            if queued:
                self._requests.append((future, deadline))
                if stop:
                    self._stopping = True
        if not queued:
            return None
        self._wake_thread()
        return future

    def flush(self, timeout: float) -> FlushResult:
        """Push and flush now; return within ``timeout`` seconds whatever happens."""
        deadline = self.clock.monotonic() + timeout
        future = self.request_flush(deadline)
        if future is None:
            return self.flush_now(deadline)
        try:
            return future.result(timeout=min(timeout, threading.TIMEOUT_MAX))
        except FutureTimeout:
            future.cancel()
            return FlushResult(
                timed_out=True,
                error=f"flush did not finish within {timeout} s; it goes on in the background",
            )

    def stop(self, timeout: float) -> bool:
        """Stop the thread, waiting up to ``timeout`` seconds; return whether it stopped."""
        self._stopping = True
        self._wake_thread()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(min(max(0.0, timeout), threading.TIMEOUT_MAX))
        return not thread.is_alive()

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread, locks and claims; start this process's own thread."""
        was_running = self.running or (self._thread is not None and not self._stopping)
        self.stats = PipelineStats()  # this process's own counters, with fresh locks
        self._init_state()
        if was_running:
            self.start()
