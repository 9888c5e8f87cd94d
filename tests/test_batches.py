"""Bounded batches against real Redis and PostgreSQL: a backlog flushes in batches of at most
``max_batch_keys`` counters, applied independently of each other; a CLAIM the driver sends
twice claims once; ``flush()`` is complete only when no claim waits in the store."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from analytics_sdk import Analytics, SinkError
from analytics_sdk.backends import Batch, Delta, MemoryCounterStore, Push
from analytics_sdk.backends.postgres import PostgresSink
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.keys import day_of, hour_of
from analytics_sdk.testing import ManualClock

from .faults import FaultySink
from .servers import Proxy
from .test_faults import sink_totals, store_is_empty
from .utils import redis_and_postgres

H = 490_000


@pytest.fixture
def urls() -> Iterator[tuple[str, str]]:
    with redis_and_postgres("batch") as pair:
        yield pair


def _backlog(store_url: str, users: int) -> tuple[Counter[str], Counter[str]]:
    """Push per-user and hourly counts for ``users`` users (no flushing); return the truth."""
    rng = random.Random(users)
    client = Analytics(store=store_url, flusher=False, background=False)
    hourly: Counter[str] = Counter()
    per_user: Counter[str] = Counter()
    now = datetime.now(timezone.utc)
    for n in range(users):
        event = "visit" if n % 3 else "signup"
        when = now - timedelta(hours=rng.randrange(30))
        value = rng.randrange(1, 4)
        client.track(event, user_id=f"u{n}", value=value, timestamp=when)
        hourly[json.dumps([event, hour_of(when)])] += value
        per_user[json.dumps([event, f"u{n}", day_of(when.date())])] += value
        if n % 100 == 99:
            assert client.flush().complete  # several pushes, spread over the shards
    assert client.shutdown().complete
    return hourly, per_user


def _truth_of(delta: Delta) -> tuple[Counter[str], Counter[str]]:
    hourly: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for (event, _, hour), value in delta.hourly.items():
        hourly[json.dumps([event, hour])] += value
    for (event, user, day), value in delta.users.items():
        users[json.dumps([event, user, day])] += value
    return hourly, users


class OneBatchFails(PostgresSink):
    """Fails every apply of the third batch it sees, as a batch past a timeout would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on = True
        self.seen: dict[str, Batch] = {}
        self.doomed: Batch | None = None

    def apply(self, batch: Batch) -> bool:
        self.seen.setdefault(batch.id, batch)
        if self.doomed is None and len(self.seen) == 3:
            self.doomed = batch
        if self.on and self.doomed is not None and batch.id == self.doomed.id:
            raise SinkError("injected: canceling statement due to statement timeout")
        return super().apply(batch)


def test_a_backlog_flushes_in_bounded_batches_and_a_failing_batch_blocks_no_other(
    urls: tuple[str, str],
) -> None:
    store_url, sink_url = urls
    truth_hourly, truth_users = _backlog(store_url, 900)
    keys = len(truth_hourly) + len(truth_users)
    plain = PostgresSink.from_url(sink_url)
    sink = OneBatchFails(plain._conninfo, schema=plain.schema)
    with Analytics(store=store_url, sink=sink, background=False, max_batch_keys=40) as client:
        first = client.flush(timeout=120)
        assert first.error is not None
        assert "statement timeout" in first.error
        assert not first.complete
        assert sink.doomed is not None
        assert all(b.delta.keys <= 40 for b in sink.seen.values())
        assert len(sink.seen) >= keys // 40  # every batch was tried, not only those before it
        # Everything but the failing batch is committed, exactly; the failing one waits.
        doomed_hourly, doomed_users = _truth_of(sink.doomed.delta)
        assert sink_totals(sink_url, ["visit", "signup"]) == (
            truth_hourly - doomed_hourly,
            truth_users - doomed_users,
        )
        assert first.flushed == sum(truth_hourly.values()) - sink.doomed.delta.total
        assert client.count("visit") + client.count("signup") == sum(truth_hourly.values())
        # The next flushes keep going around it: new counts are not stuck behind it.
        client.track("late", value=5)
        second = client.flush(timeout=60)
        assert not second.complete
        assert sum(sink.hourly_counts("late", None, None, ()).values()) == 5
        sink.on = False
        assert client.flush(timeout=60).complete
    assert sink_totals(sink_url, ["visit", "signup"]) == (truth_hourly, truth_users)
    assert store_is_empty(store_url)
    sink.close()
    plain.close()


# -- CLAIM under driver retries and lost replies --------------------------------------------


def _push(store: RedisCounterStore, n: int, sequence: int) -> None:
    delta = Delta(hourly={("e", (), H): n}, users={("e", "u", H // 24): n})
    store.push(Push(producer="p", sequence=sequence, delta=delta))


def _losing_claim_replies(store: RedisCounterStore, proxy: Proxy, times: int = 1) -> list[int]:
    """Make the next ``times`` CLAIM scripts run in Redis with their reply lost; return a
    list that counts the losses."""
    script = store._lua_claim
    lost: list[int] = []

    def lossy(*args: Any, **kwargs: Any) -> Any:
        if len(lost) < times:
            lost.append(1)
            proxy.lose_next_reply = True
        return script(*args, **kwargs)

    store._lua_claim = lossy
    return lost


def test_a_claim_the_driver_sends_again_returns_its_batch_once(
    redis_url: str, prefix: str, proxy: Proxy
) -> None:
    url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&retry_on_timeout=true&socket_timeout=2"
    with Analytics(store=url, background=False) as client:
        client.track("warmup")
        assert client.flush().complete  # scripts loaded, connection open
        client.track("e", value=100, user_id="u")
        lost = _losing_claim_replies(client.store, proxy)  # type: ignore[arg-type]
        result = client.flush()
        assert lost == [1]
        assert proxy.lose_next_reply is False
        if not result.complete:  # without a driver retry: reported, and the next flush
            assert client.flush().complete  # applies the claim
        assert sum(client.sink.hourly_counts("e", None, None, ()).values()) == 100
        assert client.count("e") == 100
        assert client.count("e", user_id="u") == 100
        assert client.store.claimed() == []


def test_a_claim_sent_again_after_more_pushes_keeps_the_first_claim(
    redis_url: str, prefix: str, proxy: Proxy
) -> None:
    """The reply of a CLAIM is lost; before the driver sends it again, a producer pushes 7
    more: the first claim's 100 must survive, and the 7 stay live for the next claim."""
    import redis
    from redis.backoff import AbstractBackoff
    from redis.retry import Retry

    direct = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}")
    pushed: list[int] = []

    class PushBeforeRetry(AbstractBackoff):
        def compute(self, failures: int) -> float:
            if not pushed:
                pushed.append(7)
                _push(direct, 7, sequence=2)
            return 0.0

    driver = redis.Redis(
        host="127.0.0.1",
        port=proxy.port,
        decode_responses=True,
        socket_timeout=2,
        retry=Retry(PushBeforeRetry(), 1),
    )
    store = RedisCounterStore(driver, prefix=prefix)
    try:
        _push(store, 100, sequence=1)
        lost = _losing_claim_replies(store, proxy)
        first = next(store.claim_batches())
        assert lost == [1]
        assert pushed == [7]
        assert first.delta.total == 100
        assert sum(store.pending_hourly("e", None, None, ()).live.values()) == 7
        store.ack(first.id)
        [late] = store.claim()
        assert late.delta.total == 7
        store.ack(late.id)
        assert store.claimed() == []
    finally:
        store.close()
        direct.close()


def test_flush_is_not_complete_while_counts_wait_in_a_claim_whose_reply_was_lost(
    urls: tuple[str, str],
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    store_url, sink_url = urls
    with Analytics(store=store_url, sink=sink_url, background=False) as client:
        store = client.store
        assert isinstance(store, RedisCounterStore)
        script = store._lua_claim
        calls: list[int] = []

        def reply_lost_on_the_second_shard(*args: Any, **kwargs: Any) -> Any:
            reply = script(*args, **kwargs)  # the claim happened in Redis...
            calls.append(1)
            if len(calls) == 2:
                raise RedisConnectionError("injected: connection lost before the reply")
            return reply

        for p in range(10):  # 10 producers: counts on more than one shard
            with Analytics(store=store_url, flusher=False, background=False) as producer:
                for n in range(3):
                    producer.track("f", value=1, user_id=f"u{p}-{n}")
        store._lua_claim = reply_lost_on_the_second_shard
        first = client.flush()
        assert len(calls) >= 2
        waiting = store.claimed()
        if first.complete:
            assert waiting == [], "complete=True while counts wait in a claim"
        store._lua_claim = script
        second = client.flush()
        assert second.complete, second
        assert store.claimed() == []
        assert client.count("f") == 30
        assert sum(client.sink.hourly_counts("f", None, None, ()).values()) == 30


# -- the scheduler's side, on the memory backends --------------------------------------------


class CountingSink(FaultySink):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempts = 0

    def apply(self, batch: Batch) -> bool:
        self.attempts += 1
        return super().apply(batch)


def test_a_sink_that_is_down_costs_two_attempts_per_flush_not_one_per_batch(
    clock: ManualClock,
) -> None:
    store, sink = MemoryCounterStore(clock=clock.time), CountingSink(clock=clock.time)
    with Analytics(
        store=store, sink=sink, clock=clock, background=False, max_batch_keys=10
    ) as client:
        for n in range(100):
            client.track("x", user_id=f"u{n}")
        sink.down = True
        result = client.flush()
        assert result.error is not None
        assert not result.complete
        assert sink.attempts == 2  # two batches failed in a row: the rest was not claimed
        assert len(store.claimed_ids()) == 2
        assert client.count("x") == 100
        sink.down = False
        result = client.flush()
        assert result.complete, result
        assert result.flushed == 100
        assert result.batches == 11  # 100 per-user counters and 1 hourly, 10 at most each
        assert sum(sink.hourly_counts("x", None, None, ()).values()) == 100
        assert store.claimed_ids() == {}


class PoisonSink(FaultySink):
    """Fails every apply of one batch: the second it sees."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[str] = []

    def apply(self, batch: Batch) -> bool:
        if batch.id not in self.seen:
            self.seen.append(batch.id)
        if len(self.seen) > 1 and batch.id == self.seen[1]:
            raise SinkError("injected: canceling statement due to statement timeout")
        return super().apply(batch)


def test_a_worker_with_one_failing_batch_stays_healthy_while_the_rest_flows() -> None:
    from analytics_sdk.worker import Worker

    sink = PoisonSink()
    worker = Worker(
        store="memory://", sink=sink, metrics_addr=None, background=False, max_batch_keys=5
    )  # type: ignore[arg-type]
    try:
        worker.started -= 3600  # as if it had run for an hour without a successful flush
        for n in range(20):
            worker.client.track("x", user_id=f"u{n}")
        result = worker.client.flush()
        assert result.error is not None
        assert result.batches == 4  # 21 counters in 5 batches: all but the failing one
        [stuck] = worker.client.store.claimed()
        assert stuck.id == sink.seen[1]
        assert worker.health() == (True, "ok")  # restarting would not unstick it
        assert worker.client.stats()["last_flush_success"] is None
    finally:
        worker.client.shutdown(timeout=5)


def test_a_batch_built_in_steps_adds_up_and_a_step_sent_twice_moves_once(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLAIM moves CLAIM_STEP counters a call. Between two steps a push brings back a field
    the first step moved, and the second step is sent twice: every count is in the batch or
    live, once."""
    from analytics_sdk.backends import redis as redis_store

    monkeypatch.setattr(redis_store, "CLAIM_STEP", 3)
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}")
    users = {("e", f"u{n}", H // 24): n + 1 for n in range(4)}
    store.push(Push(producer="p", sequence=1, delta=Delta(users=users)))
    script = store._lua_claim
    steps: list[int] = []

    def eventful(*args: Any, **kwargs: Any) -> Any:
        reply = script(*args, **kwargs)
        steps.append(kwargs["args"][4])
        if len(steps) == 1:  # every user again: the second step moves some of them twice
            store.push(Push(producer="p", sequence=2, delta=Delta(users=users)))
        if len(steps) == 2:  # the driver sends the second step again: nothing more moves
            assert script(*args, **kwargs) == reply
        return reply

    store._lua_claim = eventful
    try:
        batch = next(store.claim_batches(max_keys=8))
        assert steps == [1, 2, 3]
        assert 0 < batch.delta.keys <= 8
        live = store.pending_users("e", None, None, None).live
        both = {k[1]: v for k, v in batch.delta.users.items()}
        for user, n in live.items():
            both[user] = both.get(user, 0) + n
        assert both == {f"u{n}": 2 * (n + 1) for n in range(4)}
        assert live == {}
        store.ack(batch.id)
        rest = store.claim()
        assert sum(sum(b.delta.users.values()) for b in rest) == sum(live.values())
        for b in rest:
            store.ack(b.id)
        assert store.claimed() == []
    finally:
        store.close()


def test_a_batch_past_a_real_statement_timeout_blocks_no_other_and_the_worker_stays_healthy(
    urls: tuple[str, str],
) -> None:
    """PostgreSQL itself cancels one batch's apply (``statement_timeout``, a row that takes
    too long): the other batches commit, counts stay exact meanwhile, the worker stays
    healthy, and once the row is fast again the stuck batch commits once."""
    import psycopg

    from analytics_sdk.worker import Worker

    from .utils import postgres_url_or_skip

    store_url, sink_url = urls
    sink = PostgresSink.from_url(sink_url)
    sink.migrate()
    schema = sink.schema
    sink.close()
    with psycopg.connect(postgres_url_or_skip(), autocommit=True) as conn:
        conn.execute(
            f'CREATE FUNCTION "{schema}".slow() RETURNS trigger LANGUAGE plpgsql AS '
            "$$ BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$"
        )
        conn.execute(
            f'CREATE TRIGGER slow BEFORE INSERT ON "{schema}".user_daily_counts FOR EACH ROW '
            f"WHEN (NEW.user_id = 'slow') EXECUTE FUNCTION \"{schema}\".slow()"
        )
    worker = Worker(
        store=store_url,
        sink=f"{sink_url}&statement_timeout=0.5",
        metrics_addr=None,
        background=False,
        max_batch_keys=5,
    )
    client = worker.client
    try:
        worker.started -= 3600  # as if it had run for an hour without a successful flush
        users = [f"u{n}" for n in range(29)] + ["slow"]
        for user in users:
            client.track("visit", user_id=user)
        result = client.flush(timeout=60)
        assert result.error is not None
        assert "statement timeout" in result.error
        assert not result.complete
        [stuck] = client.store.claimed()
        stuck_users = {user for _, user, _ in stuck.delta.users}
        assert "slow" in stuck_users
        assert stuck.delta.keys <= 5
        committed = client.sink.user_counts("visit", 0, 10**6, None)
        assert set(committed) == set(users) - stuck_users  # every other batch committed
        assert result.batches == 6  # 31 counters in 7 batches: all but the stuck one
        assert client.count("visit") == 30  # exact while a batch waits
        assert worker.health() == (True, "ok")  # restarting would not unstick it
        with psycopg.connect(postgres_url_or_skip(), autocommit=True) as conn:
            conn.execute(f'DROP TRIGGER slow ON "{schema}".user_daily_counts')
        assert client.flush(timeout=60).complete
        assert dict(client.sink.user_counts("visit", 0, 10**6, None)) == dict.fromkeys(users, 1)
        assert sum(client.sink.hourly_counts("visit", None, None, ()).values()) == 30
        assert client.store.claimed() == []
    finally:
        client.shutdown(timeout=10)
