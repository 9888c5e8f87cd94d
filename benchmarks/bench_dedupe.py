"""The cost of a dedupe key: track() with a key next to track() without one, same run.

Prints, median over repeats:
- the call itself (memory backends, nothing pushed during the timing): ns per track();
- the push into a real Redis, per call: N calls without a key (aggregated into a few
  counters) and N calls each with its own key (one mark and one count each), pushed by
  ``flush()``; and N calls repeating keys already counted (marks read, nothing added).

    python benchmarks/bench_dedupe.py [--url redis://127.0.0.1:6379/0] [--calls 10000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import uuid

import redis

from analytics_sdk import Analytics


def call_ns(client: Analytics, number: int, repeat: int, keyed: bool) -> float:
    """Median ns per call of ``number`` calls, each with a new user id (``keyed=False``:
    a new per-user counter each) or a new dedupe key."""
    track = client.track
    runs = []
    for _ in range(repeat):
        values = [f"webhook-{uuid.uuid4().hex}" for _ in range(number)]
        started = time.perf_counter()
        if keyed:
            for value in values:
                track("x", dedupe_key=value)
        else:
            for value in values:
                track("x", user_id=value)
        runs.append(time.perf_counter() - started)
        client.aggregator._take({})  # drop what was buffered: the next run starts empty
    return statistics.median(runs) / number * 1e9


def push_us(url: str, calls: int, repeat: int, mode: str) -> float:
    """Median µs per call of pushing ``calls`` tracked calls into Redis."""
    runs = []
    for _ in range(repeat):
        prefix = f"bench_dedupe_{uuid.uuid4().hex[:8]}"
        client = Analytics(
            store=f"{url}?prefix={prefix}", background=False, flusher=False, spool_dir=None
        )
        keys = [f"evt-{i}" for i in range(calls)]
        if mode == "repeated":  # counted once already: the timed push finds every key marked
            for key in keys:
                client.track("webhook", dedupe_key=key)
            client.flush()
        for i, key in enumerate(keys):
            if mode == "plain":
                client.track("webhook", properties={"kind": str(i % 10)})
            else:
                client.track("webhook", properties={"kind": str(i % 10)}, dedupe_key=key)
        started = time.perf_counter()
        assert client.flush().complete
        runs.append(time.perf_counter() - started)
        client.shutdown()
        r = redis.Redis.from_url(url)
        names = list(r.scan_iter(match=f"{{{prefix}*", count=1000))
        for i in range(0, len(names), 1000):
            r.delete(*names[i : i + 1000])
        r.close()
    return statistics.median(runs) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--number", type=int, default=100_000, help="calls per timing run")
    parser.add_argument("--calls", type=int, default=10_000, help="calls per push")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    client = Analytics(background=False, spool_dir=None)
    plain = call_ns(client, args.number, args.repeat, keyed=False)
    keyed = call_ns(client, args.number, args.repeat, keyed=True)
    client.shutdown()
    print(f"python {platform.python_version()} on {platform.machine()}, median of {args.repeat}")
    print("track() call (memory backends, nothing pushed)")
    print(f'  track("x", user_id=<new user>)      {plain:>9.0f} ns')
    print(f'  track("x", dedupe_key=<new key>)    {keyed:>9.0f} ns   ({keyed / plain:.2f}x)')
    print(f"push into Redis ({args.calls:,} calls per push), per call")
    results = {
        m: push_us(args.url, args.calls, args.repeat, m) for m in ("plain", "new", "repeated")
    }
    print(f"  without a key (aggregated)         {results['plain']:>9.2f} us")
    print(f"  each with a new key (mark + count) {results['new']:>9.2f} us")
    print(f"  each with a key already counted    {results['repeated']:>9.2f} us")


if __name__ == "__main__":
    main()
