"""The scheduler: timers driven by a manual clock, backoff, deadlines, failures without loss."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import TypeVar

import pytest

from analytics_sdk import Analytics, SinkError, StoreError
from analytics_sdk.backends import Batch, MemoryCounterStore, MemorySink
from analytics_sdk.testing import ManualClock

from .faults import BLOCK_LIMIT, Faults, FaultySink, FaultyStore

T = TypeVar("T")


def pending(client: Analytics, event: str = "x") -> int:
    p = client.store.pending_hourly(event, None, None, ())
    return sum(p.live.values()) + sum(sum(c.values()) for c in p.claimed.values())


def durable(client: Analytics, event: str = "x") -> int:
    return sum(client.sink.hourly_counts(event, None, None, ()).values())


@pytest.fixture
def store(clock: ManualClock) -> FaultyStore:  # overrides the matrix fixture: faults needed
    return FaultyStore(clock=clock.time)


@pytest.fixture
def sink(clock: ManualClock) -> FaultySink:
    return FaultySink(clock=clock.time)


@pytest.fixture
def client(clock: ManualClock, store: FaultyStore, sink: FaultySink) -> Iterator[Analytics]:
    c = Analytics(
        store=store, sink=sink, clock=clock, push_interval=1, flush_interval=10, schedule_jitter=0
    )
    c.scheduler._rng = random.Random(7)
    yield c
    store.gate.set()
    store.down = sink.down = False
    c.shutdown(timeout=5)


def test_the_thread_pushes_every_push_interval(client: Analytics, clock: ManualClock) -> None:
    client.track("x")
    clock.advance(0.5)
    assert pending(client) == 0
    clock.advance(0.5)
    assert pending(client) == 1
    assert durable(client) == 0


def test_the_thread_flushes_every_flush_interval(client: Analytics, clock: ManualClock) -> None:
    client.track("x", value=3)
    for _ in range(9):
        clock.advance(1)
    assert (pending(client), durable(client)) == (3, 0)
    clock.advance(1)
    assert (pending(client), durable(client)) == (0, 3)
    assert client.stats()["flushes_ok"] == 1


def test_push_failures_back_off_exponentially_with_jitter(
    client: Analytics, clock: ManualClock, store: FaultyStore
) -> None:
    store.down = True
    client.track("x", value=7)
    for _ in range(int(200 / 0.25)):
        clock.advance(0.25)
    attempts = store.push_attempts
    gaps = [b - a for a, b in pairwise(attempts)]
    assert len(gaps) >= 6
    for n, gap in enumerate(gaps, start=1):
        ceiling = min(60.0, 1.0 * 2 ** (n - 1))
        # Equal jitter: between half the ceiling and the ceiling (plus one clock step).
        assert ceiling / 2 - 0.25 <= gap <= ceiling + 0.25, (n, gap, gaps)
    assert max(gaps) > 30  # it did reach the cap region
    assert client.count("x") == 7  # still exact while the store is down

    store.down = False
    store.push_attempts.clear()
    for _ in range(int(70 / 0.25)):
        clock.advance(0.25)
        if len(store.push_attempts) >= 4:
            break
    assert pending(client) + durable(client) == 7
    recovered = [b - a for a, b in pairwise(store.push_attempts[1:])]
    assert all(abs(gap - 1.0) <= 0.25 for gap in recovered), recovered  # back to push_interval


def test_flush_never_raises_and_keeps_the_counts(
    client: Analytics, store: FaultyStore, sink: FaultySink
) -> None:
    client.track("x", value=2)
    store.down = True
    result = client.flush()
    assert result.error is not None
    assert "store is down" in result.error
    assert not result.complete
    client.track("x", value=3)  # track() never raises either
    store.down = False
    sink.down = True
    result = client.flush()
    assert "sink is down" in (result.error or "")
    assert client.count("x") == 5  # pending in a claim, still counted, once
    sink.down = False
    result = client.flush()
    assert result.complete, result
    assert durable(client) == 5
    assert client.count("x") == 5


def test_a_push_whose_reply_was_lost_counts_once(client: Analytics, store: FaultyStore) -> None:
    client.track("x", value=4, user_id="u")
    store.lose_reply = 1
    result = client.flush()
    assert result.error is not None  # applied by the store, but the client never heard
    assert client.count("x") == 4  # the outbox is not counted twice while in doubt
    assert client.flush().complete
    assert durable(client) == 4
    assert client.count("x", user_id="u") == 4


def test_counts_pushed_counts_what_reached_the_store_once(
    client: Analytics, store: FaultyStore
) -> None:
    client.track("x", value=4)
    store.lose_reply = 1
    assert client.flush().error is not None  # applied, reply lost
    assert client.flush().pushed == 4  # the retry is skipped as a duplicate, but was ours
    assert client.stats()["counts_pushed"] == 4
    client.track("x", value=3)
    replayed = client.aggregator.next_push()  # the push the scheduler is about to send...
    assert replayed is not None
    assert store.push(replayed)  # ...applied by another sender
    assert client.flush().pushed == 0  # skipped, and not ours to count
    assert client.stats()["counts_pushed"] == 4
    assert pending(client) + durable(client) == 7


def test_a_push_failing_with_a_foreign_error_after_the_store_applied_it_counts_once(
    client: Analytics,
) -> None:
    """A store raising something other than a backend error, after applying the push: the
    flush reports it as a StoreError naming the store, and the retry, skipped as a
    duplicate, is counted as pushed once (it was ours)."""
    client.track("x", value=4)
    Faults(client.store).fail("push", after=True, error=RuntimeError("reply mangled"))
    result = client.flush()
    assert result.error == f"push to {client.store!r} failed: RuntimeError('reply mangled')"
    assert client.count("x") == 4
    assert client.flush().pushed == 4
    assert client.stats()["counts_pushed"] == 4
    assert durable(client) == 4


def test_a_commit_whose_ack_never_happened_counts_once(client: Analytics, sink: FaultySink) -> None:
    client.track("x", value=6)
    sink.fail_after_commit = 1
    assert client.flush().error is not None
    assert client.count("x") == 6  # in the sink and still claimed in the store: once
    assert client.flush().complete
    assert durable(client) == 6
    assert client.store.claimed() == []


def test_orphaned_claims_of_a_dead_flusher_are_applied_after_the_lease(clock: ManualClock) -> None:
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    with Analytics(store=store, sink=sink, clock=clock, background=False, claim_lease=30) as a:
        a.track("x", value=5)
        a.scheduler.push()
        store.claim()  # another flusher claims, then dies
        assert a.flush().flushed == 0
        assert a.count("x") == 5
        clock.advance(31)
        assert a.flush().flushed == 5
        assert durable(a) == 5
        assert store.claimed() == []


def returns_while_blocked(call: Callable[[], T], blocked: threading.Event) -> T:
    """Run ``call`` in a thread; fail unless it returns while ``blocked`` is still clear.

    The backend is released only after the check, so a call that waited for it could not
    return in time: the bound is a limit on a hang, not a measure of speed.
    """
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(call()))
    thread.start()
    thread.join(BLOCK_LIMIT / 2)
    assert not thread.is_alive(), "the call waited for a backend that never answered"
    assert not blocked.is_set(), "the backend was released before the call returned"
    return results[0]


def test_flush_and_shutdown_honour_their_deadline_while_a_backend_hangs(
    client: Analytics, store: FaultyStore
) -> None:
    client.track("x", value=9)
    store.gate.clear()  # the next push hangs
    result = returns_while_blocked(lambda: client.flush(timeout=0.2), store.gate)
    assert result.timed_out
    assert "within 0.2 s" in (result.error or "")
    shut = returns_while_blocked(lambda: client.shutdown(timeout=0.2), store.gate)
    assert shut.timed_out
    assert not shut.complete
    store.gate.set()
    # The counts were never lost: the outbox is pushed once the backend answers.
    assert client.flush(timeout=5).complete
    assert durable(client) == 9


@pytest.fixture
def synchronous(clock: ManualClock) -> Iterator[tuple[Analytics, Faults, Faults]]:
    """A client without a thread (flush() runs in the caller), faults on store and sink."""
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    with Analytics(store=store, sink=sink, clock=clock, background=False, claim_lease=30) as c:
        yield c, Faults(store), Faults(sink)


def test_a_deadline_passing_during_the_push_stops_the_flush_before_the_claim(
    synchronous: tuple[Analytics, Faults, Faults], clock: ManualClock
) -> None:
    client, store, _ = synchronous
    client.track("x", value=3)
    store.then("push", lambda: clock.advance(10))  # the push takes 10 s of a 5 s deadline
    result = client.flush(timeout=5)
    assert (result.timed_out, result.complete, result.flushed) == (True, False, 0)
    assert store.calls["claim"] == 0
    assert (pending(client), durable(client)) == (3, 0)
    assert client.flush(timeout=5).complete
    assert (pending(client), durable(client), client.count("x")) == (0, 3, 3)


def test_a_deadline_passing_between_batches_leaves_the_rest_to_the_next_flush(
    synchronous: tuple[Analytics, Faults, Faults], clock: ManualClock
) -> None:
    client, _, sink = synchronous
    client.track("x", value=2)
    client.scheduler.push()
    client.store.claim()  # a flusher that died: its claim is applied after the lease
    clock.advance(31)
    client.track("x", value=5)
    sink.then("apply", lambda: clock.advance(10))  # the first batch takes the whole deadline
    result = client.flush(timeout=5)
    assert (result.timed_out, result.complete) == (True, False)
    assert sink.calls["apply"] == 1
    assert (pending(client), durable(client), client.count("x")) == (5, 2, 7)
    again = client.flush(timeout=5)  # our own claim: applied at once, no lease to wait for
    assert again.complete, again
    assert (pending(client), durable(client), client.count("x")) == (0, 7, 7)


def test_a_flush_waiting_for_a_lock_stops_at_its_deadline(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, store, _ = synchronous
    client.track("x", value=4)
    hung = store.block("push")
    first = threading.Thread(target=client.flush, kwargs={"timeout": BLOCK_LIMIT})
    first.start()
    try:
        assert hung.entered.wait(BLOCK_LIMIT)  # the first flush holds the push lock
        released = threading.Event()
        result = returns_while_blocked(lambda: client.flush(timeout=0.05), released)
        assert (result.timed_out, result.pushed, result.complete) == (True, 0, False)
    finally:
        hung.release.set()
        first.join(BLOCK_LIMIT)
    assert not first.is_alive()
    assert client.flush().complete
    assert (durable(client), client.count("x")) == (4, 4)


def test_the_scheduler_thread_survives_unexpected_errors(
    client: Analytics, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken(moved: tuple[int, int], seconds: float) -> None:  # not a backend error
        calls.append(moved)
        raise RuntimeError("bug in an on_flush callback")

    client.scheduler.on_flush = broken
    client.track("x", value=2)
    clock.advance(10)  # the timer flushes, then the callback raises on the thread
    assert calls == [(2, 1)]
    assert client.scheduler.running
    [record] = [r for r in caplog.records if r.exc_info is not None]
    assert record.getMessage() == "unexpected error in the analytics scheduler"
    assert "bug in an on_flush callback" in str(record.exc_info[1])
    client.scheduler.on_flush = None
    client.track("x", value=3)
    clock.advance(10)  # the thread goes on moving counts
    assert (pending(client), durable(client)) == (0, 5)


def test_a_foreign_error_from_a_store_is_a_failed_flush_and_retried(
    client: Analytics, clock: ManualClock
) -> None:
    claim_batches = client.store.claim_batches
    calls = []

    def broken(*args: int) -> Iterator[Batch]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug in a third-party store")
        return claim_batches(*args)

    client.store.claim_batches = broken  # type: ignore[method-assign]
    client.track("x")
    clock.advance(10)
    assert calls == [1]
    assert client.scheduler.running
    assert client.stats()["flushes_failed"] == 1
    assert durable(client) == 0
    clock.advance(client.scheduler.next_flush - clock.monotonic())  # the backoff retry
    assert calls == [1, 1]
    assert (durable(client), client.stats()["flushes_ok"]) == (1, 1)


def test_a_full_buffer_is_pushed_early_by_the_thread_that_fills_it(clock: ManualClock) -> None:
    with Analytics(clock=clock, max_buffered_keys=4, push_interval=60, flush_interval=600) as c:
        faults = Faults(c.store)
        for n in range(4):
            c.track(f"e{n}")
        clock.advance(0)  # nothing due: the thread sleeps on
        assert faults.calls["push"] == 0
        c.track("e4")  # no room: this call pushes the buffer, then adds its key
        assert faults.calls["push"] == 1  # before track() returned, not on the timer
        assert c.stats()["dropped"] == 0
        assert c.stats()["buffered_keys"] == 1
        live = {
            n: sum(c.store.pending_hourly(f"e{n}", None, None, ()).live.values()) for n in range(5)
        }
        assert live == {0: 1, 1: 1, 2: 1, 3: 1, 4: 0}
        c.track("e4")
        assert c.count("e4") == 2


def test_write_through_never_waits_for_a_flush_or_a_push_in_progress(clock: ManualClock) -> None:
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    stores, sinks = Faults(store), Faults(sink)
    applying = sinks.block("apply")
    with Analytics(store=store, sink=sink, clock=clock, push_interval=0, background=False) as c:
        c.track("x")
        flusher = threading.Thread(target=c.flush, kwargs={"timeout": BLOCK_LIMIT})
        flusher.start()
        pusher = None
        try:
            assert applying.entered.wait(BLOCK_LIMIT)  # a flush holds the flush lock
            # Write-through pushes without waiting for the flush.
            returns_while_blocked(lambda: c.track("x", value=2), applying.release)
            assert stores.calls["push"] == 2
            assert sum(store.pending_hourly("x", None, None, ()).live.values()) == 2
            pushing = stores.block("push")
            pusher = threading.Thread(target=c.track, args=("x",))
            pusher.start()
            assert pushing.entered.wait(BLOCK_LIMIT)  # a push holds the push lock
            # The push lock is taken: buffered, not waiting.
            returns_while_blocked(lambda: c.track("x", value=4), pushing.release)
            assert stores.calls["push"] == 3
        finally:
            sinks.release_all()
            stores.release_all()
            flusher.join(BLOCK_LIMIT)
            if pusher is not None:
                pusher.join(BLOCK_LIMIT)
        assert not flusher.is_alive()
        assert pusher is not None
        assert not pusher.is_alive()
        assert c.flush().complete
        assert c.count("x") == 8
        assert sum(sink.hourly_counts("x", None, None, ()).values()) == 8


def test_a_logging_handler_that_tracks_cannot_deadlock_the_scheduler(clock: ManualClock) -> None:
    import logging

    sink = FaultySink(clock=clock.time)
    sink.down = True  # flushes fail, and each failure is logged
    client = Analytics(sink=sink, clock=clock, push_interval=0, flush_interval=5)

    class Tracking(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            client.track("log_record")  # runs on the scheduler thread, mid-retry

    handler = Tracking(level=logging.DEBUG)
    logger = logging.getLogger("analytics_sdk")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        client.track("x")
        for _ in range(30):
            clock.advance(1)  # would hang (advance() waits for the thread) on a deadlock
        assert client.stats()["flushes_failed"] >= 2
        sink.down = False
        assert client.flush().complete
        assert client.count("x") == 1
        assert client.count("log_record") >= 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        client.shutdown(timeout=5)


def test_a_claim_of_ours_applied_by_another_flusher_is_forgotten(clock: ManualClock) -> None:
    store, sink = MemoryCounterStore(clock=clock.time), FaultySink(clock=clock.time)
    settings = {
        "store": store,
        "sink": sink,
        "clock": clock,
        "background": False,
        "claim_lease": 30,
    }
    with Analytics(**settings) as a, Analytics(**settings) as b:
        a.track("x", value=3)
        sink.down = True
        assert a.flush().error is not None  # a claimed, then failed to apply
        sink.down = False
        clock.advance(31)
        assert b.flush().flushed == 3  # b applies a's orphaned claim and acks it
        result = a.flush()
        assert result.complete, result  # a no longer waits for a claim that is gone
        assert result.flushed == 0
        assert sum(sink.hourly_counts("x", None, None, ()).values()) == 3


# -- each step of the flush failing ----------------------------------------------------------


def test_an_ack_failing_after_the_commit_counts_once(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, store, sink = synchronous
    client.track("x", value=6, user_id="u")
    store.fail("ack")
    result = client.flush()
    assert "ack call 1 failed" in (result.error or "")
    assert (result.complete, sink.calls["apply"]) == (False, 1)
    # Committed and still claimed: the queries read the ledger and count it once.
    assert (durable(client), len(client.store.claimed()), client.count("x")) == (6, 1, 6)
    assert client.count("x", user_id="u") == 6
    again = client.flush()
    assert again.complete, again
    assert again.flushed == 0  # the ledger knew the batch: applied once
    assert (durable(client), client.store.claimed(), client.count("x")) == (6, [], 6)
    assert client.count("x", user_id="u") == 6


@pytest.mark.parametrize("step", ["claim_batches", "claimed_ids"])
def test_a_claim_step_failing_keeps_the_counts_for_the_next_flush(
    synchronous: tuple[Analytics, Faults, Faults], step: str
) -> None:
    client, store, sink = synchronous
    client.track("x", value=3)
    store.fail(step)
    result = client.flush()
    assert f"{step} call 1 failed" in (result.error or "")
    assert (result.pushed, result.complete, sink.calls["apply"]) == (3, False, 0)
    assert (pending(client), durable(client), client.count("x")) == (3, 0, 3)
    assert client.flush().complete
    assert (pending(client), durable(client), client.count("x")) == (0, 3, 3)


def test_the_timed_flush_backs_off_and_recovers(
    client: Analytics, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="analytics_sdk")
    sink = Faults(client.sink)
    sink.fail("apply", times=2)
    client.track("x", value=4)
    clock.advance(10)  # the first timed flush fails
    scheduler = client.scheduler
    assert (scheduler.flush_failures, durable(client), pending(client)) == (1, 0, 4)
    first_retry = scheduler.next_flush - clock.monotonic()
    assert 0.5 <= first_retry <= 1.0  # backoff_initial 1 s, jittered, not flush_interval
    clock.advance(first_retry)
    assert (scheduler.flush_failures, durable(client)) == (2, 0)
    clock.advance(scheduler.next_flush - clock.monotonic())
    assert (scheduler.flush_failures, durable(client), pending(client)) == (0, 4, 0)
    assert scheduler.next_flush - clock.monotonic() == 10  # back to flush_interval
    assert sink.calls["apply"] == 3
    stats = client.stats()
    assert (stats["flushes_failed"], stats["flushes_ok"], stats["counts_flushed"]) == (2, 1, 4)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("flush failed (1 in a row)") for m in messages), messages
    assert "flush recovered after 2 failures" in messages


def test_write_through_while_backing_off_leaves_the_counts_to_the_timer(
    clock: ManualClock,
) -> None:
    store = MemoryCounterStore(clock=clock.time)
    faults = Faults(store)
    faults.fail("push")
    with Analytics(store=store, clock=clock, push_interval=0, flush_interval=600) as c:
        c.track("x")  # write-through push fails: backing off
        assert (faults.calls["push"], c.scheduler.push_failures) == (1, 1)
        for _ in range(5):
            c.track("x")  # no push from track() while the store is failing
        assert faults.calls["push"] == 1
        assert c.count("x") == 6
        for _ in range(8):  # the timer retries within its backoff (at most 1 s here)
            clock.advance(0.25)
        # One retry of the failed push (1 count), then the buffer behind it (5 counts).
        assert (faults.calls["push"], c.scheduler.push_failures) == (3, 0)
        assert (pending(c), c.count("x")) == (6, 6)
        c.track("x")  # recovered: track() pushes again
        assert (faults.calls["push"], pending(c)) == (4, 7)


def test_a_buffer_filling_during_a_flush_is_pushed_at_once_by_the_thread_filling_it(
    clock: ManualClock,
) -> None:
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    stores = Faults(store)
    with Analytics(
        store=store,
        sink=sink,
        clock=clock,
        max_buffered_keys=2,
        push_interval=60,
        flush_interval=60,
        schedule_jitter=0,
    ) as c:
        c.track("a")
        applying = Faults(sink).block("apply")
        advancing = threading.Thread(target=clock.advance, args=(60,))
        advancing.start()  # the timer pushes, then its flush hangs in apply
        try:
            assert applying.entered.wait(BLOCK_LIMIT)
            assert stores.calls["push"] == 1
            c.track("b")
            c.track("c")
            c.track("d")  # the buffer is full while the thread is busy flushing
            # track() pushed it itself: the flush holds its own lock, not the push lock.
            assert stores.calls["push"] == 2
        finally:
            applying.release.set()
            advancing.join(BLOCK_LIMIT)
        assert not advancing.is_alive()
        assert stores.calls["push"] == 2
        assert clock.monotonic() == 60
        assert c.stats()["dropped"] == 0
        assert {e: pending(c, e) for e in "bcd"} == {"b": 1, "c": 1, "d": 0}
        assert c.count("d") == 1  # in the buffer, for the next push
        assert sum(sink.hourly_counts("a", None, None, ()).values()) == 1


@pytest.mark.parametrize("background", [True, False])
def test_flush_and_shutdown_accept_an_unbounded_timeout(
    clock: ManualClock, background: bool
) -> None:
    with Analytics(clock=clock, background=background) as c:
        c.track("x", value=2)
        result = c.flush(timeout=float("inf"))
        assert result.complete, result
        assert durable(c) == 2
        c.track("x")
        assert c.shutdown(timeout=float("inf")).complete
        assert durable(c) == 3


@pytest.mark.parametrize(
    ("backend", "method", "message"),
    [
        ("store", "claim_batches", "claim from MemoryCounterStore() failed: RuntimeError('bug')"),
        ("store", "claimed_ids", "claim from MemoryCounterStore() failed: RuntimeError('bug')"),
        ("sink", "apply", "apply to MemorySink() failed: RuntimeError('bug')"),
        ("store", "ack", "ack on MemoryCounterStore() failed: RuntimeError('bug')"),
    ],
)
def test_a_foreign_error_in_a_flush_step_is_reported_with_the_backend_and_step(
    synchronous: tuple[Analytics, Faults, Faults], backend: str, method: str, message: str
) -> None:
    client, store, sink = synchronous
    client.track("x", value=2)
    (store if backend == "store" else sink).fail(method, error=RuntimeError("bug"))
    result = client.flush()
    assert result.error == message
    assert client.count("x") == 2
    assert client.flush().complete
    assert (durable(client), client.count("x")) == (2, 2)


def test_a_foreign_error_reading_a_claim_again_is_reported_with_the_backend_and_step(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, store, sink = synchronous
    client.track("x", value=2)
    sink.fail("apply")
    assert client.flush().error is not None  # claimed; the claim stays ours to apply
    store.fail("read_claim", error=RuntimeError("bug"))
    result = client.flush()
    assert result.error == "read from MemoryCounterStore() failed: RuntimeError('bug')"
    assert (result.complete, sink.calls["apply"], client.count("x")) == (False, 1, 2)
    again = client.flush()
    assert (again.complete, again.flushed, durable(client)) == (True, 2, 2)


def test_two_failing_batches_are_tried_after_new_ones_and_never_hold_them_back(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, _, sink = synchronous

    def poisoned(batch: Batch) -> bool:
        return any(event == "poison" for event, _, _ in batch.delta.hourly)

    sink.fail("apply", times=1000, when=poisoned)  # two batches that cannot commit
    for value in (1, 2):
        client.track("poison", value=value)
        assert client.flush().error is not None
    assert len(client.store.claimed()) == 2
    client.track("good", value=5)
    result = client.flush()  # new claims first: two failures in a row stop a flush
    assert (result.flushed, result.batches, result.complete) == (5, 1, False)
    assert (durable(client, "good"), durable(client, "poison")) == (5, 0)
    assert client.count("poison") == 3  # kept in their claims, for when the sink takes them


def test_one_failure_after_a_success_does_not_stop_the_flush(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, _, sink = synchronous

    def of(event: str) -> Callable[[Batch], bool]:
        return lambda batch: any(e == event for e, _, _ in batch.delta.hourly)

    sink.fail("apply", times=1000, when=of("stuck"))
    client.track("stuck", value=1)
    assert client.flush().error is not None
    sink.fail("apply", when=of("flaky"))  # fails once, then commits
    client.track("flaky", value=2)
    assert client.flush().error is not None
    client.track("good", value=5)
    # The new batch commits, the stuck one fails, the flaky one commits: one failure
    # between two successes is no reason to stop.
    result = client.flush()
    assert (result.flushed, result.batches, result.complete) == (5 + 2, 2, False)
    assert [durable(client, e) for e in ("good", "flaky", "stuck")] == [5, 2, 0]


def test_a_claim_another_flusher_acknowledges_meanwhile_is_done_and_the_flush_complete(
    clock: ManualClock,
) -> None:
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    settings = {"store": store, "sink": sink, "clock": clock, "background": False}
    with Analytics(**settings, claim_lease=30) as a, Analytics(**settings, claim_lease=30) as b:
        a.track("x", value=3)
        Faults(sink).fail("apply")
        assert a.flush().error is not None  # a's claim, to apply again
        clock.advance(31)  # an orphan to b
        # b applies and acknowledges it between a's listing of the claims and a's read of it.
        Faults(store).then("claimed_ids", lambda: b.flush(), nth=2)
        result = a.flush()
        assert (result.error, result.flushed, result.complete) == (None, 0, True)
        assert store.claimed() == []
        assert (durable(a), a.count("x")) == (3, 3)


def test_a_foreign_error_claiming_the_next_batch_is_reported_with_the_backend_and_step(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, _, _ = synchronous
    client.track("x", value=2)
    store = client.store
    claim_batches = store.claim_batches

    def failing(max_keys: int) -> Iterator[Batch]:
        raise RuntimeError("bug")
        yield  # a generator: the error comes with the first batch, not with the call

    store.claim_batches = failing  # type: ignore[method-assign]
    result = client.flush()
    assert result.error == "claim from MemoryCounterStore() failed: RuntimeError('bug')"
    store.claim_batches = claim_batches  # type: ignore[method-assign]
    assert client.flush().complete
    assert (durable(client), client.count("x")) == (2, 2)


def test_a_claim_failing_after_an_apply_failed_keeps_the_earlier_claim_ours(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, store, sink = synchronous
    client.track("x", value=3)
    sink.fail("apply")
    assert client.flush().error is not None  # claimed: ours to apply again, at once
    store.fail("claim_batches")
    assert client.flush().error is not None
    # Still ours: applied by the next flush, not left for the lease to run out.
    result = client.flush()
    assert (result.complete, result.flushed) == (True, 3)
    assert (durable(client), client.count("x")) == (3, 3)


def test_a_flush_that_cannot_list_the_claims_left_is_not_reported_complete(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, store, _ = synchronous
    client.track("x", value=2)
    store.fail("claimed_ids", nth=2)  # the check after the batches, that none is left
    result = client.flush()
    assert (result.error, result.flushed, result.complete) == (None, 2, False)
    assert client.flush().complete
    assert (durable(client), client.count("x")) == (2, 2)


def test_a_flush_of_several_batches_reports_and_counts_each_once(
    synchronous: tuple[Analytics, Faults, Faults], clock: ManualClock
) -> None:
    client, _, _ = synchronous
    client.track("x", value=2)
    client.scheduler.push()
    client.store.claim()  # an orphan, applied after the lease along with the new claim
    clock.advance(31)
    client.track("x", value=5)
    first = client.flush()
    assert (first.complete, first.pushed, first.flushed, first.batches) == (True, 5, 7, 2)
    client.track("x", value=1)
    second = client.flush()
    assert (second.pushed, second.flushed, second.batches) == (1, 1, 1)
    stats = client.stats()
    assert (stats["counts_pushed"], stats["counts_flushed"], stats["batches_flushed"]) == (8, 8, 3)
    assert (durable(client), client.count("x")) == (8, 8)


def test_a_flush_applies_every_orphan_of_a_dead_flusher(
    synchronous: tuple[Analytics, Faults, Faults], clock: ManualClock
) -> None:
    client, _, _ = synchronous
    for value in (2, 3, 4):  # a flusher claimed three batches, then died
        client.track("x", value=value)
        client.scheduler.push()
        client.store.claim()
    clock.advance(31)
    result = client.flush()
    assert (result.complete, result.flushed, result.batches) == (True, 9, 3)
    assert (client.store.claimed(), durable(client), client.count("x")) == ([], 9, 9)


def test_a_flush_applies_its_own_claims_and_orphans_but_not_a_live_flusher_s(
    clock: ManualClock,
) -> None:
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    settings = {"store": store, "sink": sink, "clock": clock, "background": False}
    with Analytics(**settings, claim_lease=30) as a, Analytics(**settings, flusher=False) as other:
        other.track("x", value=2)
        other.flush()
        [orphan] = store.claim()  # by a flusher that then died
        clock.advance(31)
        a.track("x", value=3)
        Faults(sink).fail("apply", times=2)
        assert a.flush().error is not None  # a claimed its 3; both applies failed
        other.track("x", value=5)
        other.flush()
        [live] = store.claim()  # by a flusher at work right now: not ours, not stale
        result = a.flush()
        assert (result.flushed, result.batches) == (2 + 3, 2)
        assert not result.complete  # the live flusher's claim is still to be applied
        assert [b.id for b in store.claimed()] == [live.id]
        assert orphan.id in sink.applied([orphan.id, live.id])
        assert a.count("x") == 10
        assert sum(sink.hourly_counts("x", None, None, ()).values()) == 5


def test_a_flush_after_a_failed_push_pushes_the_outbox_then_the_buffer(
    synchronous: tuple[Analytics, Faults, Faults],
) -> None:
    client, store, _ = synchronous
    client.track("x", value=2)
    store.fail("push")
    assert client.flush().pushed == 0  # refused: the 2 wait in the outbox
    client.track("x", value=3)  # behind the outbox, in the buffer
    result = client.flush()
    assert (result.complete, result.pushed, result.flushed) == (True, 5, 5)
    assert store.calls["push"] == 3
    assert client.stats()["counts_pushed"] == 5
    assert (durable(client), client.count("x")) == (5, 5)


def test_flush_now_tells_on_error_which_step_failed(clock: ManualClock) -> None:
    told: list[tuple[BaseException, str]] = []
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    with Analytics(
        store=store,
        sink=sink,
        clock=clock,
        background=False,
        spool_dir=None,
        on_error=lambda exc, operation: told.append((exc, operation)),
    ) as client:
        client.track("x", value=2)
        Faults(store).fail("push", error=StoreError("refused (injected)"))
        result = client.scheduler.flush_now(clock.monotonic() + 60)
        assert result.error == "refused (injected)"
        assert [operation for _, operation in told] == ["push"]
        Faults(sink).fail("apply", error=SinkError("refused (injected)"))
        assert client.scheduler.flush_now(clock.monotonic() + 60).error is not None
        assert [operation for _, operation in told] == ["push", "flush"]
        assert client.flush().complete
        assert client.count("x") == 2


def test_a_track_from_inside_flush_now_s_own_push_never_waits_on_it(clock: ManualClock) -> None:
    """A logging handler tracking while ``flush_now`` pushes, its keys filling the buffer:
    it goes over the cap instead of waiting for the push it is part of (and dropping)."""
    store = MemoryCounterStore(clock=clock.time)
    with Analytics(
        store=store,
        sink=MemorySink(clock=clock.time),
        clock=clock,
        background=False,
        max_buffered_keys=2,
    ) as client:
        client.track("a")
        Faults(store).then("push", lambda: [client.track(f"k{i}") for i in range(3)])
        assert client.scheduler.flush_now(clock.monotonic() + 60).error is None
        assert client.stats()["dropped"] == 0
        assert client.flush().complete
        assert sum(client.count(e) for e in ("a", "k0", "k1", "k2")) == 4


def test_after_a_flush_a_full_buffer_still_pushes_early(clock: ManualClock) -> None:
    with Analytics(
        store=MemoryCounterStore(clock=clock.time),
        sink=MemorySink(clock=clock.time),
        clock=clock,
        background=False,
        max_buffered_keys=2,
    ) as client:
        assert client.flush().complete  # flush_now: its push took the push lock and gave it back
        for i in range(5):
            client.track(f"k{i}")  # the third key finds the buffer full: pushed, not dropped
        assert client.stats()["dropped"] == 0
        assert client.flush().complete
        assert sum(client.count(f"k{i}") for i in range(5)) == 5
