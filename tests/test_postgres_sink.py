"""PostgreSQL specifics: migrations, retention, timeouts, outages, fork, the CLI.

The protocol itself is covered by the contract suite (test_backend_contract.py); exactness
under faults by test_faults.py.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlsplit

import psycopg
import pytest

from analytics_sdk import Analytics, ConfigurationError, SinkError
from analytics_sdk.backends import Batch, Delta, sink_from_url
from analytics_sdk.backends.postgres import PostgresSink, migrations
from analytics_sdk.cli import main
from analytics_sdk.keys import day_of, hour_of
from analytics_sdk.testing import ManualClock

from .faults import Faults
from .servers import Proxy
from .utils import drop_schema, postgres_url_or_skip, unique_name

NOW = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)


@pytest.fixture
def pg_url() -> str:
    return postgres_url_or_skip()


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    name = unique_name("sink")
    yield name
    drop_schema(pg_url, name)


def batch(hourly: dict, users: dict | None = None) -> Batch:  # type: ignore[type-arg]
    return Batch(id=unique_name("b"), delta=Delta(hourly=hourly, users=users or {}), claimed_at=0.0)


def test_migrations_are_idempotent_and_concurrent_safe(pg_url: str, schema: str) -> None:
    sinks = [PostgresSink.from_url(f"{pg_url}?schema={schema}") for _ in range(4)]
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.migrate())) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = [v for v, _ in migrations()]
    assert sorted(results) == [[], [], [], versions]  # exactly one of them applied them
    assert sinks[0].migrate() == []
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
    assert [r[0] for r in rows] == versions
    for s in sinks:
        s.close()


def test_an_odd_schema_name_is_quoted_safely(pg_url: str) -> None:
    schema = f'odd "name"; drop {unique_name()}'
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}")
    try:
        assert sink.apply(batch({("e", (), 10): 1}))
        assert sink.hourly_counts("e", None, None, ()) == {10: 1}
    finally:
        sink.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(schema))
            )


@pytest.mark.parametrize("schema", ["analytics", 'odd "name"; drop', "ünï cödé", 'a""b'])
def test_statements_quote_the_schema_as_psycopg_does(pg_url: str, schema: str) -> None:
    from analytics_sdk.backends.postgres import _STATEMENTS, statements

    written = statements(schema)
    with psycopg.connect(pg_url) as conn:
        for name, text in _STATEMENTS.items():
            composed = psycopg.sql.SQL(text).format(s=psycopg.sql.Identifier(schema))
            assert written[name] == composed.as_string(conn), name


def test_retention_keeps_daily_totals(pg_url: str, schema: str) -> None:
    # The ledger is stamped by the database's clock, and pruned on the sink's: start the
    # sink's clock at the database's time so that the ledger's retention is what is tested.
    with psycopg.connect(pg_url) as conn:
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    clock = ManualClock(start=now)
    sink = PostgresSink.from_url(
        f"{pg_url}?schema={schema}&hourly_retention_days=7&user_retention_days=30&ledger_retention_days=1",
        clock.time,
    )
    old = now - timedelta(days=20)
    recent = now - timedelta(days=2)
    sink.apply(
        batch(
            {
                ("e", (("p", "1"),), hour_of(old)): 3,
                ("e", (), hour_of(old) + 1): 4,
                ("e", (), hour_of(recent)): 5,
            },
            {("e", "u", day_of(old.date()) - 40): 1, ("e", "u", day_of(recent.date())): 2},
        )
    )
    # The apply ran the first pruning: old hourly rows and old per-user rows are gone...
    with psycopg.connect(pg_url) as conn:
        hourly_rows = conn.execute(f'SELECT count(*) FROM "{schema}".hourly_counts').fetchone()
        user_rows = conn.execute(f'SELECT count(*) FROM "{schema}".user_daily_counts').fetchone()
    assert (hourly_rows, user_rows) == ((1,), (1,))
    # ...but every count is still there: old hours come from the daily totals.
    counts = sink.hourly_counts("e", None, None, ())
    assert counts == {day_of(old.date()) * 24: 7, hour_of(recent): 5}
    assert sink.hourly_counts("e", None, None, (("p", "1"),)) == {day_of(old.date()) * 24: 3}
    assert sink.user_counts("e", None, None, None) == {"u": 2}
    assert sink.prune()["flush_ledger"] == 0  # the batch is a day younger than retention
    clock.advance(2 * 86400)
    assert sink.prune() == {
        "flush_ledger": 1,
        "hourly_counts": 0,
        "hourly_counts partitions": 0,
        "user_daily_counts": 0,
        "user_daily_counts partitions": 0,
        "group_daily_counts": 0,
        "group_daily_counts partitions": 0,
        "group_user_daily_counts": 0,
        "group_user_daily_counts partitions": 0,
    }
    assert sum(sink.hourly_counts("e", None, None, ()).values()) == 12
    sink.close()


def test_a_statement_timeout_keeps_the_claim_and_the_retry_counts_once(
    pg_url: str, schema: str
) -> None:
    url = f"{pg_url}?schema={schema}&statement_timeout=0.2"
    with Analytics(sink=url, background=False) as client:
        client.track("e", value=3)
        assert client.flush().complete
        client.track("e", value=4)
        with psycopg.connect(pg_url) as locker:
            locker.execute(f'LOCK TABLE "{schema}".hourly_counts IN EXCLUSIVE MODE')
            result = client.flush()  # the upsert waits on the lock, then times out
            assert result.error is not None
            assert "statement timeout" in result.error
            assert client.count("e") == 7  # the claim is pending in the store: still exact
        assert client.flush().complete
        assert sum(client.sink.hourly_counts("e", None, None, ()).values()) == 7


def test_postgres_down_then_back(pg_url: str, schema: str) -> None:
    parts = urlsplit(pg_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    url = pg_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    try:
        with Analytics(
            sink=f"{url}?schema={schema}&pool_timeout=1&connect_timeout=1", background=False
        ) as client:
            client.track("e", value=2)
            assert client.flush().complete
            proxy.refuse = True
            proxy.drop()
            client.track("e", value=5)
            result = client.flush()
            assert result.error is not None
            with pytest.raises(SinkError, match=r"PostgreSQL .* query failed"):
                client.count("e")  # counts pending: the mark is the first step that fails
            proxy.refuse = False
            for _ in range(3):
                if client.flush().complete:
                    break
            assert sum(client.sink.hourly_counts("e", None, None, ()).values()) == 7
    finally:
        proxy.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_uses_its_own_connections(pg_url: str, schema: str) -> None:
    with Analytics(sink=f"{pg_url}?schema={schema}", background=False) as client:
        client.track("e")
        assert client.flush().complete  # the parent's pool is open
        pid = os.fork()
        if pid == 0:
            try:
                client.track("e", value=10)
                ok = client.flush(timeout=30).complete
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.track("e", value=100)
        assert client.flush().complete  # the parent's connections survived the child
        assert sum(client.sink.hourly_counts("e", None, None, ()).values()) == 111


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pool_max=0", "pool_max='0' is not accepted; accepted: an integer, 1 or more"),
        ("statement_timeout=soon", "statement_timeout='soon' is not accepted; accepted: a number"),
        ("hourly_retention_days=0", "hourly_retention_days='0' is not accepted"),
    ],
)
def test_bad_url_options(query: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        sink_from_url(f"postgresql://u:secret@localhost/db?{query}", ManualClock().time)


def test_passwords_stay_out_of_reprs_and_errors(schema: str) -> None:
    sink = sink_from_url(
        f"postgresql://app:s3cr3t@127.0.0.1:1/db?schema={schema}&pool_timeout=0.5",
        ManualClock().time,
    )
    assert "s3cr3t" not in repr(sink)
    with pytest.raises(SinkError, match="apply failed") as info:
        sink.apply(batch({("e", (), 1): 1}))
    assert "s3cr3t" not in str(info.value)
    sink.close()


def test_a_failed_apply_names_the_sink_and_the_step_and_commits_nothing(
    pg_url: str, schema: str
) -> None:
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}")
    assert sink.apply(batch({("e", (), 1): 1}))  # the month's partitions exist from here on
    second = batch({("e", (), 1): 2}, {("e", "u", 0): 2})

    def rename(old: str, new: str) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {schema}.{old} RENAME TO {new}")

    rename("flush_ledger", "flush_ledger_away")  # the apply's own statement fails
    try:
        with pytest.raises(SinkError) as info:
            sink.apply(second)
    finally:
        rename("flush_ledger_away", "flush_ledger")
    assert str(info.value).startswith(f"PostgreSQL {sink._description} apply failed: ")
    assert sink.hourly_counts("e", None, None, ()) == {1: 1}  # nothing of it committed
    assert sink.apply(second)
    assert not sink.apply(second)  # in the ledger: once
    assert sink.hourly_counts("e", None, None, ()) == {1: 3}
    sink.close()


def test_cli_migrate_and_query(
    pg_url: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"{pg_url}?schema={schema}"
    assert main(["migrate", "--sink", url]) == 0
    assert "applied migrations 1" in capsys.readouterr().out
    assert main(["migrate", "--sink", url]) == 0
    assert "is up to date" in capsys.readouterr().out
    sink = PostgresSink.from_url(url)
    day0 = date(2026, 11, 20)
    rng = random.Random(3)
    counts = {}
    for d in range(5):
        n = rng.randrange(1, 50)
        counts[d] = n
        hour = day_of(day0 + timedelta(days=d)) * 24 + 9
        sink.apply(
            batch(
                {("signup", (("plan", "pro"),), hour): n, ("signup", (("plan", "free"),), hour): 1}
            )
        )
    sink.close()
    args = ["query", "signup", "--from", "2026-11-20", "--to", "2026-11-24", "--sink", url]
    assert main([*args, "--format", "json", "--property", "plan=pro"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [r["count"] for r in rows] == [counts[d] for d in range(5)]
    assert main([*args, "--format", "csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0] == "period,count"
    assert csv[1] == f"2026-11-20T00:00:00+00:00,{counts[0] + 1}"
    assert main([*args, "--by", "week"]) == 0
    table = capsys.readouterr().out
    assert "signup by week (UTC)" in table
    assert f"{sum(counts.values()) + 5:,}" in table
    with pytest.raises(SystemExit) as exit_info:
        main(["query", "signup", "--from", "yesterday", "--to", "2026-11-24"])
    assert exit_info.value.code == 2
    assert "'yesterday' is not a date" in capsys.readouterr().err


def test_hours_before_1970_roll_up_into_the_right_day(pg_url: str, schema: str) -> None:
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}")
    sink.apply(
        batch({("e", (), -1): 2, ("e", (), -25): 3})
    )  # 1969-12-31 23:00 and 1969-12-30 23:00
    with psycopg.connect(pg_url) as conn:
        days = conn.execute(
            f'SELECT day, count FROM "{schema}".daily_counts ORDER BY day'
        ).fetchall()
    assert days == [(date(1969, 12, 30), 3), (date(1969, 12, 31), 2)]
    sink.close()


def test_a_failed_retention_prune_never_fails_a_committed_apply(
    pg_url: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(NOW)
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}&user_retention_days=7", clock.time)
    faults = Faults(sink)
    faults.fail("prune")
    try:
        first = batch({("e", (), hour_of(NOW)): 3}, {("e", "u1", day_of(NOW.date())): 3})
        assert sink.apply(first) is True  # committed; the upkeep after it failed
        assert "retention pruning failed: prune call 1 failed" in caplog.text
        assert sink.applied([first.id]) == {first.id}
        assert sink.apply(first) is False  # in the ledger: never applied twice
        assert sink.hourly_counts("e", None, None, ()) == {hour_of(NOW): 3}
        assert faults.calls["prune"] == 1
        clock.advance(3600)  # the next upkeep is an hour later, and succeeds
        sink.apply(batch({("e", (), hour_of(NOW)): 1}))
        assert faults.calls["prune"] == 2
        assert sink.hourly_counts("e", None, None, ()) == {hour_of(NOW): 4}
        assert sink.user_counts("e", None, None, None) == {"u1": 3}
    finally:
        sink.close()


def test_a_batch_of_per_user_counts_only(pg_url: str, schema: str) -> None:
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}")
    day = day_of(NOW.date())
    try:
        users_only = batch({}, {("e", "u1", day): 2, ("e", "u2", day): 5, ("e", "u1", day - 1): 1})
        assert sink.apply(users_only) is True
        assert sink.apply(users_only) is False
        assert sink.user_counts("e", day, day + 1, None) == {"u1": 2, "u2": 5}
        assert sink.user_counts("e", None, None, "u1") == {"u1": 3}
        assert sink.hourly_counts("e", None, None, ()) == {}
        assert sink.event_totals() == {}
        with sink._connection("test") as conn:
            ledger = conn.execute(f'SELECT counters FROM "{schema}".flush_ledger').fetchall()
        assert ledger == [(3,)]  # the counters the batch touched
    finally:
        sink.close()


def test_a_failing_read_names_what_failed(schema: str) -> None:
    sink = sink_from_url(f"postgresql://127.0.0.1:1/db?schema={schema}&pool_timeout=0.2", time.time)
    try:
        with pytest.raises(SinkError, match=r"ledger read failed"):
            sink.applied(["b1"])
        with pytest.raises(SinkError, match=r"query failed"):
            sink.user_counts("e", None, None, "u1")
        with pytest.raises(SinkError, match=r"query failed"):
            sink.hourly_counts("e", None, None, ())
    finally:
        sink.close()


def test_the_sinks_connections_run_without_jit_in_autocommit(pg_url: str, schema: str) -> None:
    """JIT compiled the range joins of a series (their row estimates are far too high) for
    longer than they ran: the sink's connections turn it off. They are in autocommit: a read
    outside a transaction is one round trip, and no mode is switched to lend one."""
    sink = PostgresSink(pg_url, schema=schema)
    try:
        with sink._connection("test") as conn:
            assert conn.execute("SHOW jit").fetchone() == ("off",)
            assert conn.autocommit is True
    finally:
        sink.close()


def test_only_statements_whose_generic_plan_is_good_are_prepared(pg_url: str, schema: str) -> None:
    """psycopg prepares a statement run five times, and PostgreSQL may then keep a generic
    plan: for a single count that saves planning it at each call, but the property
    statements' generic plan cost three times their custom one (2.1 ms instead of 0.7 on a
    day of 200 property sets). So a count of one range is prepared and a property count
    never is."""
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}&pool_min=1&pool_max=1")
    try:
        sink.apply(batch({("e", (("plan", "pro"),), 10): 1}))
        for _ in range(8):
            assert sink.period_counts("e", [0, 24], ()) == {0: 1}
            assert sink.property_counts("e", "plan", [0, 24], ()) == {("pro", 0): 1}
        with sink._connection("test") as conn:
            rows = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        prepared = [statement for (statement,) in rows]
        assert [s for s in prepared if "daily_counts" in s and "sum(count)" in s]
        assert not [s for s in prepared if "->>" in s]  # the property statements' mark
    finally:
        sink.close()


def test_a_connection_back_within_a_second_is_reused_unchecked_and_at_once(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from psycopg_pool import ConnectionPool

    checks: list[object] = []
    original = ConnectionPool.check_connection

    def counted(conn: psycopg.Connection) -> None:  # type: ignore[type-arg]
        checks.append(conn)
        original(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", counted)
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}&pool_min=1&pool_max=1")
    try:
        sink.apply(batch({("e", (), 10): 1}))
        for _ in range(5):
            assert sink.hourly_counts("e", None, None, ()) == {10: 1}
            # Back in the pool as the query returns, not when a worker thread gets to it.
            assert sink._get_pool().get_stats()["pool_available"] == 1
        assert len(checks) <= 1  # only a connection never returned before is checked
    finally:
        sink.close()


def test_a_connection_idle_a_second_is_checked_and_a_dead_one_replaced(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import analytics_sdk.backends.postgres as postgres

    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}&pool_min=1&pool_max=1")
    try:
        sink.apply(batch({("e", (), 10): 1}))
        with sink._connection("test") as conn:
            pid = conn.info.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        monkeypatch.setattr(postgres, "CHECK_AFTER_IDLE", 0.0)  # as if idle for long
        assert sink.hourly_counts("e", None, None, ()) == {10: 1}  # the check replaced it
        with sink._connection("test") as conn:
            assert conn.info.backend_pid != pid
    finally:
        sink.close()


def test_no_connection_is_held_while_a_query_reads_the_store(
    pg_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the mark and the reads a query reads the store: with the pool's one
    connection given back meanwhile, another reader is not kept waiting."""
    client = Analytics(
        store="memory://",
        sink=f"{pg_url}?schema={schema}&pool_min=1&pool_max=1&pool_timeout=2",
        background=False,
    )
    try:
        client.track("e", timestamp=NOW)
        client.flush()
        client.track("e", timestamp=NOW)
        client.scheduler.push()  # live in the store
        read_store = client.store.pending_hourly
        meanwhile = []

        def reading(*args: object) -> object:
            meanwhile.append(client.sink.event_totals())  # the pool's only connection
            return read_store(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(client.store, "pending_hourly", reading)
        assert client.count("e", day=NOW.date()) == 2
        assert meanwhile
        assert all(totals == {"e": 1} for totals in meanwhile)
    finally:
        client.shutdown()


def test_ledger_reads_asked_ahead_answer_as_reads_asked_later(pg_url: str, schema: str) -> None:
    """``will_ask`` sends the ledger reads with the transaction's first statement; what
    ``applied`` and ``committed_since_entered`` answer is the same either way, including
    for batches not asked about ahead."""
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}")
    try:
        first, second = batch({("e", (), 10): 1}), batch({("e", (), 10): 2})
        assert sink.apply(first)
        assert sink.apply(second)
        for ahead in (True, False):
            late = batch({("e", (), 10): 4})
            with sink.snapshot() as snapshot:
                assert sink.apply(late)  # after the mark, before the first read
                if ahead:
                    snapshot.will_ask([first.id, "unknown"], since=True)
                assert snapshot.hourly_counts("e", None, None, ()) == {
                    10: 3 + 4 * (1 if ahead else 2)
                }
                assert snapshot.committed_since_entered() == {late.id}
                assert snapshot.applied([first.id, second.id, "unknown"]) == {first.id, second.id}
                assert snapshot.applied([first.id]) == {first.id}
                assert snapshot.applied([]) == set()
    finally:
        sink.close()


def test_a_snapshot_reads_one_state_and_gives_its_connection_back_as_it_was(
    pg_url: str, schema: str
) -> None:
    """A snapshot's reads are one REPEATABLE READ transaction: a batch committed after its
    first read is in none of them, counts or ledger; its connection goes back to the pool
    in autocommit and out of the transaction, as the sink's other users expect it."""
    sink = PostgresSink.from_url(f"{pg_url}?schema={schema}&pool_min=1&pool_max=2")
    try:
        assert sink.apply(batch({("e", (), 10): 1}))
        late = batch({("e", (), 10): 2})
        with sink.snapshot() as snapshot:
            snapshot.will_ask([late.id], since=True)
            assert snapshot.hourly_counts("e", None, None, ()) == {10: 1}
            assert sink.apply(late)  # on the pool's other connection
            assert snapshot.hourly_counts("e", None, None, ()) == {10: 1}
            assert snapshot.applied([late.id]) == set()
            assert snapshot.committed_since_entered() == set()
        for _ in range(2):
            with sink._connection("test") as conn:
                assert conn.autocommit is True
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with sink.snapshot() as snapshot:
            assert snapshot.hourly_counts("e", None, None, ()) == {10: 3}
    finally:
        sink.close()
