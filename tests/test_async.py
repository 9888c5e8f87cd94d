"""The async API: the same answers and errors as the sync queries, on asyncio drivers; the
event loop runs on while a query waits for its server; cancellation leaves nothing behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import pytest

import analytics_sdk
from analytics_sdk import Analytics, SinkError, StoreError
from analytics_sdk.backends import MemoryCounterStore, MemorySink
from analytics_sdk.testing import ManualClock, arecording

from .servers import Proxy
from .utils import (
    delete_redis_prefix,
    drop_schema,
    postgres_url_or_skip,
    redis_url_or_skip,
    unique_name,
)

DAY = date(2026, 11, 25)
T0 = datetime(2026, 11, 25, tzinfo=timezone.utc)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


@contextmanager
def backends(
    store: str, sink: str, *, redis_port: int | None = None, pg_port: int | None = None
) -> Iterator[tuple[str, str]]:
    """Yield store and sink URLs of the given kinds (``memory``, ``redis``, ``postgres``),
    private to the test; a port given goes in place of the server's (a proxy)."""
    cleanups: list[Callable[[], None]] = []
    store_url = sink_url = "memory://"
    if store == "redis":
        url = redis_url_or_skip()
        prefix = unique_name("async")
        parts = urlsplit(url)
        if redis_port is not None:
            url = parts._replace(netloc=f"{parts.hostname}:{redis_port}").geturl()
        store_url = f"{url}?prefix={prefix}&shards=3&socket_timeout=3"
        cleanups.append(lambda: delete_redis_prefix(redis_url_or_skip(), prefix))
    if sink == "postgres":
        url = postgres_url_or_skip()
        schema = unique_name("async")
        parts = urlsplit(url)
        if pg_port is not None:
            netloc = parts.netloc.rsplit(":", 1)[0] + f":{pg_port}"
            url = parts._replace(netloc=netloc).geturl()
        sink_url = f"{url}?schema={schema}"
        cleanups.append(lambda: drop_schema(postgres_url_or_skip(), schema))
    try:
        yield store_url, sink_url
    finally:
        for cleanup in cleanups:
            cleanup()


def fill(client: Analytics) -> None:
    """Counts in every tier: sink, a batch applied but not acknowledged, a claimed batch,
    live store counters, the buffer."""
    for i in range(40):
        client.track(
            "view",
            user_id=f"u{i % 7}",
            properties={"path": f"/p{i % 5}", "plan": "pro" if i % 3 else "free"},
            timestamp=at(i % 30),
        )
    client.flush()  # -> sink
    client.track("view", user_id="u1", properties={"path": "/p1"}, timestamp=at(2), value=3)
    client.scheduler.push()
    batches = client.store.claim()
    for batch in batches:
        client.sink.apply(batch)  # applied, not acknowledged: the ledger says so
    client.track("view", user_id="u8", properties={"path": "/p9"}, timestamp=at(5), value=2)
    client.scheduler.push()
    client.store.claim()  # claimed, not applied
    client.track("view", user_id="u2", properties={"path": "/p2"}, timestamp=at(7), value=4)
    client.scheduler.push()  # live
    client.track("view", user_id="u9", properties={"plan": "free"}, timestamp=at(26))  # buffer
    client.track("click", user_id="u1", timestamp=at(1))


QUERIES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("count", ("view",), {}),
    ("count", ("view",), {"day": DAY}),
    ("count", ("view",), {"hour": at(2)}),
    ("count", ("view",), {"day": DAY, "user_id": "u1"}),
    ("count", ("view",), {"properties": {"plan": "free"}}),
    ("hourly", ("view",), {"day": DAY}),
    ("hourly", ("view",), {"day": DAY, "properties": {"path": "/p1"}}),
    ("series", ("view", DAY, DAY + timedelta(days=1)), {"granularity": "hour"}),
    ("series", ("view", DAY, DAY + timedelta(days=3)), {"tz": "America/New_York"}),
    ("series", ("view", DAY, DAY + timedelta(days=40)), {"granularity": "week"}),
    ("unique_users", ("view", DAY, DAY + timedelta(days=1)), {}),
    ("unique_users", ("click", DAY, DAY), {}),
    ("top_users", ("view",), {"day": DAY, "limit": 3}),
    ("breakdown", ("view", "path", DAY, DAY + timedelta(days=1)), {"limit": 2}),
    ("breakdown", ("view", "plan", DAY, DAY), {"granularity": "hour"}),
    ("top_values", ("view", "path"), {"day": DAY}),
    ("top_values", ("view", "plan"), {}),
    ("active_users", (DAY, DAY + timedelta(days=8)), {}),
    ("active_users", (DAY, DAY + timedelta(days=40)), {"granularity": "week", "events": "view"}),
    ("retention", (DAY, DAY + timedelta(days=14)), {"periods": 3}),
    ("retention", (DAY, DAY), {"period": "day", "cohort_event": "view", "return_event": "click"}),
]


@pytest.mark.parametrize(
    ("store", "sink"),
    [("memory", "memory"), ("redis", "memory"), ("memory", "postgres"), ("redis", "postgres")],
)
def test_every_query_answers_alike_both_ways(store: str, sink: str) -> None:
    clock = ManualClock(start=datetime(2026, 11, 27, 12, tzinfo=timezone.utc))
    with backends(store, sink) as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, clock=clock, background=False)
        try:
            fill(client)

            async def both() -> list[tuple[Any, Any]]:
                out = []
                for name, args, kwargs in QUERIES:
                    sync = getattr(client, name)(*args, **kwargs)
                    answer = await getattr(client, "a" + name)(*args, **kwargs)
                    out.append((sync, answer))
                await client.aclose_connections()
                return out

            pairs = asyncio.run(both())
            for (name, args, kwargs), (sync, answer) in zip(QUERIES, pairs, strict=True):
                assert answer == sync, (name, args, kwargs)
            assert pairs[0][0] == 50  # the counts of every tier are in the answers
        finally:
            client.shutdown()


def test_async_queries_read_on_asyncio_drivers() -> None:
    with backends("redis", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        try:

            async def backends_used() -> tuple[Any, Any]:
                await client.acount("view")
                store, sink = client._asyncio_backends()
                driver = type(store._redis._target).__module__  # type: ignore[attr-defined]
                pool = type(sink._pool).__name__  # type: ignore[attr-defined]
                await client.aclose_connections()
                return driver, pool

            driver, pool = asyncio.run(backends_used())
            assert driver.startswith("redis.asyncio")
            assert pool == "AsyncConnectionPool"
        finally:
            client.shutdown()


def test_bad_input_raises_the_same_errors() -> None:
    client = Analytics(background=False)
    cases: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("count", ("",), {}),
        ("count", (7,), {}),
        ("count", ("v",), {"day": DAY, "hour": at(1)}),
        ("series", ("v", DAY, DAY), {"granularity": "fortnight"}),
        ("series", ("v", DAY, DAY), {"tz": "Mars/Olympus"}),
        ("top_users", ("v",), {"day": DAY, "limit": 0}),
        ("breakdown", ("v", "", DAY, DAY), {}),
        ("top_values", ("v", "k"), {"day": DAY, "start": DAY}),
        ("unique_users", ("v", DAY, DAY - timedelta(days=1)), {}),
        ("active_users", (DAY, DAY), {"granularity": "hour"}),
        ("retention", (DAY, DAY), {"periods": 0}),
    ]

    async def errors() -> list[BaseException]:
        found = []
        for name, args, kwargs in cases:
            try:
                await getattr(client, "a" + name)(*args, **kwargs)
            except (TypeError, ValueError) as exc:
                found.append(exc)
            else:
                raise AssertionError(f"a{name}{args} raised nothing")
        return found

    for (name, args, kwargs), error in zip(cases, asyncio.run(errors()), strict=True):
        with pytest.raises(type(error)) as sync:
            getattr(client, name)(*args, **kwargs)
        assert str(sync.value) == str(error)
    client.shutdown()


def test_a_server_down_raises_the_same_backend_errors(proxy: Proxy) -> None:
    with backends("redis", "memory", redis_port=proxy.port) as (store_url, sink_url):
        told: list[tuple[BaseException, str]] = []
        client = Analytics(
            store=store_url,
            sink=sink_url,
            background=False,
            on_error=lambda exc, operation: told.append((exc, operation)),
        )
        proxy.refuse = True
        proxy.drop()

        async def fail() -> BaseException:
            with pytest.raises(StoreError) as info:
                await client.acount("view")
            await client.aclose_connections()
            return info.value

        error = asyncio.run(fail())
        assert told == [(error, "query")]  # on_error hears of it, as of a sync query
        with pytest.raises(StoreError) as sync:
            client.count("view")
        assert str(error).split(" failed")[0] == str(sync.value).split(" failed")[0]
        proxy.refuse = False
        client.shutdown(timeout=1.0)


@pytest.fixture
def pg_proxy() -> Iterator[Proxy]:
    parts = urlsplit(postgres_url_or_skip())
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield p
    p.close()


async def lag_while(query: Awaitable[Any]) -> tuple[Any, float, int, float]:
    """Await ``query`` while a ticker measures the event loop; return its answer, the
    longest gap between ticks (s), how many ticks ran, and the query's duration (s)."""
    done = asyncio.Event()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    try:
        answer = await query
    finally:
        elapsed = time.perf_counter() - started
        done.set()
        await task
    return answer, max(gaps, default=0.0), len(gaps), elapsed


def test_a_slow_postgres_does_not_block_the_event_loop(pg_proxy: Proxy) -> None:
    with backends("memory", "postgres", pg_port=pg_proxy.port) as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        client.track("view", timestamp=at(1), value=5)
        client.flush()

        async def measured() -> tuple[Any, float, int, float]:
            assert await client.acount("view") == 5  # connections open before the delay
            pg_proxy.delay = 0.5
            try:
                return await lag_while(client.acount("view", day=DAY))
            finally:
                pg_proxy.delay = 0.0
                await client.aclose_connections()

        answer, lag, ticks, elapsed = asyncio.run(measured())
        assert answer == 5
        assert elapsed >= 0.5  # a round trip of 500 ms (one: nothing pending, the sink alone)
        assert lag < 0.25, f"the loop stalled {lag * 1000:.0f} ms while the query waited"
        assert ticks >= elapsed / 0.05
        client.shutdown()


def test_a_cancelled_postgres_query_returns_its_connection(pg_proxy: Proxy) -> None:
    with backends("memory", "postgres", pg_port=pg_proxy.port) as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        client.track("view", timestamp=at(1), value=5)
        client.flush()
        client._sync_query.attempts = 0  # every read behind the fence (an advisory lock)
        client._sync_query.quiet_first = False

        async def cancelled() -> int:
            assert await client.acount("view") == 5
            pg_proxy.delay = 0.3
            with pytest.raises(asyncio.TimeoutError):  # wait_for: asyncio.timeout is 3.11+
                await asyncio.wait_for(client.acount("view", day=DAY), 0.5)
            pg_proxy.delay = 0.0
            _, sink = client._asyncio_backends()
            pool = sink._pool  # type: ignore[attr-defined]
            # Every connection can be checked out: none stayed with the cancelled query (the
            # pool cannot grow past max_size, so a leaked one would time this out).
            held = [await pool.getconn(timeout=5) for _ in range(pool.max_size)]
            for conn in held:
                await pool.putconn(conn)
            # The fence's lock is released: a batch commits at once.
            client.track("view", timestamp=at(1))
            assert client.flush(timeout=5).complete
            answer = await client.acount("view", day=DAY)
            await client.aclose_connections()
            return answer

        assert asyncio.run(cancelled()) == 6
        client.shutdown()


def test_a_cancelled_redis_query_returns_its_connection(proxy: Proxy) -> None:
    with backends("redis", "memory", redis_port=proxy.port) as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        client.track("view", timestamp=at(1), value=5)
        client.scheduler.push()

        async def cancelled() -> tuple[int, int]:
            assert await client.acount("view") == 5
            proxy.stall = True
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.acount("view", day=DAY), 0.3)
            proxy.stall = False
            store, _ = client._asyncio_backends()
            pool = store._redis._target.connection_pool  # type: ignore[attr-defined]
            in_use = len(pool._in_use_connections)
            # No half-read reply is left on a connection: the next query reads its own.
            answer = await client.acount("view", day=DAY)
            await client.aclose_connections()
            return in_use, answer

        in_use, answer = asyncio.run(cancelled())
        assert in_use == 0
        assert answer == 5
        client.shutdown(timeout=1.0)


def test_cancelling_one_of_many_queries_leaves_the_others_exact() -> None:
    with backends("redis", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        client.track("view", timestamp=at(1), value=5)
        client.flush()
        client.track("view", timestamp=at(1), value=2)
        client.scheduler.push()

        async def many() -> list[Any]:
            tasks = [asyncio.create_task(client.acount("view", day=DAY)) for _ in range(20)]
            await asyncio.sleep(0)
            for task in tasks[::3]:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            results.append(await client.acount("view"))
            await client.aclose_connections()
            return results

        results = asyncio.run(many())
        for i, result in enumerate(results[:-1]):
            if i % 3:
                assert result == 7
            else:
                assert isinstance(result, asyncio.CancelledError)
        assert results[-1] == 7
        client.shutdown()


def test_aflush_and_ashutdown_run_on_the_flush_thread() -> None:
    with backends("redis", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url)  # with its flush thread

        async def app() -> tuple[Any, Any, int, bool]:
            client.track("view", timestamp=at(1), value=3)
            flushed = await client.aflush()
            client.track("view", timestamp=at(1), value=4)
            result = await client.ashutdown(timeout=10)
            return flushed, result, client.sink.event_totals().get("view", 0), client.closed

        flushed, result, durable, closed = asyncio.run(app())
        assert flushed.complete
        assert flushed.flushed == 3
        assert result.complete
        assert result.flushed == 4
        assert durable == 7
        assert closed
        assert not client.scheduler.running


def test_aflush_and_ashutdown_without_the_thread_run_on_asyncio_drivers() -> None:
    with backends("redis", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        sync_sink: Any = client.sink
        sync_pool = client.store._redis.connection_pool  # type: ignore[attr-defined]

        async def app() -> tuple[Any, Any, Any, int]:
            client.track("view", timestamp=at(1), value=3)
            client.track("view", user_id="a", timestamp=at(2))
            flushed, again = await asyncio.gather(client.aflush(), client.aflush())
            client.track("view", timestamp=at(1), value=4)
            result = await client.ashutdown(timeout=10)
            counted = await client.acount("view")  # after shutdown, as the sync queries
            await client.aclose_connections()
            return flushed, again, result, counted

        flushed, again, result, counted = asyncio.run(app())
        assert flushed.complete
        assert again.complete
        assert flushed.pushed + again.pushed == 4
        assert result.complete
        assert result.flushed == 4
        assert counted == 8
        # Every push, claim and apply went through the asyncio twins.
        assert sync_sink._pool is None
        assert not sync_pool._available_connections
        assert not sync_pool._in_use_connections
        assert client.sink.event_totals() == {"view": 8}


def test_aflush_without_the_thread_does_not_block_the_loop(pg_proxy: Proxy) -> None:
    with backends("memory", "postgres", pg_port=pg_proxy.port) as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)

        async def measured() -> tuple[Any, float, int, float]:
            client.track("view", timestamp=at(1))
            await client.aflush()  # migrated, connections open before the delay
            client.track("view", timestamp=at(1), value=5)
            pg_proxy.delay = 0.3
            try:
                return await lag_while(client.aflush())
            finally:
                pg_proxy.delay = 0.0
                await client.aclose_connections()

        result, lag, ticks, elapsed = asyncio.run(measured())
        assert result.complete
        assert result.flushed == 5
        assert elapsed >= 0.6
        assert lag < 0.25, f"the loop stalled {lag * 1000:.0f} ms while the flush waited"
        assert ticks >= elapsed / 0.05
        client.shutdown()


def test_module_aflush_and_ashutdown_and_arecording() -> None:
    async def app() -> tuple[int, int, Any]:
        async with arecording() as recorder:
            analytics_sdk.track("signup", user_id="a")
            analytics_sdk.track("signup", user_id="b")
            flushed = await analytics_sdk.aflush()
            assert flushed.complete
            assert recorder.client.sink.event_totals() == {"signup": 2}
            counted = await recorder.acount("signup")
            today = datetime.now(timezone.utc).date()  # days are UTC, whatever the machine's zone
            users = await recorder.aunique_users("signup", today, today)
            return counted, users, await analytics_sdk.ashutdown()

    counted, users, result = asyncio.run(app())
    assert (counted, users) == (2, 2)
    assert result.complete


def test_memory_backends_answer_without_twins() -> None:
    store, sink = MemoryCounterStore(), MemorySink()
    assert store.for_asyncio() is store
    assert sink.for_asyncio() is sink


def test_a_store_made_from_a_client_has_no_twin() -> None:
    import redis

    from analytics_sdk.backends.redis import RedisCounterStore

    store = RedisCounterStore(redis.Redis.from_url(redis_url_or_skip()))
    with pytest.raises(analytics_sdk.ConfigurationError, match="from_url"):
        store.for_asyncio()
    store.close()


def test_the_sync_queries_inside_a_coroutine_still_read_the_sync_backends() -> None:
    """A sync query called from a coroutine (or the dashboard's threads) never reaches the
    asyncio twins, whatever the async queries around it."""
    with backends("redis", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        client.track("view", timestamp=at(1), value=2)

        async def mixed() -> list[int]:
            out = [await client.acount("view")]
            out.append(client.count("view"))
            out.append(await client.acount("view"))
            await client.aclose_connections()
            return out

        assert asyncio.run(mixed()) == [2, 2, 2]
        client.shutdown()


def test_a_sink_error_is_the_sync_one() -> None:
    with backends("memory", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url, background=False)
        client.sink.check()
        drop_schema(postgres_url_or_skip(), client.sink.schema)  # type: ignore[attr-defined]

        async def fail() -> str:
            with pytest.raises(SinkError) as info:
                await client.acount("view")
            await client.aclose_connections()
            return str(info.value)

        error = asyncio.run(fail())
        with pytest.raises(SinkError) as sync:
            client.count("view")
        assert error == str(sync.value)
        client.shutdown(timeout=1.0)


def test_concurrent_first_queries_open_one_pool() -> None:
    """The first async queries of a loop, all at once, share one pool of at most pool_max
    connections (each opening its own would exhaust the server's)."""
    with backends("memory", "postgres") as (store_url, sink_url):
        schema = urlsplit(sink_url).query.split("=", 1)[1]
        sink_url += f"&pool_max=3&application_name={schema}"
        client = Analytics(store=store_url, sink=sink_url, background=False)
        client.track("view", timestamp=at(1))

        def connections() -> int:
            import psycopg

            with psycopg.connect(postgres_url_or_skip()) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    [schema],
                ).fetchone()
            return int(row[0]) if row else 0

        async def many() -> tuple[list[int], int]:
            answers = await asyncio.gather(*(client.acount("view") for _ in range(30)))
            opened = connections()
            await client.aclose_connections()
            return answers, opened

        answers, opened = asyncio.run(many())
        assert answers == [1] * 30
        assert 1 <= opened <= 3
        client.shutdown()


def test_a_query_with_counts_in_every_tier_waits_on_postgres_three_times(
    pg_proxy: Proxy,
) -> None:
    """The mark, then BEGIN with the ledger reads and the counts' read (pipelined: one wait),
    then COMMIT; each way, with no connection held while the store is read."""

    def waits() -> int:
        # The client waits for replies after a simple query (Q) and after a Sync or a Flush
        # (S, H; one wait for the two together); a pipeline's statements go out without.
        sent, kinds = b"".join(pg_proxy.requests), []
        while sent:
            kinds.append(sent[:1])
            sent = sent[1 + int.from_bytes(sent[1:5], "big") :]
        marks = "".join("w" if k in (b"S", b"H") else "q" if k == b"Q" else "." for k in kinds)
        return marks.count("q") + len([run for run in marks.split(".") if "w" in run])

    with backends("redis", "postgres", pg_port=pg_proxy.port) as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url + "&pool_max=1", background=False)
        try:
            fill(client)
            expected = client.count("view", day=DAY)  # connects, prepares
            pg_proxy.requests.clear()
            assert client.count("view", day=DAY) == expected
            assert waits() == 3

            async def once() -> int:
                await client.acount("view", day=DAY)
                pg_proxy.requests.clear()
                answer = await client.acount("view", day=DAY)
                await client.aclose_connections()
                return answer

            assert asyncio.run(once()) == expected
            assert waits() == 3
        finally:
            client.shutdown()


def test_at_most_twice_the_pool_s_connections_query_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other queries wait their turn, costing the event loop nothing (hundreds reading
    the store at once made single loop iterations long)."""
    from analytics_sdk import _bridge

    running, most = 0, 0
    run = _bridge.run

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return await run(*args, **kwargs)
        finally:
            running -= 1

    monkeypatch.setattr(_bridge, "run", counted)
    with backends("redis", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url + "&pool_max=2", background=False)
        try:
            fill(client)
            expected = client.count("view", day=DAY)

            async def many() -> list[int]:
                answers = await asyncio.gather(*(client.acount("view", day=DAY) for _ in range(30)))
                await client.aclose_connections()
                return answers

            assert asyncio.run(many()) == [expected] * 30
            assert 2 <= most <= 4
        finally:
            client.shutdown()


def test_a_returned_connection_is_back_in_the_pool_at_once() -> None:
    """No pool callback runs on a returned connection: it is available to the next query as
    the last one ends (a callback would hand it to the pool's worker task first)."""
    with backends("memory", "postgres") as (store_url, sink_url):
        client = Analytics(store=store_url, sink=sink_url + "&pool_max=1", background=False)
        client.track("view", timestamp=at(1))
        client.flush()

        async def queries() -> list[int]:
            available = []
            for _ in range(3):
                assert await client.acount("view") == 1
                sink = client._asyncio_backends()[1]
                available.append(sink._pool.get_stats()["pool_available"])  # type: ignore[attr-defined]
            await client.aclose_connections()
            return available

        assert asyncio.run(queries()) == [1, 1, 1]
        client.shutdown()


def test_the_fastapi_example_tracks_queries_and_shuts_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/integrations/examples/fastapi_async_app.py on one event loop, its lifespan and
    requests through httpx's ASGI transport, on Redis and PostgreSQL."""
    import importlib.util
    from pathlib import Path

    import httpx

    path = Path(__file__).parent.parent / "docs/integrations/examples/fastapi_async_app.py"
    with backends("redis", "postgres") as (store_url, sink_url):
        monkeypatch.setenv("ANALYTICS_STORE", store_url)
        monkeypatch.setenv("ANALYTICS_SINK", sink_url)
        spec = importlib.util.spec_from_file_location("fastapi_async_app", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        app = module.app

        async def serve() -> tuple[list[Any], Analytics]:
            transport = httpx.ASGITransport(app=app)
            answers: list[Any] = []
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=transport, base_url="http://app") as http,
            ):
                for user, slug in [("a", "x"), ("b", "x"), ("a", "y")]:
                    reply = await http.post(f"/articles/{slug}/view", params={"user": user})
                    answers.append(reply.json())
                answers.append((await http.get("/stats/views", params={"days": 3})).json())
                answers.append((await http.get("/stats/views", params={"slug": "x"})).json())
                answers.append((await http.get("/stats/readers")).json())
                client = analytics_sdk.get_client()
            return answers, client

        answers, client = asyncio.run(serve())
        assert answers[:3] == [{"ok": True}] * 3
        assert [row["views"] for row in answers[3]] == [0, 0, 3]
        assert answers[4][-1]["views"] == 2
        assert answers[5] == {"readers": 2}
        assert client.closed
        from analytics_sdk.backends.postgres import PostgresSink

        sink = PostgresSink.from_url(sink_url)
        assert sink.event_totals() == {"article_view": 3}  # the lifespan's final flush
        sink.close()


def test_async_queries_on_a_redis_cluster(redis_cluster_url: str) -> None:
    """The store's twin on redis.asyncio's cluster client answers as the sync store."""
    prefix = unique_name("async")
    client = Analytics(
        store=f"{redis_cluster_url}?prefix={prefix}&shards=6", sink="memory://", background=False
    )
    try:
        client.track("view", user_id="a", properties={"path": "/x"}, timestamp=at(1), value=2)
        client.scheduler.push()
        client.store.claim()
        client.track("view", user_id="b", properties={"path": "/y"}, timestamp=at(2))
        client.scheduler.push()
        client.track("view", user_id="c", timestamp=at(3))

        async def both() -> list[tuple[Any, Any]]:
            out = []
            for name, args, kwargs in QUERIES:
                out.append(
                    (
                        getattr(client, name)(*args, **kwargs),
                        await getattr(client, "a" + name)(*args, **kwargs),
                    )
                )
            await client.aclose_connections()
            return out

        for sync, answer in asyncio.run(both()):
            assert answer == sync
        assert client.count("view") == 4
    finally:
        client.shutdown()
