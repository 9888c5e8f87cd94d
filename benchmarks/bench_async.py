"""Async queries on one event loop, next to the sync ones through ``asyncio.to_thread``.

Against real Redis and PostgreSQL, on the same data in the same run: ``--concurrency``
(default 200) ``count()`` calls at once on one event loop, each way:

- ``await client.acount(...)`` (the async API: asyncio drivers, no thread);
- ``await asyncio.to_thread(client.count, ...)`` (the sync API on the default thread pool).

Prints queries/s of each and their ratio, and the event loop's lag while the queries run
(a ticker sleeping 1 ms records how late it wakes: the longest and the 99th percentile).
Both ways read through pools of the same size (the URL's ``pool_max``, Redis' default pool).

    python benchmarks/bench_async.py [--redis redis://127.0.0.1:6379/0]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--concurrency 200]
        [--rounds 5]

Target (issue #15): higher throughput than to_thread, and no loop stall over 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
import redis

from analytics_sdk import Analytics

DAY = date(2026, 11, 25)


def fill(client: Analytics) -> None:
    """A day of counts in every tier: sink (most), store live and claimed, buffer."""
    start = datetime(2026, 11, 25, tzinfo=timezone.utc)
    for i in range(2_000):
        client.track(
            "page_view",
            user_id=f"u{i % 300}",
            properties={"path": f"/p{i % 20}"},
            timestamp=start + timedelta(minutes=i % 1440),
        )
    client.flush()
    for i in range(200):
        client.track("page_view", properties={"path": f"/p{i % 20}"}, timestamp=start)
    client.scheduler.push()
    client.store.claim()
    for _ in range(100):
        client.track("page_view", properties={"path": "/p1"}, timestamp=start)
    client.scheduler.push()
    client.track("page_view", timestamp=start)


async def lagged(
    queries: Callable[[], Awaitable[list[Any]]],
) -> tuple[list[Any], float, float, float]:
    """Run ``queries()`` while a ticker measures the loop; return the answers, seconds taken,
    and the longest and 99th-percentile lag (seconds) of the ticker's wake-ups."""
    done = False
    lags: list[float] = []

    async def ticker() -> None:
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - before - 0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    lags.clear()
    started = time.perf_counter()
    answers = await queries()
    elapsed = time.perf_counter() - started
    done = True
    await task
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)] if lags else 0.0
    return answers, elapsed, max(lags, default=0.0), p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    tag = f"bench_async_{uuid.uuid4().hex[:8]}"
    client = Analytics(
        store=f"{args.redis}?prefix={tag}&shards=4",
        sink=f"{args.postgres}?schema={tag}",
        background=False,
    )
    try:
        fill(client)
        expected = client.count("page_view", day=DAY)

        async def run() -> dict[str, list[tuple[float, float, float]]]:
            ways: dict[str, Callable[[], Awaitable[int]]] = {
                "async acount()": lambda: client.acount("page_view", day=DAY),
                "to_thread(count)": lambda: asyncio.to_thread(client.count, "page_view", day=DAY),
            }
            for way in ways.values():  # warm up: connections open, statements prepared
                await asyncio.gather(*(way() for _ in range(8)))
            out: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
            for _ in range(args.rounds):
                for name, way in ways.items():

                    async def batch(way: Callable[[], Awaitable[int]] = way) -> list[Any]:
                        return await asyncio.gather(*(way() for _ in range(args.concurrency)))

                    answers, elapsed, worst, p99 = await lagged(batch)
                    assert set(answers) == {expected}, (name, set(answers), expected)
                    out[name].append((args.concurrency / elapsed, worst, p99))
            await client.aclose_connections()
            return out

        results = asyncio.run(run())
    finally:
        client.shutdown()
        redis.Redis.from_url(args.redis).delete(*redis.Redis.from_url(args.redis).keys(f"{{{tag}*"))
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')

    print(
        f"{args.concurrency} concurrent count() on one event loop, Redis + PostgreSQL, "
        f"{args.rounds} rounds (median; lag: the worst round's)"
    )
    rates = {}
    for name, rounds in results.items():
        rate = statistics.median(r for r, _, _ in rounds)
        worst = max(w for _, w, _ in rounds)
        p99 = max(p for _, _, p in rounds)
        rates[name] = rate
        print(
            f"  {name:18} {rate:8,.0f} queries/s   loop lag max {worst * 1000:6.1f} ms, "
            f"p99 {p99 * 1000:5.1f} ms"
        )
    ratio = rates["async acount()"] / rates["to_thread(count)"]
    print(f"  ratio async / to_thread: {ratio:.2f}x")


if __name__ == "__main__":
    main()
