"""Redis pending reads that cost what they return.

A query reads, of the store's pending counts, only the buckets it asks for (a day's users,
an hour's property sets) and, for one user, that user's field: not every pending counter of
the event. Reads are plain bounded commands checked against the shard's claim generation,
so a CLAIM step that moves counters during a read makes it read again instead of counting
a counter twice or not at all. Counts pushed in the earlier layout (one hash per event) are
read and flushed once after an upgrade.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from analytics_sdk import StoreError
from analytics_sdk.backends import Delta, Pending, Push
from analytics_sdk.backends.memory import MemorySink
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.keys import encode_properties, escape
from analytics_sdk.testing import ManualClock

from .servers import Proxy
from .utils import make_store

DAY = 20_500
HOUR = DAY * 24
EVENTS = ("view", "buy")
PROPS = ((("plan", "free"),), (("plan", "pro"),), (("plan", "pro"), ("path", "/a")), ())

Truth = tuple[
    dict[tuple[str, tuple[tuple[str, str], ...], int], int], dict[tuple[str, str, int], int]
]


def total(pending: Pending[Any]) -> dict[Any, int]:
    """Live and claimed counts of a pending read, summed by key."""
    out = dict(pending.live)
    for counts in pending.claimed.values():
        for key, n in counts.items():
            out[key] = out.get(key, 0) + n
    return {key: n for key, n in out.items() if n}


def fill(store: RedisCounterStore, rng: random.Random, users: int, days: int, hours: int) -> Truth:
    """Push ``users`` users a day over ``days`` days and counters over ``hours`` hours from
    several producers, claim part of it (not acknowledged: still pending), push more of the
    same keys on top; return what was pushed."""
    hourly: dict[Any, int] = {}
    per_user: dict[Any, int] = {}
    sequence = 0

    def push_round(producer: str, sample: int) -> None:
        nonlocal sequence
        delta = Delta()
        for _ in range(sample):
            event = rng.choice(EVENTS)
            hour_key = (event, rng.choice(PROPS), HOUR + rng.randrange(hours))
            delta.hourly[hour_key] = delta.hourly.get(hour_key, 0) + 1
            hourly[hour_key] = hourly.get(hour_key, 0) + 1
            user_key = (event, f"u{rng.randrange(users)}", DAY + rng.randrange(days))
            delta.users[user_key] = delta.users.get(user_key, 0) + 1
            per_user[user_key] = per_user.get(user_key, 0) + 1
        sequence += 1
        store.push(Push(producer=producer, sequence=sequence, delta=delta))

    for n in range(6):
        push_round(f"p{n}", users * days // 3)
    batches = store.claim_batches(max_keys=users)
    for _ in range(2):  # two bounded batches claimed, neither acknowledged
        next(batches, None)
    batches.close()
    for n in range(6):
        push_round(f"p{n}", users * days // 3)
    return hourly, per_user


@pytest.fixture(params=["redis", "redis-cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisCounterStore]:
    with make_store(request.param, request, ManualClock().time) as backend:
        assert isinstance(backend, RedisCounterStore)
        yield backend


def test_narrow_reads_are_exact_among_many_pending_users_and_hours(
    store: RedisCounterStore,
) -> None:
    rng = random.Random(7)
    hourly, users = fill(store, rng, users=300, days=5, hours=72)
    assert store.claimed_ids(), "part of the counts must be claimed, not acknowledged"
    for event in EVENTS:
        for user in ("u0", "u7", "u299", "nobody"):
            for start, end in ((DAY, DAY + 1), (DAY + 2, DAY + 4), (None, None), (DAY + 3, None)):
                want = sum(
                    n
                    for (e, u, d), n in users.items()
                    if e == event
                    and u == user
                    and (start is None or d >= start)
                    and (end is None or d < end)
                )
                got = total(store.pending_users(event, start, end, user))
                assert got == ({user: want} if want else {}), (event, user, start, end)
        for day in (DAY, DAY + 4, DAY + 5):
            want_users: dict[str, int] = {}
            for (e, u, d), n in users.items():
                if e == event and d == day:
                    want_users[u] = want_users.get(u, 0) + n
            assert total(store.pending_users(event, day, day + 1, None)) == want_users
        for start, end, props in (
            (HOUR + 5, HOUR + 6, ()),
            (HOUR + 24, HOUR + 48, (("plan", "pro"),)),
            (None, None, ()),
            (HOUR + 71, None, (("path", "/a"),)),
        ):
            want_hours: dict[int, int] = {}
            for (e, p, h), n in hourly.items():
                if (
                    e == event
                    and all(pair in p for pair in props)
                    and (start is None or h >= start)
                    and (end is None or h < end)
                ):
                    want_hours[h] = want_hours.get(h, 0) + n
            assert total(store.pending_hourly(event, start, end, props)) == want_hours
    claimed = store.pending_users(EVENTS[0], None, None, None).claimed
    assert set(claimed) == set(store.claimed_ids())  # every batch named, read or empty
    totals = store.pending_event_totals()
    want_totals = {e: sum(n for (x, _, _), n in hourly.items() if x == e) for e in EVENTS}
    assert total(totals) == want_totals
    for batch_id in store.claimed_ids():
        store.ack(batch_id)
    for batch in store.claim():
        store.ack(batch.id)
    assert store.pending_users(EVENTS[0], None, None, None) == Pending()
    assert store.pending_event_totals() == Pending()


def test_a_read_costs_what_it_returns(redis_url: str, prefix: str, proxy: Proxy) -> None:
    """Bytes the server sends back for a read, with 4,000 users and 600 hours of counters
    pending (part of them claimed): one user's count, one hour, one day's users."""
    url = f"redis://127.0.0.1:{proxy.port}/{redis_url.rsplit('/', 1)[-1].split('?')[0] or 0}"
    store = RedisCounterStore.from_url(f"{url}?prefix={prefix}&shards=2")
    try:
        rng = random.Random(3)
        hourly, users = fill(store, rng, users=1_000, days=4, hours=600)
        sent = proxy.sent(b"EVALSHA")

        def cost(read: Any) -> int:
            before = proxy.reply_bytes
            read()
            return proxy.reply_bytes - before

        everything = cost(lambda: store.pending_users("view", None, None, None))
        assert everything > 40_000
        assert cost(lambda: store.pending_users("view", DAY, DAY + 1, "u5")) < 1_000
        assert cost(lambda: store.pending_users("view", None, None, "u5")) < 2_000
        assert cost(lambda: store.pending_hourly("view", HOUR + 9, HOUR + 10, ())) < 1_000
        day = cost(lambda: store.pending_users("view", DAY + 1, DAY + 2, None))
        assert day < everything / 3  # one day of four: its users only
        assert proxy.sent(b"EVALSHA") == sent  # reads run no script
        assert total(store.pending_users("view", DAY, DAY + 1, "u5")) == (
            {"u5": n} if (n := sum(v for k, v in users.items() if k == ("view", "u5", DAY))) else {}
        )
        assert sum(total(store.pending_hourly("view", None, None, ())).values()) == sum(
            n for (e, _, _), n in hourly.items() if e == "view"
        )
    finally:
        store.close()


def test_a_read_waits_on_redis_twice(redis_url: str, prefix: str) -> None:
    """The shards' claims and index, then the hashes with the claim generation read again
    after them in the same pipeline (no round trip of its own for the check)."""
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=2")
    try:
        rng = random.Random(5)
        fill(store, rng, users=200, days=2, hours=20)
        store.claim_batches(max_keys=100).close()
        pipelines = []
        send = store._pipeline

        def counted(*args: Any) -> Any:
            pipelines.append(args[0])
            return send(*args)

        store._pipeline = counted  # type: ignore[method-assign]
        for read in (
            lambda: store.pending_users("view", DAY, DAY + 1, None),
            lambda: store.pending_users("view", DAY, DAY + 1, "u5"),
            lambda: store.pending_hourly("view", HOUR + 9, HOUR + 10, ()),
        ):
            pipelines.clear()
            read()
            assert len(pipelines) == 2
    finally:
        store.close()


def test_every_script_sent_twice_counts_once(redis_url: str, prefix: str) -> None:
    """The driver may send a script again when its reply is lost: every push, CLAIM step
    and ACK here runs twice with the same arguments, and the counts stay exact."""
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=2")

    def twice(script: Any, same: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            first = script(*args, **kwargs)
            assert same(script(*args, **kwargs), first)
            return first

        return run

    # The second push of a pair is skipped (the same attempt: it still says applied); a
    # CLAIM step returns its first result and moves nothing more; an ACK finds nothing left.
    store._lua_push = twice(store._lua_push, lambda a, b: a == 1)
    store._lua_claim = twice(store._lua_claim, lambda a, b: a == b)
    store._lua_ack = twice(store._lua_ack, lambda a, b: a[0] != 1 or a == [1, 0])
    try:
        hourly, users = fill(store, random.Random(5), users=200, days=3, hours=30)
        assert total(store.pending_users("buy", DAY + 1, DAY + 2, None)) == {
            u: n for (e, u, d), n in _summed(users, "buy", DAY + 1).items()
        }
        sink = MemorySink()
        for batch_id in store.claimed_ids():
            batch = store.read_claim(batch_id)
            assert batch is not None
            sink.apply(batch)
            store.ack(batch_id)
        for batch in store.claim(max_keys=100):
            sink.apply(batch)
            store.ack(batch.id)
        assert sink.user_counts("buy", None, None, None) == {
            u: sum(n for (e, x, _), n in users.items() if e == "buy" and x == u)
            for (e, u, _) in users
            if e == "buy"
        }
        for event in EVENTS:
            assert sum(sink.hourly_counts(event, None, None, ()).values()) == sum(
                n for (e, _, _), n in hourly.items() if e == event
            )
        left = sorted(store._redis.scan_iter(match=f"{{{prefix}:*", count=1000))
        kept = (":seq:", ":step:")  # expiring records (a producer's sequence, a step's result)
        assert all(key.endswith(":gen") or any(k in key for k in kept) for key in left), left[:5]
    finally:
        store.close()


def _summed(users: dict[tuple[str, str, int], int], event: str, day: int) -> dict[Any, int]:
    return {key: n for key, n in users.items() if key[0] == event and key[2] == day}


def test_a_claim_step_during_a_read_makes_it_read_again(redis_url: str, prefix: str) -> None:
    """A CLAIM step that moves counters between a read's commands: without the check the
    read would count the moved counters twice (read live, then in the new batch) or miss
    them; with it the shard is read again."""
    url = f"{redis_url}?prefix={prefix}&shards=1"
    store, flusher = RedisCounterStore.from_url(url), RedisCounterStore.from_url(url)
    users = {("e", f"u{n}", DAY): n + 1 for n in range(3_000)}
    store.push(Push(producer="p", sequence=1, delta=Delta(users=users)))
    want = {u: n for (_, u, _), n in users.items()}
    scan, read_field = store._scan, store._read_field
    claims: list[str] = []

    def claim_first() -> None:
        if not claims:  # once: the re-read runs undisturbed
            batches = flusher.claim_batches(max_keys=1_000)
            batch = next(batches)
            batches.close()
            claims.append(batch.id)

    def scan_after_a_claim(what: str, targets: Any, tail: Any = None) -> None:
        scan(what, targets[:1], tail)  # the live hash's first page...
        claim_first()  # ...then a flusher claims part of it...
        scan(what, targets[1:], tail)  # ...then the rest, and the batch's new hash

    store._scan = scan_after_a_claim  # type: ignore[method-assign]
    try:
        assert total(store.pending_users("e", DAY, DAY + 1, None)) == want
        assert claims
        claims.clear()

        def field_after_a_claim(*args: Any) -> None:
            claim_first()
            read_field(*args)

        store._scan = scan  # type: ignore[method-assign]
        store._read_field = field_after_a_claim  # type: ignore[method-assign]
        assert total(store.pending_users("e", DAY, DAY + 1, "u2999")) == {"u2999": 3_000}
        assert len(claims) == 1
        assert total(store.pending_users("e", None, None, "u0")) == {"u0": 1}

        def always_claimed(*args: Any) -> None:
            store._redis.incr(f"{{{prefix}:0}}:gen")  # as if a step moved counters each time
            read_field(*args)

        store._read_field = always_claimed  # type: ignore[method-assign]
        with pytest.raises(StoreError, match="were being claimed during each of 10 reads"):
            store.pending_users("e", DAY, DAY + 1, "u1")
    finally:
        store.close()
        flusher.close()


# The earlier layout's PUSH, as the version before per-bucket hashes ran it: one hash per
# event, fields "<properties>|<hour>" and "<user_id>|<day>", listed in {tag}:idx.
EARLIER_PUSH = """
local seq = tonumber(ARGV[1])
local current = redis.call('GET', KEYS[2])
if current then
  local colon = string.find(current, ':', 1, true)
  local last = tonumber(colon and string.sub(current, 1, colon - 1) or current)
  if seq <= last then
    if seq == last and colon and string.sub(current, colon + 1) == ARGV[2] then return 1 end
    return 0
  end
end
local ttl = tonumber(ARGV[4])
local i = 5
for k = 3, #KEYS do
  local key = KEYS[k]
  local n = tonumber(ARGV[i])
  i = i + 1
  for j = 1, n do
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('SADD', KEYS[1], key)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ttl) end
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return 1
"""


def earlier_push(store: RedisCounterStore, push: Push) -> None:
    """Push as the earlier version did (its key layout and script)."""
    groups: dict[str, list[str]] = {}
    for (event, properties, hour), value in push.delta.hourly.items():
        groups.setdefault(f"h:{escape(event)}", []).extend(
            (f"{encode_properties(properties)}|{hour}", str(value))
        )
    for (event, user_id, day), value in push.delta.users.items():
        groups.setdefault(f"u:{escape(event)}", []).extend((f"{escape(user_id)}|{day}", str(value)))
    tag = store._tags[store._shard_of(push)]
    keys = [f"{tag}:idx", f"{tag}:seq:{push.producer}"]
    args: list[Any] = [push.sequence, "earlier", 30 * 86400, 86400]
    for suffix, fields in groups.items():
        keys.append(f"{tag}:live:{suffix}")
        args += [len(fields) // 2, *fields]
    store._redis.eval(EARLIER_PUSH, len(keys), *keys, *args)


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_counts_of_the_earlier_layout_are_read_and_flushed_once_after_an_upgrade(
    kind: str, request: pytest.FixtureRequest
) -> None:
    with make_store(kind, request, ManualClock().time) as backend:
        assert isinstance(backend, RedisCounterStore)
        store = backend
        store.check()  # the earlier version recorded the prefix's shard count too
        rng = random.Random(11)
        hourly: dict[Any, int] = {}
        users: dict[Any, int] = {}

        def delta(n: int) -> Delta:
            d = Delta()
            for _ in range(n):
                h = (rng.choice(EVENTS), rng.choice(PROPS), HOUR + rng.randrange(48))
                u = (h[0], f"u{rng.randrange(50)}", DAY + rng.randrange(2))
                for target, key in ((d.hourly, h), (hourly, h), (d.users, u), (users, u)):
                    target[key] = target.get(key, 0) + 1
            return d

        # The earlier version pushed, and one of its flushers claimed part of it (a claim
        # moves whole hashes: RENAME into the batch, as the earlier CLAIM did), then stopped.
        for n in range(4):
            earlier_push(store, Push(producer=f"old{n}", sequence=1, delta=delta(100)))
        shard = store._shard_of(Push(producer="old0", sequence=1, delta=Delta()))
        tag = store._tags[shard]
        old_batch = f"{shard}.earlier"
        r = store._redis
        r.rename(f"{tag}:live:u:view", f"{tag}:claim:{old_batch}:u:view")
        r.srem(f"{tag}:idx", f"{tag}:live:u:view")
        r.sadd(f"{tag}:claim:{old_batch}", f"{tag}:claim:{old_batch}:u:view")
        r.zadd(f"{tag}:claims", {old_batch: 1.0})
        # The upgraded version pushes on top, to the same keys and others.
        for n in range(4):
            store.push(Push(producer=f"new{n}", sequence=1, delta=delta(100)))

        for event in EVENTS:
            for user in ("u1", "u49"):
                want = sum(n for (e, u, _), n in users.items() if (e, u) == (event, user))
                assert total(store.pending_users(event, None, None, user)) == (
                    {user: want} if want else {}
                )
                want_day = users.get((event, user, DAY), 0)
                assert total(store.pending_users(event, DAY, DAY + 1, user)) == (
                    {user: want_day} if want_day else {}
                )
            day_users: dict[str, int] = {}
            for (e, u, d), n in users.items():
                if e == event and d == DAY + 1:
                    day_users[u] = day_users.get(u, 0) + n
            assert total(store.pending_users(event, DAY + 1, DAY + 2, None)) == day_users
            want_hours: dict[int, int] = {}
            for (e, p, h), n in hourly.items():
                if e == event and ("plan", "pro") in p and HOUR + 3 <= h < HOUR + 30:
                    want_hours[h] = want_hours.get(h, 0) + n
            got = store.pending_hourly(event, HOUR + 3, HOUR + 30, (("plan", "pro"),))
            assert total(got) == want_hours
        assert total(store.pending_event_totals()) == {
            e: sum(n for (x, _, _), n in hourly.items() if x == e) for e in EVENTS
        }

        # The flusher applies the earlier claim, then claims both layouts: each count once.
        sink = MemorySink()
        for batch_id in store.claimed_ids():
            batch = store.read_claim(batch_id)
            assert batch is not None
            sink.apply(batch)
            store.ack(batch_id)
        for batch in store.claim(max_keys=150):
            sink.apply(batch)
            store.ack(batch.id)
        for batch in store.claim():  # a second flush finds nothing: nothing was left
            raise AssertionError(f"counts claimed twice: {batch}")
        for event in EVENTS:
            assert sink.user_counts(event, None, None, "u1") == {
                "u1": sum(n for (e, u, _), n in users.items() if (e, u) == (event, "u1"))
            }
            assert sum(sink.user_counts(event, None, None, None).values()) == sum(
                n for (e, _, _), n in users.items() if e == event
            )
            assert sum(sink.hourly_counts(event, None, None, ()).values()) == sum(
                n for (e, _, _), n in hourly.items() if e == event
            )
        assert store.pending_event_totals() == Pending()
        assert store.pending_users("view", None, None, None) == Pending()
        for s in range(store.shards):
            assert r.exists(f"{store._tags[s]}:idx", f"{store._tags[s]}:hashes") == 0


def test_a_counter_moved_into_a_batch_being_built_after_the_read_counts_once(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A query reads a user's count live while a flusher is half way through building a
    batch; the flusher's next CLAIM step moves that count into the batch, which commits
    before the query reads the sink. The batch was claimed when the store was read, but
    still being built: the query must read again, not count the user live and in the sink."""
    import threading

    from analytics_sdk import Analytics
    from analytics_sdk.backends import redis as redis_store

    monkeypatch.setattr(redis_store, "CLAIM_STEP", 4)  # a batch of 10 in three steps
    url = f"{redis_url}?prefix={prefix}&shards=1"
    client = Analytics(store=url, sink="memory://", background=False)
    flusher = RedisCounterStore.from_url(url)
    users = {("e", f"u{n}", DAY): 1 for n in range(10)}
    flusher.push(Push(producer="p", sequence=1, delta=Delta(users=users)))
    stepped, go, applied = threading.Event(), threading.Event(), threading.Event()
    script = flusher._lua_claim

    def pausing_after_the_first_step(*args: Any, **kwargs: Any) -> Any:
        reply = script(*args, **kwargs)
        if not stepped.is_set():
            stepped.set()
            assert go.wait(10)
        return reply

    flusher._lua_claim = pausing_after_the_first_step  # type: ignore[method-assign]

    def flush() -> None:
        batches = flusher.claim_batches(max_keys=10)
        batch = next(batches)
        batches.close()
        client.sink.apply(batch)  # committed; not acknowledged yet
        applied.set()

    thread = threading.Thread(target=flush)
    thread.start()
    assert stepped.wait(10)
    live = flusher._redis.hkeys(f"{{{prefix}:0}}:live:u:e:{DAY}")
    assert len(live) == 6  # the first step moved 4 of 10 users (picked at random)
    user = sorted(live)[0]
    store = client.store
    read = store.pending_users

    def read_then_let_the_flusher_finish(*args: Any) -> Any:
        pending = read(*args)
        if not go.is_set():
            assert user in pending.live
            assert pending.building  # the batch read is still being built
            go.set()
            assert applied.wait(10)
        return pending

    store.pending_users = read_then_let_the_flusher_finish  # type: ignore[method-assign]
    client._query.quiet_first = False  # the protocol's read, not a sink-alone try first
    try:
        day = date_of(DAY)
        assert client.count("e", day=day, user_id=user) == 1
        assert client._query.retries == 1
        assert client.count("e", day=day, user_id=user) == 1
    finally:
        go.set()
        thread.join(10)
        flusher.close()
        client.shutdown()


def date_of(day: int) -> Any:
    from datetime import date, timedelta

    return date(1970, 1, 1) + timedelta(days=day)


def test_the_index_is_read_page_by_page_by_score(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of 3 index entries: many days, and one day claimed in many batches (a page of
    a single score); a push of an earlier day between two pages shifts every entry by one,
    which offset paging would read twice; by score, every day is read once."""
    from analytics_sdk.backends import redis as redis_store

    monkeypatch.setattr(redis_store, "READ_PAGE", 3)
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=1")
    try:
        users = {("e", f"u{n}", DAY + 2): 1 for n in range(12)}
        store.push(Push(producer="p", sequence=1, delta=Delta(users=users)))
        batches = store.claim_batches(max_keys=2)  # day DAY + 2 in 6 batches: 6 entries
        claimed = [next(batches) for _ in range(5)]
        batches.close()
        assert len(claimed) == 5
        days = {("e", "u0", DAY + d): d + 1 for d in range(7)}  # and u0 on 7 days, live
        store.push(Push(producer="p", sequence=2, delta=Delta(users=days)))
        want_u0 = sum(days.values()) + 1
        assert total(store.pending_users("e", None, None, "u0")) == {"u0": want_u0}
        want_all = {f"u{n}": 1 for n in range(12)}
        for (_, user, _), n in days.items():
            want_all[user] += n
        assert total(store.pending_users("e", None, None, None)) == want_all
        # Another event, live only: one entry a day, 7 days.
        store.push(
            Push(
                producer="p",
                sequence=3,
                delta=Delta(users={("f", "u0", DAY + d): 1 for d in range(7)}),
            )
        )
        pages = store._index_pages
        pushed: list[int] = []

        def push_an_earlier_day_between_pages(*args: Any) -> Any:
            if not pushed:
                earlier = Delta(users={("f", "u0", DAY - 1): 100})
                store.push(Push(producer="p", sequence=4, delta=earlier))
                pushed.append(1)
            return pages(*args)

        store._index_pages = push_an_earlier_day_between_pages  # type: ignore[method-assign]
        assert total(store.pending_users("f", None, None, "u0")) == {"u0": 7}
        assert pushed
        assert total(store.pending_users("f", None, None, "u0")) == {"u0": 107}
    finally:
        store.close()
