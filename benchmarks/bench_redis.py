"""End to end into Redis, next to the seed design's one-pipeline-per-event track_event.

Prints, for the same Redis in the same run:
- events/s with many threads calling track() (buffered, pushed every second) until every
  count is in Redis, and the same for the seed's track_event (one pipeline per event:
  INCR+EXPIRE for the daily, hourly and per-user keys, and an SADD); the ratio;
- push latency for 10,000 distinct keys (median of repeats);
- bytes per counter (MEMORY USAGE of the hashes / fields), next to the seed's one string
  key per counter.

    python benchmarks/bench_redis.py [--url redis://127.0.0.1:6379/0] [--threads 8]

Target (DESIGN.md): >= 100x the seed's events/s.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from datetime import datetime, timezone

import redis

from analytics_sdk import Analytics
from analytics_sdk.backends import Delta, Push
from analytics_sdk.backends.redis import RedisCounterStore

EVENTS = ["page_view", "signup", "feature_used", "checkout"]


def seed_track_event(r: redis.Redis, event: str, user_id: str, now: datetime) -> None:
    """The seed's track_event, synchronously: one pipeline round trip per event."""
    ttl = 7 * 24 * 3600
    pipe = r.pipeline()
    daily = f"bench_seed:counter:{event}:{now:%Y-%m-%d}"
    hourly = f"bench_seed:counter:{event}:{now:%Y-%m-%d:%H}"
    user = f"bench_seed:user:{user_id}:{event}:{now:%Y-%m-%d}"
    for key in (daily, hourly, user):
        pipe.incr(key)
        pipe.expire(key, ttl)
    pipe.sadd("bench_seed:pending_flush", f"{event}:{now:%Y-%m-%d}")
    pipe.execute()


def run_threads(threads: int, per_thread: int, body) -> float:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(threads + 1)

    def work(n: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            body(n, i)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    return started


def bench_end_to_end(url: str, threads: int, events: int) -> tuple[float, float]:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    client = Analytics(store=f"{url}?prefix={prefix}", flusher=False)
    per_thread = events // threads

    def body(n: int, i: int) -> None:
        client.track(EVENTS[i % 4], user_id=f"u{(n * 7919 + i) % 500}")

    started = run_threads(threads, per_thread, body)
    result = client.flush(timeout=60)  # until every count is in Redis
    elapsed = time.perf_counter() - started
    assert result.complete, result
    store = client.store
    assert isinstance(store, RedisCounterStore)
    pending = sum(sum(store.pending_hourly(e, None, None, ()).live.values()) for e in EVENTS)
    assert pending == per_thread * threads, (pending, per_thread * threads)
    _cleanup(store._redis, f"{{{prefix}:*")
    client.shutdown()
    return per_thread * threads / elapsed, elapsed


def bench_seed(url: str, threads: int, events: int) -> float:
    r = redis.Redis.from_url(url)
    per_thread = events // threads
    now = datetime.now(timezone.utc)

    def body(n: int, i: int) -> None:
        seed_track_event(r, EVENTS[i % 4], f"u{(n * 7919 + i) % 500}", now)

    started = run_threads(threads, per_thread, body)
    elapsed = time.perf_counter() - started
    _cleanup(r, "bench_seed:*")
    return per_thread * threads / elapsed


def bench_push_latency(url: str, keys: int, repeat: int) -> float:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    store = RedisCounterStore.from_url(f"{url}?prefix={prefix}")
    hour = int(time.time() // 3600)
    delta = Delta(hourly={(f"event{n % 50}", (("k", str(n)),), hour): 1 for n in range(keys)})
    timings = []
    for sequence in range(1, repeat + 1):
        started = time.perf_counter()
        store.push(Push(producer="bench", sequence=sequence, delta=delta))
        timings.append(time.perf_counter() - started)
    _cleanup(store._redis, f"{{{prefix}:*")
    return statistics.median(timings)


def bench_bytes_per_counter(url: str, events: int, paths: int, hours: int) -> tuple[float, float]:
    """Return bytes per counter in our hashes and in the seed's one string key per counter."""
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    store = RedisCounterStore.from_url(f"{url}?prefix={prefix}")
    r = store._redis
    hour = int(time.time() // 3600)
    keys_wanted = [(e, p, h) for e in range(events) for p in range(paths) for h in range(hours)]
    delta = Delta(
        hourly={(f"event_{e}", (("path", f"/page/{p}"),), hour - h): 1 for e, p, h in keys_wanted}
    )
    store.push(Push(producer="bench", sequence=1, delta=delta))
    hashes = list(r.scan_iter(match=f"{{{prefix}:*:live:*", count=1000))
    fields = sum(r.hlen(k) for k in hashes)
    assert fields == len(keys_wanted), (fields, len(keys_wanted))
    ours = sum(r.memory_usage(k, samples=0) or 0 for k in hashes) / fields
    _cleanup(r, f"{{{prefix}:*")
    seed_keys = [
        f"bench_seed:counter:event_{e}:/page/{p}:2026-11-26:{h:02d}" for e, p, h in keys_wanted
    ]
    pipe = r.pipeline()
    for key in seed_keys:
        pipe.set(key, 1, ex=3600)
    pipe.execute()
    seed = sum(r.memory_usage(k, samples=0) or 0 for k in seed_keys) / len(seed_keys)
    r.delete(*seed_keys)
    return ours, seed


def _cleanup(r: redis.Redis, pattern: str) -> None:
    keys = list(r.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--events", type=int, default=400_000, help="events for the SDK run")
    parser.add_argument("--seed-events", type=int, default=20_000, help="events for the seed run")
    args = parser.parse_args()

    ours, elapsed = bench_end_to_end(args.url, args.threads, args.events)
    seed = bench_seed(args.url, args.threads, args.seed_events)
    latency = bench_push_latency(args.url, 10_000, 7)
    small = bench_bytes_per_counter(args.url, 20, 50, 2)  # one flush window: <= 128 fields a hash
    large = bench_bytes_per_counter(args.url, 20, 50, 24)  # a day unflushed: 1,200 fields a hash
    print(f"end to end into Redis, {args.threads} threads, events with a user id")
    print(
        f"  analytics_sdk track() -> Redis   {ours:>12,.0f} events/s  ({args.events:,} events, {elapsed:.2f} s incl. final push)"
    )
    print(
        f"  seed track_event (pipeline/event) {seed:>12,.0f} events/s  ({args.seed_events:,} events)"
    )
    print(f"  ratio                             {ours / seed:>12,.0f}x  (target >= 100x)")
    print(f"push of 10,000 distinct keys        {latency * 1000:>12.1f} ms median")
    for label, (ours_bytes, seed_bytes) in (
        ("100 fields/hash", small),
        ("1,200 fields/hash", large),
    ):
        print(
            f"bytes per counter, {label:<17}{ours_bytes:>9.1f} B in hashes; seed's string keys {seed_bytes:.1f} B"
        )


if __name__ == "__main__":
    main()
