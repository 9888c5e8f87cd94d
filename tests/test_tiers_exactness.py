"""Every query API exact with all three tiers populated at once: this process's buffer,
counts pending in Redis (live and claimed), and PostgreSQL, checked against a brute-force
recount of the tracked events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics_sdk import Analytics
from analytics_sdk.testing import ManualClock

from .utils import redis_and_postgres

DAY0 = date(2026, 11, 20)
NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
SETS = [(), (("plan", "pro"),), (("plan", "free"),)]
USERS = [None, "a", "b", "B", "é", "u1", "u10"]

# (user, hour offset from DAY0, property set, value, tier: 0 sink, 1 claimed, 2 live, 3 buffer)
Tracked = tuple[str | None, int, int, int, int]
tracked = st.lists(
    st.tuples(
        st.sampled_from(USERS),
        st.integers(0, 5 * 24 - 1),
        st.sampled_from(range(len(SETS))),
        st.integers(1, 4),
        st.integers(0, 3),
    ),
    max_size=30,
)


@pytest.fixture(scope="module")
def client() -> Iterator[Analytics]:
    clock = ManualClock(start=NOW)
    with (
        redis_and_postgres("tiers") as (store_url, sink_url),
        Analytics(
            store=store_url, sink=sink_url, clock=clock, background=False, claim_lease=3600
        ) as c,
    ):
        yield c


def _when(offset: int) -> datetime:
    return datetime.combine(DAY0, datetime.min.time(), timezone.utc) + timedelta(
        hours=offset, minutes=5
    )


def _load(client: Analytics, event: str, events: list[Tracked]) -> None:
    """Track ``events`` so that each ends in its tier."""
    for tier in range(4):
        for user, offset, s, value, where in events:
            if where == tier:
                client.track(
                    event,
                    timestamp=_when(offset),
                    value=value,
                    properties=dict(SETS[s]),
                    user_id=user,
                )
        if tier == 0:
            client.flush()
        elif tier == 1:
            client.scheduler.push()
            client.store.claim()  # a flush in flight, not applied yet
        elif tier == 2:
            client.scheduler.push()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=tracked,
    first=st.integers(0, 4),
    days=st.integers(1, 5),
    wanted=st.sampled_from(range(len(SETS))),
    limit=st.integers(1, 4),
)
def test_every_query_matches_a_recount_of_the_tracked_events(
    client: Analytics, events: list[Tracked], first: int, days: int, wanted: int, limit: int
) -> None:
    event = f"e{uuid.uuid4().hex[:10]}"  # every example its own event, in one store and sink
    _load(client, event, events)
    start = DAY0 + timedelta(days=first)
    last = start + timedelta(days=days - 1)
    props = dict(SETS[wanted])

    def on(day: date) -> list[Tracked]:
        return [e for e in events if _when(e[1]).date() == day]

    def total(of: list[Tracked]) -> int:
        return sum(value for _, _, s, value, _ in of if set(SETS[wanted]) <= set(SETS[s]))

    assert client.count(event, day=start, properties=props) == total(on(start))
    assert client.count(event, properties=props) == total(events)
    assert client.series(event, start, last, granularity="day", properties=props) == [
        (
            datetime.combine(start + timedelta(days=d), datetime.min.time(), timezone.utc),
            total(on(start + timedelta(days=d))),
        )
        for d in range(days)
    ]
    by_user: dict[str, int] = {}
    for user, _, _, value, _ in on(start):
        if user is not None:
            by_user[user] = by_user.get(user, 0) + value
    ranked = sorted(by_user.items(), key=lambda item: (-item[1], item[0]))[:limit]
    assert client.top_users(event, day=start, limit=limit) == ranked
    in_range = {
        e[0] for d in range(days) for e in on(start + timedelta(days=d)) if e[0] is not None
    }
    assert client.unique_users(event, start, last) == len(in_range)
