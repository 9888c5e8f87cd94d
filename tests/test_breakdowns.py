"""Breakdowns and top values: counts by property value, exact across the three tiers
(checked against a brute-force recount of the tracked events), rollup-aware in PostgreSQL,
under the same read fence as every query."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics_sdk import Analytics
from analytics_sdk.backends import Batch, CounterStore, Delta, Sink
from analytics_sdk.backends.postgres import PostgresSink
from analytics_sdk.client import NONE, OTHER
from analytics_sdk.keys import day_of
from analytics_sdk.query import MAX_VALUES, periods, resolve_tz
from analytics_sdk.testing import ManualClock

from .test_read_consistency import flush_elsewhere
from .utils import drop_schema, make_sink, postgres_url_or_skip, redis_and_postgres, unique_name

DAY0 = date(2026, 11, 20)
HOUR0 = day_of(DAY0) * 24
NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
# Property sets as track() takes them: str, int and bool values; some without "path".
SETS: list[dict[str, str | int | bool]] = [
    {},
    {"path": "/"},
    {"path": "/a", "plan": "pro"},
    {"path": "/b", "plan": "free"},
    {"path": "/B"},
    {"path": 7, "plan": "pro"},
    {"path": True},
    {"path": "\u00e9t\u00e9"},
    {"plan": "pro"},
]
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Europe/Paris"]
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# (hour offset from HOUR0, property set, value, tier: 0 sink, 1 claimed, 2 live, 3 buffer)
Event = tuple[int, int, int, int]
tracked = st.lists(
    st.tuples(
        st.integers(0, 9 * 24 - 1),
        st.sampled_from(range(len(SETS))),
        st.integers(1, 5),
        st.integers(0, 3),
    ),
    min_size=10,
    max_size=60,
)


@pytest.fixture(params=["memory", "redis+postgres"])
def client(request: pytest.FixtureRequest) -> Iterator[Analytics]:
    clock = ManualClock(start=NOW)
    settings: dict[str, Any] = {"clock": clock, "background": False, "claim_lease": 3600}
    if request.param == "memory":
        with Analytics(**settings) as c:
            yield c
        return
    with (
        redis_and_postgres("breakdown") as (store, sink),
        Analytics(store=store, sink=sink, **settings) as c,
    ):
        yield c


def _when(offset: int) -> datetime:
    return datetime.fromtimestamp((HOUR0 + offset) * 3600 + 60, timezone.utc)


def _load(client: Analytics, event: str, events: list[Event]) -> None:
    """Track ``events`` so that each ends in its tier."""
    for tier in range(4):
        for offset, s, value, where in events:
            if where == tier:
                client.track(event, timestamp=_when(offset), value=value, properties=SETS[s])
        if tier == 0:
            client.flush()  # (claims of earlier examples stay: complete is False)
        elif tier == 1:
            client.scheduler.push()
            client.store.claim()  # a flush in flight, not applied yet
        elif tier == 2:
            client.scheduler.push()


def _text(value: str | int | bool) -> str:
    """The text track() stores for a property value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _recount(
    events: list[Event],
    by: str,
    spans: list[tuple[int | None, int | None]],
    wanted: dict[str, str],
    limit: int,
) -> dict[str, list[int]]:
    """A breakdown counted from the raw events, the slow and obvious way."""
    series: dict[str | None, list[int]] = {}
    for offset, s, value, _ in events:
        props = {k: _text(v) for k, v in SETS[s].items()}
        if any(props.get(k) != v for k, v in wanted.items()):
            continue
        hour = HOUR0 + offset
        for i, (low, high) in enumerate(spans):
            if (low is None or hour >= low) and (high is None or hour < high):
                series.setdefault(props.get(by), [0] * len(spans))[i] += value
    totals = {v: sum(ns) for v, ns in series.items() if v is not None}
    ranked = sorted(totals, key=lambda v: (-totals[v], v))
    out = {v: series[v] for v in ranked[:limit]}
    if ranked[limit:]:
        out[OTHER] = [sum(col) for col in zip(*(series[v] for v in ranked[limit:]), strict=True)]
    if None in series:
        out[NONE] = series[None]
    return out


@EXAMPLES
@given(
    events=tracked,
    by=st.sampled_from(["path", "plan", "absent"]),
    granularity=st.sampled_from(["hour", "day", "week", "month"]),
    zone=st.sampled_from(ZONES),
    first=st.integers(-2 * 24, 9 * 24),
    length=st.integers(0, 10 * 24),
    limit=st.sampled_from([1, 1, 2, 2, 3, 8]),
    wanted=st.sampled_from([{}, {"plan": "pro"}, {"path": "/a"}]),
)
def test_breakdown_and_top_values_match_a_recount_in_every_tier(
    client: Analytics,
    events: list[Event],
    by: str,
    granularity: str,
    zone: str,
    first: int,
    length: int,
    limit: int,
    wanted: dict[str, str],
) -> None:
    if granularity == "hour":
        length = min(length, 3 * 24)
    event = f"e{uuid.uuid4().hex[:10]}"  # every example its own event, in one sink
    _load(client, event, events)
    start = datetime.fromtimestamp((HOUR0 + first) * 3600, timezone.utc)
    end = start + timedelta(hours=length)
    spans = list(periods(start, end, granularity, resolve_tz(zone)))
    got = client.breakdown(
        event, by, start, end, granularity=granularity, tz=zone, properties=wanted, limit=limit
    )
    expected = _recount(events, by, [(lo, hi) for _, lo, hi in spans], wanted, limit)
    assert {v: [n for _, n in s] for v, s in got.items()} == expected
    assert list(got) == list(expected)  # most first, then (other), then (none)
    for s in got.values():
        assert [label for label, _ in s] == [label for label, _, _ in spans]
    series = client.series(event, start, end, granularity=granularity, tz=zone, properties=wanted)
    sums = [sum(s[i][1] for s in got.values()) for i in range(len(spans))]
    assert sums == [n for _, n in series]

    day = start.date()
    counted = _recount(events, by, [(day_of(day) * 24, day_of(day) * 24 + 24)], {}, limit)
    top = [(v, ns[0]) for v, ns in counted.items() if v not in (OTHER, NONE)]
    assert client.top_values(event, by, day=day, limit=limit) == top
    counted = _recount(events, by, [(None, None)], {}, limit)
    top = [(v, ns[0]) for v, ns in counted.items() if v not in (OTHER, NONE)]
    assert client.top_values(event, by, limit=limit) == top


# -- one behaviour at a time -----------------------------------------------------------------

D = date(2026, 11, 24)


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, 30, tzinfo=timezone.utc)


def _counts(breakdown: dict[str, list[tuple[datetime, int]]]) -> dict[str, list[int]]:
    return {v: [n for _, n in s] for v, s in breakdown.items()}


def test_other_sums_the_values_past_the_limit_and_none_the_events_without(
    client: Analytics,
) -> None:
    for path, n in [("/home", 5), ("/pricing", 4), ("/docs", 2), ("/blog", 1)]:
        client.track("pv", properties={"path": path}, value=n, timestamp=_at(D, 9))
    client.track("pv", properties={"plan": "pro"}, value=3, timestamp=_at(D + timedelta(1), 9))
    client.flush()
    client.track("pv", properties={"path": "/blog"}, value=9, timestamp=_at(D, 10))  # buffered
    got = client.breakdown("pv", "path", D, D + timedelta(days=1), limit=2)
    assert _counts(got) == {
        "/blog": [10, 0],
        "/home": [5, 0],
        OTHER: [6, 0],
        NONE: [0, 3],
    }
    assert _counts(client.breakdown("pv", "path", D, D, limit=10)) == {
        "/blog": [10],
        "/home": [5],
        "/pricing": [4],
        "/docs": [2],
    }
    assert client.breakdown("pv", "absent", D, D) == {NONE: [(got[NONE][0][0], 21)]}
    assert client.breakdown("nothing", "path", D, D) == {}


def test_values_are_keyed_by_the_text_track_stores(client: Analytics) -> None:
    client.track("e", properties={"n": 7}, timestamp=_at(D, 1))
    client.track("e", properties={"n": "7"}, timestamp=_at(D, 1))  # the same count
    client.track("e", properties={"n": True}, timestamp=_at(D, 1))
    client.track("e", properties={"n": False}, value=2, timestamp=_at(D, 1))
    assert client.top_values("e", "n", day=D) == [("7", 2), ("false", 2), ("true", 1)]
    assert client.count("e", day=D, properties={"n": 7}) == 2


def test_a_value_spelled_like_a_bucket_shares_its_key_and_the_sums_hold(
    client: Analytics,
) -> None:
    client.track("e", properties={"k": "(none)"}, value=5, timestamp=_at(D, 1))
    client.track("e", value=2, timestamp=_at(D, 1))
    client.track("e", properties={"k": "a"}, value=3, timestamp=_at(D, 1))
    client.track("e", properties={"k": "b"}, value=1, timestamp=_at(D, 1))
    assert _counts(client.breakdown("e", "k", D, D, limit=2)) == {
        "(none)": [7],
        "a": [3],
        OTHER: [1],
    }
    assert client.top_values("e", "k", day=D) == [("(none)", 5), ("a", 3), ("b", 1)]


def test_ties_go_to_the_smaller_value_by_code_point(client: Analytics) -> None:
    for value in ["b", "a", "B", "\u00e9", "aa"]:
        client.track("e", properties={"k": value}, value=3, timestamp=_at(D, 1))
    client.flush()
    assert [v for v, _ in client.top_values("e", "k", limit=5)] == ["B", "a", "aa", "b", "\u00e9"]
    assert list(client.breakdown("e", "k", D, D, limit=2)) == ["B", "a", OTHER]


def test_periods_in_another_time_zone_and_every_granularity(client: Analytics) -> None:
    # 2026-11-24 20:30 UTC is 2026-11-25 02:00 in Kolkata (+05:30): the next local day.
    client.track("e", properties={"k": "x"}, timestamp=_at(D, 20))
    client.track("e", properties={"k": "y"}, timestamp=_at(D, 10))
    client.flush()
    kolkata = client.breakdown("e", "k", D, D + timedelta(days=1), tz="Asia/Kolkata")
    assert _counts(kolkata) == {"x": [0, 1], "y": [1, 0]}
    assert kolkata["x"][1][0] == datetime(2026, 11, 25, tzinfo=resolve_tz("Asia/Kolkata"))
    for granularity in ["hour", "day", "week", "month"]:
        for tz in ["UTC", "Asia/Kolkata"]:
            got = client.breakdown("e", "k", D, _at(D, 23), granularity=granularity, tz=tz)
            for value, s in got.items():
                filtered = client.series(
                    "e", D, _at(D, 23), granularity=granularity, tz=tz, properties={"k": value}
                )
                assert s == filtered, (granularity, tz, value)
            assert sum(n for s in got.values() for _, n in s) == 2


def test_top_values_over_a_range_of_days_or_hours(client: Analytics) -> None:
    client.track("e", properties={"k": "early"}, value=5, timestamp=_at(D, 0))
    client.track("e", properties={"k": "late"}, value=3, timestamp=_at(D + timedelta(1), 23))
    client.track("e", properties={"k": "late"}, value=3, timestamp=_at(D + timedelta(2), 0))
    assert client.top_values("e", "k", start=D, end=D + timedelta(1)) == [
        ("early", 5),
        ("late", 3),
    ]
    assert client.top_values("e", "k", start=D + timedelta(1)) == [("late", 6)]
    assert client.top_values("e", "k", end=D) == [("early", 5)]
    assert client.top_values("e", "k", start=_at(D, 1), end=_at(D + timedelta(2), 0)) == [
        ("late", 6)
    ]
    assert client.top_values("e", "k", limit=1) == [("late", 6)]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.breakdown("e", 5, D, D), TypeError, "by (a property key) 5 is of type int"),
        (lambda c: c.breakdown("e", "", D, D), ValueError, "accepted: 1 to 100"),
        (lambda c: c.top_values("e", "k" * 101), ValueError, "has 101 characters"),
        (lambda c: c.breakdown("e", "k\n", D, D), ValueError, "printable characters only"),
        (
            lambda c: c.breakdown("e", "k", D, D - timedelta(1)),
            ValueError,
            "start 2026-11-24T00:00:00+00:00 is after end 2026-11-23T00:00:00+00:00",
        ),
        (
            lambda c: c.top_values("e", "k", start=D, end=D - timedelta(1)),
            ValueError,
            "start 2026-11-24 is after end 2026-11-23; accepted: start <= end",
        ),
        (lambda c: c.breakdown("e", "k", D, D, limit=0), ValueError, "limit 0 is not accepted"),
        (
            lambda c: c.top_values("e", "k", limit=MAX_VALUES + 1),
            ValueError,
            "limit 1001 is not accepted; accepted: an int from 1 to 1,000",
        ),
        (lambda c: c.top_values("e", "k", limit=True), ValueError, "limit True"),
        (lambda c: c.breakdown("e", "k", D, D, limit="5"), ValueError, "limit '5'"),
        (
            lambda c: c.top_values("e", "k", day=D, start=D),
            ValueError,
            "pass day= or start=/end=, not both",
        ),
        (
            lambda c: c.top_values("e", "k", start="2026-11-24"),
            TypeError,
            "start '2026-11-24' is of type str; accepted: a date or an aware datetime",
        ),
        (
            lambda c: c.breakdown("e", "k", D, D, granularity="year"),
            ValueError,
            "granularity 'year' is not accepted",
        ),
        (lambda c: c.breakdown("e", "k", D, D, properties={"k": 1.5}), TypeError, "float"),
    ],
)
def test_bad_input_names_the_value_and_what_is_accepted(
    call: Any, error: type[Exception], message: str
) -> None:
    with Analytics(background=False) as c, pytest.raises(error, match=_literal(message)):
        call(c)


def _literal(text: str) -> str:
    import re

    return re.escape(text)


# -- the read fence and the rollup -----------------------------------------------------------


@pytest.fixture
def tiers(store: CounterStore, sink: Sink, clock: ManualClock) -> Iterator[Analytics]:
    with Analytics(store=store, sink=sink, clock=clock, background=False) as c:
        yield c


def after_store_read(client: Analytics, step: Any) -> list[int]:
    """Run ``step`` once, right after a breakdown's first read of the store."""
    read = client.store.pending_property_hourly
    calls: list[int] = []
    client._query.quiet_first = False  # the protocol's reads only, not a sink-alone try first

    def hooked(*args: Any) -> Any:
        pending = read(*args)
        calls.append(1)
        if len(calls) == 1:
            step()
        return pending

    client.store.pending_property_hourly = hooked  # type: ignore[method-assign]
    return calls


def test_counts_read_live_then_committed_before_the_sink_is_read_count_once(
    tiers: Analytics, clock: ManualClock
) -> None:
    when = datetime.fromtimestamp(clock.time(), timezone.utc)
    tiers.track("e", properties={"k": "v"}, value=2, timestamp=when)
    tiers.scheduler.push()
    reads = after_store_read(tiers, lambda: flush_elsewhere(tiers))
    assert tiers.top_values("e", "k") == [("v", 2)]
    assert (len(reads), tiers._query.retries, tiers._query.fenced) == (2, 1, 0)


def test_when_reads_keep_being_overtaken_one_read_behind_the_fence_answers(
    tiers: Analytics, clock: ManualClock
) -> None:
    tiers._query.attempts = 1
    when = datetime.fromtimestamp(clock.time(), timezone.utc)
    tiers.track("e", properties={"k": "v"}, value=2, timestamp=when)
    tiers.track("e", value=1, timestamp=when)
    tiers.scheduler.push()
    reads = after_store_read(tiers, lambda: flush_elsewhere(tiers))
    assert _counts(tiers.breakdown("e", "k", when, when)) == {"v": [2], NONE: [1]}
    assert (len(reads), tiers._query.retries, tiers._query.fenced) == (2, 1, 1)


def test_a_value_ranked_low_in_the_sink_but_high_with_pending_counts_is_found(
    tiers: Analytics, clock: ManualClock
) -> None:
    when = datetime.fromtimestamp(clock.time(), timezone.utc)
    for value, n in [("a", 5), ("b", 4), ("c", 1)]:
        tiers.track("e", properties={"k": value}, value=n, timestamp=when)
    tiers.flush()
    tiers.track("e", properties={"k": "c"}, value=9, timestamp=when)
    tiers.scheduler.push()  # live in the store
    tiers.track("e", properties={"k": "b"}, value=3, timestamp=when)  # buffered
    assert tiers.top_values("e", "k", limit=1) == [("c", 10)]
    assert tiers.top_values("e", "k", limit=2) == [("c", 10), ("b", 7)]
    got = tiers.breakdown("e", "k", when, when, limit=1)
    assert _counts(got) == {"c": [10], OTHER: [12]}


@pytest.mark.parametrize("kind", ["postgres"])
def test_whole_days_come_from_the_daily_rollup(
    kind: str, request: pytest.FixtureRequest, clock: ManualClock
) -> None:
    """With the hourly rows gone (deleted behind the SDK's back), whole UTC days still
    count from ``daily_counts``; a partial day needs its hours."""
    with make_sink(kind, request, clock.time) as sink:
        with Analytics(sink=sink, background=False) as client:
            for h in range(48):
                client.track(
                    "v",
                    properties={"k": "x" if h % 3 else "y"},
                    timestamp=_at(D, 0) + timedelta(hours=h),
                )
            assert client.flush().complete
        schema = sink.schema  # type: ignore[attr-defined]
        with psycopg.connect(sink._conninfo, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(f'DELETE FROM "{schema}".hourly_counts')
        with Analytics(sink=sink, background=False) as client:
            day = client.breakdown("v", "k", D, D + timedelta(days=1))
            assert _counts(day) == {"x": [16, 16], "y": [8, 8]}
            paris = client.breakdown("v", "k", D, D + timedelta(days=1), tz="Europe/Paris")
            assert paris == {}
            assert client.top_values("v", "k", day=D) == [("x", 16), ("y", 8)]


PAIRS = [tuple(sorted((k, _text(v)) for k, v in props.items())) for props in SETS]


@settings(max_examples=25, deadline=None)
@given(
    hours=st.dictionaries(
        st.tuples(st.sampled_from(range(len(SETS))), st.integers(0, 9 * 24 - 1)),
        st.integers(1, 9),
        max_size=60,
    ),
    inner=st.lists(st.integers(HOUR0 - 48, HOUR0 + 12 * 24), min_size=1, max_size=8).map(sorted),
    open_start=st.booleans(),
    open_end=st.booleans(),
    retention=st.sampled_from([None, 2, 5, 8]),
    pruned=st.booleans(),
)
def test_postgres_property_counts_add_up_to_its_period_counts(
    hours: dict[tuple[int, int], int],
    inner: list[int],
    open_start: bool,
    open_end: bool,
    retention: int | None,
    pruned: bool,
) -> None:
    """By value, the planned read (rollup for whole days, hours at the edges, retention's
    cutoff) gives what the sink's own period counts give, filtered by that value."""
    url = postgres_url_or_skip()
    schema = unique_name("breakdown")
    clock = ManualClock(start=NOW)
    sink = PostgresSink(url, schema=schema, hourly_retention_days=retention, clock=clock.time)
    try:
        delta = Delta(hourly={("v", PAIRS[s], HOUR0 + h): n for (s, h), n in hours.items()})
        sink.apply(Batch(id="b", delta=delta, claimed_at=0.0))
        if pruned:
            sink.prune()
        bounds: list[int | None] = [None] * open_start + list(inner) + [None] * open_end
        if len(bounds) < 2:
            bounds = [None, *bounds]
        counts = sink.property_counts("v", "path", bounds, ())
        totals: dict[int, int] = {}
        for (_, period), n in counts.items():
            totals[period] = totals.get(period, 0) + n
        assert totals == sink.period_counts("v", bounds, ())
        for value in {v for v, _ in counts if isinstance(v, str)}:
            mine = {p: n for (v, p), n in counts.items() if v == value}
            assert mine == sink.period_counts("v", bounds, (("path", value),))
    finally:
        sink.close()
        drop_schema(url, schema)


@settings(max_examples=30, deadline=None)
@given(
    hours=st.dictionaries(
        st.tuples(st.sampled_from(range(len(SETS))), st.integers(0, 3 * 24 - 1)),
        st.integers(1, 3),  # few distinct totals: ties decided by code point
        max_size=40,
    ),
    first=st.integers(0, 2),
    days=st.integers(1, 2),
    hourly=st.booleans(),
    by=st.sampled_from(["path", "plan"]),
    limit=st.sampled_from([None, 1, 2, 3, 10]),
    keep=st.sets(st.sampled_from(["/", "/a", "/B", "7", "true", "pro", "free", "gone"])),
)
def test_postgres_ranks_values_in_sql_as_rank_values_does(
    hours: dict[tuple[int, int], int],
    first: int,
    days: int,
    hourly: bool,
    by: str,
    limit: int | None,
    keep: set[str],
) -> None:
    """The sink ranks in SQL (one statement for a single day or hour, another for several
    ranges): its answer is the reference ranking (:func:`rank_values`) of its counts
    unranked, ties, values kept besides, sets without ``by`` and OTHER included; and its
    top values alone are those of that ranking."""
    from analytics_sdk.backends.base import rank_values

    url = postgres_url_or_skip()
    schema = unique_name("ranked")
    sink = PostgresSink(url, schema=schema, clock=ManualClock(start=NOW).time)
    try:
        delta = Delta(hourly={("v", PAIRS[s], HOUR0 + h): n for (s, h), n in hours.items()})
        sink.apply(Batch(id="b", delta=delta, claimed_at=0.0))
        start = HOUR0 + first * 24 + (5 if hourly else 0)  # an hour: the hourly rows' range
        end = start + (1 if hourly else days * 24)
        for bounds in ([start, end], [start, start + 1, end] if end - start > 1 else [start, end]):
            everything = sink.property_counts("v", by, bounds, ())
            ranked = sink.property_counts("v", by, bounds, (), limit, keep)
            assert ranked == rank_values(everything, limit, keep)
        if limit is None:
            return
        # The top values alone (a statement of their own): the same ranking, kept values
        # besides, neither the other values' sum nor the sets without the property.
        for low, high in ((start, end), (None, None), (start, None)):
            for wanted in ((), (("plan", "pro"),)):
                counts = sink.property_counts("v", by, [low, high], wanted)
                totals = {v: n for (v, _), n in counts.items() if isinstance(v, str)}
                top = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
                expected = dict(top) | {v: totals[v] for v in keep if v in totals}
                assert sink.top_values("v", by, low, high, wanted, limit, keep) == expected
    finally:
        sink.close()
        drop_schema(url, schema)


# -- the docs --------------------------------------------------------------------------------

PAGE = Path(__file__).resolve().parents[1] / "docs" / "breakdowns.md"


def test_the_worked_example_prints_what_the_page_shows(capsys: pytest.CaptureFixture[str]) -> None:
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("\n## A worked example\n") :]
    code = section[section.index("```python\n") + 10 :]
    code = code[: code.index("```")]
    shown = section[section.index("```text\n") + 8 :]
    shown = shown[: shown.index("```")]
    exec(compile(code, str(PAGE), "exec"), {"__name__": "breakdowns_example"})
    assert capsys.readouterr().out == shown
