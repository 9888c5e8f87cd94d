"""The analytics-sdk-exact command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime, timezone

import pytest

import analytics_sdk
from analytics_sdk import Analytics
from analytics_sdk.cli import main

from .utils import drop_schema, postgres_url_or_skip, unique_name


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
