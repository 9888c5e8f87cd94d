"""The backend contract: every CounterStore and Sink in tests/utils.py passes all of this."""

from __future__ import annotations

import threading
import time
import uuid

from analytics_sdk.backends import Batch, CounterStore, Delta, Push, Sink
from analytics_sdk.backends.base import Bucket, Deduped
from analytics_sdk.testing import ManualClock

H = 490_000  # an hour bucket (2025-11-25)
D = H // 24
ODD = "ünïcode:{tag}|a=b,c\u65e5"  # every separator the key encoding must survive


Counts = dict  # type: ignore[type-arg]


def push(
    store: CounterStore,
    hourly: Counts,
    users: Counts | None = None,
    producer: str | None = None,
    sequence: int = 1,
) -> Push:
    delta = Delta(hourly=hourly, users=users or {})
    p = Push(producer=producer or uuid.uuid4().hex, sequence=sequence, delta=delta)
    store.push(p)
    return p


def pending_total(store: CounterStore, event: str) -> int:
    pending = store.pending_hourly(event, None, None, ())
    return sum(pending.live.values()) + sum(sum(c.values()) for c in pending.claimed.values())


# -- store ----------------------------------------------------------------------------------


class TestStore:
    def test_pushed_counts_are_pending_by_hour_and_user(self, store: CounterStore) -> None:
        push(store, {("a", (), H): 3, ("a", (), H + 1): 4, ("b", (), H): 5}, {("a", "u1", D): 7})
        assert store.pending_hourly("a", None, None, ()).live == {H: 3, H + 1: 4}
        assert store.pending_hourly("a", H + 1, H + 2, ()).live == {H + 1: 4}
        assert store.pending_users("a", D, D + 1, None).live == {"u1": 7}
        assert store.pending_users("a", None, None, "u2").live == {}

    def test_pushes_sum_per_key(self, store: CounterStore) -> None:
        for _ in range(3):
            push(store, {("a", (("k", "v"),), H): 2}, {("a", "u", D): 1})
        assert store.pending_hourly("a", None, None, ()).live == {H: 6}
        assert store.pending_users("a", None, None, None).live == {"u": 3}

    def test_a_push_is_applied_once(self, store: CounterStore) -> None:
        p = push(store, {("a", (), H): 5}, {("a", "u", D): 5})
        store.push(p)
        store.push(p)
        assert store.has_push(p)
        assert not store.has_push(Push(producer="other", sequence=1, delta=p.delta))
        assert pending_total(store, "a") == 5
        assert store.pending_users("a", None, None, None).live == {"u": 5}

    def test_push_reports_whether_it_was_applied(self, store: CounterStore) -> None:
        p = Push(producer="p", sequence=2, delta=Delta(hourly={("a", (), H): 1}))
        assert store.push(p) is True
        assert store.push(p) is False  # a retry
        assert store.push(Push(producer="p", sequence=1, delta=p.delta)) is False  # older
        assert store.push(Push(producer="p", sequence=3, delta=p.delta)) is True
        assert pending_total(store, "a") == 2

    def test_sequences_are_per_producer(self, store: CounterStore) -> None:
        first = push(store, {("a", (), H): 1}, producer="p1", sequence=1)
        push(store, {("a", (), H): 2}, producer="p1", sequence=2)
        push(store, {("a", (), H): 4}, producer="p2", sequence=1)
        store.push(first)  # a late retry of an older push is a no-op
        assert store.has_push(first)
        assert not store.has_push(Push(producer="p1", sequence=3, delta=first.delta))
        assert pending_total(store, "a") == 7

    def test_property_filter_is_a_subset_match(self, store: CounterStore) -> None:
        push(
            store,
            {
                ("a", (("plan", "pro"), ("path", "/")), H): 1,
                ("a", (("plan", "pro"),), H): 2,
                ("a", (("plan", "free"),), H): 4,
            },
        )
        assert store.pending_hourly("a", None, None, (("plan", "pro"),)).live == {H: 3}
        assert store.pending_hourly("a", None, None, (("path", "/"), ("plan", "pro"))).live == {
            H: 1
        }
        assert store.pending_hourly("a", None, None, (("plan", "team"),)).live == {}

    def test_pending_counts_by_property_value_and_hour(self, store: CounterStore) -> None:
        push(
            store,
            {
                ("a", (("path", "/"), ("plan", "pro")), H): 1,
                ("a", (("path", "/"), ("plan", "free")), H): 2,
                ("a", (("path", ODD),), H + 1): 4,
                ("a", (("plan", "pro"),), H + 1): 8,
                ("a", (("path", "/"),), H + 2): 16,
                ("b", (("path", "/"),), H): 32,
            },
        )
        assert store.pending_property_hourly("a", "path", H, H + 2, ()).live == {
            ("/", H): 3,
            (ODD, H + 1): 4,
            (Bucket.NONE, H + 1): 8,
        }
        pro = (("plan", "pro"),)
        assert store.pending_property_hourly("a", "path", None, None, pro).live == {
            ("/", H): 1,
            (Bucket.NONE, H + 1): 8,
        }
        store.claim()
        pending = store.pending_property_hourly("a", "path", None, None, pro)
        assert pending.live == {}
        claimed: dict = {}  # type: ignore[type-arg]
        for counts in pending.claimed.values():
            for key, n in counts.items():
                claimed[key] = claimed.get(key, 0) + n
        assert claimed == {("/", H): 1, (Bucket.NONE, H + 1): 8}

    def test_names_with_separators_and_unicode_round_trip(self, store: CounterStore) -> None:
        props = ((ODD, ODD), ("z", "1"))
        p = push(store, {(ODD, props, H): 9}, {(ODD, ODD, D): 9})
        assert store.pending_hourly(ODD, None, None, ((ODD, ODD),)).live == {H: 9}
        assert store.pending_users(ODD, None, None, ODD).live == {ODD: 9}
        [batch] = store.claim()
        assert batch.delta.hourly == p.delta.hourly
        assert batch.delta.users == p.delta.users

    def test_claim_moves_live_counts_into_a_batch_still_pending(self, store: CounterStore) -> None:
        p = push(store, {("a", (), H): 3, ("b", (("k", "v"),), H): 1}, {("a", "u", D): 3})
        batches = store.claim()
        assert batches
        merged: dict = {}  # type: ignore[type-arg]
        for b in batches:
            for k, v in b.delta.hourly.items():
                merged[k] = merged.get(k, 0) + v
        assert merged == p.delta.hourly
        assert len({b.id for b in batches}) == len(batches)
        pending = store.pending_hourly("a", None, None, ())
        assert pending.live == {}
        assert sum(sum(c.values()) for c in pending.claimed.values()) == 3
        assert store.claim() == []

    def test_claims_are_bounded_and_made_one_batch_at_a_time(self, store: CounterStore) -> None:
        hourly = {("a", (("n", str(i)),), H + i % 2): i + 1 for i in range(25)}
        users = {("a", f"u{i}", D): 1 for i in range(30)}  # one hash larger than a batch
        push(store, hourly, users)
        claims = store.claim_batches(max_keys=7)
        first = next(claims)
        assert first.delta.keys == 7
        # The rest is live until the iteration reaches it: memory stays one batch.
        live = store.pending_hourly("a", None, None, ())
        assert sum(live.live.values()) == sum(hourly.values()) - sum(first.delta.hourly.values())
        assert sum(store.pending_users("a", None, None, None).live.values()) == 30 - len(
            first.delta.users
        )
        batches = [first, *claims]
        assert all(0 < b.delta.keys <= 7 for b in batches)
        assert len(batches) >= 55 // 7
        merged_hourly: dict = {}  # type: ignore[type-arg]
        merged_users: dict = {}  # type: ignore[type-arg]
        for b in batches:
            assert not merged_hourly.keys() & b.delta.hourly.keys()
            assert not merged_users.keys() & b.delta.users.keys()
            merged_hourly.update(b.delta.hourly)
            merged_users.update(b.delta.users)
        assert (merged_hourly, merged_users) == (hourly, users)
        assert store.claim() == []
        assert set(store.claimed_ids()) == {b.id for b in batches}
        again = store.read_claim(first.id)
        assert again is not None
        assert again.delta == first.delta
        assert store.read_claim("no-such-batch") is None

    def test_counts_pushed_after_a_claim_stay_live(self, store: CounterStore) -> None:
        push(store, {("a", (), H): 1})
        [batch] = store.claim()
        push(store, {("a", (), H): 10})
        assert store.pending_hourly("a", None, None, ()).live == {H: 10}
        assert store.claimed()[0].delta.total == 1
        store.ack(batch.id)
        assert pending_total(store, "a") == 10

    def test_ack_deletes_the_claim_and_ignores_unknown_ids(self, store: CounterStore) -> None:
        push(store, {("a", (), H): 1}, {("a", "u", D): 1})
        batches = store.claim()
        for b in batches:
            store.ack(b.id)
        store.ack("no-such-batch")
        # An id shaped like a Redis batch of a shard this layout does not have (one past
        # the last): not ours either.
        store.ack(f"{getattr(store, 'shards', 1)}.{uuid.uuid4().hex}")
        assert store.claimed() == []
        assert pending_total(store, "a") == 0
        users = store.pending_users("a", None, None, None)
        assert users.live == {}
        assert users.claimed == {}

    def test_claimed_finds_old_claims_only(self, store: CounterStore, clock: ManualClock) -> None:
        push(store, {("a", (), H): 1})
        claimed_at = clock.time()
        batches = store.claim()
        assert store.claimed(older_than=60) == []
        assert {b.id for b in store.claimed()} == {b.id for b in batches}
        clock.advance(61)
        assert {b.id for b in store.claimed(older_than=60)} == {b.id for b in batches}
        assert {b.claimed_at for b in store.claimed()} == {claimed_at}


# -- sink -----------------------------------------------------------------------------------


def batch(hourly: Counts, users: Counts | None = None, groups: Counts | None = None) -> Batch:
    delta = Delta(hourly=hourly, users=users or {}, groups=groups or {})
    return Batch(id=uuid.uuid4().hex, delta=delta, claimed_at=0.0)


def wait_for_apply_to_queue(sink: Sink) -> None:
    """On PostgreSQL, return once an apply waits for the fence's lock (polling pg_locks)."""
    from analytics_sdk.backends.postgres import PostgresSink

    if not isinstance(sink, PostgresSink):
        return  # the memory sink's fence is its lock: the apply cannot pass it
    import psycopg

    deadline = time.monotonic() + 30
    with psycopg.connect(sink._conninfo, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objid::bigint = hashtext(%s)::bigint & 4294967295",
                [f"analytics_sdk:fence:{sink.schema}"],
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError("no apply waited for the fence")


class TestSink:
    def test_apply_then_query(self, sink: Sink) -> None:
        assert sink.apply(
            batch({("a", (), H): 2, ("a", (("k", "v"),), H + 5): 3}, {("a", "u", D): 5})
        )
        assert sink.hourly_counts("a", None, None, ()) == {H: 2, H + 5: 3}
        assert sink.hourly_counts("a", H + 1, None, ()) == {H + 5: 3}
        assert sink.hourly_counts("a", None, H + 5, ()) == {H: 2}
        assert sink.hourly_counts("a", None, None, (("k", "v"),)) == {H + 5: 3}
        assert sink.user_counts("a", D, D + 1, None) == {"u": 5}
        assert sink.user_counts("a", D + 1, None, None) == {}
        assert sink.hourly_counts("other", None, None, ()) == {}

    def test_one_users_count_over_days(self, sink: Sink) -> None:
        sink.apply(batch({}, {("a", "u", D): 5, ("a", "u", D + 2): 2, ("a", "v", D): 1}))
        assert sink.user_counts("a", D, D + 1, "u") == {"u": 5}
        assert sink.user_counts("a", D, D + 3, "u") == {"u": 7}
        assert sink.user_counts("a", D + 1, D + 2, "u") == {}
        assert sink.user_counts("a", D, D + 1, "w") == {}
        assert sink.user_counts("b", D, D + 1, "u") == {}
        assert sink.user_counts("a", D + 1, None, "u") == {"u": 2}
        assert sink.user_counts("a", None, D + 1, "u") == {"u": 5}

    def test_a_batch_id_is_applied_once(self, sink: Sink) -> None:
        b = batch({("a", (), H): 2}, {("a", "u", D): 2})
        assert sink.apply(b) is True
        assert sink.apply(b) is False
        assert sink.hourly_counts("a", None, None, ()) == {H: 2}
        assert sink.user_counts("a", None, None, "u") == {"u": 2}
        assert sink.applied([b.id, "unknown"]) == {b.id}

    def test_batches_add_up(self, sink: Sink) -> None:
        for n in (1, 2, 3):
            sink.apply(batch({("a", (("p", "x"),), H): n}, {("a", "u", D): n, ("a", "v", D): 1}))
        assert sink.hourly_counts("a", None, None, ()) == {H: 6}
        assert sink.user_counts("a", None, None, None) == {"u": 6, "v": 3}

    def test_separators_and_unicode_survive(self, sink: Sink) -> None:
        sink.apply(batch({(ODD, ((ODD, ODD),), H): 4}, {(ODD, ODD, D): 4}))
        assert sink.hourly_counts(ODD, None, None, ((ODD, ODD),)) == {H: 4}
        assert sink.user_counts(ODD, None, None, ODD) == {ODD: 4}

    def test_property_counts_by_value_and_period(self, sink: Sink) -> None:
        """Whole days (the rollup, where a sink has one) and hours at the edges, by value."""
        day = D * 24  # the first hour of day D
        sink.apply(
            batch(
                {
                    ("a", (("path", "/"), ("plan", "pro")), day + 1): 1,
                    ("a", (("path", "/"), ("plan", "free")), day + 30): 2,
                    ("a", (("path", "/b"),), day + 30): 4,
                    ("a", (("path", ODD),), day + 49): 8,
                    ("a", (("plan", "pro"),), day + 2): 16,
                    ("a", (("path", "/c"),), day + 3): 32,
                    ("b", (("path", "/"),), day): 64,
                }
            )
        )
        bounds = [day, day + 24, day + 50]  # a whole day, then a day and two hours
        assert sink.property_counts("a", "path", bounds, ()) == {
            ("/", 0): 1,
            (Bucket.NONE, 0): 16,
            ("/c", 0): 32,
            ("/", 1): 2,
            ("/b", 1): 4,
            (ODD, 1): 8,
        }
        assert sink.property_counts("a", "path", [day + 2, None], (("plan", "pro"),)) == {
            (Bucket.NONE, 0): 16
        }
        # Ranked over all periods: /c 32, / 3, ODD 8, /b 4; ties would go to the smaller.
        assert sink.property_counts("a", "path", bounds, (), 2, ["/b"]) == {
            ("/c", 0): 32,
            (ODD, 1): 8,
            ("/b", 1): 4,
            (Bucket.OTHER, 0): 1,
            (Bucket.OTHER, 1): 2,
            (Bucket.NONE, 0): 16,
        }
        assert sink.property_counts("a", "plan", [None, None], (), 1, ()) == {
            ("pro", 0): 17,
            (Bucket.OTHER, 0): 2,
            (Bucket.NONE, 0): 44,
        }

    def test_property_count_ties_go_to_the_smaller_value(self, sink: Sink) -> None:
        values = ["b", "a", "B", "é", "aa"]
        sink.apply(batch({("a", (("k", v),), H): 5 for v in values}))
        for limit in range(1, 6):
            counts = sink.property_counts("a", "k", [None, None], (), limit, ())
            listed = sorted(v for v, _ in counts if isinstance(v, str))
            assert listed == sorted(values)[:limit]

    def test_a_snapshot_reads_counts_and_ledger_as_of_one_moment(self, sink: Sink) -> None:
        before = batch({("a", (), H): 1}, {("a", "u", D): 1})
        sink.apply(before)
        with sink.snapshot() as snapshot:
            during = batch({("a", (), H): 2}, {("a", "u", D): 2})
            sink.apply(during)  # after entering, before the first read
            assert snapshot.committed_since_entered() == {during.id}
            assert snapshot.applied([before.id, during.id, "unknown"]) == {before.id, during.id}
            assert snapshot.hourly_counts("a", None, None, ()) == {H: 3}
            assert snapshot.user_counts("a", None, None, "u") == {"u": 3}
            assert snapshot.event_totals() == {"a": 3}
            assert snapshot.committed_since_entered() == {during.id}
        with sink.snapshot() as snapshot:
            assert snapshot.committed_since_entered() == set()
            assert snapshot.hourly_counts("a", None, None, ()) == {H: 3}

    def test_nothing_commits_behind_the_fence(self, sink: Sink) -> None:
        waiting = batch({("a", (), H): 5})
        applier = threading.Thread(target=sink.apply, args=(waiting,))
        with sink.snapshot(fence=True) as snapshot:
            applier.start()
            wait_for_apply_to_queue(sink)
            assert snapshot.hourly_counts("a", None, None, ()) == {}
            assert snapshot.applied([waiting.id]) == set()
            assert snapshot.committed_since_entered() == set()
            assert applier.is_alive()  # the apply waits for the fence
        applier.join()
        assert sink.hourly_counts("a", None, None, ()) == {H: 5}


# -- the protocol between them ---------------------------------------------------------------


def flush(store: CounterStore, sink: Sink) -> None:
    for b in store.claim():
        sink.apply(b)
        store.ack(b.id)


class TestExactlyOnce:
    def test_push_claim_apply_ack(self, store: CounterStore, sink: Sink) -> None:
        push(store, {("a", (), H): 3}, {("a", "u", D): 3})
        flush(store, sink)
        push(store, {("a", (), H): 4}, {("a", "u", D): 4})
        flush(store, sink)
        assert sink.hourly_counts("a", None, None, ()) == {H: 7}
        assert sink.user_counts("a", None, None, None) == {"u": 7}
        assert pending_total(store, "a") == 0

    def test_a_flusher_dying_after_claim_loses_nothing(
        self, store: CounterStore, sink: Sink, clock: ManualClock
    ) -> None:
        push(store, {("a", (), H): 5})
        store.claim()  # ...and the flusher dies here
        push(store, {("a", (), H): 1})
        clock.advance(301)
        for orphan in store.claimed(older_than=300):
            sink.apply(orphan)
            store.ack(orphan.id)
        flush(store, sink)
        assert sink.hourly_counts("a", None, None, ()) == {H: 6}

    def test_a_flusher_dying_after_commit_counts_once(
        self, store: CounterStore, sink: Sink, clock: ManualClock
    ) -> None:
        push(store, {("a", (), H): 5})
        for b in store.claim():
            sink.apply(b)  # ...committed, and the flusher dies before ack
        clock.advance(301)
        for orphan in store.claimed(older_than=300):
            assert sink.apply(orphan) is False
            store.ack(orphan.id)
        assert sink.hourly_counts("a", None, None, ()) == {H: 5}
        assert store.claimed() == []


class TestFleetTotals:
    def test_pending_and_durable_totals_per_event(self, store: CounterStore, sink: Sink) -> None:
        push(
            store,
            {("a", (("k", "1"),), H): 2, ("a", (), H + 30): 3, (ODD, (), H): 4},
            {("a", "u", D): 9},
        )
        flush(store, sink)
        push(store, {("a", (), H): 1}, producer="p2")
        store.claim()  # a batch in flight
        push(store, {("b", (), H): 7}, producer="p3")
        assert sink.event_totals() == {"a": 5, ODD: 4}
        pending = store.pending_event_totals()
        assert pending.live == {"b": 7}
        assert sorted(pending.claimed.values(), key=str) == [{"a": 1}]


# -- per-group daily counters ---------------------------------------------------------------


def grouped(store: CounterStore, groups: Counts, producer: str | None = None) -> Push:
    """Push ``groups`` (per-group keys) with the hourly counts they belong to."""
    hourly: Counts = {}
    for (event, _, _, _, day), value in groups.items():
        hourly[event, (), day * 24] = hourly.get((event, (), day * 24), 0) + value
    delta = Delta(hourly=hourly, groups=groups)
    p = Push(producer=producer or uuid.uuid4().hex, sequence=1, delta=delta)
    store.push(p)
    return p


def pending_sum(pending: object) -> Counts:
    """Live and claimed counts of a ``Pending`` summed per key."""
    out: Counts = {}
    for counts in [pending.live, *pending.claimed.values()]:  # type: ignore[attr-defined]
        for key, value in counts.items():
            out[key] = out.get(key, 0) + value
    return out


GROUPS = {
    ("a", "account", "acme", "u1", D): 2,
    ("a", "account", "acme", "u2", D): 3,
    ("a", "account", "acme", None, D): 4,  # calls without a user
    ("a", "account", "beta", "u1", D): 1,
    ("a", "account", "acme", "u1", D + 1): 5,
    ("a", "workspace", "acme", "u1", D): 6,  # same id, another type
    ("b", "account", "acme", "u1", D): 7,
}


class TestGroups:
    def test_pushed_group_counts_are_pending_per_group(self, store: CounterStore) -> None:
        grouped(store, GROUPS)
        assert store.pending_groups("a", "account", D, D + 1, None).live == {"acme": 9, "beta": 1}
        assert store.pending_groups("a", "account", None, None, None).live == {
            "acme": 14,
            "beta": 1,
        }
        assert store.pending_groups("a", "account", None, None, "beta").live == {"beta": 1}
        assert store.pending_groups("a", "account", D + 1, None, "beta").live == {}
        assert store.pending_groups("a", "workspace", None, None, None).live == {"acme": 6}
        assert store.pending_groups("b", "account", None, None, "acme").live == {"acme": 7}
        assert store.pending_groups("c", "account", None, None, None).live == {}

    def test_groups_round_trip_through_a_claim(self, store: CounterStore) -> None:
        odd = {(ODD, ODD, ODD, ODD, D): 3, (ODD, ODD, "g|1", None, D): 2, ("a", "t", "x", "", D): 1}
        p = grouped(store, {**GROUPS, **odd})
        assert store.pending_groups(ODD, ODD, None, None, ODD).live == {ODD: 3}
        assert store.pending_groups(ODD, ODD, None, None, "g|1").live == {"g|1": 2}
        batches = store.claim()
        merged: Counts = {}
        for b in batches:
            for k, v in b.delta.groups.items():
                merged[k] = merged.get(k, 0) + v
        assert merged == p.delta.groups
        pending = store.pending_groups("a", "account", None, None, None)
        assert pending.live == {}
        assert pending_sum(pending) == {"acme": 14, "beta": 1}
        for b in batches:
            store.ack(b.id)
        assert pending_sum(store.pending_groups("a", "account", None, None, None)) == {}

    def test_a_push_with_groups_is_applied_once(self, store: CounterStore) -> None:
        p = grouped(store, GROUPS)
        store.push(p)
        assert store.pending_groups("a", "account", D, D + 1, "acme").live == {"acme": 9}

    def test_keyed_calls_count_their_groups_once(self, store: CounterStore) -> None:
        call = Deduped("k1", "a", (), H, "u1", 2, (("account", "acme"), ("workspace", "w")))
        for sequence in (1, 2):
            delta = Delta()
            store.push(Push(producer="p", sequence=sequence, delta=delta, deduped=(call,)))
        assert store.pending_groups("a", "account", None, None, None).live == {"acme": 2}
        assert store.pending_groups("a", "workspace", None, None, None).live == {"w": 2}
        [batch] = store.claim()
        assert batch.delta.groups == {
            ("a", "account", "acme", "u1", D): 2,
            ("a", "workspace", "w", "u1", D): 2,
        }

    def test_sink_counts_ranks_and_counts_groups(self, sink: Sink) -> None:
        assert sink.apply(batch({("a", (), H): 1}, groups=GROUPS))
        assert sink.group_counts("a", "account", D, D + 1, None) == {"acme": 9, "beta": 1}
        assert sink.group_counts("a", "account", None, None, "acme") == {"acme": 14}
        assert sink.group_counts("a", "account", D + 2, None, None) == {}
        assert sink.group_counts("a", "workspace", None, None, None) == {"acme": 6}
        assert sink.top_groups("a", "account", D, D + 2, 1, ()) == {"acme": 14}
        assert sink.top_groups("a", "account", D, D + 1, 1, ["beta", "zeta"]) == {
            "acme": 9,
            "beta": 1,
        }
        assert sink.distinct_groups("a", "account", D, D + 1, ()) == 2
        assert sink.distinct_groups("a", "account", D + 1, D + 2, ()) == 1
        assert sink.distinct_groups("a", "account", D, D + 2, ["acme", "other"]) == 1
        assert sink.distinct_groups("zzz", "account", D, D + 2, ()) == 0

    def test_group_ties_rank_the_smaller_id_first(self, sink: Sink) -> None:
        groups = {("a", "account", g, None, D): 5 for g in ("b", "a", "B", "é")}
        sink.apply(batch({("a", (), H): 20}, groups=groups))
        assert list(sink.top_groups("a", "account", D, D + 1, 3, ())) == ["B", "a", "b"]

    def test_groups_are_applied_once(self, store: CounterStore, sink: Sink) -> None:
        grouped(store, GROUPS)
        claims = store.claim()
        for b in claims:
            assert sink.apply(b)
            assert not sink.apply(b)
            store.ack(b.id)
        grouped(store, {("a", "account", "beta", "u9", D): 10})
        flush(store, sink)
        assert sink.group_counts("a", "account", D, D + 1, None) == {"acme": 9, "beta": 11}
