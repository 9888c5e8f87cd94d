"""Async queries on one event loop, next to the sync ones through ``asyncio.to_thread``.

Against real Redis and PostgreSQL, on the same data in the same run: ``--concurrency``
(default 200) ``count()`` calls at once on one event loop, each way:

- ``await client.acount(...)`` (the async API: asyncio drivers, no thread);
- ``await asyncio.to_thread(client.count, ...)`` (the sync API on the default thread pool).

Prints queries/s of each and their ratio, and the event loop's lag while the queries run
(a ticker sleeping 1 ms records how late it wakes: the longest and the 99th percentile).
Beside the longest it prints how much of it the loop's thread was running (its CPU time):
the rest it waited to be scheduled (for a CPU, on a machine that also runs the servers; or
for the GIL, in the ``to_thread`` way).
Both ways read through pools of the same size (the URL's ``pool_max``, Redis' default pool).

The interpreter's full garbage collections stop the loop whichever way the queries run, for
as long as they take to walk every object in the process (the drivers' modules alone are
about 50,000: 7 to 25 ms on a small machine). The benchmark freezes what exists after its
warm-up (``gc.freeze()``, as a latency-minded service does after start-up; see
docs/async.md), so the lag it reports is the queries'; ``--no-freeze`` leaves the collector
as it is. It prints the full collections each way saw and the longest.

    python benchmarks/bench_async.py [--redis redis://127.0.0.1:6379/0]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--concurrency 200]
        [--rounds 5] [--no-freeze]

Target (issue #15): higher throughput than to_thread, and no loop stall over 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any, NamedTuple

import psycopg
import redis

from analytics_sdk import Analytics
from analytics_sdk.backends.base import Batch

DAY = date(2026, 11, 25)


def fill(client: Analytics, claimed: list[Batch]) -> None:
    """A day of counts in every tier: sink (most), store live and claimed (the claims
    appended to ``claimed``), buffer."""
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
    claimed.extend(client.store.claim())  # claimed, not applied: flushed by the teardown
    for _ in range(100):
        client.track("page_view", properties={"path": "/p1"}, timestamp=start)
    client.scheduler.push()
    client.track("page_view", timestamp=start)


class FullCollections:
    """The interpreter's full (generation 2) garbage collections while it is entered: how
    many, and the longest (seconds)."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0
        self._started = 0.0

    def _note(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.longest = max(self.longest, time.perf_counter() - self._started)

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._note)


async def lagged(
    queries: Callable[[], Awaitable[list[Any]]],
) -> tuple[list[Any], float, Lag, float]:
    """Run ``queries()`` while a ticker measures the loop; return the answers, seconds taken,
    the longest lag of the ticker's wake-ups and their 99th percentile (seconds)."""
    done = False
    lags: list[Lag] = []

    async def ticker() -> None:
        while not done:
            before, ran = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            lags.append(Lag(time.perf_counter() - before - 0.001, time.thread_time() - ran - 0.001))

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    lags.clear()
    started = time.perf_counter()
    answers = await queries()
    elapsed = time.perf_counter() - started
    done = True
    await task
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)].late if lags else 0.0
    return answers, elapsed, max(lags, default=Lag(0.0, 0.0)), p99


class Lag(NamedTuple):
    """How late the ticker woke (seconds), and how much of that the loop's thread spent
    running (its CPU time): the rest it waited for a CPU (other processes, the servers on
    a small machine) or, in the ``to_thread`` way, for the GIL."""

    late: float
    ran: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--no-freeze", action="store_true", help="leave the garbage collector as it is"
    )
    args = parser.parse_args()

    tag = f"bench_async_{uuid.uuid4().hex[:8]}"
    claimed: list[Batch] = []
    client = Analytics(
        store=f"{args.redis}?prefix={tag}&shards=4",
        sink=f"{args.postgres}?schema={tag}",
        background=False,
    )
    try:
        fill(client, claimed)
        expected = client.count("page_view", day=DAY)

        collections: dict[str, FullCollections] = {}

        async def run() -> dict[str, list[tuple[float, Lag, float]]]:
            ways: dict[str, Callable[[], Awaitable[int]]] = {
                "async acount()": lambda: client.acount("page_view", day=DAY),
                "to_thread(count)": lambda: asyncio.to_thread(client.count, "page_view", day=DAY),
            }
            for way in ways.values():  # warm up: connections open, statements prepared
                await asyncio.gather(*(way() for _ in range(8)))
            if not args.no_freeze:
                gc.collect()
                gc.freeze()
            out: dict[str, list[tuple[float, Lag, float]]] = {name: [] for name in ways}
            for name in ways:
                collections[name] = FullCollections()
            for _ in range(args.rounds):
                for name, way in ways.items():

                    async def batch(way: Callable[[], Awaitable[int]] = way) -> list[Any]:
                        return await asyncio.gather(*(way() for _ in range(args.concurrency)))

                    with collections[name]:
                        answers, elapsed, worst, p99 = await lagged(batch)
                    assert set(answers) == {expected}, (name, set(answers), expected)
                    out[name].append((args.concurrency / elapsed, worst, p99))
            await client.aclose_connections()
            return out

        results = asyncio.run(run())
    finally:
        for batch in claimed:  # as a flusher would after the claim's lease
            client.sink.apply(batch)
            client.store.ack(batch.id)
        client.shutdown()
        redis.Redis.from_url(args.redis).delete(*redis.Redis.from_url(args.redis).keys(f"{{{tag}*"))
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{tag}" CASCADE')

    print(
        f"{args.concurrency} concurrent count() on one event loop, Redis + PostgreSQL, "
        f"{args.rounds} rounds (median; lag: the worst round's; garbage collector "
        f"{'as it is' if args.no_freeze else 'frozen after warm-up'})"
    )
    rates = {}
    for name, rounds in results.items():
        rate = statistics.median(r for r, _, _ in rounds)
        worst = max((w for _, w, _ in rounds), key=lambda lag: lag.late)
        p99 = max(p for _, _, p in rounds)
        rates[name] = rate
        full = collections[name]
        print(
            f"  {name:18} {rate:8,.0f} queries/s   loop lag max {worst.late * 1000:6.1f} ms "
            f"(running {max(worst.ran, 0.0) * 1000:.1f}), p99 {p99 * 1000:5.1f} ms   "
            f"full GC {full.count}, longest "
            f"{full.longest * 1000:.1f} ms"
        )
    ratio = rates["async acount()"] / rates["to_thread(count)"]
    print(f"  ratio async / to_thread: {ratio:.2f}x")


if __name__ == "__main__":
    main()
