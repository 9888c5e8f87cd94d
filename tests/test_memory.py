"""Bounded memory: a full buffer pushes instead of dropping, event names are capped, and every
per-process registry has a bound."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from analytics_sdk import Analytics, ConfigurationError
from analytics_sdk.aggregator import OVERFLOW_EVENT
from analytics_sdk.backends.base import Push
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.config import Config
from analytics_sdk.events import CACHE_LIMIT
from analytics_sdk.prometheus import FleetCollector, registry_for
from analytics_sdk.testing import ManualClock

from .servers import Proxy
from .utils import delete_redis_prefix, redis_and_postgres, redis_url_or_skip, unique_name


def today(clock: ManualClock):  # type: ignore[no-untyped-def]
    return datetime.fromtimestamp(clock.time(), timezone.utc).date()


def metric_samples(client: Analytics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry_for(client)).decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


# -- a burst never drops (issue 9.2) ----------------------------------------------------------


def test_a_burst_of_distinct_users_loses_no_per_user_count(clock: ManualClock) -> None:
    threads, users_per_thread = 2, 15_000
    with redis_and_postgres("burst") as (store, sink):
        client = Analytics(store=store, sink=sink, clock=clock, max_buffered_keys=500)
        start = threading.Barrier(threads)

        def burst(t: int) -> None:
            start.wait()
            for _ in range(2):  # every user twice: per-user counts of 2, not just presence
                for n in range(users_per_thread):
                    client.track("signup", user_id=f"u{t}_{n}")

        workers = [threading.Thread(target=burst, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stats = client.stats()
        result = client.flush(timeout=120)
        try:
            assert result.complete, result
            assert stats["dropped"] == 0
            users = threads * users_per_thread
            day = today(clock)
            assert client.count("signup", day=day) == 2 * users
            assert client.unique_users("signup", day, day) == users
            top = client.top_users("signup", day=day, limit=users + 1)
            assert len(top) == users
            assert {n for _, n in top} == {2}
            # The buffer was pushed early, many times, never holding much more than its cap.
            assert client.scheduler.stats.pushes_ok > users // 500
            assert client.stats()["counts_flushed"] == 2 * users
        finally:
            client.shutdown()


@pytest.fixture
def redis_behind_proxy() -> Iterator[tuple[str, Proxy]]:
    redis_url = redis_url_or_skip()
    parts = urlsplit(redis_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    prefix = unique_name("down")
    try:
        yield f"redis://127.0.0.1:{proxy.port}{parts.path}?prefix={prefix}&shards=2", proxy
    finally:
        proxy.close()
        delete_redis_prefix(redis_url, prefix)


def drop_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "since the last warning" in r.getMessage()]


def test_with_the_store_down_and_the_buffer_at_its_cap_drops_are_warned_rate_limited(
    clock: ManualClock,
    redis_behind_proxy: tuple[str, Proxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, proxy = redis_behind_proxy
    caplog.set_level(logging.WARNING, logger="analytics_sdk")
    client = Analytics(
        store=url, clock=clock, max_buffered_keys=10, schedule_jitter=0, flusher=False
    )
    try:
        proxy.refuse = True
        proxy.drop()  # the store is down from here on
        for n in range(9):
            client.track("signup", user_id=f"u{n}")  # the hour and 9 users: 10 keys, full
        assert drop_warnings(caplog) == []
        # The next new key pushes from this thread; the push fails, the outbox keeps those 10
        # keys and the buffer takes 10 more: memory is at its cap (twice max_buffered_keys).
        for n in range(9, 18):
            client.track("signup", user_id=f"u{n}")
        assert client.stats()["dropped"] == 0
        assert client.stats()["pushes_failed"] == 1
        for n in range(18, 28):
            client.track("signup", user_id=f"u{n}")  # 10 counts that cannot be held
        assert client.stats()["dropped"] == 10
        [first] = drop_warnings(caplog)
        assert "dropped 1 count since" in first
        clock.advance(30)
        assert len(drop_warnings(caplog)) == 1  # at most one warning a minute
        clock.advance(30)  # the scheduler thread reports what the minute held back
        warnings = drop_warnings(caplog)
        assert len(warnings) == 2
        assert "dropped 9 counts since" in warnings[1]
        assert "10 since the start" in warnings[1]
        clock.advance(120)
        assert len(drop_warnings(caplog)) == 2  # nothing new dropped, nothing to say

        proxy.refuse = False  # the store is back: what was held arrives exactly
        result = client.flush(timeout=30)
        assert result.complete, result
        day = today(clock)
        assert client.count("signup", day=day) == 28  # the hourly counts all fit
        assert client.unique_users("signup", day, day) == 18
        assert sum(n for _, n in client.top_users("signup", day=day, limit=100)) == 18
    finally:
        proxy.refuse = False
        client.shutdown(timeout=10)


class _TrackingRedisStore(RedisCounterStore):
    """A real Redis store whose push tracks a new user (as a logging handler might)."""

    client: Analytics | None = None
    tracked_inside = 0

    def push(self, push: Push) -> None:
        if self.client is not None:
            for _ in range(5):  # more new keys than the buffer holds
                self.tracked_inside += 1
                self.client.track("inner", user_id=f"inside{self.tracked_inside}")
        super().push(push)


def test_track_inside_a_push_with_the_buffer_full_neither_deadlocks_nor_drops(
    clock: ManualClock,
) -> None:
    redis_url = redis_url_or_skip()
    prefix = unique_name("reenter")
    store = _TrackingRedisStore.from_url(f"{redis_url}?prefix={prefix}", clock.time)
    assert isinstance(store, _TrackingRedisStore)
    client = Analytics(store=store, clock=clock, background=False, max_buffered_keys=3)
    store.client = client
    try:
        for n in range(20):
            client.track("outer", user_id=f"u{n}")
        store.client = None  # each push tracked one more; the last flush finds them all
        result = client.flush(timeout=30)
        assert result.complete, result
        assert client.stats()["dropped"] == 0
        day = today(clock)
        assert client.unique_users("outer", day, day) == 20
        assert client.unique_users("inner", day, day) == store.tracked_inside
        assert store.tracked_inside > 5
    finally:
        client.shutdown(timeout=10)
        delete_redis_prefix(redis_url, prefix)


# -- distinct event names are capped (issue 9.3) ---------------------------------------------


def test_max_event_names_is_a_validated_setting_with_an_environment_variable() -> None:
    assert Config().max_event_names == 1_000
    assert Config.load({"ANALYTICS_MAX_EVENT_NAMES": "25"}).max_event_names == 25
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(ConfigurationError, match=r"max_event_names=.* accepted: an int >= 1"):
            Config(max_event_names=bad)
    with pytest.raises(ConfigurationError, match="ANALYTICS_MAX_EVENT_NAMES='many'"):
        Config.load({"ANALYTICS_MAX_EVENT_NAMES": "many"})


def test_event_names_beyond_the_cap_fold_into_the_overflow_event_exactly(
    clock: ManualClock,
) -> None:
    with redis_and_postgres("names") as (store, sink):
        client = Analytics(store=store, sink=sink, clock=clock, max_event_names=10)
        try:
            for n in range(50):
                client.track(f"e{n}", user_id=f"u{n % 7}", properties={"p": "1"}, value=2)
            client.track("e0")  # an admitted name stays admitted
            result = client.flush(timeout=30)
            assert result.complete, result
            day = today(clock)
            assert [client.count(f"e{n}", day=day) for n in range(10)] == [3] + [2] * 9
            assert client.count("e10", day=day) == 0
            assert client.count(OVERFLOW_EVENT, day=day) == 80
            assert client.unique_users(OVERFLOW_EVENT, day, day) == 7
            stats = client.stats()
            assert stats["event_names_overflowed"] == 80
            assert stats["overflowed"] == 0  # no property set folded
            assert stats["dropped"] == 0
            s = metric_samples(client)
            assert s["analytics_overflowed_events_total", (("reason", "event_names"),)] == 80
            assert s["analytics_overflowed_events_total", (("reason", "property_sets"),)] == 0
            assert s["analytics_events_total", (("event", OVERFLOW_EVENT),)] == 80
            events = {
                dict(labels).get("event") for name, labels in s if name == "analytics_events_total"
            }
            assert events == {f"e{n}" for n in range(10)} | {OVERFLOW_EVENT}
        finally:
            client.shutdown()


def test_every_per_process_registry_stays_bounded(clock: ManualClock) -> None:
    with redis_and_postgres("bounds") as (store, sink):
        client = Analytics(
            store=store,
            sink=sink,
            clock=clock,
            background=False,
            max_event_names=20,
            max_property_sets=5,
            prometheus_labels=["p"],
        )
        try:
            for n in range(3 * CACHE_LIMIT):
                client.track(f"e{n}", user_id=f"u{n}", properties={"p": str(n)})
                client.track("page", properties={"p": str(n)})
                with client.track_feature(f"f{n}"):
                    pass
                if n % 5000 == 0:
                    client.flush(timeout=30)
            result = client.flush(timeout=30)
            assert result.complete, result
            names = client.aggregator._events
            assert len(names) <= 20 + 1  # the cap, and the overflow event
            registry = client.aggregator._property_sets
            assert set(registry) <= names
            assert all(len(sets) <= 5 for sets in registry.values())
            totals = client.event_totals.snapshot()
            assert {event for event, _ in totals} <= names
            assert len(totals) <= len(names) * (5 + 1)
            calls, durations = client.features.snapshot()
            assert len(durations) <= 5 + 1
            assert len(calls) <= 2 * (5 + 1)
            assert sum(calls.values()) == 3 * CACHE_LIMIT  # every call counted somewhere
            v = client._validator
            assert max(len(v.names), len(v.property_sets), len(v.user_ids)) <= CACHE_LIMIT
            series = [k for k in metric_samples(client) if k[0] == "analytics_events_total"]
            assert len(series) <= len(names) * (5 + 1)
            day = today(clock)
            total = sum(client.count(e, day=day) for e in names)
            assert total == 2 * 3 * CACHE_LIMIT + 3 * CACHE_LIMIT  # tracked + feature_used
        finally:
            client.shutdown()


def test_fleet_totals_export_at_most_max_event_names_series_and_sum_the_rest(
    clock: ManualClock,
) -> None:
    with redis_and_postgres("fleet") as (store, sink):
        # Processes of a fleet may each admit different names: here one client admits them all.
        client = Analytics(store=store, sink=sink, clock=clock, background=False)
        now = [0.0]
        fleet = FleetCollector(client._query, cache_seconds=10, clock=lambda: now[0], max_events=3)
        registry = CollectorRegistry()
        registry.register(fleet)
        try:
            for n in range(10):
                client.track(f"e{n}", value=n + 1)
            client.flush(timeout=30)

            def exported() -> dict[str, float]:
                text = generate_latest(registry).decode()
                return {
                    s.labels["event"]: s.value
                    for family in text_string_to_metric_families(text)
                    for s in family.samples
                    if s.name == "analytics_fleet_events_total"
                }

            assert exported() == {"e9": 10, "e8": 9, "e7": 8, OVERFLOW_EVENT: sum(range(1, 8))}
            client.track("e0", value=100)  # an event without a series stays in the overflow
            client.track("e9", value=1)
            client.track(OVERFLOW_EVENT, value=2)  # counts folded by a client add to it
            client.flush(timeout=30)
            now[0] = 11
            assert exported() == {
                "e9": 11,
                "e8": 9,
                "e7": 8,
                OVERFLOW_EVENT: sum(range(1, 8)) + 100 + 2,
            }
            assert sum(exported().values()) == sum(range(1, 11)) + 103  # nothing lost
        finally:
            client.shutdown()
