"""A large backlog flushed in bounded batches: time and the flusher's peak memory.

Pushes a backlog of N per-user counters (one event, N users: the largest Redis hash a
backlog makes) into Redis without flushing, then runs a flusher in a fresh process with a
PostgreSQL ``statement_timeout`` and prints the backlog size, the flush time, batches, and
the flusher's peak RSS (``ru_maxrss`` of the child process), and checks the sink holds
every count exactly and the store nothing.

    python benchmarks/bench_batches.py [--counters 3000000] [--batch 50000] \\
        [--statement-timeout 5] [--redis redis://127.0.0.1:6379/0] \\
        [--postgres postgresql://postgres@127.0.0.1:5432/test]

Target (issue 8): 3M counters flush completely with statement_timeout=5 s, peak flusher RSS
under 200 MiB. ``--batch 3000000`` shows the one-batch behaviour it replaces.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg
import redis

from analytics_sdk import Analytics
from analytics_sdk.backends import Delta, Push
from analytics_sdk.backends.redis import RedisCounterStore

DAY = 20_000
PUSH_SIZE = 50_000


def fill(store_url: str, counters: int) -> int:
    """Push ``counters`` distinct per-user counters (and one hourly counter per push)."""
    store = RedisCounterStore.from_url(store_url)
    total = 0
    for sequence, first in enumerate(range(0, counters, PUSH_SIZE)):
        users = {
            ("visit", f"user-{n}", DAY): 1 + n % 3
            for n in range(first, min(first + PUSH_SIZE, counters))
        }
        value = sum(users.values())
        total += value
        delta = Delta(hourly={("visit", (), DAY * 24): value}, users=users)
        store.push(Push(producer="bench", sequence=sequence, delta=delta))
    store.close()
    return total


def flusher(store_url: str, sink_url: str, batch: int) -> None:
    """The child: one flush of everything; prints a JSON line with its figures."""
    started = time.perf_counter()
    with Analytics(
        store=store_url, sink=sink_url, background=False, max_batch_keys=batch
    ) as client:
        store = client.store
        assert isinstance(store, RedisCounterStore)
        script, claims = store._lua_claim, []

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return script(*args, **kwargs)
            finally:
                claims.append(time.perf_counter() - began)

        store._lua_claim = timed
        # Flush as a worker would: a failed batch is retried by the next flush.
        errors: list[str] = []
        batches = flushed = 0
        while len(errors) < 10:
            result = client.flush(timeout=3600)
            batches += result.batches
            flushed += result.flushed
            if result.complete:
                break
            if result.error:
                errors.append(result.error)
        elapsed = time.perf_counter() - started
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        print(
            json.dumps(
                {
                    "seconds": elapsed,
                    "batches": batches,
                    "flushed": flushed,
                    "complete": result.complete,
                    "errors": errors,
                    "peak_rss_mib": rss_kib / 1024,
                    "longest_claim": max(claims, default=0.0),
                    "median_claim": statistics.median(claims) if claims else 0.0,
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counters", type=int, default=3_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--statement-timeout", type=float, default=5.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--child", nargs=3, metavar=("STORE", "SINK", "BATCH"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        flusher(args.child[0], args.child[1], int(args.child[2]))
        return
    prefix, schema = f"batches_{uuid.uuid4().hex[:8]}", f"batches_{uuid.uuid4().hex[:8]}"
    store_url = f"{args.redis}?prefix={prefix}&shards=1"
    sink_url = f"{args.postgres}?schema={schema}&statement_timeout={args.statement_timeout}"
    try:
        Analytics(sink=sink_url, background=False).sink.migrate()  # type: ignore[attr-defined]
        started = time.perf_counter()
        total = fill(store_url, args.counters)
        print(
            f"backlog: {args.counters:,} per-user counters ({total:,} counts) pushed in "
            f"{time.perf_counter() - started:.1f} s"
        )
        child = subprocess.run(
            [sys.executable, __file__, "--child", store_url, sink_url, str(args.batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        with psycopg.connect(args.postgres) as conn:
            row = conn.execute(
                f'SELECT count(*), coalesce(sum(count), 0) FROM "{schema}".user_daily_counts'
            ).fetchone()
        rows, in_sink = (int(row[0]), int(row[1])) if row else (0, 0)
        left = redis.Redis.from_url(args.redis).keys(f"{{{prefix}:0}}:*live*")
        print(f"max_batch_keys={args.batch:,}, statement_timeout={args.statement_timeout} s")
        print(
            f"flush: {figures['seconds']:.1f} s, {figures['batches']} batches, "
            f"{args.counters / figures['seconds']:,.0f} counters/s, "
            f"complete={figures['complete']}, {len(figures['errors'])} failed flushes retried"
            + (f" (first: {figures['errors'][0]})" if figures["errors"] else "")
        )
        print(f"flusher peak RSS: {figures['peak_rss_mib']:.0f} MiB")
        print(
            f"one CLAIM step (script + reply, seen by the client): median "
            f"{figures['median_claim'] * 1000:.0f} ms, longest {figures['longest_claim'] * 1000:.0f} ms"
        )
        print(
            f"sink: {rows:,} per-user rows, {in_sink:,} of {total:,} counts; "
            f"live hashes left in Redis: {len(left)}"
        )
    finally:
        client = redis.Redis.from_url(args.redis)
        keys = list(client.scan_iter(match=f"{{{prefix}[:}}]*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
