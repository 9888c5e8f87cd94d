"""Redis specifics: key layout, TTLs, URLs, real connection cuts, lost replies, write-through.

The protocol itself is covered by the contract suite (test_backend_contract.py), which runs
on a single Redis and on a 3-master cluster.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from analytics_sdk import Analytics, ConfigurationError, StoreError
from analytics_sdk.backends import Delta, Push, store_from_url
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.testing import ManualClock

from .servers import Proxy
from .utils import delete_redis_prefix, redis_url_or_skip, unique_name

H = 490_000


@pytest.fixture
def redis_url() -> str:
    return redis_url_or_skip()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = unique_name("test")
    yield name
    delete_redis_prefix(redis_url, name)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Proxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield p
    p.close()


def push(store: RedisCounterStore, n: int, producer: str = "p", sequence: int = 1) -> Push:
    p = Push(
        producer=producer,
        sequence=sequence,
        delta=Delta(hourly={("e", (), H): n}, users={("e", "u", H // 24): n}),
    )
    store.push(p)
    return p


def test_live_keys_expire_once_and_claims_never(redis_url: str, prefix: str) -> None:
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&ttl=3600", ManualClock().time)
    r = store._redis
    push(store, 1, sequence=1)
    live = f"{{{prefix}:0}}:live:h:e"
    assert 3500 < r.ttl(live) <= 3600
    r.expire(live, 1000)  # as if time passed
    push(store, 1, sequence=2)
    assert r.ttl(live) <= 1000  # not refreshed: a TTL reset on every push would never fire
    assert r.ttl(f"{{{prefix}:0}}:seq:p") > 29 * 86400  # the dedup record outlives outages
    [batch] = store.claim()
    assert r.exists(live) == 0
    assert r.ttl(f"{{{prefix}:0}}:claim:{batch.id}:h:e") == -1  # claimed: no expiry
    store.ack(batch.id)
    assert list(r.scan_iter(match=f"{{{prefix}:0}}:claim*")) == []


def test_a_prefix_isolates_tenants(redis_url: str, prefix: str) -> None:
    a = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}")
    b = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}b")
    try:
        push(a, 5)
        assert b.pending_hourly("e", None, None, ()).live == {}
        assert b.claim() == []
        assert a.pending_hourly("e", None, None, ()).live == {H: 5}
    finally:
        a.close()
        b.close()
        delete_redis_prefix(redis_url, f"{prefix}b")


def test_pushes_spread_over_shards(redis_url: str, prefix: str) -> None:
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=8")
    for n in range(64):
        push(store, 1, producer=f"proc{n}")
    batches = store.claim()
    assert len(batches) >= 6  # one batch per non-empty shard: the writes were spread
    assert sum(b.delta.total for b in batches) == 64
    for b in batches:
        store.ack(b.id)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "redis://127.0.0.1:6379/0?shards=0",
            "shards=0 is not accepted; accepted: an int from 1 to 1024",
        ),
        ("redis://127.0.0.1:6379/0?shards=many", "accepted: integers"),
        ("redis://127.0.0.1:6379/0?ttl=600", "ttl=600 is not accepted; accepted: an int >= 3600"),
    ],
)
def test_bad_url_options(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        store_from_url(url, ManualClock().time)


def test_url_forms_and_no_password_in_reprs_or_errors() -> None:
    store = store_from_url(
        "redis://:hunter2@127.0.0.1:1/0?prefix=x&socket_connect_timeout=0.2", ManualClock().time
    )
    assert "hunter2" not in repr(store)
    assert "***" in repr(store)
    with pytest.raises(StoreError) as info:
        store.claim()
    assert "hunter2" not in str(info.value)
    tls = store_from_url("rediss://127.0.0.1:1/0", ManualClock().time)
    assert tls._redis.connection_pool.connection_class.__name__ == "SSLConnection"


def test_cluster_urls(redis_cluster_url: str) -> None:
    from redis.cluster import RedisCluster

    plain = redis_cluster_url.replace("redis+cluster://", "redis://")
    for url in (redis_cluster_url, f"{plain}?cluster=true"):
        store = store_from_url(url, ManualClock().time)
        assert isinstance(store._redis, RedisCluster)
        assert store.shards == 16  # spread over slots by default on a cluster
        store.close()


def client_via(proxy: Proxy, prefix: str, clock: ManualClock, **settings) -> Analytics:  # type: ignore[no-untyped-def]
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&socket_timeout=1&socket_connect_timeout=1"
    client = Analytics(store=url, clock=clock, **settings)
    client.scheduler._rng = random.Random(1)
    return client


def test_redis_down_never_raises_into_track_and_counts_arrive_later(
    proxy: Proxy, prefix: str, clock: ManualClock
) -> None:
    client = client_via(proxy, prefix, clock, push_interval=1, flush_interval=30)
    try:
        client.track("e", value=2)
        clock.advance(1)  # pushed through the proxy
        proxy.refuse = True
        proxy.drop()  # Redis "goes away": open connections cut, new ones refused
        for n in range(100):
            client.track("e", user_id=f"u{n % 7}")
        for _ in range(20):
            clock.advance(1)  # pushes fail and back off; nothing raises
        stats = client.stats()
        assert stats["pushes_failed"] >= 2
        assert client.aggregator.local_counts().outbox is not None
        proxy.refuse = False  # Redis is back
        for _ in range(90):
            clock.advance(1)
        assert client.flush().complete
        assert client.count("e") == 102
        assert sum(client.sink.hourly_counts("e", None, None, ()).values()) == 102
        day = datetime.fromtimestamp(clock.time(), timezone.utc).date()
        assert client.unique_users("e", day, day) == 7
    finally:
        client.shutdown(timeout=5)


def test_a_push_whose_reply_is_lost_is_retried_and_counted_once(
    proxy: Proxy, prefix: str, clock: ManualClock
) -> None:
    client = client_via(proxy, prefix, clock, background=False)
    try:
        client.track("warmup")
        assert client.flush().complete  # scripts loaded, connection open
        client.track("e", value=5, user_id="u")
        proxy.lose_next_reply = True
        client.flush()  # the push reaches Redis; its reply is cut off
        assert proxy.lose_next_reply is False  # the reply really was lost
        assert client.count("e") == 5  # in the store, and not double counted while in doubt
        assert client.flush().complete
        assert client.count("e") == 5
        assert client.count("e", user_id="u") == 5
        assert sum(client.sink.hourly_counts("e", None, None, ()).values()) == 5
    finally:
        client.shutdown(timeout=5)


def test_write_through_reaches_redis_before_track_returns(
    proxy: Proxy, prefix: str, clock: ManualClock
) -> None:
    client = client_via(proxy, prefix, clock, push_interval=0, flush_interval=3600)
    try:
        client.track("e", value=3)
        assert client.aggregator.is_empty()
        assert sum(client.store.pending_hourly("e", None, None, ()).live.values()) == 3
        proxy.refuse = True
        proxy.drop()
        client.track("e", value=4)  # Redis is down: buffered, no exception
        client.track("e", value=1)  # backing off: buffered without trying
        assert not client.aggregator.is_empty()
        proxy.refuse = False
        for _ in range(5):
            clock.advance(1)
        assert client.aggregator.is_empty()
        assert sum(client.store.pending_hourly("e", None, None, ()).live.values()) == 8
    finally:
        client.shutdown(timeout=5)


def test_every_client_of_a_prefix_uses_the_shard_count_it_was_created_with(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    wide = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=8")
    for n in range(32):
        push(wide, 1, producer=f"p{n}")
    narrow = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=1")
    assert narrow.pending_hourly("e", None, None, ()).live == {H: 32}  # sees every shard
    batches = narrow.claim()
    assert sum(b.delta.total for b in batches) == 32
    assert narrow.shards == 8
    assert "created with shards=8" in caplog.text
    for b in batches:
        narrow.ack(b.id)
