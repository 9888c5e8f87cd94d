"""Memory under cardinality: 2M distinct users, then 1M distinct event names, each phase in a
fresh process against real Redis and a sink (PostgreSQL, or memory).

Each phase tracks as fast as one thread can (a burst), flushes everything into the sink, and
prints its RSS at the start, at the peak (VmHWM) and after the flush, and the counts lost:

- users: ``track("signup", user_id=f"user{n}")`` for 2M users; lost = tracked - the day's
  count, and per-user counts lost = users - ``unique_users()``;
- events: ``track(f"event_{n}")`` for 1M names; lost = tracked - every event's total in the
  store and sink (names past ``max_event_names`` are counted under ``"(overflow)"``).

    python benchmarks/bench_memory.py [--users 2000000] [--events 1000000]
        [--redis redis://127.0.0.1:6379/0] [--sink postgresql://postgres@127.0.0.1:5432/test]

Targets (issue 9): 0 lost, RSS after the flush within 50 MiB of the start.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any

MIB = 1024 * 1024


def rss(field: str) -> int:
    """Return ``VmRSS`` or ``VmHWM`` (peak) of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_phase(phase: str, n: int, redis_url: str, sink_url: str) -> dict[str, Any]:
    """Track ``n`` distinct users or event names, flush, and measure; in this process."""
    import redis

    from analytics_sdk import Analytics
    from analytics_sdk.aggregator import OVERFLOW_EVENT

    prefix = schema = f"benchmem_{uuid.uuid4().hex[:8]}"
    store = f"{redis_url}?prefix={prefix}&shards=8"
    sink = sink_url if sink_url == "memory://" else f"{sink_url}?schema={schema}"
    client = Analytics(store=store, sink=sink)
    try:
        gc.collect()
        start = rss("VmRSS")
        started = time.perf_counter()
        track = client.track
        if phase == "users":
            for i in range(n):
                track("signup", user_id=f"user{i}")
        else:
            for i in range(n):
                track(f"event_{i}")
        tracked = time.perf_counter() - started
        result = client.flush(timeout=600)
        first_error = result.error
        if not result.complete:  # as the scheduler's next flush would: go on where it stopped
            result = client.flush(timeout=600)
        flushed = time.perf_counter() - started
        stats = client.stats()
        gc.collect()
        after = rss("VmRSS")
        peak = rss("VmHWM")
        day = datetime.fromtimestamp(time.time(), timezone.utc).date()
        if phase == "users":
            total = client.count("signup", day=day)
            users = client.unique_users("signup", day, day)
            lost = {"counts": n - total, "per-user counts": n - users}
        else:
            totals = client._query.fleet_totals()
            lost = {"counts": n - sum(totals.values())}
            lost["event names kept"] = len(totals) - (OVERFLOW_EVENT in totals)
            lost["counts under (overflow)"] = totals.get(OVERFLOW_EVENT, 0)
        return {
            "phase": phase,
            "n": n,
            "complete": result.complete,
            "first_flush_error": first_error,
            "track_s": round(tracked, 1),
            "track_and_flush_s": round(flushed, 1),
            "start_mib": round(start / MIB, 1),
            "peak_mib": round(peak / MIB, 1),
            "after_flush_mib": round(after / MIB, 1),
            "after_minus_start_mib": round((after - start) / MIB, 1),
            "dropped": stats["dropped"],
            "pushes": stats["pushes_ok"],
            "lost": lost,
        }
    finally:
        client.shutdown(timeout=60)
        r = redis.Redis.from_url(redis_url)
        for key in r.scan_iter(match=f"{{{prefix}[:}}]*", count=1000):
            r.delete(key)
        if sink_url != "memory://":
            import psycopg

            with psycopg.connect(sink_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2_000_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--sink", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--phase", choices=["users", "events"], help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=["users", "events"], help="run one phase")
    args = parser.parse_args()

    if args.phase:  # the child: one phase, a JSON line on stdout
        n = args.users if args.phase == "users" else args.events
        print(json.dumps(run_phase(args.phase, n, args.redis, args.sink)))
        return

    print(f"python {sys.version.split()[0]}, store {args.redis}, sink {args.sink}")
    failed = False
    for phase in [args.only] if args.only else ["users", "events"]:
        child = subprocess.run(
            [sys.executable, __file__, "--phase", phase, *sys.argv[1:]],
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            print(child.stderr, file=sys.stderr)
            raise SystemExit(f"phase {phase} failed")
        r = json.loads(child.stdout.strip().splitlines()[-1])
        lost = r["lost"]
        ok = r["complete"] and lost["counts"] == 0 and lost.get("per-user counts", 0) == 0
        ok = ok and r["after_minus_start_mib"] <= 50
        failed |= not ok
        print(
            f"{phase}: {r['n']:,} distinct, tracked in {r['track_s']} s, flushed by "
            f"{r['track_and_flush_s']} s ({r['pushes']} pushes), complete={r['complete']}\n"
            f"  RSS start {r['start_mib']} MiB, peak {r['peak_mib']} MiB, after flush "
            f"{r['after_flush_mib']} MiB ({r['after_minus_start_mib']:+} MiB; target <= 50)\n"
            f"  lost: {lost}, dropped (stats): {r['dropped']}"
        )
        if r["first_flush_error"]:
            print(f"  the first flush stopped early ({r['first_flush_error']}); a second finished")
    print("targets met" if not failed else "TARGETS NOT MET")


if __name__ == "__main__":
    main()
