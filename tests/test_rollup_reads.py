"""Rollup-aware reads: whole UTC days from the daily rollup, edges from hourly rows, periods
summed in the sink, exact across the three tiers (checked against a brute-force recount)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics_sdk import Analytics
from analytics_sdk.backends import Batch, Delta
from analytics_sdk.backends.base import Sink, periods_of
from analytics_sdk.backends.postgres import PostgresSink, _plan
from analytics_sdk.keys import day_of, hour_of
from analytics_sdk.query import periods, resolve_tz
from analytics_sdk.testing import ManualClock

from .utils import drop_schema, make_sink, postgres_url_or_skip, unique_name

DAY0 = date(2026, 11, 20)
HOUR0 = day_of(DAY0) * 24
NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
SETS = [(), (("plan", "pro"),), (("plan", "free"),), (("plan", "pro"), ("os", "ios"))]
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Europe/Paris"]
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# (hour offset from HOUR0, property set, value, tier: 0 sink, 1 claimed, 2 live, 3 buffer)
tracked = st.lists(
    st.tuples(
        st.integers(0, 9 * 24 - 1),
        st.sampled_from(range(len(SETS))),
        st.integers(1, 5),
        st.integers(0, 3),
    ),
    max_size=40,
)


@pytest.fixture(params=["memory", "postgres"])
def client(request: pytest.FixtureRequest) -> Iterator[Analytics]:
    clock = ManualClock(start=NOW)
    with (
        make_sink(request.param, request, clock.time) as sink,
        Analytics(sink=sink, clock=clock, background=False, claim_lease=3600) as c,
    ):
        yield c


def _load(client: Analytics, event: str, events: list[tuple[int, int, int, int]]) -> None:
    """Track ``events`` so that each ends in its tier."""
    for tier in range(4):
        for offset, s, value, where in events:
            if where == tier:
                when = datetime.fromtimestamp((HOUR0 + offset) * 3600 + 60, timezone.utc)
                client.track(event, timestamp=when, value=value, properties=dict(SETS[s]))
        if tier == 0:
            client.flush()  # (claims of earlier examples stay: complete is False)
        elif tier == 1:
            client.scheduler.push()
            client.store.claim()  # a flush in flight, not applied yet
        elif tier == 2:
            client.scheduler.push()


def _recount(
    events: list[tuple[int, int, int, int]], start: int | None, end: int | None, wanted: int
) -> int:
    return sum(
        value
        for offset, s, value, _ in events
        if (start is None or HOUR0 + offset >= start)
        and (end is None or HOUR0 + offset < end)
        and set(SETS[wanted]) <= set(SETS[s])
    )


@EXAMPLES
@given(
    events=tracked,
    granularity=st.sampled_from(["hour", "day", "week", "month"]),
    zone=st.sampled_from(ZONES),
    first=st.integers(-2 * 24, 9 * 24),
    length=st.integers(0, 10 * 24),
    wanted=st.sampled_from(range(len(SETS))),
)
def test_series_and_counts_match_a_recount_in_every_tier(
    client: Analytics,
    events: list[tuple[int, int, int, int]],
    granularity: str,
    zone: str,
    first: int,
    length: int,
    wanted: int,
) -> None:
    if granularity == "hour":
        length = min(length, 3 * 24)
    event = f"e{uuid.uuid4().hex[:10]}"  # every example its own event, in one sink
    _load(client, event, events)
    props = dict(SETS[wanted])
    start = datetime.fromtimestamp((HOUR0 + first) * 3600, timezone.utc)
    end = start + timedelta(hours=length)
    spans = list(periods(start, end, granularity, resolve_tz(zone)))
    expected = [(label, _recount(events, lo, hi, wanted)) for label, lo, hi in spans]
    assert client.series(event, start, end, granularity=granularity, tz=zone, properties=props) == (
        expected
    )
    day = start.date()
    assert client.count(event, day=day, properties=props) == _recount(
        events, day_of(day) * 24, day_of(day) * 24 + 24, wanted
    )
    assert client.count(event, hour=start, properties=props) == _recount(
        events, hour_of(start), hour_of(start) + 1, wanted
    )
    assert client.count(event, properties=props) == _recount(events, None, None, wanted)


bounds_strategy = st.lists(st.integers(HOUR0 - 48, HOUR0 + 12 * 24), min_size=1, max_size=8).map(
    sorted
)


@EXAMPLES
@given(
    hours=st.dictionaries(
        st.tuples(st.sampled_from(range(len(SETS))), st.integers(0, 9 * 24 - 1)),
        st.integers(1, 9),
        max_size=60,
    ),
    inner=bounds_strategy,
    open_start=st.booleans(),
    open_end=st.booleans(),
    wanted=st.sampled_from(range(len(SETS))),
    retention=st.sampled_from([None, 2, 5, 8]),
    pruned=st.booleans(),
)
def test_postgres_period_counts_equal_its_hourly_counts_summed_by_period(
    hours: dict[tuple[int, int], int],
    inner: list[int],
    open_start: bool,
    open_end: bool,
    wanted: int,
    retention: int | None,
    pruned: bool,
) -> None:
    """The planned read (rollup for whole days, hours at the edges, retention's cutoff)
    gives what summing the sink's own hourly answer by period gives, pruned or not."""
    url = postgres_url_or_skip()
    schema = unique_name("rollup")
    clock = ManualClock(start=NOW)
    sink = PostgresSink(url, schema=schema, hourly_retention_days=retention, clock=clock.time)
    try:
        delta = Delta(hourly={("v", SETS[s], HOUR0 + h): n for (s, h), n in hours.items()})
        sink.apply(Batch(id="b", delta=delta, claimed_at=0.0))
        if pruned:
            sink.prune()
        bounds: list[int | None] = list(inner)
        if open_start:
            bounds.insert(0, None)
        if open_end:
            bounds.append(None)
        if len(bounds) < 2:
            bounds = [None, *bounds]
        props = SETS[wanted]
        by_hour = sink.hourly_counts("v", bounds[0], bounds[-1], props)
        assert sink.period_counts("v", bounds, props) == periods_of(by_hour, bounds)
    finally:
        sink.close()
        drop_schema(url, schema)


def test_whole_days_come_from_the_daily_rollup_and_edges_from_hours() -> None:
    """With the hourly rows of a day gone (deleted behind the SDK's back), whole days still
    count from ``daily_counts``; a partial day (another zone's day, an hour) needs its hours."""
    url = postgres_url_or_skip()
    schema = unique_name("rollup")
    sink_url = f"{url}?schema={schema}"
    try:
        with Analytics(sink=sink_url, background=False) as client:
            for h in range(48):
                client.track(
                    "v", timestamp=datetime.fromtimestamp((HOUR0 + h) * 3600, timezone.utc)
                )
            assert client.flush().complete
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'DELETE FROM "{schema}".hourly_counts')
            assert client.count("v", day=DAY0) == 24
            assert client.count("v") == 48
            assert [n for _, n in client.series("v", DAY0, DAY0 + timedelta(days=1))] == [24, 24]
            assert client.count("v", hour=datetime.fromtimestamp(HOUR0 * 3600, timezone.utc)) == 0
            paris = client.series("v", DAY0, DAY0 + timedelta(days=1), tz="Europe/Paris")
            assert [n for _, n in paris] == [0, 0]
    finally:
        drop_schema(url, schema)


@pytest.mark.parametrize(
    ("bounds", "cutoff", "days", "hours"),
    [
        ([0, 24], None, [(0, 0, 1)], []),  # a UTC day
        ([None, None], None, [(0, -2_000_000, 3_000_000)], []),  # all time
        ([5, 29], None, [], [(0, 5, 29)]),  # a day in UTC-5: hours only
        ([5, 77], None, [(0, 1, 3)], [(0, 5, 24), (0, 72, 77)]),  # two whole days, two edges
        ([3, 4], None, [], [(0, 3, 4)]),  # an hour
        ([0, 24, 48], None, [(0, 0, 1), (1, 1, 2)], []),  # one range per period
        # Hourly rows before day 2 are gone: days starting in range count whole, from the
        # rollup, as the hourly read does; hours after the cutoff come from hourly rows.
        ([5, 77], 2, [(0, 1, 3)], [(0, 72, 77)]),
        ([24, 30], 2, [(0, 1, 2)], []),
        ([20, 60], 2, [(0, 1, 2)], [(0, 48, 60)]),
    ],
)
def test_plan(
    bounds: list[int | None],
    cutoff: int | None,
    days: list[tuple[int, int, int]],
    hours: list[tuple[int, int, int]],
) -> None:
    assert _plan(bounds, cutoff) == (days, hours)


def test_period_counts_is_part_of_the_sink_contract() -> None:
    assert Sink.period_counts.__doc__


# (user, day offset, value, tier: 0 sink, 1 claimed, 2 live, 3 buffer)
users_tracked = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "B", "é", "u1", "u10", "u2"]),
        st.integers(0, 4),
        st.integers(1, 4),
        st.integers(0, 3),
    ),
    max_size=30,
)


def _load_users(client: Analytics, event: str, events: list[tuple[str, int, int, int]]) -> None:
    for tier in range(4):
        for user, offset, value, where in events:
            if where == tier:
                when = datetime.combine(
                    DAY0 + timedelta(days=offset), datetime.min.time(), timezone.utc
                )
                client.track(event, timestamp=when, value=value, user_id=user)
        if tier == 0:
            client.flush()
        elif tier == 1:
            client.scheduler.push()
            client.store.claim()
        elif tier == 2:
            client.scheduler.push()


@EXAMPLES
@given(
    events=users_tracked,
    first=st.integers(0, 4),
    days=st.integers(1, 3),
    limit=st.integers(1, 4),
)
def test_top_and_unique_users_match_a_recount_in_every_tier(
    client: Analytics,
    events: list[tuple[str, int, int, int]],
    first: int,
    days: int,
    limit: int,
) -> None:
    event = f"e{uuid.uuid4().hex[:10]}"
    _load_users(client, event, events)
    day = DAY0 + timedelta(days=first)
    on_day: dict[str, int] = {}
    for user, offset, value, _ in events:
        if offset == first:
            on_day[user] = on_day.get(user, 0) + value
    ranked = sorted(on_day.items(), key=lambda item: (-item[1], item[0]))[:limit]
    assert client.top_users(event, day=day, limit=limit) == ranked
    in_range = {user for user, offset, _, _ in events if first <= offset < first + days}
    assert client.unique_users(event, day, day + timedelta(days=days - 1)) == len(in_range)


def test_pending_counts_lift_a_user_into_the_top(client: Analytics) -> None:
    """The sink's own top 2 are a and b; c's pending and buffered counts put c first."""
    when = datetime.combine(DAY0, datetime.min.time(), timezone.utc)
    for user, value in (("a", 5), ("b", 4), ("c", 3), ("d", 1)):
        client.track("v", timestamp=when, value=value, user_id=user)
    client.flush()
    client.track("v", timestamp=when, value=2, user_id="c")
    client.scheduler.push()
    client.track("v", timestamp=when, value=1, user_id="c")  # buffered
    client.track("v", timestamp=when, value=1, user_id="e")  # a user only in the buffer
    assert client.top_users("v", day=DAY0, limit=2) == [("c", 6), ("a", 5)]
    assert client.top_users("v", day=DAY0, limit=10) == [
        ("c", 6),
        ("a", 5),
        ("b", 4),
        ("d", 1),
        ("e", 1),
    ]
    assert client.unique_users("v", DAY0, DAY0) == 5


def test_ties_rank_by_code_point_in_the_sink_as_in_python(client: Analytics) -> None:
    when = datetime.combine(DAY0, datetime.min.time(), timezone.utc)
    for user in ("a", "é", "B", "Z"):
        client.track("v", timestamp=when, value=3, user_id=user)
    client.flush()
    assert client.top_users("v", day=DAY0, limit=2) == [("B", 3), ("Z", 3)]


@pytest.mark.parametrize("kind", ["memory", "postgres"])
def test_sink_top_users_over_days_and_distinct_users(
    kind: str, request: pytest.FixtureRequest
) -> None:
    first = day_of(DAY0)
    users = {
        ("v", u, first + d): 1 + (i * 7 + d * 3) % 5
        for i, u in enumerate("abcdefg")
        for d in range(3)
    }
    with make_sink(kind, request, ManualClock(start=NOW).time) as sink:
        sink.apply(Batch(id="b", delta=Delta(users=users), claimed_at=0.0))
        totals: dict[str, int] = {}
        for (_, u, day), n in users.items():
            if first <= day < first + 2:
                totals[u] = totals.get(u, 0) + n
        ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
        assert sink.top_users("v", first, first + 2, 3, ["g", "x"]) == {
            **dict(ranked[:3]),
            "g": totals["g"],
        }
        assert sink.top_users("v", first, first + 2, 0, ["a"]) == {"a": totals["a"]}
        assert sink.distinct_users("v", first, first + 2, ["a", "x"]) == 6
        assert sink.distinct_users("v", first + 5, first + 6, []) == 0
