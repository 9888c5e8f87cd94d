"""The in-process buffer: exact under threads, bounded by keys, never silent about excess."""

from __future__ import annotations

import threading
from typing import Any

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


def test_a_full_buffer_pushes_first_and_drops_only_what_a_failed_push_cannot_make_room_for() -> (
    None
):
    asked: list[int] = []
    dropped: list[int] = []
    agg = Aggregator(
        max_property_sets=100,
        max_buffered_keys=3,
        on_full=lambda: bool(asked.append(agg.buffered_keys)),  # a push that fails
        on_drop=dropped.append,
    )
    for hour in range(5):
        agg.add("x", (), hour, None, 1)
    agg.add("x", (), 0, "u", 1)  # the hourly key exists; the user key does not fit
    assert agg.buffered_keys == 3
    assert asked == [3, 3, 3]  # asked with the shard lock released: buffered_keys could read
    assert agg.dropped == 2 + 1
    assert dropped == [1, 1, 1]


def test_a_push_that_went_through_makes_room_for_the_new_key() -> None:
    pushed = []
    users: dict[Any, int] = {}

    def push() -> bool:
        p = agg.next_push()
        assert p is not None
        pushed.append(p.delta.total)
        for key, n in p.delta.users.items():
            users[key] = users.get(key, 0) + n
        agg.push_done(p)
        return True

    agg = Aggregator(max_property_sets=100, max_buffered_keys=3, on_full=push)
    for hour in range(10):
        agg.add("x", (), hour, "u", 1)  # two new keys each: an hourly and a per-user one
    assert agg.dropped == 0
    assert pushed == [2, 2, 2, 2]  # every push took what the buffer held, nothing lost
    assert sum(agg.local_counts().buffer.hourly.values()) + sum(pushed) == 10
    for hour in range(3):
        agg.add("y", (), hour, None, 1)  # the buffer is full
    agg.add("y", (), 0, "v", 2)  # an hourly key it holds, a per-user key it has no room for
    for key, n in agg.local_counts().buffer.users.items():
        users[key] = users.get(key, 0) + n
    assert users == {("x", "u", 0): 10, ("y", "v", 0): 2}  # each under its own key


def test_overflow_is_visible_in_stats_and_a_full_buffer_pushes_instead_of_dropping(
    clock: ManualClock,
) -> None:
    with Analytics(
        clock=clock, background=False, max_property_sets=1, max_buffered_keys=3
    ) as client:
        client.track("x", properties={"a": "1"})
        client.track("x", properties={"a": "2"})
        client.track("x", properties={"a": "3"})
        for n in range(3):
            client.track(f"other{n}")  # x{a=1}, x{overflow}, other0 fill the 3 keys
        stats = client.stats()
        assert stats["overflowed"] == 2
        assert stats["dropped"] == 0
        assert stats["pushes_ok"] == 1  # other1 pushed the full buffer from this thread
        assert client.count("x", properties={"overflow": "true"}) == 2
        assert [client.count(f"other{n}") for n in range(3)] == [1, 1, 1]


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


def test_a_push_takes_at_most_max_push_keys_and_leaves_the_rest_buffered() -> None:
    """The drain behind a push stops at ``max_push_keys`` counters and calls with a dedupe
    key, across the threads' shards and the hourly, per-user and per-group counters; the
    rest stay buffered for the next push, each in exactly one push, and the spill takes
    everything."""
    aggregator = Aggregator(max_property_sets=100, max_buffered_keys=1_000, max_push_keys=4)
    hour = 490_000

    def work(i: int) -> None:
        for n in range(5):
            groups = (("team", f"t{n}"),)
            aggregator.add_grouped(f"e{i}", (("n", str(n)),), hour, f"u{i}", 1, groups)
        for n in range(3):
            aggregator.add_deduped(f"k{i}.{n}", f"d{i}", (), hour, None, 1)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    buffered = aggregator.buffered_keys
    assert buffered == 3 * (5 + 1 + 5)  # per thread: 5 hourly, 1 user, 5 group counters
    assert aggregator.pushes_held == -(-(buffered + 9) // 4)
    sizes: list[int] = []
    pushed: dict[Any, int] = {}
    calls: list[str] = []
    while (push := aggregator.next_push()) is not None:
        sizes.append(push.delta.keys + len(push.deduped))
        calls += [call.key for call in push.deduped]
        for counts in (push.delta.hourly, push.delta.users, push.delta.groups):
            for key, value in counts.items():
                assert key not in pushed, key  # each counter in one push only
                pushed[key] = value
        aggregator.push_done(push)
        if len(sizes) == 2:  # the spill takes what is left, whatever its size
            spilled = aggregator.spill(lambda pushes: None)
            assert [p.delta.keys + len(p.deduped) for p in spilled] == [buffered + 9 - 8]
            for p in spilled:
                calls += [call.key for call in p.deduped]
                for counts in (p.delta.hourly, p.delta.users, p.delta.groups):
                    pushed.update(counts)
    assert sizes == [4, 4]
    assert len(pushed) == buffered
    assert sum(pushed.values()) == 3 * 5 * 3  # each add: an hourly, a user, a group count
    assert sorted(calls) == sorted(f"k{i}.{n}" for i in range(3) for n in range(3))
    assert aggregator.buffered_keys == 0
    assert aggregator.pushes_held == 0


def test_calls_with_a_dedupe_key_go_in_pushes_of_at_most_max_push_keys() -> None:
    aggregator = Aggregator(max_property_sets=100, max_buffered_keys=1_000, max_push_keys=3)

    def work(keys: range) -> None:
        for n in keys:
            aggregator.add_deduped(f"k{n}", "d", (), 490_000, None, 1)

    for keys in (range(2), range(2, 7)):  # two threads' shards: 2 calls, then 5
        worker = threading.Thread(target=work, args=(keys,))
        worker.start()
        worker.join()
    taken = []
    while (push := aggregator.next_push()) is not None:
        assert push.delta.keys + len(push.deduped) <= 3
        taken.append(sorted(call.key for call in push.deduped))
        aggregator.push_done(push)
    assert taken == [["k0", "k1", "k2"], ["k3", "k4", "k5"], ["k6"]]


def test_a_push_fills_up_from_several_threads_shards() -> None:
    """A shard smaller than the room left goes whole, and the next one fills the rest."""
    aggregator = Aggregator(max_property_sets=100, max_buffered_keys=1_000, max_push_keys=4)

    def work(event: str, n: int) -> None:
        for i in range(n):
            aggregator.add(event, (("i", str(i)),), 490_000, None, 1)

    for event, n in (("a", 2), ("b", 5)):
        worker = threading.Thread(target=work, args=(event, n))
        worker.start()
        worker.join()
    taken = []
    while (push := aggregator.next_push()) is not None:
        taken.append(sorted((key[0], key[1][0][1]) for key in push.delta.hourly))
        aggregator.push_done(push)
    assert taken == [
        [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")],
        [("b", "2"), ("b", "3"), ("b", "4")],
    ]
