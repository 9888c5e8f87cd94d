"""Flush into PostgreSQL: the SDK's COPY + sorted upsert, next to psycopg executemany.

Prints, against the same PostgreSQL in the same run:
- rows/s applying a batch of N distinct hourly counters, first as new rows, then as updates
  of the same rows (the sink's apply: ledger, COPY to a temp table, INSERT ... SELECT ...
  ON CONFLICT for hourly and daily tables), and the same upserts done row by row with
  psycopg's executemany; the ratios;
- the latency of a year of hourly data read back as a daily series (client.series).

    python benchmarks/bench_flush.py [--url postgresql://postgres@127.0.0.1:5432/test] [--rows 100000]

Target (DESIGN.md): >= 100,000 rows/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import date

import psycopg

from analytics_sdk import Analytics
from analytics_sdk.backends import Batch, Delta
from analytics_sdk.backends.postgres import PostgresSink, create_partitions, month_of
from analytics_sdk.keys import day_of, encode_properties


def counters(rows: int, hour0: int) -> dict:  # type: ignore[type-arg]
    """``rows`` distinct hourly keys: 100 events x property sets x 24 hours."""
    return {
        (f"event_{n % 100}", (("path", f"/p/{n // 2400}"),), hour0 + (n // 100) % 24): 1 + n % 7
        for n in range(rows)
    }


def bench_sdk(url: str, rows: int) -> tuple[float, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    sink = PostgresSink.from_url(f"{url}?schema={schema}")
    sink.migrate()
    hourly = counters(rows, 500_000)
    timings = []
    for _ in range(2):  # new rows, then updates of the same rows
        batch = Batch(id=uuid.uuid4().hex, delta=Delta(hourly=hourly), claimed_at=0.0)
        started = time.perf_counter()
        assert sink.apply(batch)
        timings.append(time.perf_counter() - started)
    total = sum(sink.hourly_counts("event_0", None, None, ()).values())
    assert total == 2 * sum(v for (e, _, _), v in hourly.items() if e == "event_0")
    sink.close()
    _drop(url, schema)
    return rows / timings[0], rows / timings[1]


def bench_executemany(url: str, rows: int) -> tuple[float, float]:
    """The same upserts, one statement per row (psycopg pipelines executemany)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    PostgresSink.from_url(f"{url}?schema={schema}").migrate()
    hourly = counters(rows, 500_000)
    with psycopg.connect(url) as conn:  # the month's partition, as the sink's apply makes it
        create_partitions(conn, schema, "hourly_counts", [month_of(500_000 // 24)])
    params = [
        (event, hour * 3600, encode_properties(props), value)
        for (event, props, hour), value in sorted(hourly.items())
    ]
    statement = (
        f'INSERT INTO "{schema}".hourly_counts AS t (event, hour, props_hash, count) '
        "VALUES (%s, to_timestamp(%s), md5(%s)::uuid, %s) "
        "ON CONFLICT (event, hour, props_hash) DO UPDATE SET count = t.count + EXCLUDED.count"
    )
    timings = []
    with psycopg.connect(url) as conn:
        for _ in range(2):
            started = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(statement, params)
            timings.append(time.perf_counter() - started)
    _drop(url, schema)
    return rows / timings[0], rows / timings[1]


def bench_year_query(url: str, repeat: int) -> tuple[float, int]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    sink_url = f"{url}?schema={schema}"
    sink = PostgresSink.from_url(sink_url)
    first_hour = day_of(date(2025, 1, 1)) * 24
    hourly = {
        ("page_view", (("plan", plan),), first_hour + h): 1 + h % 13
        for h in range(365 * 24)
        for plan in ("free", "pro", "team")
    }
    sink.apply(Batch(id="year", delta=Delta(hourly=hourly), claimed_at=0.0))
    sink.close()
    timings = []
    with Analytics(sink=sink_url, background=False, flusher=False) as client:
        for _ in range(repeat):
            started = time.perf_counter()
            series = client.series(
                "page_view", date(2025, 1, 1), date(2025, 12, 31), granularity="day"
            )
            timings.append(time.perf_counter() - started)
    assert len(series) == 365
    assert sum(n for _, n in series) == sum(hourly.values())
    _drop(url, schema)
    return statistics.median(timings), len(hourly)


def _drop(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    new, updated = bench_sdk(args.url, args.rows)
    many_new, many_updated = bench_executemany(args.url, args.rows)
    latency, year_rows = bench_year_query(args.url, 7)
    print(f"apply {args.rows:,} distinct hourly counters (plus their daily rollup)")
    print(f"  analytics_sdk COPY + upsert, new rows      {new:>12,.0f} rows/s")
    print(f"  analytics_sdk COPY + upsert, updated rows  {updated:>12,.0f} rows/s")
    print(f"  psycopg executemany upsert, new rows       {many_new:>12,.0f} rows/s")
    print(f"  psycopg executemany upsert, updated rows   {many_updated:>12,.0f} rows/s")
    print(
        f"  ratio new / updated                        {new / many_new:>11.1f}x / {updated / many_updated:.1f}x"
    )
    print(
        f"  target >= 100,000 rows/s                   {'yes' if min(new, updated) >= 100_000 else 'NO'}"
    )
    print(
        f"a year of hourly data ({year_rows:,} rows) as a daily series: {latency * 1000:.1f} ms median"
    )


if __name__ == "__main__":
    main()
