"""The in-process buffer: exact under threads, bounded by keys, never silent about excess."""

from __future__ import annotations

import threading

from analytics_sdk import Analytics
from analytics_sdk.aggregator import OVERFLOW_PROPERTIES, Aggregator
from analytics_sdk.testing import ManualClock


def test_eight_threads_times_fifty_thousand_are_exact(clock: ManualClock) -> None:
    client = Analytics(clock=clock, push_interval=0.5, flush_interval=2)
    threads, calls = 8, 50_000
    start = threading.Barrier(threads + 1)

    def work(i: int) -> None:
        start.wait()
        for n in range(calls):
            client.track("hit")
            if n % 5 == 0:
                client.track("tagged", user_id=f"u{i}", properties={"thread": i % 2})

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    # Drive the scheduler (pushes and flushes) while the threads track.
    while any(w.is_alive() for w in workers):
        clock.advance(0.5)
    for w in workers:
        w.join()
    result = client.flush()
    assert result.complete, result
    assert client.count("hit") == threads * calls
    assert client.count("tagged") == threads * calls // 5
    assert client.count("tagged", properties={"thread": 1}) == threads // 2 * calls // 5
    assert client.top_users("tagged", day=client_day(clock), limit=1)[0][1] == calls // 5
    # Everything went through the store into the sink, not just the buffer.
    assert client.stats()["counts_flushed"] == threads * calls + threads * calls // 5
    client.shutdown()


def client_day(clock: ManualClock):  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    return datetime.fromtimestamp(clock.time(), timezone.utc).date()


def test_memory_grows_with_keys_not_events() -> None:
    agg = Aggregator(max_property_sets=10, max_buffered_keys=1000)
    for _ in range(10_000):
        agg.add("x", (("p", "1"),), 5, "u", 1)
    assert agg.buffered_keys == 2
    assert agg.local_counts().buffer.hourly == {("x", (("p", "1"),), 5): 10_000}


def test_excess_property_sets_fold_into_overflow_and_are_counted() -> None:
    agg = Aggregator(max_property_sets=3, max_buffered_keys=1000)
    for i in range(10):
        agg.add("x", (("id", str(i)),), 5, None, 2)
    agg.add("x", (("id", "0"),), 5, None, 1)  # a known set is still accepted
    assert agg.local_counts().buffer.hourly[("x", OVERFLOW_PROPERTIES, 5)] == 14
    assert agg.local_counts().buffer.hourly[("x", (("id", "0"),), 5)] == 3
    assert agg.overflowed == 14
    assert sum(agg.local_counts().buffer.hourly.values()) == 21  # nothing lost: the total is exact


def test_a_full_buffer_counts_what_it_cannot_hold_and_asks_for_a_push() -> None:
    asked = []
    agg = Aggregator(max_property_sets=100, max_buffered_keys=3, on_full=lambda: asked.append(1))
    for hour in range(5):
        agg.add("x", (), hour, None, 1)
    agg.add("x", (), 0, "u", 1)  # the hourly key exists; the user key does not fit
    assert agg.buffered_keys == 3
    assert agg.dropped == 2 + 1
    assert asked


def test_overflow_and_drops_are_visible_in_stats(clock: ManualClock) -> None:
    with Analytics(
        clock=clock, background=False, max_property_sets=1, max_buffered_keys=3
    ) as client:
        client.track("x", properties={"a": "1"})
        client.track("x", properties={"a": "2"})
        client.track("x", properties={"a": "3"})
        for n in range(3):
            client.track(f"other{n}")
        stats = client.stats()
        assert stats["overflowed"] == 2
        assert stats["dropped"] == 2  # x{a=1}, x{overflow}, other0 fill the 3 keys
        assert client.count("x", properties={"overflow": "true"}) == 2


def test_outbox_is_retried_before_the_buffer_drains_again() -> None:
    agg = Aggregator(max_property_sets=10, max_buffered_keys=10)
    agg.add("x", (), 1, None, 1)
    first = agg.next_push()
    agg.add("x", (), 1, None, 5)
    assert agg.next_push() is first  # not acknowledged: the same push, same id
    assert first is not None
    agg.push_done(first)
    second = agg.next_push()
    assert second is not None
    assert (second.producer, second.sequence) == (first.producer, first.sequence + 1)
    assert second.delta.hourly == {("x", (), 1): 5}
