"""Fault injection against real Redis and PostgreSQL: each case ends with the sink holding
exactly the ground truth, and the store holding nothing."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from analytics_sdk import Analytics, SinkError, StoreError
from analytics_sdk.backends import Batch, Delta, Push
from analytics_sdk.backends.postgres import PostgresSink
from analytics_sdk.backends.redis import RedisCounterStore

from . import workloads
from .faults import Faults
from .utils import postgres_url_or_skip, redis_and_postgres

EVENTS = ["signup", "checkout:paid", "ページ"]


@pytest.fixture
def urls() -> Iterator[tuple[str, str]]:
    """A Redis store URL and a PostgreSQL sink URL, both private to the test."""
    with redis_and_postgres("fault") as pair:
        yield pair


def sink_totals(sink_url: str, events: list[str]) -> tuple[Counter[str], Counter[str]]:
    """Every hourly and per-user count in the sink, keyed like the workloads' truth."""
    sink = PostgresSink.from_url(sink_url)
    hourly: Counter[str] = Counter()
    users: Counter[str] = Counter()
    try:
        for event in events:
            for hour, n in sink.hourly_counts(event, None, None, ()).items():
                hourly[json.dumps([event, hour])] += n
            with sink._connection("test") as conn:
                rows = conn.execute(
                    f"SELECT user_id, day - date '1970-01-01', count FROM \"{sink.schema}\".user_daily_counts WHERE event = %s",
                    [event],
                ).fetchall()
            for user, day, n in rows:
                users[json.dumps([event, user, day])] += n
    finally:
        sink.close()
    return hourly, users


def store_is_empty(store_url: str) -> bool:
    """Whether the store holds no live counter and no claim at all."""
    store = RedisCounterStore.from_url(store_url)
    try:
        live = list(store._redis.scan_iter(match=f"{{{store.prefix}:*:live:*", count=1000))
        return store.claimed() == [] and live == []
    finally:
        store.close()


class FlakySink(PostgresSink):
    """Fails a fraction of applies: before the commit, or after it (the reply lost)."""

    def __init__(self, *args, rng: random.Random, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.rng = rng
        self.on = True
        self.failures = Counter[str]()

    def apply(self, batch: Batch) -> bool:
        roll = self.rng.random()
        if self.on and roll < 0.3:
            self.failures["before commit"] += 1
            raise SinkError("injected: connection lost before commit")
        applied = super().apply(batch)
        if self.on and roll < 0.45:
            self.failures["after commit"] += 1
            raise SinkError("injected: connection lost after commit")
        return applied


def test_sink_writes_failing_on_a_fraction_of_flushes(urls: tuple[str, str]) -> None:
    store_url, sink_url = urls
    rng = random.Random(42)
    sink = PostgresSink.from_url(sink_url)
    flaky = FlakySink(sink._conninfo, schema=sink.schema, rng=rng)
    client = Analytics(store=store_url, sink=flaky, background=False)
    truth: Counter[str] = Counter()
    try:
        for _ in range(60):
            for _ in range(rng.randrange(1, 30)):
                event, value = rng.choice(EVENTS), rng.randrange(1, 4)
                client.track(event, value=value)
                truth[event] += value
            client.flush()
        assert flaky.failures["before commit"] > 5
        assert flaky.failures["after commit"] > 5
        flaky.on = False
        assert client.flush().complete
        for event in EVENTS:
            assert sum(flaky.hourly_counts(event, None, None, ()).values()) == truth[event]
            assert client.count(event) == truth[event]
        assert store_is_empty(store_url)
    finally:
        client.shutdown(timeout=10)
        sink.close()


def _fill_store(store_url: str, rng: random.Random) -> tuple[Counter[str], Counter[str]]:
    """Push random counts into the store (no flushing); return the truth."""
    from analytics_sdk.keys import day_of, hour_of

    client = Analytics(store=store_url, flusher=False, background=False)
    hourly: Counter[str] = Counter()
    users: Counter[str] = Counter()
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    for _ in range(500):
        event = rng.choice(EVENTS)
        user = f"u{rng.randrange(20)}"
        when = now - timedelta(hours=rng.randrange(48))
        client.track(event, user_id=user, timestamp=when, properties={"n": rng.randrange(30)})
        hourly[json.dumps([event, hour_of(when)])] += 1
        users[json.dumps([event, user, day_of(when.date())])] += 1
    assert client.flush().complete
    client.shutdown()
    return hourly, users


def test_a_backlog_in_small_batches_while_the_sink_fails_and_two_flushers_share_it(
    urls: tuple[str, str],
) -> None:
    """A backlog many times the batch size, two flushers whose sinks fail before and after
    the commit: batches fail, are retried out of order, and are picked up by the other
    flusher as orphans; the sink ends with exactly the truth."""
    store_url, sink_url = urls
    truth_hourly, truth_users = _fill_store(store_url, random.Random(11))
    plain = PostgresSink.from_url(sink_url)
    plain.migrate()
    rng = random.Random(12)
    sinks = [FlakySink(plain._conninfo, schema=plain.schema, rng=rng) for _ in range(2)]
    clients = [
        Analytics(store=store_url, sink=s, background=False, max_batch_keys=7, claim_lease=0.001)
        for s in sinks
    ]
    try:
        for _ in range(40):
            for client in clients:
                client.flush(timeout=60)
        assert sum(s.failures["before commit"] for s in sinks) > 5
        assert sum(s.failures["after commit"] for s in sinks) > 5
        for s in sinks:
            s.on = False
        for client in clients:
            assert client.flush(timeout=60).complete
        assert sum(c.stats()["batches_flushed"] for c in clients) > 20
    finally:
        for client in clients:
            client.shutdown(timeout=10)
        plain.close()
    assert sink_totals(sink_url, EVENTS) == (truth_hourly, truth_users)
    assert store_is_empty(store_url)


@pytest.mark.parametrize("step", ["after_claim", "during_apply", "after_commit"])
def test_a_flusher_killed_at_each_step(urls: tuple[str, str], step: str) -> None:
    store_url, sink_url = urls
    truth_hourly, truth_users = _fill_store(store_url, random.Random(step))
    PostgresSink.from_url(sink_url).migrate()
    spawn = multiprocessing.get_context("spawn")
    doomed = spawn.Process(target=workloads.flush_and_die, args=(store_url, sink_url, step))
    doomed.start()
    doomed.join(120)
    assert doomed.exitcode == -9, (
        f"the flusher should have been SIGKILLed, exit code {doomed.exitcode}"
    )
    # A flusher that starts later finds the dead one's claim (lease 0 s here) and applies it.
    with Analytics(store=store_url, sink=sink_url, background=False, claim_lease=0.001) as rescuer:
        result = rescuer.flush(timeout=60)
        assert result.complete, result
        if step == "after_commit":
            assert result.flushed == 0  # committed before the kill: the ledger makes it a no-op
    assert sink_totals(sink_url, EVENTS) == (truth_hourly, truth_users)
    assert store_is_empty(store_url)


def test_backend_terminated_mid_flush(
    urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from analytics_sdk.backends import postgres

    store_url, sink_url = urls
    truth_hourly, truth_users = _fill_store(store_url, random.Random(7))
    app_name = sink_url.rsplit("application_name=", 1)[1]
    hourly_rows = postgres._hourly_rows
    terminated = []

    def rows_with_termination(batch):  # type: ignore[no-untyped-def]
        rows, sets = hourly_rows(batch)

        def terminating():  # type: ignore[no-untyped-def]
            for n, row in enumerate(rows):
                if n == 20 and not terminated:  # mid-COPY: kill the backend doing it
                    with psycopg.connect(postgres_url_or_skip(), autocommit=True) as admin:
                        killed = admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = %s AND state <> 'idle'",
                            [app_name],
                        ).fetchall()
                    terminated.append(killed)
                yield row

        return terminating(), sets

    monkeypatch.setattr(postgres, "_hourly_rows", rows_with_termination)
    with Analytics(store=store_url, sink=sink_url, background=False) as client:
        first = client.flush(timeout=60)
        assert terminated == [[(True,)]], terminated  # the applying backend was killed
        assert first.error is not None
        assert not first.complete
        second = client.flush(timeout=60)
        assert second.complete, second
    assert sink_totals(sink_url, EVENTS) == (truth_hourly, truth_users)
    assert store_is_empty(store_url)


def _deadlocks() -> int:
    import psycopg

    with psycopg.connect(postgres_url_or_skip(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row[0]) if row else 0


@pytest.mark.parametrize(("flushers", "mode"), [(2, "overlap"), (4, "overlap"), (2, "rare")])
def test_concurrent_flushers(
    urls: tuple[str, str], tmp_path: Path, flushers: int, mode: str
) -> None:
    """Producers push overlapping (or rare) keys while several flushers flush the same store
    into the same PostgreSQL: exact totals, and no deadlock."""
    store_url, sink_url = urls
    PostgresSink.from_url(sink_url).migrate()
    deadlocks_before = _deadlocks()
    spawn = multiprocessing.get_context("spawn")
    stop = tmp_path / "stop"
    flush_procs = [
        spawn.Process(
            target=workloads.flush_until,
            args=(store_url, str(stop), str(tmp_path / f"f{n}.json"), sink_url),
        )
        for n in range(flushers)
    ]
    producers = [
        spawn.Process(
            target=workloads.produce,
            args=(store_url, n, 2, 2000, str(tmp_path / f"p{n}.json"), mode, 0.01),
        )
        for n in range(3)
    ]
    for p in flush_procs:
        p.start()
    for n in range(flushers):  # every flusher is up before the first count arrives
        ready = tmp_path / f"f{n}.json.ready"
        for _ in range(600):
            if ready.exists():
                break
            time.sleep(0.05)
    for p in producers:
        p.start()
    workloads.finish(producers, flush_procs, stop)
    truth_hourly, truth_users = workloads.read_truth([tmp_path / f"p{n}.json" for n in range(3)])
    events = sorted({json.loads(k)[0] for k in truth_hourly})
    assert sink_totals(sink_url, events) == (truth_hourly, truth_users)
    assert store_is_empty(store_url)
    stats = [json.loads((tmp_path / f"f{n}.json").read_text())["stats"] for n in range(flushers)]
    assert all(s["flushes_failed"] == 0 for s in stats), stats
    assert sum(1 for s in stats if s["counts_flushed"] > 0) >= 2, json.dumps(stats)
    assert _deadlocks() == deadlocks_before


def test_cluster_lost_replies_driver_retries_and_slot_migrations_mixed() -> None:
    """Producers on a real 3-master cluster while replies are lost (some clients let
    RedisCluster re-send, the SDK's own clients never do) and the slots of every shard
    migrate key by key: the sink ends with exactly what was tracked."""
    from redis.cluster import RedisCluster
    from redis.crc import key_slot

    from analytics_sdk.testing import ManualClock

    from .servers import cluster
    from .utils import drop_schema, skip_or_fail, unique_name

    pg_url = postgres_url_or_skip()
    try:
        started = cluster(3, proxied=True)
        nodes = started.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a Redis Cluster: {exc}")
        raise
    prefix, schema = unique_name("fault"), unique_name("fault")
    store_url = f"{nodes.url}?prefix={prefix}&shards=4&socket_timeout=2"
    sink_url = f"{pg_url}?schema={schema}"
    rng = random.Random(8)
    clock = ManualClock()
    clients: list[Analytics] = []
    try:
        for n in range(4):
            if n % 2:  # built by the application: the driver re-sends after a lost reply
                driver = RedisCluster.from_url(
                    nodes.url.replace("redis+cluster://", "redis://"), decode_responses=True
                )
                store: object = RedisCounterStore(driver, prefix=prefix, shards=4)
            else:
                store = store_url
            clients.append(
                Analytics(
                    store=store,
                    sink=sink_url,
                    clock=clock,
                    background=False,
                    flusher=n == 0,
                    claim_lease=60,
                )
            )
        truth: Counter[str] = Counter()
        slots = sorted({int(key_slot(f"{{{prefix}:{s}}}:idx".encode())) for s in range(4)})
        migrations = []
        for round_ in range(60):
            for client in clients:
                for _ in range(rng.randrange(1, 6)):
                    event = rng.choice(EVENTS)
                    value = rng.randrange(1, 4)
                    client.track(event, value=value, user_id=f"u{rng.randrange(5)}")
                    truth[event] += value
            if round_ % 15 == 5 and slots:  # a slot starts moving
                migration = nodes.migration(slots.pop())
                migration.begin()
                migrations.append(migration)
            for migration in migrations:
                keys = migration.remaining()
                if keys:
                    migration.move(keys[: rng.randrange(1, 3)])
            if round_ % 15 == 12:  # the oldest migration completes
                for migration in migrations:
                    migration.finish()
                migrations = []
            if rng.random() < 0.3:
                rng.choice(list(nodes.proxies.values())).lose_next_reply = True
            for client in rng.sample(clients, len(clients)):
                client.flush(timeout=30)
            clock.advance(1)
        for migration in migrations:
            migration.finish()
        for proxy in nodes.proxies.values():
            proxy.lose_next_reply = False
        for _ in range(10):
            clock.advance(61)  # past the lease: orphans of lost claim replies are re-applied
            results = [c.flush(timeout=30) for c in clients]
            if all(r.complete for r in results) and store_is_empty(store_url):
                break
        hourly, _ = sink_totals(sink_url, EVENTS)
        flushed: Counter[str] = Counter()
        for key, n in hourly.items():
            flushed[json.loads(key)[0]] += n
        assert flushed == truth  # 0 lost, 0 double
        assert sum(c.stats()["counts_pushed"] for c in clients) == sum(truth.values())
    finally:
        for client in clients:
            client.shutdown(timeout=5)
        started.__exit__(None, None, None)
        drop_schema(pg_url, schema)


# -- one step failing, deterministically ------------------------------------------------------


def test_a_claim_failing_on_a_later_shard_hands_over_the_batches_already_claimed(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    store_url, sink_url = urls
    store, sink = RedisCounterStore.from_url(store_url), PostgresSink.from_url(sink_url)
    hour = int(time.time() // 3600)
    by_shard: dict[int, Push] = {}
    for n in itertools.count(1):  # one push on each shard, each with its own total
        push = Push(producer=f"p{n}", sequence=1, delta=Delta(hourly={("x", (), hour): n}))
        by_shard.setdefault(store._shard_of(push), push)
        if len(by_shard) == store.shards == 3:
            break
    for push in by_shard.values():
        store.push(push)
    truth = sum(p.delta.total for p in by_shard.values())
    claims = Faults(store)
    claims.fail("_claim_shard", nth=2, error=StoreError("shard unreachable (injected)"))
    with Analytics(store=store, sink=sink, background=False, claim_lease=3600) as client:
        result = client.flush()
        assert result.error is not None
        assert "shard unreachable" in result.error
        # The first shard's batch was applied at once, not left claimed for an hour's lease;
        # the shard that failed kept its counters live.
        assert sum(sink.hourly_counts("x", None, None, ()).values()) in {
            p.delta.total for p in by_shard.values()
        }
        assert store.claimed() == []
        assert client.count("x") == truth
        assert client.flush().complete
        assert sum(sink.hourly_counts("x", None, None, ()).values()) == truth
        assert client.count("x") == truth
    assert store_is_empty(store_url)


def test_counts_between_commit_and_ack_are_counted_once(urls: tuple[str, str]) -> None:
    """Committed in PostgreSQL, still claimed in Redis: every query reads the ledger."""
    store_url, sink_url = urls
    with Analytics(store=store_url, sink=sink_url, background=False) as client:
        client.track("x", value=5, user_id="u1")
        client.track("x", value=2, user_id="u2")
        Faults(client.store).fail("ack")
        assert "ack call 1 failed" in (client.flush().error or "")
        claimed = [b.id for b in client.store.claimed()]
        assert len(claimed) == 1
        assert client.sink.applied(claimed) == set(claimed)
        today = datetime.now(timezone.utc).date()
        assert client.count("x") == 7
        assert client.count("x", day=today) == 7
        assert client.count("x", user_id="u1") == 5
        assert client.unique_users("x", today, today) == 2
        assert client.top_users("x", day=today) == [("u1", 5), ("u2", 2)]
        assert client._query.fleet_totals() == {"x": 7}
        again = client.flush()
        assert again.complete, again
        assert again.flushed == 0
        assert client.count("x") == 7
        assert client.count("x", user_id="u1") == 5
    assert store_is_empty(store_url)


def test_per_user_counts_in_an_outbox_the_store_has_not_accepted(urls: tuple[str, str]) -> None:
    store_url, sink_url = urls
    with Analytics(store=store_url, sink=sink_url, background=False) as client:
        client.track("x", value=3, user_id="u1")
        Faults(client.store).fail("push")  # refused: the counts wait in the outbox
        assert "push call 1 failed" in (client.flush().error or "")
        assert client.aggregator.local_counts().outbox is not None
        today = datetime.now(timezone.utc).date()
        assert client.count("x", user_id="u1") == 3
        assert client.unique_users("x", today, today) == 1
        assert client.count("x") == 3
        assert client.flush().complete
        assert client.count("x", user_id="u1") == 3
        assert client.count("x") == 3


def test_a_query_whose_push_check_fails_raises_a_store_error_and_loses_nothing(
    urls: tuple[str, str],
) -> None:
    import redis

    store_url, sink_url = urls
    with Analytics(store=store_url, sink=sink_url, background=False) as client:
        client.track("x", value=3, user_id="u1")
        Faults(client.store).fail("push", after=True)  # applied, but the reply was lost
        assert client.flush().error is not None
        assert client.aggregator.local_counts().outbox is not None  # in doubt
        reads = Faults(client.store._redis)
        reads.fail("get", times=2, error=redis.ConnectionError("connection reset (injected)"))
        with pytest.raises(StoreError, match="read failed: connection reset"):
            client.count("x")
        with pytest.raises(StoreError, match="read failed: connection reset"):
            client.count("x", user_id="u1")
        assert client.count("x") == 3  # the store has the push: the outbox is not added again
        assert client.count("x", user_id="u1") == 3
        assert client.flush().complete
        assert client.count("x") == 3
    assert store_is_empty(store_url)


# -- forks, pools and an oversized backlog, mixed with lost replies and a failing sink --------

_APP: Analytics | None = None  # the forked pool workers' client, inherited from the parent
MIX_WHEN = datetime(2025, 12, 31, 22, 30, tzinfo=timezone.utc)  # before ManualClock starts


def _pool_task(n: int) -> int:
    """One task of a pool worker: track through the client the worker inherited."""
    assert _APP is not None
    for _ in range(3):
        _APP.track("pooled", user_id=f"p{n % 7}", timestamp=MIX_WHEN)
    return 3


class RecordingFlakySink(FlakySink):
    """A flaky sink that records how many counters each batch it was given held."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.batch_sizes: list[int] = []

    def apply(self, batch: Batch) -> bool:
        self.batch_sizes.append(len(batch.delta.hourly) + len(batch.delta.users))
        return super().apply(batch)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forks_pools_and_an_oversized_backlog_with_lost_replies_and_driver_retries_mixed(
    urls: tuple[str, str],
) -> None:
    """A backlog of many more counters than `max_batch_keys`, flushed by two flusher threads
    into a PostgreSQL sink that fails before or after its commit, while forked children and
    pool workers (forked from the flushing process, so they inherit its flushers too) track
    and exit, replies are lost behind a proxy and the application's redis-py client re-sends
    after a lost reply: the sink ends with exactly what was tracked."""
    global _APP
    import threading
    from urllib.parse import urlsplit

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from analytics_sdk.keys import day_of, hour_of
    from analytics_sdk.testing import ManualClock

    from .servers import Proxy

    store_url, sink_url = urls
    parts = urlsplit(store_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    proxied = store_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    proxied += "&socket_timeout=2"
    prefix = dict(p.split("=") for p in parts.query.split("&"))["prefix"]
    rng = random.Random(9)
    clock = ManualClock()
    sink = PostgresSink.from_url(sink_url)
    sink.migrate()
    # Built by the application: redis-py re-sends a script whose reply was lost.
    driver = redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        decode_responses=True,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 3),
    )
    app = Analytics(
        store=RedisCounterStore(driver, prefix=prefix, shards=3, clock=clock.time),
        sink=sink_url,
        clock=clock,
        background=False,
        flusher=False,
        max_batch_keys=100,
        shutdown_timeout=20,
    )
    _APP = app
    flaky = [
        RecordingFlakySink(sink._conninfo, schema=sink.schema, rng=random.Random(n))
        for n in range(2)
    ]
    flushers = [
        Analytics(
            store=proxied,
            sink=flaky[n],
            clock=clock,
            background=False,
            max_batch_keys=100,
            claim_lease=60,
            shutdown_timeout=5,
        )
        for n in range(2)
    ]
    hour, day = hour_of(MIX_WHEN), day_of(MIX_WHEN.date())
    truth_hourly: Counter[str] = Counter()
    truth_users: Counter[str] = Counter()

    def tracked(event: str, user: str, n: int = 1) -> None:
        truth_hourly[json.dumps([event, hour])] += n
        truth_users[json.dumps([event, user, day])] += n

    stop = threading.Event()

    def flush_until_stopped(client: Analytics) -> None:
        while not stop.is_set():
            client.flush(timeout=30)

    threads: list[threading.Thread] = []
    children: list[int] = []
    lost = -1  # the first round has no earlier reply to lose
    try:
        # An oversized backlog: 3,000 users' counters in the store before any flusher runs.
        for u in range(3000):
            app.track("backlog", user_id=f"b{u}", timestamp=MIX_WHEN)
            tracked("backlog", f"b{u}")
        assert app.flush(timeout=60).complete
        threads = [threading.Thread(target=flush_until_stopped, args=(f,)) for f in flushers]
        for t in threads:
            t.start()
        fork = multiprocessing.get_context("fork")
        for round_ in range(8):
            for _ in range(rng.randrange(20, 60)):
                user = f"a{rng.randrange(50)}"
                app.track("parent", user_id=user, timestamp=MIX_WHEN)
                tracked("parent", user)
            pid = os.fork()
            if pid == 0:  # a forked child: tracks, shuts its client down, leaves
                code = 1
                try:
                    for u in range(40):
                        app.track("forked", user_id=f"f{round_}_{u}", timestamp=MIX_WHEN)
                    code = 0 if app.shutdown(timeout=20).complete else 2
                finally:
                    os._exit(code)
            children.append(pid)
            for u in range(40):
                tracked("forked", f"f{round_}_{u}")
            if round_ % 2 == 0:  # pool workers, replaced after a few tasks
                with fork.Pool(2, maxtasksperchild=3) as pool:
                    assert sum(pool.map(_pool_task, range(12), chunksize=1)) == 36
                    pool.close()
                    pool.join()
                for n in range(12):
                    tracked("pooled", f"p{n % 7}", 3)
            lost += not proxy.lose_next_reply  # the last one was dropped
            proxy.lose_next_reply = True
            app.flush(timeout=30)
            clock.advance(1)
        deadline = time.monotonic() + 120  # a child that hangs fails the test, not the suite
        for pid in children:
            while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    pytest.fail(f"forked child {pid} hung")
                time.sleep(0.05)
            assert os.waitstatus_to_exitcode(status[1]) == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        proxy.lose_next_reply = False
        for f in flaky:
            f.on = False
        assert app.flush(timeout=30).complete
        for _ in range(10):
            clock.advance(61)  # past the lease: orphans of failed applies are applied
            results = [f.flush(timeout=60) for f in flushers]
            if all(r.complete for r in results) and store_is_empty(store_url):
                break
        events = ["backlog", "parent", "forked", "pooled"]
        assert sink_totals(sink_url, events) == (truth_hourly, truth_users)  # 0 lost, 0 double
        assert store_is_empty(store_url)
        failures = flaky[0].failures + flaky[1].failures
        assert failures["before commit"] > 0, failures
        assert failures["after commit"] > 0, failures
        sizes = flaky[0].batch_sizes + flaky[1].batch_sizes
        assert max(sizes) <= 100  # the backlog went in bounded batches, 30 or more of them
        assert len(sizes) >= 30
        assert lost >= 4  # replies the proxy did drop
        # The parent pushed the backlog and its own counts once each, whatever was re-sent.
        parent = sum(n for k, n in truth_hourly.items() if json.loads(k)[0] == "parent")
        assert app.stats()["counts_pushed"] == 3000 + parent
    finally:
        _APP = None
        app.shutdown(timeout=10)
        for f in flushers:
            f.shutdown(timeout=10)
        driver.close()
        sink.close()
        proxy.close()


KILLED_APP = """
import os, signal, sys
from analytics_sdk import Analytics

store, mode = sys.argv[1], sys.argv[2]
push_interval = 0 if mode == "write-through" else 3600
client = Analytics(store=store, flusher=False, push_interval=push_interval, flush_interval=3600)
for n in range(200):
    client.track("killed", user_id=f"u{n % 10}")
if mode == "buffered":
    assert client.flush(timeout=30).complete  # these 200 reached the store
    for n in range(50):
        client.track("killed", user_id="late")  # still in the buffer
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("mode", ["write-through", "buffered"])
def test_a_producer_killed_with_sigkill_loses_only_what_it_had_not_pushed(
    urls: tuple[str, str], mode: str
) -> None:
    """SIGKILL: in write-through mode every count `track()` returned from is in the store;
    otherwise what was pushed is, and only what waited in the buffer is lost."""
    import signal
    import subprocess
    import sys

    store_url, sink_url = urls
    done = subprocess.run(
        [sys.executable, "-c", KILLED_APP, store_url, mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    with Analytics(store=store_url, sink=sink_url, background=False) as flusher:
        assert flusher.flush(timeout=60).complete
        _, users = sink_totals(sink_url, ["killed"])
    per_user: Counter[str] = Counter()
    for key, n in users.items():
        per_user[json.loads(key)[1]] += n
    assert per_user == {f"u{n}": 20 for n in range(10)}  # 200 counted once; "late" lost
    assert store_is_empty(store_url)
