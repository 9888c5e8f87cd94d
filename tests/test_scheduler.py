"""The scheduler: timers driven by a manual clock, backoff, deadlines, failures without loss."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from itertools import pairwise

import pytest

from analytics_sdk import Analytics
from analytics_sdk.backends import MemoryCounterStore, MemorySink
from analytics_sdk.testing import ManualClock

from .faults import FaultySink, FaultyStore


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


def test_flush_and_shutdown_honour_their_deadline_while_a_backend_hangs(
    client: Analytics, store: FaultyStore
) -> None:
    client.track("x", value=9)
    store.gate.clear()  # the next push hangs
    started = time.monotonic()
    result = client.flush(timeout=0.2)
    assert result.timed_out
    assert "within 0.2 s" in (result.error or "")
    shut = client.shutdown(timeout=0.2)
    assert shut.timed_out
    assert time.monotonic() - started < 3  # two 0.2 s deadlines, not a hang
    store.gate.set()
    # The counts were never lost: the outbox is pushed once the backend answers.
    assert client.flush(timeout=5).complete
    assert durable(client) == 9


def test_the_scheduler_thread_survives_unexpected_errors(
    client: Analytics, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def broken() -> list:  # type: ignore[type-arg]
        calls.append(1)
        raise RuntimeError("bug in a third-party store")

    client.store.claim = broken  # type: ignore[method-assign]
    client.track("x")
    clock.advance(10)
    assert calls
    assert client.scheduler.running
    assert client.stats()["flushes_failed"] == 1


def test_a_full_buffer_triggers_an_early_push(clock: ManualClock) -> None:
    with Analytics(clock=clock, max_buffered_keys=4, push_interval=60, flush_interval=600) as c:
        pushed = threading.Event()
        original = c.store.push

        def watch(p):  # type: ignore[no-untyped-def]
            original(p)
            pushed.set()

        c.store.push = watch  # type: ignore[method-assign]
        for n in range(10):
            c.track(f"e{n}")
        assert pushed.wait(5), "no early push"


def test_write_through_never_waits_for_a_flush_or_a_push_in_progress(clock: ManualClock) -> None:
    store, sink = FaultyStore(clock=clock.time), FaultySink(clock=clock.time)
    entered, release = threading.Event(), threading.Event()
    apply = sink.apply

    def slow_apply(batch):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(10)
        return apply(batch)

    sink.apply = slow_apply  # type: ignore[method-assign]
    with Analytics(store=store, sink=sink, clock=clock, push_interval=0, background=False) as c:
        c.track("x")
        flusher = threading.Thread(target=c.flush)
        flusher.start()
        assert entered.wait(5)  # a flush is applying (slowly) to the sink
        started = time.monotonic()
        c.track("x", value=2)  # write-through: pushes without waiting for the flush
        assert time.monotonic() - started < 1
        assert sum(c.store.pending_hourly("x", None, None, ()).live.values()) == 2
        store.gate.clear()  # now a push hangs in another thread
        pusher = threading.Thread(target=c.track, args=("x",))
        pusher.start()
        time.sleep(0.2)
        started = time.monotonic()
        c.track("x", value=4)  # the push lock is taken: buffered, not waiting
        assert time.monotonic() - started < 1
        store.gate.set()
        release.set()
        pusher.join(5)
        flusher.join(5)
        assert c.flush().complete
        assert c.count("x") == 8


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
