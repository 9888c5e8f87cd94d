"""Accounts (groups): per-group daily counts recorded by track() and context(), exact across
the three tiers (checked against a brute-force recount of the tracked events), through the
spool, with clear errors for what is not accepted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analytics_sdk as analytics
from analytics_sdk import Analytics, context
from analytics_sdk.errors import ConfigurationError
from analytics_sdk.keys import day_of
from analytics_sdk.testing import ManualClock, recording

from .utils import redis_and_postgres

DAY0 = date(2026, 11, 20)
HOUR0 = day_of(DAY0) * 24
NOW = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
TYPES = ("account", "workspace")
ACCOUNTS = ["acme", "beta", "Beta", "\u00e9t\u00e9", "a|b:{c}", "zeta"]
USERS = [None, "u1", "u2", "u|3"]
EXAMPLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# (hour offset from HOUR0, account or None, workspace or None, user, value, tier: 0 sink,
# 1 claimed, 2 live, 3 buffer)
Event = tuple[int, int | None, int | None, int, int, int]
tracked = st.lists(
    st.tuples(
        st.integers(0, 6 * 24 - 1),
        st.none() | st.integers(0, len(ACCOUNTS) - 1),
        st.none() | st.integers(0, 2),
        st.integers(0, len(USERS) - 1),
        st.integers(1, 5),
        st.integers(0, 3),
    ),
    min_size=5,
    max_size=50,
)


@pytest.fixture(params=["memory", "redis+postgres"])
def client(request: pytest.FixtureRequest) -> Iterator[Analytics]:
    clock = ManualClock(start=NOW)
    settings: dict[str, Any] = {
        "clock": clock,
        "background": False,
        "claim_lease": 3600,
        "group_types": TYPES,
    }
    if request.param == "memory":
        with Analytics(**settings) as c:
            yield c
        return
    with (
        redis_and_postgres("groups") as (store, sink),
        Analytics(store=store, sink=sink, **settings) as c,
    ):
        yield c


def _when(offset: int) -> datetime:
    return datetime.fromtimestamp((HOUR0 + offset) * 3600 + 60, timezone.utc)


def _groups(account: int | None, workspace: int | None) -> dict[str, str] | None:
    groups = {}
    if account is not None:
        groups["account"] = ACCOUNTS[account]
    if workspace is not None:
        groups["workspace"] = f"w{workspace}"
    return groups or None


def _load(client: Analytics, event: str, events: list[Event]) -> None:
    """Track ``events`` so that each ends in its tier; half of them through a context."""
    for tier in range(4):
        for i, (offset, account, workspace, user, value, where) in enumerate(events):
            if where != tier:
                continue
            groups = _groups(account, workspace)
            if i % 2 and groups:
                with context(groups=groups):
                    client.track(event, user_id=USERS[user], value=value, timestamp=_when(offset))
            else:
                client.track(
                    event, user_id=USERS[user], value=value, timestamp=_when(offset), groups=groups
                )
        if tier == 0:
            client.flush()
        elif tier == 1:
            client.scheduler.push()
            client.store.claim()  # a flush in flight, not applied yet
        elif tier == 2:
            client.scheduler.push()


def _recount(events: list[Event], group_type: str, first: int, last: int) -> dict[str, int]:
    """Counts per group of ``group_type`` on days first..last, from the raw events."""
    out: dict[str, int] = {}
    for offset, account, workspace, _, value, _ in events:
        groups = _groups(account, workspace) or {}
        if group_type in groups and first <= (HOUR0 + offset) // 24 <= last:
            out[groups[group_type]] = out.get(groups[group_type], 0) + value
    return out


@EXAMPLES
@given(
    events=tracked,
    group_type=st.sampled_from(TYPES),
    first=st.integers(-1, 6),
    length=st.integers(0, 6),
    limit=st.sampled_from([1, 2, 3, 10]),
)
def test_group_queries_match_a_recount_in_every_tier(
    client: Analytics,
    events: list[Event],
    group_type: str,
    first: int,
    length: int,
    limit: int,
) -> None:
    event = f"e{uuid.uuid4().hex[:10]}"  # every example its own event, in one sink
    _load(client, event, events)
    start = DAY0 + timedelta(days=first)
    end = start + timedelta(days=length)
    counts = _recount(events, group_type, day_of(start), day_of(end))
    assert client.unique_groups(event, group_type, start, end) == len(counts)

    day_counts = _recount(events, group_type, day_of(start), day_of(start))
    ranked = sorted(day_counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    assert client.top_groups(event, group_type, day=start, limit=limit) == ranked

    every = _recount(events, group_type, -(10**6), 10**6)
    for group in [*every, "nobody"]:
        assert client.count(event, group=(group_type, group), day=start) == day_counts.get(group, 0)
        assert client.count(event, group=(group_type, group)) == every.get(group, 0)
    # the hourly counts are unchanged by groups
    assert client.count(event) == sum(value for *_, value, _ in events)


# -- one behaviour at a time -----------------------------------------------------------------

D = date(2026, 11, 24)
AT = datetime(2026, 11, 24, 9, 30, tzinfo=timezone.utc)


def test_context_groups_nest_and_track_groups_win_per_type(client: Analytics) -> None:
    with context(groups={"account": "acme", "workspace": "w1"}):
        client.track("x", timestamp=AT)
        with context(groups={"account": "beta"}):
            client.track("x", timestamp=AT)  # beta, w1
            client.track("x", timestamp=AT, groups={"workspace": "w2"})  # beta, w2
        client.track("x", timestamp=AT, groups={"account": "zeta"})  # zeta, w1
    client.track("x", timestamp=AT)  # no group
    for flushed in (False, True):
        assert client.top_groups("x", "account", day=D) == [("beta", 2), ("acme", 1), ("zeta", 1)]
        assert client.top_groups("x", "workspace", day=D) == [("w1", 3), ("w2", 1)]
        assert client.count("x", day=D) == 5
        if not flushed:
            client.flush()


def test_a_group_count_sums_its_users_and_calls_without_one(client: Analytics) -> None:
    client.track("api", user_id="u1", groups={"account": "acme"}, value=2, timestamp=AT)
    client.track("api", user_id="u2", groups={"account": "acme"}, timestamp=AT)
    client.track("api", groups={"account": "acme"}, value=4, timestamp=AT)
    client.flush()
    client.track("api", user_id="u1", groups={"account": "acme"}, timestamp=AT)
    assert client.count("api", group=("account", "acme"), day=D) == 8
    assert client.count("api", group=("account", "acme"), day=D + timedelta(days=1)) == 0
    assert client.count("api", user_id="u1", day=D) == 3
    assert client.unique_groups("api", "account", D, D) == 1
    # The call without a user counts for the group, and is no active user of it.
    assert [n for _, n in client.active_users(D, D, group=("account", "acme"))] == [2]


def test_feature_calls_count_for_the_context_groups() -> None:
    with (
        recording(group_types=TYPES) as rec,
        context(groups={"account": "acme", "team": "ignored"}),
        rec.client.track_feature("export"),
    ):
        pass
    day = datetime.now(timezone.utc).date()
    assert rec.client.count("feature_used", group=("account", "acme"), day=day) == 1
    assert [r.groups for r in rec.of("feature_used")] == [{"account": "acme"}]


def test_recording_lists_the_groups_of_each_call() -> None:
    with recording() as rec:
        analytics.track("api", user_id="u1", groups={"account": "acme"})
        analytics.track("api")
    assert [(r.user_id, r.groups) for r in rec.of("api")] == [
        ("u1", {"account": "acme"}),
        (None, {}),
    ]


def test_keyed_calls_count_their_groups_once(client: Analytics) -> None:
    for _ in range(3):
        client.track("hook", dedupe_key="evt_1", groups={"account": "acme"}, timestamp=AT)
    client.flush()
    assert client.count("hook", group=("account", "acme"), day=D) == 1


def test_write_through_pushes_the_groups(tmp_path: Path) -> None:
    with Analytics(background=False, push_interval=0, flusher=False) as c:
        c.track("x", groups={"account": "acme"})
        assert c.aggregator.is_empty()
        day = datetime.now(timezone.utc).date()
        assert c.count("x", group=("account", "acme"), day=day) == 1


def test_the_module_track_takes_groups() -> None:
    client = analytics.configure(background=False)
    analytics.track("x", groups={"account": "acme"})
    day = datetime.now(timezone.utc).date()
    assert client.count("x", group=("account", "acme"), day=day) == 1


def test_async_twins_answer_as_the_sync_queries(client: Analytics) -> None:
    client.track("x", groups={"account": "acme"}, timestamp=AT, value=3)
    client.track("x", groups={"account": "beta"}, timestamp=AT)

    async def read() -> tuple[int, list[tuple[str, int]], int]:
        try:
            return (
                await client.acount("x", group=("account", "acme"), day=D),
                await client.atop_groups("x", "account", day=D, limit=1),
                await client.aunique_groups("x", "account", D, D),
            )
        finally:
            await client.aclose_connections()

    assert asyncio.run(read()) == (3, [("acme", 3)], 2)


# -- spool ----------------------------------------------------------------------------------


def test_groups_survive_the_spool(tmp_path: Path) -> None:
    from analytics_sdk.backends import Delta, Push
    from analytics_sdk.backends.base import Deduped
    from analytics_sdk.spool import FORMAT_VERSION, decode, encode

    delta = Delta(
        hourly={("a", (), 490_000): 3},
        groups={("a", "account", "a|b", None, 20_416): 1, ("a", "account", "acme", "u", 20_416): 2},
    )
    keyed = Deduped("k", "a", (), 490_000, "u", 1, (("account", "acme"),))
    pushes = [Push(producer="p", sequence=1, delta=delta, deduped=(keyed,))]
    data = encode("store", pushes, 0.0)
    assert data.startswith(b"analytics-sdk-spool %d\n" % FORMAT_VERSION)
    assert decode(data) == ("store", pushes)
    # Without groups, a file is written in an earlier version's format.
    plain = [Push(producer="p", sequence=1, delta=Delta(hourly={("a", (), 490_000): 3}))]
    assert encode("store", plain, 0.0).startswith(b"analytics-sdk-spool 1\n")


def test_groups_spooled_at_exit_are_replayed(tmp_path: Path) -> None:
    from analytics_sdk.backends.base import Push
    from analytics_sdk.backends.memory import MemoryCounterStore
    from analytics_sdk.spool import Spool

    class Down(MemoryCounterStore):
        up = False

        def push(self, push: Push) -> bool:
            if not self.up:
                from analytics_sdk.errors import StoreError

                raise StoreError("down")
            return super().push(push)

        def identity(self) -> str:
            return "down-store"

    store = Down()
    c = Analytics(store=store, background=False, spool_dir=str(tmp_path), flusher=False)
    c.track("x", user_id="u", groups={"account": "acme"}, timestamp=AT, value=2)
    result = c.shutdown(timeout=1.0)
    assert result.spooled == 2
    store.up = True
    Spool(str(tmp_path), "down-store").replay(store)
    assert store.pending_groups("x", "account", None, None, None).live == {"acme": 2}


# -- bad input ------------------------------------------------------------------------------


def test_bad_group_input_is_refused_with_what_is_accepted(client: Analytics) -> None:
    with pytest.raises(ValueError, match=r"group type 'team' is not configured; accepted: "):
        client.track("x", groups={"team": "a"})
    with pytest.raises(ValueError, match=r"'account', 'workspace'"):
        client.track("x", groups={"team": "a"})
    with pytest.raises(TypeError, match=r"group id 5 .* accepted: str"):
        client.track("x", groups={"account": 5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"group id .* has 0 characters; accepted: 1 to 256"):
        client.track("x", groups={"account": ""})
    with pytest.raises(TypeError, match=r"groups \['acme'\] .* accepted: a mapping"):
        client.track("x", groups=["acme"])  # type: ignore[arg-type]
    with context(groups={"team": "a"}), pytest.raises(ValueError, match=r"group type 'team'"):
        client.track("x")
    with pytest.raises(TypeError, match=r"group 'acme' is not accepted; accepted: a tuple"):
        client.count("x", group="acme")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"group type 'team' is not configured"):
        client.count("x", group=("team", "a"))
    with pytest.raises(ValueError, match=r"accepted with group: day= only"):
        client.count("x", group=("account", "a"), hour=AT)
    with pytest.raises(ValueError, match=r"accepted with group: day= only"):
        client.count("x", group=("account", "a"), properties={"k": "v"})
    with pytest.raises(ValueError, match=r"group type 'team' is not configured"):
        client.top_groups("x", "team", day=D)
    for limit in (0, 1001, 2.0):
        with pytest.raises(ValueError, match=rf"limit {limit!r} is not accepted; accepted: an int"):
            client.top_groups("x", "account", day=D, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"start 2026-11-24 is after end 2026-11-23"):
        client.unique_groups("x", "account", D, D - timedelta(days=1))
    with pytest.raises(ValueError, match=r"group type 'team' is not configured"):
        client.unique_groups("x", "team", D, D)
    assert client.count("x", day=D) == 0  # nothing refused was counted


def test_context_refuses_malformed_groups() -> None:
    with pytest.raises(TypeError, match=r"group id 7 .* accepted: str"):
        context(groups={"account": 7})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"group type 'a\\nb' contains control"):
        context(groups={"a\nb": "x"})


def test_group_types_setting_is_checked() -> None:
    with pytest.raises(ConfigurationError, match=r"group_types=\('Account',\) is not accepted"):
        Analytics(background=False, group_types=("Account",))


# -- the docs --------------------------------------------------------------------------------

PAGE = Path(__file__).resolve().parents[1] / "docs" / "groups.md"


def test_the_worked_example_prints_what_the_page_shows(capsys: pytest.CaptureFixture[str]) -> None:
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("\n## A worked example\n") :]
    code = section[section.index("```python\n") + 10 :]
    code = code[: code.index("```")]
    shown = section[section.index("```text\n") + 8 :]
    shown = shown[: shown.index("```")]
    exec(compile(code, str(PAGE), "exec"), {"__name__": "groups_example"})
    assert capsys.readouterr().out == shown


def test_postgres_prunes_group_rows_with_the_per_user_rows() -> None:
    from analytics_sdk.backends import Batch, Delta
    from analytics_sdk.backends.postgres import PostgresSink

    from .utils import drop_schema, postgres_url_or_skip, unique_name

    url, schema = postgres_url_or_skip(), unique_name("groups")
    clock = ManualClock(start=NOW)
    sink = PostgresSink.from_url(f"{url}?schema={schema}&user_retention_days=30", clock.time)
    try:
        today = day_of(NOW.date())
        groups = {
            ("e", "account", "old", "u", today - 90): 2,  # a month wholly past: dropped
            ("e", "account", "old", None, today - 40): 3,  # a row past, in a kept month
            ("e", "account", "new", "u", today - 1): 4,
        }
        delta = Delta(hourly={("e", (), (today - 1) * 24): 9}, groups=groups)
        assert sink.apply(Batch(id="b1", delta=delta, claimed_at=0.0))
        assert sink.group_counts("e", "account", None, None, None) == {"new": 4}  # pruned at once
        pruned = sink.prune()
        assert pruned["group_daily_counts"] == 0
        assert pruned["group_user_daily_counts"] == 0
        assert sink.distinct_groups("e", "account", today - 100, today + 1, ()) == 1
    finally:
        sink.close()
        drop_schema(url, schema)
