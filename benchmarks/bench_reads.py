"""What a consistent read costs: count() against Redis + PostgreSQL, idle and while flushing.

Prints the median latency of ``client.count(event)`` with counts in all three tiers (sink,
store, buffer), first with nothing moving, then while another thread tracks and flushes
without pause; and how often a read started again (a batch committed under it) or read
behind the sink's fence.

    python benchmarks/bench_reads.py [--redis redis://127.0.0.1:6379/0]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--queries 2000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

import psycopg
import redis

from analytics_sdk import Analytics


def median_ms(client: Analytics, queries: int) -> float:
    """Return the median latency of ``queries`` calls of count(), in milliseconds."""
    times = []
    for _ in range(queries):
        started = time.perf_counter()
        client.count("e")
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    client = Analytics(
        store=f"{args.redis}?prefix={name}&shards=3",
        sink=f"{args.postgres}?schema={name}",
        background=False,
    )
    try:
        for i in range(200):
            client.track("e", user_id=f"u{i % 20}")
        client.flush()  # the sink
        for _ in range(50):
            client.track("e")
        client.scheduler.push()  # the store
        client.track("e")  # the buffer
        median_ms(client, 50)  # warm up connections
        idle = median_ms(client, args.queries)
        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set():
                client.track("e")
                n += 1
                if n % 3 == 0:
                    client.flush()

        writer = threading.Thread(target=write)
        writer.start()
        busy = median_ms(client, args.queries)
        stop.set()
        writer.join()
        engine = client._query
        print(f"count(), nothing moving:          median {idle:.2f} ms")
        print(f"count(), a thread flushing:       median {busy:.2f} ms")
        print(
            f"reads started again: {engine.retries} in {2 * args.queries + 50} queries; "
            f"read behind the fence: {engine.fenced}"
        )
    finally:
        client.shutdown()
        r = redis.Redis.from_url(args.redis)
        keys = list(r.scan_iter(match=f"{{{name}[:}}]*"))
        if keys:
            r.delete(*keys)
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


if __name__ == "__main__":
    main()
