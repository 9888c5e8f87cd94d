"""Redis specifics: key layout, TTLs, URLs, real connection cuts, lost replies, write-through.

The protocol itself is covered by the contract suite (test_backend_contract.py), which runs
on a single Redis and on a 3-master cluster.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest

from analytics_sdk import Analytics, ConfigurationError, StoreError
from analytics_sdk.backends import Delta, Pending, Push, store_from_url
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.testing import ManualClock

from .servers import REDIS_URL, Cluster, Proxy, cluster, redis_server
from .utils import delete_redis_prefix, redis_and_postgres, unique_name

H = 490_000


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = unique_name("test")
    yield name
    delete_redis_prefix(redis_url, name)
    # Nothing left behind, in the configured database or in database 0 (a URL that named the
    # wrong one would write where the cleanup above never looks).
    import redis

    parts = urlsplit(redis_url)
    for db in {0, int(parts.path.lstrip("/") or 0)}:
        with redis.Redis(
            host=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=db
        ) as conn:
            left = list(conn.scan_iter(match=f"{{{name}[:}}]*", count=1000))
        assert left == [], f"keys left behind in Redis db {db}: {left[:5]}"


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
    live = f"{{{prefix}:0}}:live:h:e:{H}"
    assert 3500 < r.ttl(live) <= 3600
    r.expire(live, 1000)  # as if time passed
    push(store, 1, sequence=2)
    assert r.ttl(live) <= 1000  # not refreshed: a TTL reset on every push would never fire
    assert r.ttl(f"{{{prefix}:0}}:seq:p") > 29 * 86400  # the dedup record outlives outages
    [batch] = store.claim()
    assert r.exists(live) == 0
    assert r.ttl(f"{{{prefix}:0}}:claim:{batch.id}:h:e:{H}") == -1  # claimed: no expiry
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
            "shards='0' is not accepted; accepted: an integer from 1 to 1024",
        ),
        ("redis://127.0.0.1:6379/0?shards=many", "accepted: an integer from 1 to 1024"),
        (
            "redis://127.0.0.1:6379/0?ttl=600",
            "ttl='600' is not accepted; accepted: an integer, 3600 or more",
        ),
        ("redis://127.0.0.1:6379/0?allow_eviction=maybe", "allow_eviction='maybe' is not accepted"),
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
    db = urlsplit(REDIS_URL).path.lstrip("/") or "0"  # the database the cleanup empties
    url = f"redis://127.0.0.1:{proxy.port}/{db}?prefix={prefix}&socket_timeout=1&socket_connect_timeout=1"
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


def test_a_failed_push_names_the_store_and_the_step_and_keeps_the_counts(
    proxy: Proxy, prefix: str, clock: ManualClock
) -> None:
    client = client_via(proxy, prefix, clock, background=False)
    try:
        client.track("warmup")
        assert client.flush().complete  # scripts loaded, the layout checked
        client.track("e", value=2)
        proxy.refuse = True
        proxy.drop()
        result = client.flush()
        store = client.store
        assert isinstance(store, RedisCounterStore)
        assert (result.error or "").startswith(f"Redis {store._description} push failed: ")
        outbox = client.aggregator.local_counts().outbox
        assert (result.pushed, outbox and outbox.delta.total) == (0, 2)  # kept for a retry
        proxy.refuse = False
        assert client.flush().complete
        assert (
            client.count("e"),
            sum(client.sink.hourly_counts("e", None, None, ()).values()),
        ) == (2, 2)
    finally:
        client.shutdown(timeout=5)


def test_a_failed_read_of_the_claims_names_the_store(
    proxy: Proxy, prefix: str, clock: ManualClock
) -> None:
    client = client_via(proxy, prefix, clock, background=False)
    try:
        store = client.store
        assert isinstance(store, RedisCounterStore)
        assert store.claimed_ids() == {}  # the layout checked
        proxy.refuse = True
        proxy.drop()
        with pytest.raises(StoreError) as failed:
            store.claimed_ids()
        assert str(failed.value).startswith(f"Redis {store._description} read failed: ")
        with pytest.raises(StoreError) as failed:
            store.read_claim("0.x")
        assert str(failed.value).startswith(f"Redis {store._description} read failed: ")
        proxy.refuse = False
    finally:
        client.shutdown(timeout=5)


def test_a_claim_whose_hashes_cannot_be_read_names_the_store_and_the_step(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=1")
    try:
        store.push(Push(producer="p", sequence=1, delta=Delta(users={("e", "u", 1): 1})))
        (batch,) = store.claim_batches()
        pipeline = store._redis.pipeline

        def failing(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)

            def lost() -> None:
                raise redis.exceptions.ConnectionError("connection lost")

            pipe.execute = lost
            return pipe

        monkeypatch.setattr(store._redis, "pipeline", failing)
        with pytest.raises(StoreError) as failed:
            store.read_claim(batch.id)  # the claim's ids read, then its hashes fail
        assert str(failed.value) == f"Redis {store._description} read failed: connection lost"
    finally:
        store.close()


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


# -- driver retries: every script is safe twice, and the SDK owns retries ---------------------


def test_from_url_turns_driver_retries_off_so_a_lost_reply_is_sent_once(
    proxy: Proxy, prefix: str
) -> None:
    # retry_on_timeout=true would make redis-py re-send a script whose reply was lost; the
    # SDK retries pushes itself (deduplicated, with backoff), so the driver must not.
    store = RedisCounterStore.from_url(
        f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&retry_on_timeout=true"
        "&socket_timeout=1&socket_connect_timeout=1"
    )
    try:
        push(store, 1, sequence=1)  # connected, scripts loaded
        sent = proxy.sent(b"EVALSHA")
        proxy.lose_next_reply = True
        with pytest.raises(StoreError):
            push(store, 5, sequence=2)
        assert proxy.sent(b"EVALSHA") == sent + 1  # one attempt: the driver did not re-send
        assert store.pending_hourly("e", None, None, ()).live == {H: 6}  # it did run
        retry = Push(producer="p", sequence=2, delta=Delta(hourly={("e", (), H): 5}))
        assert store.push(retry) is False  # the SDK's retry: applied before, a no-op now
        assert store.pending_hourly("e", None, None, ()).live == {H: 6}
    finally:
        store.close()


def test_every_script_is_safe_when_the_driver_sends_it_twice(proxy: Proxy, prefix: str) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # A redis-py client built by the application, with retries on: a lost reply makes the
    # driver run the same script again with the same arguments.
    driver = redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        decode_responses=True,
        socket_timeout=1,
        retry=Retry(NoBackoff(), 3),  # on ConnectionError and TimeoutError
    )
    store = RedisCounterStore(driver, prefix=prefix, shards=2)
    try:
        push(store, 1, sequence=1)
        for sequence in (2, 3):
            proxy.lose_next_reply = True
            p = Push(
                producer="p",
                sequence=sequence,
                delta=Delta(hourly={("e", (), H): 5}, users={("e", "u", H // 24): 5}),
            )
            # Applied, reply lost, re-sent by the driver: skipped, and still reported as
            # applied by this call (the caller never saw the first reply).
            assert store.push(p) is True
            assert proxy.lose_next_reply is False
            assert store.push(p) is False  # a retry of the caller's own: applied before
        assert store.pending_hourly("e", None, None, ()).live == {H: 11}
        assert store.pending_users("e", None, None, None).live == {"u": 11}
        proxy.lose_next_reply = True
        assert sum(store.pending_event_totals().live.values()) == 11  # reads, twice
        batches = store.claim()
        assert sum(b.delta.total for b in batches) == 11
        for batch in batches:
            proxy.lose_next_reply = True
            store.ack(batch.id)  # deleted, reply lost, re-sent: nothing more to delete
            assert proxy.lose_next_reply is False
        assert store.claimed() == []
        assert store.pending_hourly("e", None, None, ()) == Pending()
    finally:
        store.close()


@pytest.fixture(scope="module")
def proxied_cluster() -> Iterator[Cluster]:
    """A private 3-master cluster whose every node is reached through a Proxy."""
    from .utils import skip_or_fail

    try:
        started = cluster(3, proxied=True)
        value = started.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a Redis Cluster: {exc}")
        raise
    try:
        yield value
    finally:
        started.__exit__(None, None, None)


def _slot(prefix: str, shard: int = 0) -> int:
    from redis.crc import key_slot

    return int(key_slot(f"{{{prefix}:{shard}}}:idx".encode()))


def test_cluster_driver_retries_of_push_and_ack_count_once(proxied_cluster: Cluster) -> None:
    from redis.cluster import RedisCluster

    prefix = unique_name("test")
    # RedisCluster's defaults: ConnectionError/TimeoutError re-run the command up to 10 times.
    driver = RedisCluster.from_url(
        proxied_cluster.url.replace("redis+cluster://", "redis://"), decode_responses=True
    )
    store = RedisCounterStore(driver, prefix=prefix, shards=1)
    node = proxied_cluster.proxy_of(_slot(prefix))
    try:
        push(store, 1, sequence=1)
        proxy_sent = node.sent(b"EVALSHA")
        node.lose_next_reply = True
        push(store, 5, sequence=2)
        assert node.sent(b"EVALSHA") >= proxy_sent + 2  # the driver did re-send it
        assert store.pending_hourly("e", None, None, ()).live == {H: 6}
        [batch] = store.claim()
        node.lose_next_reply = True
        store.ack(batch.id)
        assert store.claimed() == []
        assert batch.delta.total == 6
    finally:
        store.close()


def test_a_claim_the_cluster_driver_sends_again_returns_its_batch_once(
    proxied_cluster: Cluster,
) -> None:
    """RedisCluster re-runs a CLAIM whose reply was lost (its defaults retry a ConnectionError
    10 times): the second run returns the first one's batch and claims nothing more, so the
    batch keeps its bound and every count is claimed once."""

    from redis.cluster import RedisCluster

    prefix = unique_name("test")
    driver = RedisCluster.from_url(
        proxied_cluster.url.replace("redis+cluster://", "redis://"), decode_responses=True
    )
    store = RedisCounterStore(driver, prefix=prefix, shards=1)
    node = proxied_cluster.proxy_of(_slot(prefix))
    script = store._lua_claim
    sent: list[int] = []

    def lossy(*args: Any, **kwargs: Any) -> Any:
        if not sent:
            node.lose_next_reply = True
            before = node.sent(b"EVALSHA")
            try:
                return script(*args, **kwargs)
            finally:
                sent.append(node.sent(b"EVALSHA") - before)
        return script(*args, **kwargs)

    try:
        push(store, 1, sequence=1)
        for batch in store.claim():  # the node has the CLAIM script: the lost reply is a run's
            store.ack(batch.id)
        users = {("e", f"u{n}", H // 24): 1 for n in range(20)}
        store.push(
            Push(producer="p", sequence=2, delta=Delta(hourly={("e", (), H): 20}, users=users))
        )
        store._lua_claim = lossy
        batches = store.claim_batches(5)
        first = next(batches)
        assert node.lose_next_reply is False
        assert sent[0] >= 2  # the driver did send the CLAIM again
        assert first.delta.keys <= 5  # the second run added nothing to the first's batch
        assert [b.id for b in store.claimed()] == [first.id]
        rest = list(batches)
        claimed = [first, *rest]
        assert all(b.delta.keys <= 5 for b in claimed)
        assert sum(sum(b.delta.users.values()) for b in claimed) == 20  # each user once
        assert sum(sum(b.delta.hourly.values()) for b in claimed) == 20
        for b in claimed:
            store.ack(b.id)
        assert store.claimed() == []
        assert store.pending_hourly("e", None, None, ()) == Pending()
    finally:
        store.close()


def test_write_through_on_a_cluster_waits_one_timeout_when_a_node_hangs(
    proxied_cluster: Cluster,
) -> None:
    import time

    prefix = unique_name("test")
    clock = ManualClock()
    url = f"{proxied_cluster.url}?prefix={prefix}&shards=1&socket_timeout=0.5"
    client = Analytics(store=url, clock=clock, push_interval=0, flush_interval=3600)
    node = proxied_cluster.proxy_of(_slot(prefix))
    try:
        client.track("e", value=3)  # connected, scripts loaded, pushed
        assert client.aggregator.is_empty()
        node.stall = True  # the node that serves our slot stops answering
        sent = node.sent(b"EVALSHA")
        started = time.monotonic()
        client.track("e", value=4)  # must give up after one socket_timeout, not eleven
        elapsed = time.monotonic() - started
        assert node.sent(b"EVALSHA") == sent + 1
        assert elapsed < 5 * 0.5, elapsed  # 11 attempts took more than 5.5 s
        client.track("e", value=1)  # backing off: buffered without trying
        assert node.sent(b"EVALSHA") == sent + 1
        node.stall = False
        node.drop()  # the stalled connections are dead; the driver reconnects
        for _ in range(10):
            clock.advance(1)
        assert client.aggregator.is_empty()
        assert sum(client.store.pending_hourly("e", None, None, ()).live.values()) == 8
    finally:
        node.stall = False
        client.shutdown(timeout=5)


# -- resharding: a script runs whole or not at all ---------------------------------------------


def test_a_push_during_slot_migration_is_applied_whole_once(proxied_cluster: Cluster) -> None:
    prefix = unique_name("test")
    store = RedisCounterStore.from_url(f"{proxied_cluster.url}?prefix={prefix}&shards=1")

    def two_events(sequence: int) -> Push:
        p = Push(
            producer="p",
            sequence=sequence,
            delta=Delta(hourly={("ev1", (), H): 5, ("ev2", (), H): 5}),
        )
        store.push(p)
        return p

    try:
        two_events(1)
        migration = proxied_cluster.migration(_slot(prefix))
        migration.begin()
        # The slot is half moved: ev2's hash is on the new node, the rest on the old one.
        moved = migration.move([k for k in migration.remaining() if k.endswith(f":live:h:ev2:{H}")])
        assert len(moved) == 1
        with contextlib.suppress(StoreError):
            two_events(2)  # refused whole (TRYAGAIN), or applied whole
        migration.finish()
        two_events(2)  # the SDK's retry, after the slot moved
        two_events(3)
        totals = {}
        for batch in store.claim():
            for (event, _, _), n in batch.delta.hourly.items():
                totals[event] = totals.get(event, 0) + n
            store.ack(batch.id)
        assert totals == {"ev1": 15, "ev2": 15}
    finally:
        store.close()


def test_producers_pushing_through_a_slot_migration_count_exactly(
    proxied_cluster: Cluster,
) -> None:
    import threading

    prefix = unique_name("test")
    url = f"{proxied_cluster.url}?prefix={prefix}&shards=2"
    stores = [RedisCounterStore.from_url(url) for _ in range(4)]
    migrating = threading.Event()
    done = threading.Event()
    pushed: list[int] = []

    def producer(store: RedisCounterStore, name: str) -> None:
        sequence, total = 0, 0
        while not done.is_set() or sequence < 30:
            sequence += 1
            p = Push(
                producer=name,
                sequence=sequence,
                delta=Delta(
                    hourly={(f"ev{sequence % 5}", (), H): 1, ("all", (), H): 1},
                    users={("all", f"u{sequence % 3}", H // 24): 1},
                ),
            )
            while True:  # the SDK's way: the same push until the store accepts it
                try:
                    store.push(p)
                    break
                except StoreError:
                    continue
            total += 1
            if sequence == 10:
                migrating.set()
        pushed.append(total)

    threads = [threading.Thread(target=producer, args=(s, f"p{n}")) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    try:
        migrating.wait(30)
        for shard in range(2):
            migration = proxied_cluster.migration(_slot(prefix, shard))
            migration.begin()
            for key in migration.remaining():
                migration.move([key])  # one key at a time, pushes in between
            migration.finish()
        done.set()
        for t in threads:
            t.join(60)
        totals: dict[str, int] = {}
        users = 0
        for batch in stores[0].claim():
            for (event, _, _), n in batch.delta.hourly.items():
                totals[event] = totals.get(event, 0) + n
            users += sum(batch.delta.users.values())
            stores[0].ack(batch.id)
        assert totals["all"] == sum(pushed)
        assert sum(totals.values()) == 2 * sum(pushed)
        assert users == sum(pushed)
    finally:
        done.set()
        for s in stores:
            s.close()


# -- exact integers --------------------------------------------------------------------------


def test_event_totals_are_exact_at_and_above_the_maximum_value(redis_url: str, prefix: str) -> None:
    from analytics_sdk.events import MAX_VALUE

    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}")
    big = 25_000 * MAX_VALUE  # 25,000 calls at the maximum value: 1.07e14
    huge = 2**62 + 1  # beyond a double's 53 bits
    p = Push(
        producer="p",
        sequence=1,
        delta=Delta(
            hourly={
                ("big", (), H): big,
                ("big", (("k", "v"),), H): 1,
                ("huge", (), H): huge,
                ("huge", (), H + 1): 2**53 + 1,
                ("neg", (), H): -(2**60) - 3,
                ("neg", (), H + 1): 7,
            }
        ),
    )
    store.push(p)
    expected = {"big": big + 1, "huge": huge + 2**53 + 1, "neg": -(2**60) + 4}
    assert store.pending_event_totals().live == expected
    [batch] = store.claim()
    assert store.pending_event_totals().claimed == {batch.id: expected}
    store.ack(batch.id)


# -- bounded sequence records, pushes that report whether they were applied -------------------


def test_a_producer_keeps_one_sequence_key_whatever_the_shard_count(
    redis_url: str, prefix: str
) -> None:
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=8")
    for sequence in range(1, 41):
        push(store, 1, producer="proc", sequence=sequence)
    r = store._redis
    assert len(list(r.scan_iter(match=f"{{{prefix}:*}}:seq:*", count=1000))) == 1
    assert store.pending_hourly("e", None, None, ()).live == {H: 40}


def test_push_reports_whether_it_was_applied(redis_url: str, prefix: str) -> None:
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=3")
    p = Push(producer="p", sequence=1, delta=Delta(hourly={("e", (), H): 2}))
    assert store.push(p) is True
    assert store.push(p) is False
    assert store.push(Push(producer="p", sequence=2, delta=p.delta)) is True
    assert store.pending_hourly("e", None, None, ()).live == {H: 4}
    # A sequence key written by an earlier version holds the bare sequence.
    old = Push(producer="old", sequence=5, delta=p.delta)
    store._redis.set(f"{store._tags[store._shard_of(old)]}:seq:old", "5")
    assert store.has_push(old)
    assert store.push(old) is False
    assert store.push(Push(producer="old", sequence=6, delta=p.delta)) is True
    assert store.pending_hourly("e", None, None, ()).live == {H: 6}


# -- eviction: refuse a server that may evict counters, detect a lost shard count ------------


@pytest.fixture(scope="module")
def volatile_lru() -> Iterator[str]:
    """A private redis-server that evicts keys with a TTL first (live counters have one)."""
    from .utils import skip_or_fail

    try:
        started = redis_server("--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru")
        url = started.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a redis-server: {exc}")
        raise
    try:
        yield url
    finally:
        started.__exit__(None, None, None)


def test_a_server_that_may_evict_counters_is_refused(volatile_lru: str) -> None:
    store = RedisCounterStore.from_url(f"{volatile_lru}?prefix=refused")
    with pytest.raises(StoreError, match=r"maxmemory-policy volatile-lru.*noeviction"):
        push(store, 1)
    with pytest.raises(StoreError, match="allow_eviction=true"):
        store.pending_hourly("e", None, None, ())
    assert store._redis.exists("{refused}:meta", "{refused:0}:idx") == 0  # nothing written
    store.close()


def test_allow_eviction_turns_the_refusal_into_a_warning(
    volatile_lru: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisCounterStore.from_url(f"{volatile_lru}?prefix=allowed&allow_eviction=true")
    assert push(store, 2) is not None
    assert store.pending_hourly("e", None, None, ()).live == {H: 2}
    assert "maxmemory-policy volatile-lru" in caplog.text
    assert "allowed by allow_eviction=true" in caplog.text
    store.close()


def test_a_client_refuses_to_lose_counts_to_eviction_and_keeps_them(volatile_lru: str) -> None:
    clock = ManualClock()
    client = Analytics(store=f"{volatile_lru}?prefix=app", clock=clock, flush_interval=3600)
    try:
        client.track("e", value=5)
        clock.advance(2)
        assert client.stats()["pushes_failed"] >= 1  # refused, loudly; never raised
        assert client.aggregator.local_counts().outbox is not None  # the counts are kept
    finally:
        client.shutdown(timeout=1)


def test_the_policy_is_read_from_info_when_config_is_disabled() -> None:
    from .utils import skip_or_fail

    try:
        started = redis_server(
            "--maxmemory-policy", "allkeys-lru", "--rename-command", "CONFIG", ""
        )
        url = started.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a redis-server: {exc}")
        raise
    try:
        store = RedisCounterStore.from_url(f"{url}?prefix=managed")
        with pytest.raises(StoreError, match="maxmemory-policy allkeys-lru"):
            push(store, 1)
        store.close()
    finally:
        started.__exit__(None, None, None)


def test_a_policy_that_cannot_be_read_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from .utils import skip_or_fail

    try:
        started = redis_server("--rename-command", "CONFIG", "", "--rename-command", "INFO", "")
        url = started.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a redis-server: {exc}")
        raise
    try:
        store = RedisCounterStore.from_url(f"{url}?prefix=locked")
        assert push(store, 3) is not None
        assert store.pending_hourly("e", None, None, ()).live == {H: 3}
        assert "cannot read maxmemory-policy" in caplog.text
        [batch] = store.claim()  # reads evicted_keys where it can; here it cannot
        store.ack(batch.id)
        assert store.evicted_keys == 0
        store.close()
    finally:
        started.__exit__(None, None, None)


def test_evicted_keys_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from analytics_sdk.prometheus import ClientCollector

    from .utils import skip_or_fail

    try:
        started = redis_server("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-random")
        url = started.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a redis-server: {exc}")
        raise
    clock = ManualClock()
    client = Analytics(
        store=f"{url}?prefix=evicting&allow_eviction=true", clock=clock, background=False
    )
    try:
        client.track("e", value=1)
        assert client.flush().complete
        assert client.store.evicted_keys == 0
        filler = client.store._redis  # type: ignore[attr-defined]
        for n in range(200):
            filler.set(f"filler:{n}", "x" * 50_000)  # past maxmemory: Redis evicts
        client.track("e", value=1)
        client.flush()
        assert client.store.evicted_keys > 0
        assert "evicted" in caplog.text
        registry = CollectorRegistry()
        registry.register(ClientCollector(client))
        text = generate_latest(registry).decode()
        assert f"analytics_store_evicted_keys_total {client.store.evicted_keys}.0" in text
    finally:
        client.shutdown(timeout=1)
        started.__exit__(None, None, None)


def test_a_lost_shard_count_with_data_in_the_store_fails_loudly(
    redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=8")
    for n in range(16):
        push(first, 1, producer=f"p{n}")
    meta = f"{{{prefix}}}:meta"
    first._redis.delete(meta)  # evicted, deleted by hand, or flushed with part of the data
    newcomer = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=2")
    with pytest.raises(StoreError, match=r"shard-count key .* is missing while shards"):
        push(newcomer, 1, producer="late")
    assert first._redis.exists(meta) == 0  # no new count written over the old fleet's
    assert "HSET" in caplog.text
    # A running flusher knows the count and puts it back; then the newcomer adopts it.
    batches = first.claim()
    assert first._redis.hget(meta, "shards") == "8"
    assert "was lost" in caplog.text
    for b in batches:
        first.ack(b.id)
    push(newcomer, 1, producer="late")
    assert newcomer.shards == 8


def test_a_client_starting_while_another_writes_its_first_counts_adopts_its_shard_count(
    redis_url: str, prefix: str
) -> None:
    """The first read misses the shard-count key, then the other client writes the key and
    its counts before the look for data: the key is there now, nothing was lost."""
    first = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=4")
    second = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=2")
    looked = second._shards_with_data

    def meanwhile(start: int) -> list[int]:
        if start == 0:  # between the second's read of the key and its look for data
            push(first, 1, producer="first")
        return looked(start)

    second._shards_with_data = meanwhile  # type: ignore[method-assign]
    push(second, 1, producer="second")
    assert (first.shards, second.shards) == (4, 4)
    assert first.pending_event_totals().live == {"e": 2}


def test_counts_outside_the_recorded_shard_count_fail_loudly(redis_url: str, prefix: str) -> None:
    wide = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=8")
    for n in range(16):
        push(wide, 1, producer=f"p{n}")
    wide._redis.hset(f"{{{prefix}}}:meta", "shards", 2)  # rewritten by a newcomer
    narrow = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=2")
    with pytest.raises(StoreError, match="records shards=2 but shards"):
        narrow.pending_hourly("e", None, None, ())


# -- pushes of a bounded size ----------------------------------------------------------------


class _Pushes:
    """Wraps a store's push: records each push's size; the push numbered ``fail`` (from 1)
    raises, before it reaches Redis or, with ``applied``, after Redis applied it."""

    def __init__(self, store: Any, fail: int = 0, applied: bool = False) -> None:
        self.store, self.fail, self.applied = store, fail, applied
        self.sizes: list[int] = []
        self.real = store.push
        store.push = self

    def __call__(self, push: Push) -> bool:
        self.sizes.append(push.delta.keys)
        if len(self.sizes) == self.fail:
            if self.applied:
                self.real(push)
            raise StoreError("connection lost (injected)")
        return bool(self.real(push))


DAY = date(2026, 11, 20)


@contextlib.contextmanager
def _spread(tag: str, max_push_keys: int) -> Iterator[Analytics]:
    """A client on a private Redis prefix and PostgreSQL schema, with ``max_push_keys`` set
    and 60 tracks buffered over 9 property sets, 12 users and 2 hours of ``DAY``."""
    with (
        redis_and_postgres(tag) as (store_url, sink_url),
        Analytics(store=store_url, sink=sink_url, background=False) as client,
    ):
        client.aggregator.max_push_keys = max_push_keys
        for n in range(60):
            client.track(
                "v",
                user_id=f"u{n % 12}",
                properties={"p": n % 9},
                timestamp=datetime(2026, 11, 20, 9 + n % 2, tzinfo=timezone.utc),
            )
        yield client


def test_a_buffer_past_max_push_keys_goes_in_several_pushes_each_counted_once() -> None:
    """A push is one script, during which Redis answers no other client: no push carries
    more than ``max_push_keys`` counters; a larger buffer goes in several pushes, and every
    count reaches PostgreSQL once."""
    with _spread("pushes", max_push_keys=5) as client:
        buffered = client.aggregator.buffered_keys
        assert buffered == 9 * 2 + 12
        pushes = _Pushes(client.store)
        result = client.flush()
        assert result.complete, result
        assert result.pushed == 60
        assert max(pushes.sizes) == 5
        assert sum(pushes.sizes) == buffered
        assert client.count("v", day=DAY) == 60
        assert client.count("v", day=DAY, user_id="u0") == 5
        assert sum(client.sink.hourly_counts("v", None, None, ()).values()) == 60


@pytest.mark.parametrize("applied", [False, True], ids=["refused", "reply-lost"])
def test_a_push_failing_among_several_loses_and_doubles_nothing(applied: bool) -> None:
    """The third of several pushes fails (not applied, or applied with its reply lost):
    the pushes before it are in Redis, it waits as the outbox, the rest in the buffer;
    queries count each once meanwhile, and the next flush moves all of it once."""
    with _spread("pushfail", max_push_keys=4) as client:
        buffered = client.aggregator.buffered_keys
        pushes = _Pushes(client.store, fail=3, applied=applied)
        result = client.flush()
        assert result.error is not None
        assert not result.complete
        assert pushes.sizes == [4, 4, 4]
        assert client.aggregator.buffered_keys == buffered - 12  # the outbox holds 4
        assert client.count("v", day=DAY) == 60
        assert client.count("v", day=DAY, user_id="u3") == 5
        assert sum(n for _, n in client.top_users("v", day=DAY, limit=12)) == 60
        pushes.fail = 0
        result = client.flush()
        assert result.complete, result
        assert sum(pushes.sizes) == buffered + 4  # the outbox went again, the rest once
        assert client.count("v", day=DAY) == 60
        assert sum(client.sink.hourly_counts("v", None, None, ()).values()) == 60
        assert sum(client.sink.user_counts("v", None, None, None).values()) == 60


def test_calls_with_a_dedupe_key_split_over_pushes_count_once() -> None:
    """Calls with a dedupe key count toward ``max_push_keys`` as counters do: spread over
    several pushes, each key still counts once, repeated in the same push or a later one."""
    with (
        redis_and_postgres("dedupepush") as (store_url, sink_url),
        Analytics(store=store_url, sink=sink_url, background=False) as client,
    ):
        client.aggregator.max_push_keys = 3
        when = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
        for n in range(10):
            client.track("order", dedupe_key=f"o{n}", timestamp=when)
        client.track("order", dedupe_key="o1", timestamp=when)  # the same push as o1 or not
        pushes = _Pushes(client.store)
        assert client.flush().complete
        assert len(pushes.sizes) == 4  # 10 calls (the repeat is dropped in the buffer), 3 a push
        client.track("order", dedupe_key="o9", timestamp=when)  # a later push: Redis drops it
        assert client.flush().complete
        assert client.count("order", day=DAY) == 10
        assert sum(client.sink.hourly_counts("order", None, None, ()).values()) == 10
