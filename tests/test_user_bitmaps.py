"""Exact distinct users from per-day bitmaps: user numbers assigned in the apply's
transaction, bitmaps of each (event, day) and day, the migration that builds them for rows
already stored, and pruning that keeps them."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timezone

import psycopg
import pytest
from pyroaring import BitMap

from analytics_sdk.backends import Batch, Delta
from analytics_sdk.backends.postgres import PostgresSink, migrate
from analytics_sdk.keys import UserKey, day_of
from analytics_sdk.testing import ManualClock

from .utils import drop_schema, make_sink, postgres_url_or_skip, unique_name

DAY = day_of(date(2026, 11, 20))
NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)


@pytest.fixture
def pg() -> Iterator[tuple[str, str]]:
    """A PostgreSQL URL and a schema of this test's own, dropped afterwards."""
    url = postgres_url_or_skip()
    schema = unique_name("bitmaps")
    yield url, schema
    drop_schema(url, schema)


def _users(event: str, day: int, users: str | list[str], value: int = 1) -> dict[UserKey, int]:
    return {(event, u, day): value for u in users}


def _batch(batch_id: str, users: dict[UserKey, int]) -> Batch:
    return Batch(id=batch_id, delta=Delta(users=users), claimed_at=0.0)


def _numbers(url: str, schema: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f'SELECT user_id, number FROM "{schema}".user_numbers').fetchall()
    return dict(rows)


def _bitmap(url: str, schema: str, event: str | None, day: int) -> set[int]:
    """The users (numbers) of an event's day, or of the day over every event."""
    with psycopg.connect(url) as conn:
        if event is None:
            row = conn.execute(
                f"SELECT users FROM \"{schema}\".day_users WHERE day = date '1970-01-01' + %s",
                [day],
            ).fetchone()
        else:
            row = conn.execute(
                f'SELECT users FROM "{schema}".event_day_users '
                "WHERE event = %s AND day = date '1970-01-01' + %s",
                [event, day],
            ).fetchone()
    return set(BitMap.deserialize(row[0])) if row and row[0] else set()


def test_each_user_gets_one_number_and_each_day_a_bitmap(pg: tuple[str, str]) -> None:
    url, schema = pg
    sink = PostgresSink(url, schema=schema)
    try:
        sink.apply(_batch("1", {**_users("v", DAY, "abc"), **_users("w", DAY + 1, "a")}))
        sink.apply(_batch("2", {**_users("v", DAY, "bd"), **_users("w", DAY + 1, "a")}))
        n = _numbers(url, schema)
        # Only users without a number take one: the numbers stay dense.
        assert sorted(n.values()) == [1, 2, 3, 4]
        assert _bitmap(url, schema, "v", DAY) == {n["a"], n["b"], n["c"], n["d"]}
        assert _bitmap(url, schema, "w", DAY + 1) == {n["a"]}
        assert _bitmap(url, schema, None, DAY) == {n["a"], n["b"], n["c"], n["d"]}
        assert _bitmap(url, schema, None, DAY + 1) == {n["a"]}
        assert sink.distinct_users("v", DAY, DAY + 1, []) == 4
        assert sink.distinct_users("v", DAY, DAY + 2, ["a", "zz"]) == 3
        assert sink.distinct_users("w", DAY, DAY + 2, []) == 1
        assert sink.distinct_users("w", DAY, DAY + 1, []) == 0
        assert sink.distinct_users("x", DAY, DAY + 9, ["a"]) == 0
    finally:
        sink.close()


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_a_batch_applied_twice_counts_its_users_once(
    kind: str, request: pytest.FixtureRequest
) -> None:
    with make_sink(kind, request, ManualClock(start=NOW).time) as sink:
        batch = _batch("b", {**_users("v", DAY, "ab", 2), **_users("v", DAY + 1, "bc", 3)})
        assert sink.apply(batch)
        assert not sink.apply(batch)
        assert sink.distinct_users("v", DAY, DAY + 2, []) == 3
        assert sink.distinct_users("v", DAY, DAY + 2, ["b"]) == 2
        assert sink.user_counts("v", DAY, DAY + 2, None) == {"a": 2, "b": 5, "c": 3}


def test_a_flusher_numbering_a_user_another_is_numbering_reads_that_number(
    pg: tuple[str, str],
) -> None:
    """Another transaction numbers "x" and has not committed: the apply waits on it, then
    reads x's number (a new statement sees the commit) and puts it in the bitmap."""
    url, schema = pg
    sink = PostgresSink(url, schema=schema, application_name=schema)
    sink.migrate()
    applied: list[bool] = []
    with psycopg.connect(url) as other:
        other.execute(f'INSERT INTO "{schema}".user_numbers (user_id) VALUES (%s)', ["x"])
        flusher = threading.Thread(
            target=lambda: applied.append(sink.apply(_batch("b", _users("v", DAY, ["x", "y"]))))
        )
        flusher.start()
        try:
            _wait_for_a_lock_wait(url, schema)
        finally:
            other.commit()
        flusher.join(30)
    try:
        assert applied == [True]
        n = _numbers(url, schema)
        assert _bitmap(url, schema, "v", DAY) == {n["x"], n["y"]}
        assert sink.distinct_users("v", DAY, DAY + 1, []) == 2
    finally:
        sink.close()


def _wait_for_a_lock_wait(url: str, application_name: str) -> None:
    """Return once a backend of ``application_name`` waits for a lock (polled: the wait is
    PostgreSQL's, no event of ours marks it)."""
    deadline = time.monotonic() + 20
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                [application_name],
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the apply never waited for the other transaction's user number")


def test_concurrent_flushers_number_each_user_once_and_lose_no_user(
    pg: tuple[str, str],
) -> None:
    url, schema = pg
    rng = random.Random(7)
    batches = [
        _batch(
            f"{f}.{i}",
            {
                (rng.choice("vw"), f"u{rng.randrange(300)}", DAY + rng.randrange(3)): 1
                for _ in range(rng.randrange(1, 120))
            },
        )
        for f in range(2)
        for i in range(12)
    ]
    sinks = [PostgresSink(url, schema=schema) for _ in range(2)]
    sinks[0].migrate()
    start = threading.Barrier(2)

    def flush(sink: PostgresSink, mine: list[Batch]) -> None:
        start.wait()
        for batch in mine:
            sink.apply(batch)

    threads = [
        threading.Thread(target=flush, args=(sink, batches[i::2])) for i, sink in enumerate(sinks)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        keys = {key for batch in batches for key in batch.delta.users}
        n = _numbers(url, schema)
        assert set(n) == {user for _, user, _ in keys}
        assert len(set(n.values())) == len(n)
        for event in "vw":
            for first in range(3):
                for last in range(first + 1, 4):
                    expected = {
                        u for e, u, d in keys if e == event and DAY + first <= d < DAY + last
                    }
                    assert sinks[1].distinct_users(event, DAY + first, DAY + last, []) == len(
                        expected
                    )
        for d in range(3):
            assert _bitmap(url, schema, None, DAY + d) == {
                n[u] for _, u, day in keys if day == DAY + d
            }
    finally:
        for sink in sinks:
            sink.close()


def test_migration_3_builds_the_bitmaps_of_rows_already_stored(pg: tuple[str, str]) -> None:
    url, schema = pg
    with psycopg.connect(url) as conn:
        assert migrate(conn, schema, until=2) == [1, 2]
        conn.execute(
            f'INSERT INTO "{schema}".user_daily_counts (event, day, user_id, count) '
            "SELECT 'e' || (u %% 2), date '1970-01-01' + %s + d, 'u' || u, 1 + u %% 3 "
            "FROM generate_series(0, 3) AS d, generate_series(d * 5, d * 5 + 20) AS u",
            [DAY],
        )
        conn.commit()
    sink = PostgresSink(url, schema=schema)
    try:
        assert 3 in sink.migrate()
        with psycopg.connect(url) as conn:
            for event in ("e0", "e1"):
                for first in range(4):
                    for last in range(first + 1, 5):
                        row = conn.execute(
                            f'SELECT count(DISTINCT user_id) FROM "{schema}".user_daily_counts '
                            "WHERE event = %s AND day >= date '1970-01-01' + %s "
                            "AND day < date '1970-01-01' + %s",
                            [event, DAY + first, DAY + last],
                        ).fetchone()
                        assert row is not None
                        assert sink.distinct_users(event, DAY + first, DAY + last, []) == row[0]
        n = _numbers(url, schema)
        assert _bitmap(url, schema, None, DAY) == {n[f"u{u}"] for u in range(21)}
        # Batches applied after the migration add to the same bitmaps.
        sink.apply(_batch("late", _users("e0", DAY, ["u0", "new"])))
        assert sink.distinct_users("e0", DAY, DAY + 1, []) == 11 + 1
    finally:
        sink.close()


def test_pruning_per_user_rows_keeps_the_bitmaps(pg: tuple[str, str]) -> None:
    """Per-user rows past user_retention_days go; distinct users of those days stay exact
    (from the bitmaps, kept like the daily rollup); recent days are unchanged."""
    url, schema = pg
    clock = ManualClock(start=NOW)
    today = day_of(NOW.date())
    sink = PostgresSink(url, schema=schema, user_retention_days=3, clock=clock.time)
    try:
        old, recent = today - 6, today - 1
        sink.apply(
            _batch(
                "b",
                {
                    **_users("v", old, "abc"),
                    **_users("v", old + 1, "cd"),
                    **_users("v", recent, "ae"),
                },
            )
        )
        sink.prune()  # (the apply's upkeep pruned already)
        assert sink.user_counts("v", old, old + 2, None) == {}
        assert sink.distinct_users("v", old, old + 2, []) == 4
        assert sink.distinct_users("v", old, today, ["e"]) == 4
        assert sink.distinct_users("v", recent, today, []) == 2
        assert sink.user_counts("v", old, today, None) == {"a": 1, "e": 1}
    finally:
        sink.close()


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_a_user_of_a_batch_applied_but_not_acknowledged_counts_once(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The user is both in the sink (its bitmap) and in a claim the store still holds: the
    claim's users are taken out of the sink's answer and added once."""
    from analytics_sdk import Analytics

    clock = ManualClock(start=NOW)
    day = date(2026, 11, 20)
    with (
        make_sink(kind, request, clock.time) as sink,
        Analytics(sink=sink, clock=clock, background=False, claim_lease=3600) as client,
    ):
        when = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
        client.track("v", timestamp=when, user_id="a")
        client.track("v", timestamp=when, user_id="b")
        client.flush()
        client.track("v", timestamp=when, user_id="a")
        client.track("v", timestamp=when, user_id="c")
        client.scheduler.push()
        (batch,) = client.store.claim()
        assert sink.apply(batch)  # applied, not acknowledged: still a claim in the store
        client.track("v", timestamp=when, user_id="d")  # buffered
        assert client.unique_users("v", day, day) == 4
        assert client.top_users("v", day=day, limit=4) == [("a", 2), ("b", 1), ("c", 1), ("d", 1)]
