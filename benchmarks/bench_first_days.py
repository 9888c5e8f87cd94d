"""What keeping first days costs a flush: per-user batches applied with and without it.

Applies, into a fresh PostgreSQL schema, DAYS days of per-user counts for EVENTS events, one
batch per day and event of USERS users (half of them seen on earlier days, half new), then
one batch of late data (a day already applied, for users first seen after it); once by the
sink as it is (day bitmaps plus first-day and ever bitmaps, one transaction per batch), once
by the same sink with the first-day upkeep left out (the peer, measured in the same run).
Prints the median apply time per batch of each and their ratio.

    python benchmarks/bench_first_days.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--days 7] [--events 3] [--users 50000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from analytics_sdk.backends import Batch, Delta
from analytics_sdk.backends.postgres import PostgresSink

DAY0 = 20_800  # 2026-12-12, days since the epoch


def batches(days: int, events: int, users: int) -> Iterator[tuple[str, Batch]]:
    """Yield ``(kind, batch)``: a batch per day and event, then a late one."""
    step = users // 2  # day d: users d * step .. d * step + users - 1 (half new)
    for day in range(days):
        for event in range(events):
            delta = Delta(
                users={(f"e{event}", f"u{day * step + u}", DAY0 + day): 1 for u in range(users)}
            )
            yield "daily", Batch(id=uuid.uuid4().hex, delta=delta, claimed_at=time.time())
    late = {("e0", f"u{(days - 1) * step + u}", DAY0): 1 for u in range(users)}
    yield "late", Batch(id=uuid.uuid4().hex, delta=Delta(users=late), claimed_at=time.time())


@contextmanager
def sink(url: str, *, first_days: bool) -> Iterator[PostgresSink]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    made = PostgresSink.from_url(f"{url}?schema={schema}")
    if not first_days:
        made._add_first_days = lambda conn, added: None  # type: ignore[method-assign]
    try:
        made.migrate()
        yield made
    finally:
        made.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run(url: str, args: argparse.Namespace, *, first_days: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"daily": [], "late": []}
    with sink(url, first_days=first_days) as s:
        for kind, batch in batches(args.days, args.events, args.users):
            started = time.perf_counter()
            s.apply(batch)
            times[kind].append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--events", type=int, default=3)
    parser.add_argument("--users", type=int, default=50_000)
    args = parser.parse_args()
    peer = run(args.url, args, first_days=False)
    sdk = run(args.url, args, first_days=True)
    print(
        f"{args.days} days x {args.events} events, a batch of {args.users:,} per-user counters "
        "per day and event (half of them new users), then one batch of late data\n"
    )
    print(f"{'batch':<8} {'with first days ms':>20} {'without ms':>12} {'ratio':>7}")
    for kind in ("daily", "late"):
        mine, theirs = statistics.median(sdk[kind]) * 1e3, statistics.median(peer[kind]) * 1e3
        print(f"{kind:<8} {mine:>20.1f} {theirs:>12.1f} {mine / theirs:>6.2f}x")


if __name__ == "__main__":
    main()
