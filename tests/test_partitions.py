"""Monthly partitions of the hourly and per-user counts: migration 4 on a database holding
rows, partitions created as batches need them, retention dropping whole months."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, datetime, timezone

import psycopg
import pytest

from analytics_sdk.backends import Batch, Delta
from analytics_sdk.backends.postgres import PostgresSink, migrate, partitions
from analytics_sdk.errors import SinkError
from analytics_sdk.keys import HourKey, UserKey, day_of
from analytics_sdk.testing import ManualClock

from .utils import drop_schema, postgres_url_or_skip, unique_name

NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)


@pytest.fixture
def pg() -> Iterator[tuple[str, str]]:
    """A PostgreSQL URL and a schema of this test's own, dropped afterwards."""
    url = postgres_url_or_skip()
    schema = unique_name("parts")
    yield url, schema
    drop_schema(url, schema)


def _batch(
    batch_id: str, hourly: dict[HourKey, int] | None = None, users: dict[UserKey, int] | None = None
) -> Batch:
    return Batch(id=batch_id, delta=Delta(hourly=hourly or {}, users=users or {}), claimed_at=0.0)


def _months(url: str, schema: str, table: str) -> list[date]:
    with psycopg.connect(url) as conn:
        return sorted(partitions(conn, schema, table))


def _day(d: date) -> int:
    return day_of(d)


def test_migration_4_partitions_a_database_holding_rows(pg: tuple[str, str]) -> None:
    url, schema = pg
    s = f'"{schema}"'
    with psycopg.connect(url) as conn:
        assert migrate(conn, schema, until=2) == [1, 2]
        # 70 days from 2026-08-20: hours of three months, per-user rows of each day.
        conn.execute(
            f"INSERT INTO {s}.hourly_counts (event, hour, props_hash, count) "
            "SELECT 'e' || (h % 2), timestamptz '2026-08-20 00:00+00' + h * interval '1 hour', "
            "md5('')::uuid, 1 + h % 5 FROM generate_series(0, 70 * 24 - 1) AS h"
        )
        conn.execute(
            f"INSERT INTO {s}.daily_counts (event, day, props_hash, count) "
            f"SELECT event, (hour AT TIME ZONE 'UTC')::date, props_hash, sum(count) "
            f"FROM {s}.hourly_counts GROUP BY 1, 2, 3"
        )
        conn.execute(
            f"INSERT INTO {s}.user_daily_counts (event, day, user_id, count) "
            "SELECT 'e0', date '2026-08-20' + d, 'u' || (d + u), 1 + u "
            "FROM generate_series(0, 69) AS d, generate_series(0, 9) AS u"
        )
        hourly = dict(
            conn.execute(
                f"SELECT (extract(epoch FROM hour) / 3600)::bigint, sum(count) "
                f"FROM {s}.hourly_counts WHERE event = 'e1' GROUP BY 1"
            ).fetchall()
        )
        users = dict(
            conn.execute(
                f"SELECT user_id, sum(count) FROM {s}.user_daily_counts "
                "WHERE day >= '2026-09-25' AND day < '2026-10-05' GROUP BY 1"
            ).fetchall()
        )
        conn.commit()
    sink = PostgresSink(url, schema=schema, clock=ManualClock(start=NOW).time)
    try:
        assert sink.migrate() == [3, 4, 5, 6]
        with psycopg.connect(url) as conn:
            kinds = conn.execute(
                "SELECT relname, relkind FROM pg_class WHERE relnamespace = to_regnamespace(%s) "
                "AND relname IN ('hourly_counts', 'user_daily_counts', "
                "'hourly_counts_unpartitioned', 'user_daily_counts_unpartitioned')",
                [s],
            ).fetchall()
        assert sorted(kinds) == [("hourly_counts", "p"), ("user_daily_counts", "p")]
        this_month = datetime.now(timezone.utc).date().replace(day=1)
        for table in ("hourly_counts", "user_daily_counts"):
            assert {date(2026, 8, 1), date(2026, 9, 1), date(2026, 10, 1), this_month} <= set(
                _months(url, schema, table)
            )
        # The same answers after as before.
        assert sink.hourly_counts("e1", None, None, ()) == {h: int(n) for h, n in hourly.items()}
        first, last = _day(date(2026, 9, 25)), _day(date(2026, 10, 5))
        assert sink.user_counts("e0", first, last, None) == {u: int(n) for u, n in users.items()}
        assert sink.distinct_users("e0", first, last, []) == len(users)
        assert sink.period_counts("e1", [None, None], ()) == {0: sum(hourly.values())}
        # A batch of a month without a partition yet creates it.
        assert sink.apply(
            _batch(
                "late",
                {("e1", (), _day(date(2003, 5, 2)) * 24 + 3): 7},
                {("e0", "u1", _day(date(2003, 5, 2))): 7},
            )
        )
        assert date(2003, 5, 1) in _months(url, schema, "hourly_counts")
        assert date(2003, 5, 1) in _months(url, schema, "user_daily_counts")
        assert sink.hourly_counts("e1", None, _day(date(2004, 1, 1)) * 24, ()) == {
            _day(date(2003, 5, 2)) * 24 + 3: 7
        }
    finally:
        sink.close()


def test_retention_drops_whole_months_and_deletes_the_rest(pg: tuple[str, str]) -> None:
    """Rows of Aug 1 to Nov 29; cutoff Oct 16 (45 days before Nov 30): August and September
    go as partitions, October's first 15 days as deleted rows; every count stays exact."""
    url, schema = pg
    clock = ManualClock(start=datetime(2026, 8, 1, tzinfo=timezone.utc))
    sink = PostgresSink(
        url, schema=schema, hourly_retention_days=45, user_retention_days=45, clock=clock.time
    )
    first = _day(date(2026, 8, 1))
    days = range(first, _day(date(2026, 11, 30)))
    try:
        sink.apply(
            _batch(
                "b",
                {("e", (), d * 24 + 5): 2 for d in days},
                {("e", f"u{d % 7}", d): 1 for d in days},
            )
        )
        clock.advance((NOW - datetime(2026, 8, 1, tzinfo=timezone.utc)).total_seconds())
        pruned = sink.prune()
        assert pruned["hourly_counts partitions"] == 2
        assert pruned["user_daily_counts partitions"] == 2
        assert pruned["hourly_counts"] == 15
        assert pruned["user_daily_counts"] == 15
        assert _months(url, schema, "hourly_counts")[:2] == [date(2026, 10, 1), date(2026, 11, 1)]
        assert _months(url, schema, "user_daily_counts")[:1] == [date(2026, 10, 1)]
        # Every count is still there (old days from the daily rollup), distinct users too.
        assert sum(sink.hourly_counts("e", None, None, ()).values()) == 2 * len(days)
        assert sink.period_counts("e", [first * 24, None], ()) == {0: 2 * len(days)}
        assert sink.distinct_users("e", first, first + 7, []) == 7
        assert sink.user_counts("e", first, _day(date(2026, 10, 16)), None) == {}
        # A late batch into a dropped month recreates it (its count reaches the rollup); the
        # upkeep after the apply, or the next prune, drops it again.
        assert sink.apply(_batch("late", {("e", (), first * 24): 1}))
        sink.prune()
        assert date(2026, 8, 1) not in _months(url, schema, "hourly_counts")
        assert sum(sink.hourly_counts("e", None, None, ()).values()) == 2 * len(days) + 1
    finally:
        sink.close()


def test_a_partition_dropped_by_another_process_is_created_again(pg: tuple[str, str]) -> None:
    """This sink knows September's partition; another drops it: the next apply fails, and
    the one after (the flusher's retry) creates it again and counts once."""
    url, schema = pg
    sink = PostgresSink(url, schema=schema)
    september = _day(date(2026, 9, 10))
    try:
        assert sink.apply(_batch("1", {("e", (), september * 24): 1}))
        with psycopg.connect(url) as conn:
            conn.execute(f'DROP TABLE "{schema}".hourly_counts_202609')
        batch = _batch("2", {("e", (), september * 24): 5})
        with pytest.raises(SinkError):
            sink.apply(batch)
        assert sink.apply(batch)
        assert sink.hourly_counts("e", None, None, ()) == {september * 24: 5}
    finally:
        sink.close()


def test_flushers_creating_the_same_partition_at_once_both_apply(pg: tuple[str, str]) -> None:
    url, schema = pg
    sinks = [PostgresSink(url, schema=schema) for _ in range(2)]
    sinks[0].migrate()
    day = _day(date(2031, 3, 3))
    start = threading.Barrier(2)
    results: list[bool] = []

    def apply(sink: PostgresSink, n: int) -> None:
        start.wait()
        results.append(sink.apply(_batch(f"b{n}", {("e", (), day * 24): 1}, {("e", "u", day): 1})))

    threads = [threading.Thread(target=apply, args=(s, n)) for n, s in enumerate(sinks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert results == [True, True]
        assert sinks[0].hourly_counts("e", None, None, ()) == {day * 24: 2}
        assert sinks[1].user_counts("e", None, None, None) == {"u": 2}
    finally:
        for s in sinks:
            s.close()


def test_upkeep_creates_this_and_next_month_ahead(pg: tuple[str, str]) -> None:
    url, schema = pg
    clock = ManualClock(start=datetime(2030, 12, 15, tzinfo=timezone.utc))
    sink = PostgresSink(url, schema=schema, clock=clock.time)
    try:
        sink.apply(_batch("1", {("e", (), _day(date(2026, 1, 1)) * 24): 1}))
        for table in ("hourly_counts", "user_daily_counts"):
            assert {date(2030, 12, 1), date(2031, 1, 1)} <= set(_months(url, schema, table))
    finally:
        sink.close()
