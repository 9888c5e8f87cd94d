"""Active users per period and first-time retention: exact across the buffer, the store and
the sink (checked against a brute-force recount of the tracked events), with first days kept
at flush time in PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics_sdk import Analytics
from analytics_sdk.backends.postgres import (
    PostgresSink,
    build_user_bitmaps,
    create_partitions,
    migrate,
)
from analytics_sdk.cli import main
from analytics_sdk.keys import day_of
from analytics_sdk.query import Cohort, periods, resolve_tz
from analytics_sdk.testing import ManualClock

from .utils import drop_schema, postgres_url_or_skip, redis_and_postgres, unique_name

DAY0 = date(2026, 10, 1)
NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"]
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# (day offset from DAY0, user (None: no user), event, tier: 0 sink, 1 claimed, 2 applied but
# not acknowledged, 3 live, 4 buffer)
Tracked = tuple[int, int | None, str, int]
tracked = st.lists(
    st.tuples(
        st.integers(0, 59),
        st.one_of(st.none(), st.integers(0, 9)),
        st.sampled_from(["e", "f", "g"]),
        st.integers(0, 4),
    ),
    min_size=1,
    max_size=50,
)


@contextmanager
def _client(kind: str) -> Iterator[Analytics]:
    """A client with backends of its own (any-event queries read every event there is)."""
    settings: dict[str, Any] = {
        "clock": ManualClock(start=NOW),
        "background": False,
        "claim_lease": 3600,
    }
    if kind == "memory":
        with Analytics(**settings) as client:
            yield client
        return
    with (
        redis_and_postgres("active") as (store, sink),
        Analytics(store=store, sink=sink, **settings) as client,
    ):
        yield client


def _load(client: Analytics, events: list[Tracked]) -> None:
    """Track ``events`` so that each ends in its tier."""
    for tier in range(5):
        for offset, user, event, where in events:
            if where == tier:
                when = datetime.combine(DAY0 + timedelta(days=offset), datetime.min.time())
                client.track(
                    event,
                    user_id=None if user is None else f"u{user}",
                    timestamp=when.replace(hour=12, tzinfo=timezone.utc),
                )
        if tier == 0:
            client.flush()
        elif tier in (1, 2):
            client.scheduler.push()
            for batch in client.store.claim():  # a flush in flight
                if tier == 2:
                    client.sink.apply(batch)  # applied, its ack not yet made
        elif tier == 3:
            client.scheduler.push()


def _ranges(labels: list[datetime], granularity: str, zone: str) -> list[tuple[int, int]]:
    """The UTC days of each period: those with its dates in ``zone``."""
    after = list(
        periods(labels[-1], labels[-1] + timedelta(days=32), granularity, resolve_tz(zone))
    )
    ends = [label.date() for label in labels[1:]] + [after[1][0].date()]
    return [(day_of(lbl.date()), day_of(end)) for lbl, end in zip(labels, ends, strict=True)]


def _users_in(events: list[Tracked], names: set[str] | None, low: int, high: int) -> set[int]:
    return {
        user
        for offset, user, event, _ in events
        if user is not None
        and (names is None or event in names)
        and low <= day_of(DAY0) + offset < high
    }


@pytest.mark.parametrize("kind", ["memory", "redis+postgres"])
@EXAMPLES
@given(
    events=tracked,
    granularity=st.sampled_from(["day", "week", "month"]),
    zone=st.sampled_from(ZONES),
    first=st.integers(-5, 60),
    length=st.integers(0, 40),
    names=st.sampled_from([None, "e", ("e", "f"), ("g", "f", "g")]),
)
def test_active_users_match_a_recount_in_every_tier(
    kind: str,
    events: list[Tracked],
    granularity: str,
    zone: str,
    first: int,
    length: int,
    names: str | tuple[str, ...] | None,
) -> None:
    with _client(kind) as client:
        _load(client, events)
        start = DAY0 + timedelta(days=first)
        got = client.active_users(
            start, start + timedelta(days=length), granularity=granularity, tz=zone, events=names
        )
    labels = [label for label, _ in got]
    assert labels == [
        label
        for label, _, _ in periods(
            start, start + timedelta(days=length), granularity, resolve_tz(zone)
        )
    ]
    wanted = None if names is None else {names} if isinstance(names, str) else set(names)
    expected = [
        len(_users_in(events, wanted, lo, hi)) for lo, hi in _ranges(labels, granularity, zone)
    ]
    assert [n for _, n in got] == expected


# (day offset, user (None: no user), event, account (None: no group), tier)
GroupTracked = tuple[int, int | None, str, str | None, int]
group_tracked = st.lists(  # few users and days: the same user often in several tiers
    st.tuples(
        st.integers(0, 29),
        st.one_of(st.none(), st.integers(0, 3)),
        st.sampled_from(["e", "f"]),
        st.sampled_from([None, "acme", "zen"]),
        st.integers(0, 4),
    ),
    min_size=1,
    max_size=50,
)


@pytest.mark.parametrize("kind", ["memory", "redis+postgres"])
@EXAMPLES
@given(
    events=group_tracked,
    granularity=st.sampled_from(["day", "week", "month"]),
    first=st.integers(-5, 60),
    length=st.integers(0, 40),
    names=st.sampled_from([None, "e", ("e", "f")]),
)
def test_an_accounts_active_users_match_a_recount_in_every_tier(
    kind: str,
    events: list[GroupTracked],
    granularity: str,
    first: int,
    length: int,
    names: str | tuple[str, ...] | None,
) -> None:
    with _client(kind) as client:
        plain = [(o, u, e, t) for o, u, e, g, t in events]
        by_group = {i: g for i, (_, _, _, g, _) in enumerate(events)}
        for tier in range(5):  # _load, with each call's account
            for i, (offset, user, event, _) in enumerate(plain):
                if events[i][4] == tier:
                    when = datetime.combine(DAY0 + timedelta(days=offset), datetime.min.time())
                    client.track(
                        event,
                        user_id=None if user is None else f"u{user}",
                        groups=None if by_group[i] is None else {"account": by_group[i]},
                        timestamp=when.replace(hour=12, tzinfo=timezone.utc),
                    )
            if tier == 0:
                client.flush()
            elif tier in (1, 2):
                client.scheduler.push()
                for batch in client.store.claim():
                    if tier == 2:
                        client.sink.apply(batch)
            elif tier == 3:
                client.scheduler.push()
        start = DAY0 + timedelta(days=first)
        got = client.active_users(
            start,
            start + timedelta(days=length),
            granularity=granularity,
            events=names,
            group=("account", "acme"),
        )
    labels = [label for label, _ in got]
    wanted = None if names is None else {names} if isinstance(names, str) else set(names)
    acme = [(o, u, e, t) for o, u, e, g, t in events if g == "acme"]
    expected = [
        len(_users_in(acme, wanted, lo, hi)) for lo, hi in _ranges(labels, granularity, "UTC")
    ]
    assert [n for _, n in got] == expected


def _recount_retention(
    events: list[Tracked],
    ranges: list[tuple[int, int]],
    cohorts: int,
    cohort_event: str | None,
    return_event: str | None,
) -> list[tuple[int, list[int]]]:
    first: dict[int, int] = {}
    for offset, user, event, _ in events:
        if user is not None and (cohort_event is None or event == cohort_event):
            first[user] = min(first.get(user, offset), offset)
    out = []
    for c in range(cohorts):
        low, high = ranges[c]
        cohort = {u for u, o in first.items() if low <= day_of(DAY0) + o < high}
        retained = []
        for k in range(len(ranges) - cohorts + 1):
            back = _users_in(
                events, None if return_event is None else {return_event}, *ranges[c + k]
            )
            retained.append(len(cohort & back))
        out.append((len(cohort), retained))
    return out


@pytest.mark.parametrize("kind", ["memory", "redis+postgres"])
@EXAMPLES
@given(
    events=tracked,
    period=st.sampled_from(["day", "week", "month"]),
    zone=st.sampled_from(ZONES),
    first=st.integers(-5, 60),
    length=st.integers(0, 30),
    count=st.integers(1, 4),
    cohort_event=st.sampled_from([None, "e", "f"]),
    return_event=st.sampled_from([None, "e", "g"]),
)
def test_retention_matches_a_recount_in_every_tier(
    kind: str,
    events: list[Tracked],
    period: str,
    zone: str,
    first: int,
    length: int,
    count: int,
    cohort_event: str | None,
    return_event: str | None,
) -> None:
    with _client(kind) as client:
        _load(client, events)
        start = DAY0 + timedelta(days=first)
        got = client.retention(
            start,
            start + timedelta(days=length),
            cohort_event=cohort_event,
            return_event=return_event,
            period=period,
            periods=count,
            tz=zone,
        )
    labels = [c.start for c in got]
    cohort_labels = [
        label
        for label, _, _ in periods(start, start + timedelta(days=length), period, resolve_tz(zone))
    ]
    assert labels == cohort_labels
    spans = list(
        periods(
            cohort_labels[0],
            cohort_labels[-1] + timedelta(days=31 * count),
            period,
            resolve_tz(zone),
        )
    )
    ranges = _ranges([label for label, _, _ in spans], period, zone)[: len(got) + count - 1]
    expected = _recount_retention(events, ranges, len(got), cohort_event, return_event)
    assert [(c.size, c.retained) for c in got] == expected


# -- one behaviour at a time -----------------------------------------------------------------


@pytest.fixture(params=["memory", "redis+postgres"])
def client(request: pytest.FixtureRequest) -> Iterator[Analytics]:
    with _client(request.param) as c:
        yield c


def _on(client: Analytics, event: str, user: str, day: date) -> None:
    client.track(
        event,
        user_id=user,
        timestamp=datetime(day.year, day.month, day.day, 9, tzinfo=timezone.utc),
    )


W1 = date(2026, 11, 2)  # a Monday
W2, W3 = W1 + timedelta(days=7), W1 + timedelta(days=14)


def test_an_accounts_user_in_the_sink_and_pending_counts_once(client: Analytics) -> None:
    acme = {"account": "acme"}
    client.track(
        "open", user_id="a", groups=acme, timestamp=datetime(2026, 11, 2, 9, tzinfo=timezone.utc)
    )
    client.track(
        "open",
        user_id="b",
        groups={"account": "zen"},
        timestamp=datetime(2026, 11, 2, 9, tzinfo=timezone.utc),
    )
    client.flush()
    client.track(
        "open", user_id="a", groups=acme, timestamp=datetime(2026, 11, 3, 9, tzinfo=timezone.utc)
    )
    client.track("open", groups=acme, timestamp=datetime(2026, 11, 3, 9, tzinfo=timezone.utc))
    weekly = client.active_users(W1, W1, granularity="week", group=("account", "acme"))
    assert [n for _, n in weekly] == [1]
    assert [n for _, n in client.active_users(W1, W1, granularity="week")] == [2]


def test_daily_weekly_and_monthly_active_users(client: Analytics) -> None:
    for user, day in [("a", W1), ("b", W1), ("a", W1 + timedelta(days=1)), ("c", W2)]:
        _on(client, "open", user, day)
    client.flush()
    _on(client, "open", "a", W2)  # buffered: counted once with the sink's "a" of week 1
    daily = client.active_users(W1, W1 + timedelta(days=2))
    assert [n for _, n in daily] == [2, 1, 0]
    weekly = client.active_users(W1, W2, granularity="week")
    assert weekly == [
        (datetime(2026, 11, 2, tzinfo=resolve_tz("UTC")), 2),
        (datetime(2026, 11, 9, tzinfo=resolve_tz("UTC")), 2),
    ]
    assert [n for _, n in client.active_users(W1, W1, granularity="month")] == [3]
    assert [n for _, n in client.active_users(W1, W2, granularity="week", events="other")] == [0, 0]


def test_a_cohort_is_the_period_of_a_users_first_day_ever(client: Analytics) -> None:
    _on(client, "signup", "old", W1 - timedelta(days=30))  # before the range: in no cohort
    _on(client, "open", "old", W1)
    for user in ("a", "b"):
        _on(client, "open", user, W1)
    _on(client, "open", "a", W2)
    client.flush()
    _on(client, "open", "c", W2)  # pending: a cohort of week 2
    _on(client, "open", "b", W3)
    got = client.retention(W1, W2, period="week", periods=3)
    assert got == [
        Cohort(datetime(2026, 11, 2, tzinfo=resolve_tz("UTC")), 2, [2, 1, 1]),
        Cohort(datetime(2026, 11, 9, tzinfo=resolve_tz("UTC")), 1, [1, 0, 0]),
    ]
    _, size, retained = got[0]  # a row unpacks like a tuple
    assert (size, retained) == (2, [2, 1, 1])


def test_late_data_moves_a_user_to_their_earlier_cohort(client: Analytics) -> None:
    _on(client, "open", "late", W2)
    client.flush()
    assert [c.size for c in client.retention(W1, W2, period="week", periods=1)] == [0, 1]
    _on(client, "open", "late", W1)  # an event of the week before arrives late
    assert [c.size for c in client.retention(W1, W2, period="week", periods=1)] == [1, 0]
    client.flush()
    assert [(c.size, c.retained) for c in client.retention(W1, W2, period="week", periods=2)] == [
        (1, [1, 1]),
        (0, [0, 0]),
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.active_users(W2, W1), "start 2026-11-09T00:00:00+00:00 is after end"),
        (
            lambda c: c.active_users(W1, W2, granularity="hour"),
            "granularity 'hour' is not accepted",
        ),
        (lambda c: c.active_users(W1, W2, events=[]), "events is empty"),
        (lambda c: c.active_users(W1, W2, events=[" x"]), "event name ' x'"),
        (lambda c: c.active_users(W1, W2, tz="Mars/Base"), "tz 'Mars/Base' is not a known"),
        (
            lambda c: c.active_users(W1, W2, group=("team", "x")),
            "group type 'team' is not configured",
        ),
        (
            lambda c: c.retention(W1, W2, periods=0),
            "periods 0 is not accepted; accepted: an int from 1 to 366",
        ),
        (lambda c: c.retention(W1, W2, periods=367), "periods 367 is not accepted"),
        (lambda c: c.retention(W1, W2, periods=True), "periods True is not accepted"),
        (
            lambda c: c.retention(W1, W2, period="year"),
            "period 'year' is not accepted; accepted: day, week, month",
        ),
        (lambda c: c.retention(W2, W1), "start 2026-11-09T00:00:00+00:00 is after end"),
        (
            lambda c: c.retention(date(9998, 1, 1), date(9998, 12, 1), period="month", periods=12),
            "end out of range",
        ),
    ],
)
def test_bad_input_names_the_value_and_what_is_accepted(call: Any, message: str) -> None:
    with (
        Analytics(background=False) as c,
        pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")),
    ):
        call(c)


# -- PostgreSQL: first days kept at flush time -------------------------------------------------


def test_first_days_are_built_for_data_stored_before_the_migration() -> None:
    url = postgres_url_or_skip()
    schema = unique_name("first")
    rows = [("open", W2, "a"), ("open", W1, "a"), ("open", W2, "b"), ("view", W3, "c")]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            migrate(conn, schema, until=4)
            with conn.transaction():  # per-user rows as an earlier version left them
                create_partitions(conn, schema, "user_daily_counts", [W1.replace(day=1)])
                conn.cursor().executemany(
                    f'INSERT INTO "{schema}".user_daily_counts VALUES (%s, %s, %s, 1)', rows
                )
                build_user_bitmaps(conn, schema)
            assert migrate(conn, schema) == [5, 6]
        sink = PostgresSink.from_url(f"{url}?schema={schema}")
        with Analytics(sink=sink, background=False, clock=ManualClock(start=NOW)) as client:
            _on(client, "open", "d", W2)
            _on(client, "open", "c", W1)  # late: c's first day of any event moves to week 1
            client.flush()
            got = client.retention(W1, W3, cohort_event="open", period="week", periods=1)
            assert [c.size for c in got] == [2, 2, 0]
            got = client.retention(W1, W3, period="week", periods=3)
            assert [(c.size, c.retained) for c in got] == [
                (2, [2, 1, 1]),
                (2, [2, 0, 0]),
                (0, [0, 0, 0]),
            ]
    finally:
        drop_schema(url, schema)


# -- the docs and the command line -----------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs"
VISITS = [  # the worked example of docs/active-users.md
    (2, "ana", "open"),
    (2, "bo", "open"),
    (3, "ana", "export"),
    (4, "cy", "open"),
    (10, "ana", "open"),
    (11, "dee", "open"),
    (12, "dee", "export"),
    (19, "bo", "open"),
    (20, "eve", "open"),
]
FIRSTS = [  # the worked example of docs/retention.md
    (1, "old", "signup"),
    (2, "ana", "signup"),
    (2, "bo", "signup"),
    (2, "cy", "signup"),
    (10, "dee", "signup"),
    (10, "eve", "signup"),
    (3, "old", "open"),
    (9, "ana", "open"),
    (11, "bo", "open"),
    (16, "ana", "open"),
    (17, "dee", "open"),
    (24, "ana", "open"),
]


def _block(page: str, heading: str, language: str) -> str:
    """Return the first ``language`` code block after ``heading`` in a docs page."""
    text = (DOCS / page).read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    start = section.index(f"```{language}\n") + len(language) + 4
    return section[start : section.index("```", start)]


@pytest.mark.parametrize(
    ("page", "heading"),
    [
        ("active-users.md", "## A worked example"),
        ("active-users.md", "## An account's active users"),
        ("retention.md", "## A worked example"),
    ],
)
def test_the_worked_example_prints_what_the_page_shows(
    page: str, heading: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _block(page, heading, "python")
    exec(compile(code, str(DOCS / page), "exec"), {"__name__": "example"})
    assert capsys.readouterr().out == _block(page, heading, "text")


@pytest.mark.parametrize(
    ("page", "tracked", "args"),
    [
        (
            "active-users.md",
            VISITS,
            ["active", "--from", "2026-11-02", "--to", "2026-11-20", "--granularity", "week"],
        ),
        (
            "retention.md",
            FIRSTS,
            [
                "retention",
                "--from",
                "2026-11-02",
                "--to",
                "2026-11-16",
                "--periods",
                "4",
                "--cohort-event",
                "signup",
                "--return-event",
                "open",
            ],
        ),
    ],
)
def test_the_command_prints_the_table_the_page_shows(
    page: str,
    tracked: list[tuple[int, str, str]],
    args: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with redis_and_postgres("cli") as (store, sink):
        with Analytics(sink=sink, background=False) as client:
            for day, user, event in tracked[:-1]:
                _on(client, event, user, date(2026, 11, day))
        # The last one pushed to the store, never flushed: read with --store only.
        with Analytics(store=store, sink=sink, background=False, flusher=False) as client:
            day, user, event = tracked[-1]
            _on(client, event, user, date(2026, 11, day))
        capsys.readouterr()
        assert main([*args, "--sink", sink, "--store", store]) == 0
        assert capsys.readouterr().out == _block(page, "## From the command line", "text")
        assert main([*args, "--sink", sink, "--format", "csv"]) == 0
        rows = capsys.readouterr().out.splitlines()
        if page == "active-users.md":
            assert rows == [
                "period,active_users",
                "2026-11-02T00:00:00+00:00,3",
                "2026-11-09T00:00:00+00:00,2",
                "2026-11-16T00:00:00+00:00,1",  # eve is only in the store
            ]
        else:
            assert rows[:5] == [
                "cohort,size,period,retained",
                "2026-11-02T00:00:00+00:00,3,0,0",
                "2026-11-02T00:00:00+00:00,3,1,2",
                "2026-11-02T00:00:00+00:00,3,2,1",
                "2026-11-02T00:00:00+00:00,3,3,0",  # ana's last visit is only in the store
            ]
        assert main([*args, "--sink", sink, "--store", store, "--format", "json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        if page == "active-users.md":
            assert [row["active_users"] for row in shown] == [3, 2, 2]
        else:
            assert [(row["size"], row["retained"]) for row in shown] == [
                (3, [0, 2, 1, 1]),
                (2, [0, 1, 0, 0]),
                (0, [0, 0, 0, 0]),
            ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["active", "--from", "2026-11-02", "--to", "2026-11-01"], "is after end"),
        (["active", "--from", "2026-11-02", "--to", "2026-11-03"], "no URL given"),
        (
            ["retention", "--from", "2026-11-02", "--to", "2026-11-03", "--periods", "0"],
            "0 is out of range",
        ),
        (
            ["retention", "--from", "2026-11-02", "--to", "2026-11-03", "--period", "hour"],
            "invalid choice",
        ),
    ],
)
def test_the_commands_refuse_bad_input(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("ANALYTICS_SINK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_active_counts_one_groups_users_with_group(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with redis_and_postgres("cligroup") as (_, sink):
        with Analytics(sink=sink, background=False) as client:
            for day, user, account in [(2, "ana", "acme"), (3, "bo", "acme"), (3, "cy", "zen")]:
                client.track(
                    "open",
                    user_id=user,
                    groups={"account": account},
                    timestamp=datetime(2026, 11, day, 9, tzinfo=timezone.utc),
                )
        capsys.readouterr()
        args = ["active", "--from", "2026-11-02", "--to", "2026-11-03", "--sink", sink]
        assert main([*args, "--group", "account=acme", "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == [
            "2026-11-02T00:00:00+00:00,1",
            "2026-11-03T00:00:00+00:00,1",
        ]
        assert main([*args, "--group", "account=acme"]) == 0
        assert "any event, account acme" in capsys.readouterr().out
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--group", "acme"])
        assert exit_.value.code == 2
        assert "'acme' is not TYPE=ID" in capsys.readouterr().err
