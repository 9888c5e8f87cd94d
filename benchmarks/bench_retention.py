"""Retention at production scale: pruning a month of hourly rows by dropping its partition
(the layout of migration 4) next to deleting its rows (the layout before it).

Generates, inside PostgreSQL, the same hourly rows in two schemas: one migrated to the
latest version (hourly counts partitioned by UTC month), one stopped at migration 3 (one
table). The rows cover DAYS days from 2026-04-01 (120 by default: April to July) with
EVENTS x SETS rows an hour (20 x 174: 10.0M rows). Then each schema's sink prunes with
``hourly_retention_days=30`` on 2026-05-31, so the cutoff is 2026-05-01 and the 30 days of
April go (2.5M rows): the partitioned schema drops April's partition, the other deletes
April's rows. Prints both times and their ratio, and what the delete leaves to VACUUM.

    python benchmarks/bench_retention.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--small] [--days 120] [--events 20] [--sets 174]

``--small`` is a quick run (5 x 70 rows an hour: 1.0M rows).
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import date, datetime, timezone

import psycopg

from analytics_sdk.backends.postgres import PostgresSink, create_partitions, migrate

FIRST_DAY = date(2026, 4, 1)
PRUNED_AT = datetime(2026, 5, 31, tzinfo=timezone.utc)  # 30 days of retention: April goes


def fill(url: str, schema: str, args: argparse.Namespace, *, partitioned: bool) -> float:
    """Create the schema (partitioned or not) and its hourly rows; return the seconds."""
    with psycopg.connect(url) as conn:
        migrate(conn, schema, until=None if partitioned else 3)
        if partitioned:
            months = [date(2026, m, 1) for m in range(4, 4 + (args.days + 30) // 30 + 1)]
            create_partitions(conn, schema, "hourly_counts", months)
        conn.commit()
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET work_mem = '256MB'")
        conn.execute(
            f'INSERT INTO "{schema}".hourly_counts (event, hour, props_hash, count) '
            "SELECT 'event_' || e, %s::timestamptz + h * interval '1 hour', "
            "md5('set' || n)::uuid, 1 + (e + h + n) %% 9 "
            "FROM generate_series(0, %s - 1) AS e, generate_series(0, %s * 24 - 1) AS h, "
            "generate_series(0, %s - 1) AS n ORDER BY 1, 2, 3",
            [datetime(2026, 4, 1, tzinfo=timezone.utc), args.events, args.days, args.sets],
        )
        conn.execute(f'VACUUM ANALYZE "{schema}".hourly_counts')
    return time.perf_counter() - started


def prune(url: str, schema: str) -> tuple[float, dict[str, int]]:
    """Prune the schema's hourly rows past 30 days on 2026-05-31; return seconds, result."""
    sink = PostgresSink(
        url,
        schema=schema,
        auto_migrate=False,  # the unpartitioned schema stays at migration 3
        hourly_retention_days=30,
        clock=PRUNED_AT.timestamp,
    )
    try:
        sink.check()  # the pool is open: the figure is the prune alone
        started = time.perf_counter()
        result = sink.prune()
        return time.perf_counter() - started, result
    finally:
        sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--small", action="store_true", help="a quick run on 1M rows")
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--events", type=int)
    parser.add_argument("--sets", type=int)
    args = parser.parse_args()
    if args.days < 31:
        parser.error("--days must be at least 31 (April and more)")
    args.events = args.events or (5 if args.small else 20)
    args.sets = args.sets or (70 if args.small else 174)
    rows = args.days * 24 * args.events * args.sets
    tag = uuid.uuid4().hex[:8]
    partitioned, flat = f"bench_ret_part_{tag}", f"bench_ret_flat_{tag}"
    try:
        for schema, is_partitioned in ((partitioned, True), (flat, False)):
            seconds = fill(args.url, schema, args, partitioned=is_partitioned)
            layout = "monthly partitions" if is_partitioned else "one table"
            print(f"{schema}: {rows:,} hourly rows ({layout}) generated in {seconds:.0f} s")
        drop_s, dropped = prune(args.url, partitioned)
        delete_s, deleted = prune(args.url, flat)
        with psycopg.connect(args.url, autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute(f'VACUUM "{flat}".hourly_counts')
            vacuum_s = time.perf_counter() - started
        print(
            f"\npruning 30 days (April) out of {rows:,} hourly rows, retention 30 days on "
            f"{PRUNED_AT.date()}:\n"
            f"  drop the month's partition: {drop_s * 1000:10.1f} ms  "
            f"({dropped['hourly_counts partitions']} partition dropped, "
            f"{dropped['hourly_counts']:,} rows deleted)\n"
            f"  delete the month's rows:    {delete_s * 1000:10.1f} ms  "
            f"({deleted['hourly_counts']:,} rows deleted)\n"
            f"  ratio delete / drop:        {delete_s / drop_s:10.0f}x\n"
            f"  then VACUUM of the deleted rows' table: {vacuum_s * 1000:.0f} ms "
            "(a dropped partition leaves nothing to vacuum)"
        )
    finally:
        with psycopg.connect(args.url, autocommit=True) as conn:
            for schema in (partitioned, flat):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
