"""Queries never go backwards and never exceed the truth while counts move between tiers.

One thread tracks and flushes without pause (buffer -> outbox -> store -> claim -> sink ->
ack); readers in the same process and in another process count all the while. Every answer
must be at most what was tracked when it returned and at least the answer before it; once
the writer stops and flushes, the count is exact.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from analytics_sdk import Analytics, StoreError
from analytics_sdk.backends import CounterStore, Push, Sink
from analytics_sdk.backends.postgres import PostgresSink
from analytics_sdk.query import QUIET_SKIPS, READ_ATTEMPTS
from analytics_sdk.testing import ManualClock

from .faults import BLOCK_LIMIT, Faults
from .utils import redis_and_postgres

EVENT = "read:check"
USERS = ("u0", "u1")
WHEN = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0) - timedelta(days=1)
DAY: date = WHEN.date()
QUERIES = 5_000
"""Per reader; two readers: 10,000 queries."""


class Tracked:
    """What the writer tracked so far, raised before each track() so a reader that reads it
    after a query has an upper bound for the answer (shared with reader processes)."""

    def __init__(self, ctx: Any) -> None:
        self.total = ctx.RawValue("q", 0)
        self.user = ctx.RawValue("q", 0)  # tracked for USERS[0]


def _write(client: Analytics, tracked: Tracked, stop: threading.Event) -> None:
    i = 0
    while not stop.is_set():
        user = USERS[i % 2]
        tracked.total.value += 1
        if user == USERS[0]:
            tracked.user.value += 1
        client.track(EVENT, user_id=user, timestamp=WHEN)
        if i % 3 == 2:
            client.flush(timeout=30)
        i += 1


def read_many(client: Analytics, tracked: Tracked, queries: int) -> dict[str, Any]:
    """Count ``queries`` times (all-time and one user's day, in turn); report every answer
    that went down or above the truth."""
    last = {"total": 0, "user": 0}
    decreases: list[tuple[str, int, int]] = []
    above: list[tuple[str, int, int]] = []
    for n in range(queries):
        if n % 2 == 0:
            kind, answer = "total", client.count(EVENT)
            bound = tracked.total.value
        else:
            kind, answer = "user", client.count(EVENT, day=DAY, user_id=USERS[0])
            bound = tracked.user.value
        if answer < last[kind]:
            decreases.append((kind, last[kind], answer))
        if answer > bound:
            above.append((kind, answer, bound))
        last[kind] = max(last[kind], answer)
    return {"decreases": decreases, "above": above, "last": last}


def read_in_process(
    store_url: str, sink_url: str, tracked: Tracked, queries: int, report: str
) -> None:
    """A reader in its own process, with its own client: it sees only store and sink."""
    with Analytics(store=store_url, sink=sink_url, flusher=False, background=False) as client:
        result = read_many(client, tracked, queries)
    Path(report).write_text(json.dumps(result))


def _check(results: dict[str, dict[str, Any]]) -> None:
    wrong = {
        reader: (len(r["decreases"]), r["decreases"][:3], len(r["above"]), r["above"][:3])
        for reader, r in results.items()
        if r["decreases"] or r["above"]
    }
    assert not wrong, f"reader: (decreases, e.g., answers above the truth, e.g.): {wrong}"


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so the readers interleave with every step of the writer."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def _run(
    client: Analytics,
    tracked: Tracked,
    readers: list[Any],
    reports: list[Path],
    same_process: int,
    queries: int = QUERIES,
) -> None:
    stop = threading.Event()
    writer = threading.Thread(target=_write, args=(client, tracked, stop))
    results: list[dict[str, Any]] = []
    local = [
        threading.Thread(target=lambda: results.append(read_many(client, tracked, queries)))
        for _ in range(same_process)
    ]
    writer.start()
    for t in local:
        t.start()
    for p in readers:
        p.start()
    for t in local:
        t.join()
    for p in readers:
        p.join(600)
    stop.set()
    writer.join()
    assert all(p.exitcode == 0 for p in readers)
    assert len(results) == same_process
    _check(
        {f"thread {n}": r for n, r in enumerate(results)}
        | {f"process {n}": json.loads(p.read_text()) for n, p in enumerate(reports)}
    )
    assert client.flush(timeout=60).complete
    assert client.count(EVENT) == tracked.total.value
    assert client.count(EVENT, day=DAY, user_id=USERS[0]) == tracked.user.value
    assert client.scheduler.stats.counts_flushed == tracked.total.value


def test_queries_never_go_backwards_with_redis_and_postgres(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    tracked = Tracked(spawn)
    with (
        redis_and_postgres("reads") as (store_url, sink_url),
        Analytics(store=store_url, sink=sink_url, background=False) as client,
    ):
        report = tmp_path / "reader.json"
        reader = spawn.Process(
            target=read_in_process, args=(store_url, sink_url, tracked, QUERIES, str(report))
        )
        _run(client, tracked, [reader], [report], same_process=1)


def test_reads_behind_the_fence_never_go_backwards_with_redis_and_postgres() -> None:
    tracked = Tracked(multiprocessing.get_context("spawn"))
    with (
        redis_and_postgres("fence") as (store_url, sink_url),
        Analytics(store=store_url, sink=sink_url, background=False) as client,
    ):
        client._query.attempts = 0  # every query reads behind the fence
        client._query.quiet_first = False
        _run(client, tracked, [], [], same_process=1, queries=1_000)
        assert client._query.fenced >= 1_000


@pytest.mark.parametrize("attempts", [READ_ATTEMPTS, 0])
def test_queries_never_go_backwards_with_memory_backends(
    fast_switching: None, attempts: int
) -> None:
    tracked = Tracked(multiprocessing.get_context("spawn"))
    with Analytics(store="memory://", sink="memory://", background=False) as client:
        client._query.attempts = attempts
        _run(client, tracked, [], [], same_process=2)


# -- each interleaving, step by step, on every store and sink -------------------------------


@pytest.fixture
def client(store: CounterStore, sink: Sink, clock: ManualClock) -> Iterator[Analytics]:
    with Analytics(store=store, sink=sink, clock=clock, background=False) as c:
        yield c


def after_store_read(client: Analytics, step: Any) -> list[int]:
    """Run ``step`` once, right after a query's first read of the store; return a list that
    counts the store reads."""
    read = client.store.pending_hourly
    calls: list[int] = []
    client._query.quiet_first = False  # the protocol's reads only, not a sink-alone try first

    def hooked(*args: Any) -> Any:
        pending = read(*args)
        calls.append(1)
        if len(calls) == 1:
            step()
        return pending

    client.store.pending_hourly = hooked  # type: ignore[method-assign]
    return calls


def flush_elsewhere(client: Analytics) -> None:
    """Claim, apply and acknowledge what the store holds, as another process's flusher."""
    for batch in [*client.store.claimed(), *client.store.claim()]:
        client.sink.apply(batch)
        client.store.ack(batch.id)


def test_a_batch_committed_while_the_store_is_read_counts_once(client: Analytics) -> None:
    client.track("e", value=3)
    client.scheduler.push()
    client.store.claim()  # a flush in flight: claimed, not yet applied
    after_store_read(client, lambda: flush_elsewhere(client))
    assert client.count("e") == 3


def test_counts_read_live_then_committed_before_the_sink_is_read_count_once(
    client: Analytics,
) -> None:
    client.track("e", value=2)
    client.scheduler.push()
    reads = after_store_read(client, lambda: flush_elsewhere(client))
    assert client.count("e") == 2
    assert (len(reads), client._query.retries, client._query.fenced) == (2, 1, 0)
    client.track("e", value=5)  # again: the retries add up
    client.scheduler.push()
    reads = after_store_read(client, lambda: flush_elsewhere(client))
    assert client.count("e") == 7
    assert (len(reads), client._query.retries, client._query.fenced) == (2, 2, 0)


def test_when_reads_keep_being_overtaken_one_read_behind_the_fence_answers(
    client: Analytics,
) -> None:
    client._query.attempts = 1
    client.track("e", value=2)
    client.scheduler.push()
    reads = after_store_read(client, lambda: flush_elsewhere(client))
    assert client.count("e") == 2
    assert (len(reads), client._query.retries, client._query.fenced) == (2, 1, 1)


def test_a_push_waits_while_the_buffer_and_store_are_read(client: Analytics) -> None:
    client.track("e", value=4)
    after_store_read(client, client.scheduler.push_through)  # the push must not happen now
    assert client.count("e") == 4
    assert client.scheduler.push() == 4  # the buffer was still there
    assert client.count("e") == 4


def test_a_push_from_another_thread_waits_while_the_buffer_and_store_are_read(
    client: Analytics,
) -> None:
    client.track("e", value=4)
    client._query.quiet_first = False  # one read of the buffer: the protocol's
    local_counts = client.aggregator.local_counts
    pushing = threading.Thread(target=client.scheduler.push)

    def then_push_elsewhere() -> Any:
        held = local_counts()
        pushing.start()
        pushing.join(0.5)  # it waits for the query: draining now would count 4 twice
        return held

    client.aggregator.local_counts = then_push_elsewhere  # type: ignore[method-assign]
    assert client.count("e") == 4
    pushing.join(BLOCK_LIMIT)
    assert not pushing.is_alive()  # the query over, the push went through
    client.aggregator.local_counts = local_counts  # type: ignore[method-assign]
    assert client.aggregator.local_counts().buffer.total == 0
    assert client.count("e") == 4


def test_a_query_does_not_wait_for_a_push_under_way(client: Analytics) -> None:
    # A push hung on the network (a store that stopped answering) holds this process's push
    # lock; a query reads the outbox it is sending and never waits for it.
    client.track("e", value=7)
    hung = Faults(client.store).block("push")
    flushing = threading.Thread(target=client.flush, kwargs={"timeout": BLOCK_LIMIT})
    flushing.start()
    answers: list[int] = []
    try:
        assert hung.entered.wait(BLOCK_LIMIT)
        querying = threading.Thread(target=lambda: answers.append(client.count("e")))
        querying.start()
        querying.join(10)
        assert answers == [7]  # answered while the push still hangs
        client.track("e", value=1)  # buffered behind the outbox
        after_store_read(client, hung.release.set)  # the push lands during the next read
        assert client.count("e") == 8
    finally:
        hung.release.set()
        flushing.join(BLOCK_LIMIT)
    assert client.count("e") == 8


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + BLOCK_LIMIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_overlapping_queries_cannot_put_a_push_off_for_good(client: Analytics) -> None:
    # Query A reads; a push waits to drain the buffer; query B arrives. B waits for the
    # drain (which waits only for A): a stream of overlapping queries never starves pushes.
    client.track("e", value=3)
    answers: list[int] = []
    a = threading.Thread(target=lambda: answers.append(client.count("e")))
    pushing = threading.Thread(target=client.scheduler.push)
    b = threading.Thread(target=lambda: answers.append(client.count("e")))
    faults = Faults(client.store)
    read_a = faults.block("pending_hourly", when=lambda *_: threading.current_thread() is a)
    read_b = faults.block("pending_hourly", when=lambda *_: threading.current_thread() is b)
    try:
        a.start()
        assert read_a.entered.wait(BLOCK_LIMIT)
        pushing.start()
        _until(lambda: client.aggregator._drains_waiting == 1, "the push never waited")
        b.start()
        assert not read_b.entered.wait(1.0)  # B waits before reading anything
        read_a.release.set()
        pushing.join(BLOCK_LIMIT)
        assert not pushing.is_alive()  # drained and pushed while B was waiting
        assert client.aggregator.local_counts().buffer.total == 0
    finally:
        faults.release_all()
        for t in (a, pushing, b):
            t.join(BLOCK_LIMIT)
    assert answers == [3, 3]


def test_a_coroutine_s_query_never_blocks_its_event_loop_behind_a_waiting_push() -> None:
    # The queries a waiting drain holds back may be other coroutines of the same loop: an
    # async query never waits for it (it would block the loop they need to finish).
    import asyncio

    with Analytics(background=False) as client:
        client.track("e", value=4)
        answers: list[int] = []
        a = threading.Thread(target=lambda: answers.append(client.count("e")))
        read_a = Faults(client.store).block(
            "pending_hourly", when=lambda *_: threading.current_thread() is a
        )
        pushing = threading.Thread(target=client.scheduler.push)
        on_loop = threading.Thread(target=lambda: answers.append(asyncio.run(client.acount("e"))))
        try:
            a.start()
            assert read_a.entered.wait(BLOCK_LIMIT)
            pushing.start()
            _until(lambda: client.aggregator._drains_waiting == 1, "the push never waited")
            on_loop.start()
            on_loop.join(BLOCK_LIMIT)
            assert answers == [4]  # answered while the drain still waits for query A
        finally:
            read_a.release.set()
            for t in (a, pushing, on_loop):
                t.join(BLOCK_LIMIT)
        assert answers == [4, 4]
        assert client.count("e") == 4


def test_a_write_through_push_never_waits_for_a_query(client: Analytics) -> None:
    client.track("e", value=2)
    read = Faults(client.store).block("pending_hourly")
    answers: list[int] = []
    query = threading.Thread(target=lambda: answers.append(client.count("e")))
    try:
        query.start()
        assert read.entered.wait(BLOCK_LIMIT)
        client.scheduler.push_through()  # track()'s push: leaves the buffer to the timer
        assert client.aggregator.local_counts().buffer.total == 2
        assert client.scheduler._push_requested
    finally:
        read.release.set()
        query.join(BLOCK_LIMIT)
    assert answers == [2]
    assert client.scheduler.push() == 2
    assert client.count("e") == 2


def test_a_spill_waits_while_the_buffer_and_store_are_read(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # Spooled counts may be replayed into the store by another process at once: spooling
    # the buffer a query has read, before it reads the store, would count them twice.
    client = Analytics(
        store=f"{redis_url}?prefix={prefix}", spool_dir=str(tmp_path), background=False
    )
    spool = client.scheduler.spool
    assert spool is not None
    client.track("e", value=5)
    spilling = threading.Thread(target=client.scheduler.spill)

    def spill_and_replay_elsewhere() -> None:
        spilling.start()
        spilling.join(0.5)  # it waits for the query
        spool.replay(client.store)  # as another process sharing the spool would

    after_store_read(client, spill_and_replay_elsewhere)
    assert client.count("e") == 5
    spilling.join(BLOCK_LIMIT)
    assert not spilling.is_alive()
    assert client.scheduler.counts_spooled == 5
    assert spool.replay(client.store).counts == 5
    assert client.count("e") == 5
    client.shutdown()


def test_an_outbox_whose_reply_was_lost_counts_once(client: Analytics) -> None:
    push = client.store.push

    def applied_then_lost(p: Push) -> bool:
        push(p)
        raise StoreError("injected: reply lost")

    client.store.push = applied_then_lost  # type: ignore[method-assign]
    client.track("e", value=5)
    assert client.flush().error is not None  # the outbox stays, though the store has it
    assert client.count("e") == 5
    client.store.push = push  # type: ignore[method-assign]
    assert client.flush().complete
    assert client.count("e") == 5


def test_an_outbox_landing_during_the_read_counts_once(client: Analytics) -> None:
    push = client.store.push

    def failing(p: Push) -> bool:
        raise StoreError("injected: timeout")

    client.store.push = failing  # type: ignore[method-assign]
    client.track("e", value=6)
    assert client.flush().error is not None
    outbox = client.aggregator.local_counts().outbox
    assert outbox is not None
    reads = after_store_read(client, lambda: push(outbox))  # the lost attempt lands late
    assert client.count("e") == 6
    assert len(reads) == 2
    client.store.push = push  # type: ignore[method-assign]
    assert client.flush().complete
    assert client.count("e") == 6


# -- the sink alone, when nothing is pending or buffered ------------------------------------


def test_with_nothing_pending_or_buffered_the_sink_alone_answers(client: Analytics) -> None:
    client.track("e", value=3)
    client.track("other", value=1)
    assert client.flush().complete
    client.track("other", value=2)  # buffered, of another event: no reason to read the usual way
    assert client.count("e") == 3
    assert client._query.quiet == 1
    assert client.count("e") == 3
    assert client._query.quiet == 2
    assert client.count("other") == 3  # its buffered count: read the usual way
    assert client._query.quiet == 2


def test_counts_pending_or_buffered_are_read_the_usual_way_for_a_while(
    client: Analytics,
) -> None:
    client.track("e", value=3)
    assert client.flush().complete
    client.track("e", value=4)  # buffered
    assert client.count("e") == 7
    assert client._query.quiet == 0
    client.scheduler.push()  # now in the store
    for _ in range(QUIET_SKIPS):
        assert client.count("e") == 7  # the usual way, without a try of the sink alone first
    assert client._query.quiet == 0
    assert client.flush().complete
    assert client.count("e") == 7  # tried again, and answered from the sink alone
    assert client._query.quiet == 1


def test_counts_that_reach_the_sink_during_a_sink_alone_read_count_once(
    client: Analytics,
) -> None:
    client.track("e", value=3)
    assert client.flush().complete
    other = Analytics(store=client.store, sink=client.sink, background=False, flusher=False)

    def another_process_flushes() -> None:
        other.track("e", value=5)  # after this read of the store: may or may not be counted
        other.scheduler.push()
        flush_elsewhere(client)

    reads = after_store_read(client, another_process_flushes)
    client._query.quiet_first = True
    assert client.count("e") in (3, 8)
    assert len(reads) == 1
    assert client._query.quiet == 1
    assert client.count("e") == 8
    other.shutdown()


def test_with_the_buffer_empty_a_sink_alone_read_holds_no_push_and_counts_once(
    client: Analytics,
) -> None:
    """With nothing buffered, the read does not keep this process's pushes back: a count
    tracked during the read is pushed and may even be flushed before the sink is read. It
    is counted once or not at all, and every count made before the read is counted."""
    client.track("e", value=3)
    assert client.flush().complete

    def tracked_pushed_and_flushed() -> None:
        client.track("e", value=5)
        client.scheduler.push()
        assert client.aggregator.is_empty()  # pushed at once: nothing held it back
        flush_elsewhere(client)

    reads = after_store_read(client, tracked_pushed_and_flushed)
    client._query.quiet_first = True
    assert client.count("e") in (3, 8)
    assert (len(reads), client._query.quiet) == (1, 1)
    assert client.count("e") == 8


def test_a_read_of_more_than_one_statement_is_read_the_usual_way(
    client: Analytics,
) -> None:
    # A week in New York holds whole UTC days (from the daily rollup) and hours at its edges:
    # in PostgreSQL two statements, which need the usual snapshot.
    today = datetime.fromtimestamp(client._now(), timezone.utc).date()
    first = today - timedelta(days=10)
    when = datetime(first.year, first.month, first.day, 3, tzinfo=timezone.utc)
    client.track("e", value=2, timestamp=when)
    client.track("e", value=5, timestamp=when + timedelta(days=1))
    assert client.flush().complete
    weeks = client.series(
        "e",
        first - timedelta(days=7),
        first + timedelta(days=7),
        granularity="week",
        tz="America/New_York",
    )
    assert sum(n for _, n in weeks) == 7
    one_statement = not isinstance(client.sink, PostgresSink)
    assert client._query.quiet == (1 if one_statement else 0)
    cohorts = client.retention(first, first, period="day", periods=2)
    assert [(c.size, c.retained) for c in cohorts] == [(0, [0, 0])]
