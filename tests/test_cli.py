"""The analytics-sdk-exact command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

import analytics_sdk
from analytics_sdk import Analytics
from analytics_sdk.cli import main

from .utils import (
    delete_redis_prefix,
    drop_schema,
    postgres_url_or_skip,
    redis_and_postgres,
    redis_url_or_skip,
    unique_name,
)


def test_demo_runs_and_reports_exact_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seconds", "1", "--threads", "2", "--users", "20"]) == 0
    out = capsys.readouterr().out
    for heading in ("Daily totals", "Hourly page views", "Top users", "Unique users", "events/s"):
        assert heading in out
    assert "(exact)" in out
    assert "MISMATCH" not in out
    assert "23:00" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--seconds", "0"], "out of range; accepted: more than 0, at most 3600"),
        (["demo", "--seconds", "soon"], "'soon' is not a number"),
        (["demo", "--threads", "0"], "0 is out of range; accepted: 1 to 64"),
        (["nope"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "analytics_sdk", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == f"analytics-sdk-exact {analytics_sdk.__version__}\n"


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """A PostgreSQL URL and the name of a schema no other test uses (dropped afterwards)."""
    url = postgres_url_or_skip()
    schema = unique_name("cli")
    yield url, schema
    drop_schema(url, schema)


def _schema_exists(url: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = %s", [schema]
        ).fetchone()
    return bool(row and row[0])


def _fail(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["query", "signup", "--from", "2026-11-20", "--to", "2026-11-20"], ["migrate"]]
)
def test_a_command_without_a_sink_fails_instead_of_printing_zeros(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ANALYTICS_SINK", raising=False)
    code, err = _fail(command, capsys)
    assert code == 2
    assert "no URL given; accepted: --sink URL, or the ANALYTICS_SINK variable" in err
    assert capsys.readouterr().out == ""


def test_the_worker_needs_a_store_and_a_sink(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ANALYTICS_STORE", raising=False)
    monkeypatch.setenv("ANALYTICS_SINK", "memory://")
    code, err = _fail(["worker", "--no-metrics"], capsys)
    assert code == 2
    assert "--store URL, or the ANALYTICS_STORE variable" in err


def test_query_refuses_a_memory_sink(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _fail(
        ["query", "signup", "--from", "2026-11-20", "--to", "2026-11-20", "--sink", "memory://"],
        capsys,
    )
    assert code == 2
    assert "lives inside the process that tracked the counts and is empty here" in err


def test_query_on_a_misspelled_schema_fails_and_creates_nothing(
    pg_schema: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, schema = pg_schema
    args = ["query", "signup", "--from", "2026-11-20", "--to", "2026-11-20"]
    code, err = _fail([*args, "--sink", f"{url}?schema={schema}"], capsys)
    assert code == 1
    assert f"has no analytics schema {schema!r}: check the URL's ?schema=" in err
    assert not _schema_exists(url, schema)


@pytest.mark.parametrize(
    "command",
    [
        ["query", "signup", "--from", "2026-11-20", "--to", "2026-11-20"],
        ["active", "--from", "2026-11-20", "--to", "2026-11-20"],
        ["retention", "--from", "2026-11-02", "--to", "2026-11-09", "--periods", "2"],
        ["dashboard", "--addr", "127.0.0.1:0"],
    ],
)
def test_a_read_command_on_a_misspelled_prefix_fails_and_writes_nothing(
    command: list[str],
    pg_schema: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import redis

    import analytics_sdk.dashboard

    def serve(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dashboard started on a prefix with no counters")

    monkeypatch.setattr(analytics_sdk.dashboard, "serve_until_stopped", serve)
    url, schema = pg_schema
    assert main(["migrate", "--sink", f"{url}?schema={schema}"]) == 0
    capsys.readouterr()
    redis_url, prefix = redis_url_or_skip(), unique_name("typo")
    store = f"{redis_url}?prefix={prefix}"
    code, err = _fail([*command, "--sink", f"{url}?schema={schema}", "--store", store], capsys)
    assert code == 1
    assert f"has no analytics counters under prefix {prefix!r} (no key {{{prefix}}}:meta)" in err
    assert "check the URL's ?prefix= (default 'analytics')" in err
    assert capsys.readouterr().out == ""
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"{{{prefix}*")) == []
    finally:
        client.close()


def test_a_read_command_reads_a_prefix_that_holds_counts(
    pg_schema: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, schema = pg_schema
    redis_url, prefix = redis_url_or_skip(), unique_name("cli")
    store = f"{redis_url}?prefix={prefix}"
    assert main(["migrate", "--sink", f"{url}?schema={schema}"]) == 0
    try:
        with Analytics(store=store, sink=f"{url}?schema={schema}", flusher=False) as client:
            client.track("signup", timestamp=datetime(2026, 11, 20, 9, tzinfo=timezone.utc))
            client.flush(timeout=10)
            args = ["query", "signup", "--from", "2026-11-20", "--to", "2026-11-20"]
            assert main([*args, "--sink", f"{url}?schema={schema}", "--store", store]) == 0
        assert "total 1" in " ".join(capsys.readouterr().out.split())
    finally:
        delete_redis_prefix(redis_url, prefix)


def test_query_on_an_outdated_schema_asks_for_migrate(
    pg_schema: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    url, schema = pg_schema
    assert main(["migrate", "--sink", f"{url}?schema={schema}"]) == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{schema}".schema_version')
    capsys.readouterr()
    code, err = _fail(
        [
            "query",
            "e",
            "--from",
            "2026-11-20",
            "--to",
            "2026-11-20",
            "--sink",
            f"{url}?schema={schema}",
        ],
        capsys,
    )
    assert code == 1
    assert f"schema {schema!r} is at version 0; this SDK reads version" in err
    assert "run the migrate command" in err


def test_migrate_and_query_read_the_environment_and_a_day_by_hour_has_24_rows(
    pg_schema: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, schema = pg_schema
    monkeypatch.setenv("ANALYTICS_SINK", f"{url}?schema={schema}")
    assert main(["migrate"]) == 0
    assert "applied migrations" in capsys.readouterr().out
    day = date(2026, 11, 20)
    with Analytics(sink=f"{url}?schema={schema}", background=False) as client:
        for hour in (0, 9, 23):
            moment = datetime(day.year, day.month, day.day, hour, 30, tzinfo=timezone.utc)
            client.track("signup", value=hour + 1, timestamp=moment)
    capsys.readouterr()
    args = ["query", "signup", "--from", "2026-11-20", "--to", "2026-11-20", "--by", "hour"]
    assert main([*args, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 24
    assert rows[0]["period"] == "2026-11-20T00:00:00+00:00"
    assert rows[-1]["period"] == "2026-11-20T23:00:00+00:00"
    assert {r["period"][11:13]: r["count"] for r in rows if r["count"]} == {
        "00": 1,
        "09": 10,
        "23": 24,
    }
    assert main([*args[:-2], "--by", "day", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"period": "2026-11-20T00:00:00+00:00", "count": 35}
    ]


@pytest.mark.parametrize(
    ("start", "end", "by", "message"),
    [
        (
            "0001-01-01",
            "9999-12-31",
            "day",
            "start 0001-01-01 is out of range; accepted: days from 2000-01-01",
        ),
        ("2000-01-01", "9999-12-31", "day", "to 9998-12-31"),
        ("2000-01-01", "2026-11-19", "hour", "periods; accepted: at most 10,000"),
        ("2026-11-20", "2026-11-19", "day", "is after end"),
    ],
)
def test_a_bad_range_is_refused_before_anything_is_read(
    start: str,
    end: str,
    by: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ANALYTICS_SINK", raising=False)  # refused before the sink is needed
    code, err = _fail(["query", "e", "--from", start, "--to", end, "--by", by], capsys)
    assert code == 2
    assert message in err


# -- query --by PROPERTY ---------------------------------------------------------------------

BREAKDOWN_PAGE = Path(__file__).resolve().parents[1] / "docs" / "breakdowns.md"


def _track_views(client: Analytics) -> None:
    """The page views of the worked example in docs/breakdowns.md."""
    views = [
        (24, "/home", "free", 40),
        (24, "/pricing", "free", 12),
        (24, "/docs", "pro", 9),
        (25, "/home", "pro", 35),
        (25, "/pricing", "free", 20),
        (25, "/blog", "free", 4),
        (26, "/home", "free", 38),
        (26, "/docs", "pro", 15),
        (26, "/blog", "pro", 3),
    ]
    for day, path, plan, n in views:
        when = datetime(2026, 11, day, 10, tzinfo=timezone.utc)
        client.track("page_view", properties={"path": path, "plan": plan}, value=n, timestamp=when)
    client.track("page_view", value=6, timestamp=datetime(2026, 11, 25, 8, tzinfo=timezone.utc))


def _page_block(page: Path, heading: str, language: str) -> str:
    """Return the first ``language`` code block after ``heading`` in ``page``."""
    text = page.read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start : section.index("```", start)]


def test_query_by_a_property_prints_the_table_the_breakdowns_page_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with redis_and_postgres("cli") as (store, sink):
        with Analytics(store=store, sink=sink, background=False) as client:
            _track_views(client)
        # Pushed to the store, never flushed: the command reads it with --store.
        with Analytics(store=store, sink=sink, background=False, flusher=False) as client:
            when = datetime(2026, 11, 26, 11, tzinfo=timezone.utc)
            client.track("page_view", properties={"path": "/home"}, value=7, timestamp=when)
        capsys.readouterr()
        args = ["query", "page_view", "--from", "2026-11-24", "--to", "2026-11-26", "--by", "path"]
        args += ["--limit", "2", "--sink", sink]
        assert main(args) == 0
        shown = _page_block(BREAKDOWN_PAGE, "## From the command line", "text")
        assert capsys.readouterr().out == shown
        assert main([*args, "--store", store, "--format", "csv"]) == 0
        rows = capsys.readouterr().out.splitlines()
        assert rows[0] == "period,value,count"
        assert rows[1:4] == [
            "2026-11-24T00:00:00+00:00,/home,40",
            "2026-11-25T00:00:00+00:00,/home,35",
            "2026-11-26T00:00:00+00:00,/home,45",
        ]
        assert rows[-3:] == [
            "2026-11-24T00:00:00+00:00,(none),0",
            "2026-11-25T00:00:00+00:00,(none),6",
            "2026-11-26T00:00:00+00:00,(none),0",
        ]
        assert main([*args, "--format", "json", "--property", "plan=pro"]) == 0
        assert json.loads(capsys.readouterr().out) == [
            {"period": f"2026-11-{d}T00:00:00+00:00", "value": v, "count": n}
            for v, counts in [("/home", [0, 35, 0]), ("/docs", [9, 0, 15]), ("(other)", [0, 0, 3])]
            for d, n in zip((24, 25, 26), counts, strict=True)
        ]


def test_by_a_granularity_word_is_the_older_spelling_unless_granularity_is_given(
    pg_schema: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, schema = pg_schema
    sink = f"{url}?schema={schema}"
    with Analytics(sink=sink, background=False) as client:
        for day, n in ((2, 1), (3, 2), (9, 4)):
            when = datetime(2026, 11, day, 10, tzinfo=timezone.utc)
            client.track("e", properties={"day": f"d{day}"}, value=n, timestamp=when)
    capsys.readouterr()
    args = ["query", "e", "--from", "2026-11-02", "--to", "2026-11-09", "--sink", sink]
    assert main([*args, "--by", "week", "--format", "csv"]) == 0
    assert capsys.readouterr().out == (
        "period,count\n2026-11-02T00:00:00+00:00,3\n2026-11-09T00:00:00+00:00,4\n"
    )
    assert main([*args, "--granularity", "week", "--by", "day", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "period,value,count",
        "2026-11-02T00:00:00+00:00,d9,0",
        "2026-11-09T00:00:00+00:00,d9,4",
        "2026-11-02T00:00:00+00:00,d3,2",
        "2026-11-09T00:00:00+00:00,d3,0",
        "2026-11-02T00:00:00+00:00,d2,1",
        "2026-11-09T00:00:00+00:00,d2,0",
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--by", "path", "--limit", "0"], "0 is out of range; accepted: 1 to 1000"),
        (["--limit", "5"], "--limit 5 is not accepted without --by PROPERTY"),
        (["--by", ""], "--by '' has 0 characters; accepted: 1 to 100"),
        (["--by", "k" * 101], "has 101 characters; accepted: 1 to 100"),
    ],
)
def test_a_bad_breakdown_is_refused_before_anything_is_read(
    extra: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ANALYTICS_SINK", raising=False)  # refused before the sink is needed
    args = ["query", "e", "--from", "2026-11-20", "--to", "2026-11-21", *extra]
    code, err = _fail(args, capsys)
    assert code == 2
    assert message in err
