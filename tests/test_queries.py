"""Queries: exact across buffer, store and sink; calendar periods; clear errors."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from analytics_sdk import Analytics
from analytics_sdk.backends.postgres import PostgresSink
from analytics_sdk.cli import main
from analytics_sdk.query import MAX_PERIODS
from analytics_sdk.testing import ManualClock

from .utils import redis_and_postgres

DAY = date(2026, 11, 25)
T0 = datetime(2026, 11, 25, tzinfo=timezone.utc)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=datetime(2026, 11, 27, 12, tzinfo=timezone.utc))


@pytest.fixture
def client(clock: ManualClock):  # type: ignore[no-untyped-def]
    with Analytics(clock=clock, background=False) as c:
        yield c


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_count_by_day_hour_and_all_time(client: Analytics) -> None:
    client.track("v", timestamp=at(1))
    client.track("v", timestamp=at(1.5), value=2)
    client.track("v", timestamp=at(23.99))
    client.track("v", timestamp=at(24))  # next day
    assert client.count("v", day=DAY) == 4
    assert client.count("v", day=DAY + timedelta(days=1)) == 1
    assert client.count("v", hour=at(1.2)) == 3
    assert client.count("v", hour=at(1).astimezone(ZoneInfo("America/New_York"))) == 3
    assert client.count("v") == 5
    assert client.count("never") == 0


def test_counts_are_exact_whichever_tier_holds_them(client: Analytics) -> None:
    client.track("v", timestamp=at(3), user_id="a")
    client.flush()  # -> sink
    client.track("v", timestamp=at(3), user_id="a", value=2)
    client.scheduler.push()  # -> store, live
    client.track("v", timestamp=at(3), user_id="b", value=4)
    client.scheduler.push()
    client.store.claim()  # -> store, claimed (a flush in flight)
    client.track("v", timestamp=at(3), user_id="a", value=8)  # -> buffer
    assert client.count("v", day=DAY) == 15
    assert client.count("v", day=DAY, user_id="a") == 11
    assert client.hourly("v", day=DAY)[3] == 15
    assert client.unique_users("v", DAY, DAY) == 2
    assert client.top_users("v", day=DAY) == [("a", 11), ("b", 4)]


def test_hourly_is_24_buckets_like_the_seed(client: Analytics) -> None:
    for h in (0, 5, 5, 23):
        client.track("v", timestamp=at(h + 0.5))
    hourly = client.hourly("v", day=DAY)
    assert list(hourly) == list(range(24))
    assert (hourly[0], hourly[5], hourly[23], hourly[12]) == (1, 2, 1, 0)


def test_property_subset_filters(client: Analytics) -> None:
    client.track("v", properties={"plan": "pro", "path": "/"}, timestamp=at(1))
    client.track("v", properties={"plan": "pro"}, timestamp=at(1))
    client.track("v", properties={"plan": "free", "path": "/"}, timestamp=at(1))
    assert client.count("v", day=DAY, properties={"plan": "pro"}) == 2
    assert client.count("v", day=DAY, properties={"path": "/"}) == 2
    assert client.count("v", day=DAY, properties={"path": "/", "plan": "pro"}) == 1
    assert client.hourly("v", day=DAY, properties={"plan": "free"})[1] == 1


def test_series_by_day_is_gap_filled_and_inclusive(client: Analytics) -> None:
    client.track("v", timestamp=at(1))
    client.track("v", timestamp=at(49), value=3)
    series = client.series("v", DAY - timedelta(days=1), DAY + timedelta(days=2))
    assert [n for _, n in series] == [0, 1, 0, 3]
    assert series[1][0] == T0
    assert all(label.tzinfo is not None for label, _ in series)


def test_series_by_hour_week_and_month(client: Analytics) -> None:
    client.track("v", timestamp=at(2))
    client.track("v", timestamp=at(2.5))
    client.track("v", timestamp=datetime(2026, 11, 2, 12, tzinfo=timezone.utc))  # a Monday
    hours = client.series("v", at(0), at(3), granularity="hour")
    assert [n for _, n in hours] == [0, 0, 2, 0]
    weeks = client.series("v", date(2026, 11, 1), DAY, granularity="week")
    assert weeks[0][0].date() == date(2026, 10, 26)  # weeks start on Monday
    assert [n for _, n in weeks] == [0, 1, 0, 0, 2]
    months = client.series("v", date(2026, 10, 15), DAY, granularity="month")
    assert [(label.month, n) for label, n in months] == [(10, 0), (11, 3)]


def test_series_days_follow_the_time_zone(client: Analytics) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")  # UTC+9: 20:00 UTC on the 25th is the 26th in Tokyo
    client.track("v", timestamp=at(20))
    client.track("v", timestamp=at(10))
    utc = client.series("v", DAY, DAY + timedelta(days=1))
    local = client.series("v", DAY, DAY + timedelta(days=1), tz="Asia/Tokyo")
    assert [n for _, n in utc] == [2, 0]
    assert [n for _, n in local] == [1, 1]
    assert local[0][0] == datetime(2026, 11, 25, tzinfo=tokyo)


def test_series_across_a_dst_change_has_23_and_25_hour_days(client: Analytics) -> None:
    paris = ZoneInfo("Europe/Paris")
    for day in (date(2026, 3, 28), date(2026, 3, 29), date(2026, 3, 30)):
        start = datetime(day.year, day.month, day.day, tzinfo=paris).astimezone(timezone.utc)
        for h in range(26):  # 26 real hours from local midnight
            client.track("v", timestamp=start + timedelta(hours=h))
    series = client.series("v", date(2026, 3, 29), date(2026, 3, 29), tz="Europe/Paris")
    # 29 March 2026 in Paris has 23 hours: 23 from this day's loop, none from the others'.
    assert series[0][1] == 23 + 2  # ...plus the previous day's hours 24 and 25, which fall on it


def test_unique_users_over_a_range(client: Analytics) -> None:
    for day, user in [(0, "a"), (0, "b"), (1, "a"), (2, "c")]:
        client.track("v", user_id=user, timestamp=at(24 * day + 1))
    assert client.unique_users("v", DAY, DAY) == 2
    assert client.unique_users("v", DAY, DAY + timedelta(days=1)) == 2
    assert client.unique_users("v", DAY, DAY + timedelta(days=2)) == 3


def test_top_users_order_and_limit(client: Analytics) -> None:
    for user, n in [("a", 3), ("b", 5), ("c", 3), ("d", 1)]:
        client.track("v", user_id=user, value=n, timestamp=at(1))
    assert client.top_users("v", day=DAY, limit=3) == [("b", 5), ("a", 3), ("c", 3)]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.count("v", day=DAY, hour=at(1)), ValueError, "not both"),
        (lambda c: c.count("v", day=T0), TypeError, "use hour= for a datetime"),
        (lambda c: c.count("v", hour=datetime(2026, 1, 1)), ValueError, "naive"),
        (lambda c: c.count("v", user_id="u", properties={"a": "b"}), ValueError, "per-user counts"),
        (
            lambda c: c.series("v", DAY, DAY, granularity="year"),
            ValueError,
            "accepted: hour, day, week, month",
        ),
        (
            lambda c: c.series("v", DAY, DAY, tz="Mars/Base"),
            ValueError,
            "'Mars/Base' is not a known time zone",
        ),
        (
            lambda c: c.series("v", DAY, DAY - timedelta(days=1)),
            ValueError,
            "accepted: start <= end",
        ),
        (lambda c: c.unique_users("v", DAY, DAY - timedelta(days=1)), ValueError, "start <= end"),
        (lambda c: c.top_users("v", day=DAY, limit=0), ValueError, "limit 0"),
        (lambda c: c.count("bad\nname"), ValueError, "control"),
        (
            lambda c: c.series("v", at(0), at(0) + timedelta(days=10_000), granularity="hour"),
            ValueError,
            "has 240,001 periods; accepted: at most 10,000",
        ),
        (
            lambda c: c.series("v", date(2000, 1, 1), date(2100, 1, 1)),
            ValueError,
            "by day has 36,526 periods; accepted: at most 10,000",
        ),
        (
            lambda c: c.count("v", day=date(1999, 12, 31)),
            ValueError,
            "day 1999-12-31 is out of range; accepted: days from 2000-01-01",
        ),
        (
            lambda c: c.count("v", hour=datetime(1970, 1, 1, tzinfo=timezone.utc)),
            ValueError,
            "hour 1970-01-01T00:00:00[+]00:00 is out of range",
        ),
        (
            lambda c: c.series("v", date(1, 1, 1), DAY),
            ValueError,
            "start 0001-01-01 is out of range",
        ),
        (
            lambda c: c.series("v", DAY, date(9999, 12, 31)),
            ValueError,
            "end 9999-12-31 is out of range; accepted: days from 2000-01-01 .* to 9998-12-31",
        ),
        (
            lambda c: c.unique_users("v", date(1999, 1, 1), DAY),
            ValueError,
            "start 1999-01-01 is out of range",
        ),
        (
            lambda c: c.track("v", timestamp=datetime(1999, 12, 31, 23, 59, tzinfo=timezone.utc)),
            ValueError,
            "timestamp 1999-12-31T23:59:00[+]00:00 is before 2000-01-01T00:00:00[+]00:00; "
            "accepted: from 2000-01-01 UTC",
        ),
        (
            lambda c: c.track("v", timestamp=datetime(1, 1, 1, tzinfo=timezone.utc)),
            ValueError,
            "timestamp 0001-01-01T00:00:00[+]00:00 is before",
        ),
    ],
)
def test_bad_queries_say_what_is_accepted(client: Analytics, call, error, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        call(client)


def test_series_at_the_period_cap_and_the_first_day_with_redis_and_postgres() -> None:
    first = datetime(2000, 1, 1, tzinfo=timezone.utc)
    with (
        redis_and_postgres("limits") as (store_url, sink_url),
        Analytics(store=store_url, sink=sink_url, background=False) as client,
    ):
        client.track("v", timestamp=first)  # the earliest moment accepted
        client.track("v", timestamp=first + timedelta(hours=MAX_PERIODS - 1), value=2)
        with pytest.raises(ValueError, match="is before 2000-01-01"):
            client.track("v", timestamp=first - timedelta(microseconds=1))
        assert client.flush().complete
        client.track("v", timestamp=first + timedelta(hours=5), value=4)  # buffered
        hours = client.series(
            "v", first, first + timedelta(hours=MAX_PERIODS - 1), granularity="hour"
        )
        assert len(hours) == MAX_PERIODS
        assert {i: n for i, (_, n) in enumerate(hours) if n} == {0: 1, 5: 4, MAX_PERIODS - 1: 2}
        assert hours[-1][0] == first + timedelta(hours=MAX_PERIODS - 1)
        with pytest.raises(ValueError, match=f"has {MAX_PERIODS + 1:,} periods"):
            client.series("v", first, first + timedelta(hours=MAX_PERIODS), granularity="hour")
        months = client.series("v", date(2000, 1, 1), date(2833, 4, 1), granularity="month")
        assert len(months) == MAX_PERIODS
        assert sum(n for _, n in months) == 7
        assert client.count("v", day=first.date()) == 5


def test_the_cli_refuses_days_before_2000(capsys: pytest.CaptureFixture[str]) -> None:
    with redis_and_postgres("limits") as (_, sink_url):
        sink = PostgresSink.from_url(sink_url)
        sink.migrate()
        sink.close()
        with pytest.raises(SystemExit) as exit_info:
            main(["query", "v", "--from", "1970-01-01", "--to", "2000-01-02", "--sink", sink_url])
    assert exit_info.value.code == 2
    assert "start 1970-01-01 is out of range; accepted: days from 2000-01-01" in (
        capsys.readouterr().err
    )


def test_every_tier_is_read_with_the_query_range_and_user(clock: ManualClock) -> None:
    """Counts on the day before and after, and of another user, sit in each tier (sink,
    a claim, live in the store, a refused outbox, the buffer): none may leak into a query."""
    from analytics_sdk.backends import MemoryCounterStore, MemorySink

    from .faults import Faults

    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    days = [DAY - timedelta(days=1), DAY, DAY + timedelta(days=1)]
    expected: dict[tuple[str, date], int] = {}

    def track_everywhere(c: Analytics, tier: int) -> None:
        for d, day in enumerate(days):
            for u, user in enumerate(["u1", "u2"]):
                value = 1 + tier * 100 + d * 10 + u
                when = datetime.combine(day, datetime.min.time(), timezone.utc) + timedelta(hours=5)
                c.track("v", user_id=user, timestamp=when, value=value)
                expected[user, day] = expected.get((user, day), 0) + value

    with Analytics(store=store, sink=sink, clock=clock, background=False, claim_lease=3600) as c:
        track_everywhere(c, 0)
        assert c.flush().complete  # tier 0: the sink
        track_everywhere(c, 1)
        c.scheduler.push()
        assert len(store.claim()) == 1  # tier 1: claimed by another flusher, not applied yet
        track_everywhere(c, 2)
        c.scheduler.push()  # tier 2: live in the store
        track_everywhere(c, 3)
        Faults(store).fail("push")
        assert c.flush().error is not None  # tier 3: an outbox the store refused
        track_everywhere(c, 4)  # tier 4: the buffer
        for day in days:
            both = expected["u1", day] + expected["u2", day]
            assert c.count("v", day=day) == both
            assert c.hourly("v", day=day)[5] == both
            for user in ("u1", "u2"):
                assert c.count("v", day=day, user_id=user) == expected[user, day]
            assert c.top_users("v", day=day) == [
                ("u2", expected["u2", day]),
                ("u1", expected["u1", day]),
            ]
        assert c.count("v", user_id="u1") == sum(expected["u1", day] for day in days)
        assert c.unique_users("v", DAY, DAY) == 2
        # One user's query reads that user only, from every tier (it costs what it returns).
        first = (DAY - date(1970, 1, 1)).days
        assert c._query.user_counts("v", first, first + 1, "u2") == {"u2": expected["u2", DAY]}
