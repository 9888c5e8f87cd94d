"""Idempotency keys: track(..., dedupe_key=...) counts once per key within dedupe_window, in
one process and across processes sharing a store; marking a key and counting it are one
atomic step, so a key is never marked without its count."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from analytics_sdk import Analytics, ConfigurationError, context
from analytics_sdk.backends import CounterStore, Deduped, Delta, MemorySink, Push
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.errors import StoreError
from analytics_sdk.events import MAX_DEDUPE_KEY_LENGTH
from analytics_sdk.spool import decode, encode
from analytics_sdk.testing import ManualClock

from .faults import Faults


def today(clock: ManualClock) -> date:
    return datetime.fromtimestamp(clock.time(), timezone.utc).date()


def client_on(store: CounterStore, clock: ManualClock, **settings: object) -> Analytics:
    return Analytics(store=store, sink=MemorySink(clock=clock.time), background=False,
                     clock=clock, spool_dir=None, **settings)  # fmt: skip


def test_a_key_counts_once_within_the_window(store: CounterStore, clock: ManualClock) -> None:
    client = client_on(store, clock, dedupe_window=3600)
    for _ in range(5):
        client.track("webhook", user_id="u1", properties={"kind": "paid"}, dedupe_key="evt_1")
    # Not counted until the store has decided whether the key was seen: never over the truth.
    assert client.count("webhook") == 0
    assert client.flush().complete
    client.track("webhook", user_id="u1", properties={"kind": "paid"}, dedupe_key="evt_1")
    client.track("webhook", user_id="u2", value=4, dedupe_key="evt_2")
    client.track("webhook", user_id="u2")  # without a key: always counted
    assert client.flush().complete
    assert client.count("webhook") == 1 + 4 + 1
    assert client.count("webhook", properties={"kind": "paid"}) == 1
    assert client.count("webhook", day=today(clock), user_id="u1") == 1
    assert client.count("webhook", day=today(clock), user_id="u2") == 5
    # Within the window, still once; after it, the key counts again (once).
    clock.advance(3599)
    client.track("webhook", user_id="u1", properties={"kind": "paid"}, dedupe_key="evt_1")
    client.flush()
    assert client.count("webhook", properties={"kind": "paid"}) == 1
    clock.advance(2)
    for _ in range(3):
        client.track("webhook", user_id="u1", properties={"kind": "paid"}, dedupe_key="evt_1")
    client.flush()
    assert client.count("webhook", properties={"kind": "paid"}) == 2
    assert client.count("webhook", day=today(clock), user_id="u1") == 2
    client.shutdown()


def test_clients_sharing_a_store_count_a_key_once(store: CounterStore, clock: ManualClock) -> None:
    sink = MemorySink(clock=clock.time)
    first, second = (
        Analytics(store=store, sink=sink, background=False, clock=clock, spool_dir=None)
        for _ in range(2)
    )
    for i in range(50):
        first.track("delivery", dedupe_key=f"d{i}")
        second.track("delivery", dedupe_key=f"d{i + 25}")  # 25 keys in common
    first.flush()
    second.flush()
    assert first.count("delivery") == second.count("delivery") == 75
    first.shutdown()
    second.shutdown()


def test_a_lost_reply_retried_after_the_window_still_counts_once(
    store: CounterStore, clock: ManualClock
) -> None:
    faults = Faults(store)
    faults.fail("push", after=True)  # applied, then the reply is lost
    client = client_on(store, clock, dedupe_window=1)
    client.track("webhook", dedupe_key="evt_1", value=2)
    assert client.flush().error is not None
    clock.advance(5)  # the window ended meanwhile: only the push's own record stops a recount
    assert client.flush().complete
    assert client.count("webhook") == 2
    client.shutdown()


def test_the_redis_mark_and_count_are_one_step_retried_whole(
    redis_url: str, prefix: str, clock: ManualClock
) -> None:
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}&shards=4", clock.time)
    faults = Faults(store)
    dedupe = store._lua_dedupe
    # The first dedupe script fails before running (the connection dropped): nothing marked,
    # so the retry counts it; the second one runs and its reply is lost: not counted again.
    faults.fail("_run", when=lambda what, script, *a: script is dedupe)
    faults.fail("_run", nth=2, after=True, when=lambda what, script, *a: script is dedupe)
    client = client_on(store, clock)
    for i in range(20):
        client.track("webhook", dedupe_key=f"evt_{i % 10}")
    assert client.flush().error is not None
    assert client.flush().error is not None
    assert client.flush().complete
    assert client.count("webhook") == 10
    client.shutdown()


def test_a_deduplicated_call_survives_the_spool_once(
    redis_url: str, prefix: str, clock: ManualClock, tmp_path: Path
) -> None:
    url = f"{redis_url}?prefix={prefix}"
    down = RedisCounterStore.from_url(url, clock.time)
    Faults(down).fail("push", times=100)
    first = Analytics(store=down, background=False, clock=clock, spool_dir=str(tmp_path),
                      dedupe_window=600)  # fmt: skip
    first.track("webhook", user_id="u1", dedupe_key="evt_1")
    first.track("webhook", user_id="u1", dedupe_key="evt_1")
    assert first.shutdown().spooled == 1
    # Another process counted the key meanwhile (a redelivery): the replay finds it marked.
    other = client_on(RedisCounterStore.from_url(url, clock.time), clock, flusher=False)
    other.track("webhook", user_id="u1", dedupe_key="evt_1")
    other.track("webhook", user_id="u1", dedupe_key="evt_2")
    other.flush()
    again = Analytics(store=RedisCounterStore.from_url(url, clock.time), background=False,
                      clock=clock, spool_dir=str(tmp_path))  # fmt: skip
    assert again.flush().replayed == 1  # sent, found counted
    assert again.count("webhook") == 2  # evt_1 and evt_2, once each
    assert again.count("webhook", day=today(clock), user_id="u1") == 2
    other.shutdown()
    again.shutdown()


def test_the_spool_format_keeps_dedupe_keys() -> None:
    call = Deduped(key="evt_1", event="webhook", properties=(("kind", "paid"),), hour=500_000,
                   user_id="u1", value=3)  # fmt: skip
    plain = Push(producer="p", sequence=1, delta=Delta(hourly={("x", (), 500_000): 1}))
    keyed = Push(producer="p", sequence=2, delta=Delta(), deduped=(call,), dedupe_window=60.0)
    assert encode("store", [plain], 0.0).startswith(b"analytics-sdk-spool 1\n")  # readable by 0.1
    data = encode("store", [plain, keyed], 0.0)
    assert data.startswith(b"analytics-sdk-spool 2\n")
    assert decode(data) == ("store", [plain, keyed])


def test_processes_sharing_redis_count_each_key_once(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        """
        import sys
        from analytics_sdk import Analytics
        url, first = sys.argv[1], int(sys.argv[2])
        client = Analytics(store=url, sink="memory://", push_interval=0.05, flusher=False)
        for rep in range(3):  # a redelivered webhook: the same keys again
            for i in range(first, first + 600):
                client.track("webhook", user_id=f"u{i % 7}", dedupe_key=f"evt-{i}")
        assert client.shutdown().complete
        """
    )
    url = f"{redis_url}?prefix={prefix}&shards=3"
    env = {**os.environ, "ANALYTICS_SPOOL_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, url, str(first)], env=env)
        for first in (0, 400)  # keys 400..599 sent by both
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reader = Analytics(store=url, sink="memory://", background=False, spool_dir=None)
    assert reader.count("webhook") == 1000
    assert reader.flush().complete
    assert reader.count("webhook") == 1000
    reader.shutdown()


def test_context_and_before_track_apply_to_a_keyed_call(clock: ManualClock) -> None:
    client = Analytics(background=False, clock=clock,
                       before_track=lambda e, u, p: (e, u, {**p, "seen": "1"}))  # fmt: skip
    with context(user_id="u9"):
        client.track("webhook", dedupe_key="evt_1")
        client.track("webhook", dedupe_key="evt_1")
    client.flush()
    assert client.count("webhook", properties={"seen": "1"}) == 1
    assert client.count("webhook", day=today(clock), user_id="u9") == 1
    client.shutdown()


def test_a_keyed_call_in_write_through_mode_is_counted_before_track_returns(
    clock: ManualClock,
) -> None:
    client = Analytics(push_interval=0, clock=clock, spool_dir=None)
    client.track("webhook", dedupe_key="evt_1")
    assert client.count("webhook") == 1
    client.shutdown()


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (123, TypeError, "dedupe_key 123 is of type int; accepted: str"),
        (b"evt", TypeError, "dedupe_key b'evt' is of type bytes; accepted: str"),
        ("", ValueError, "dedupe_key '' has 0 characters; accepted: 1 to 200"),
        ("k" * 201, ValueError, f"has 201 characters; accepted: 1 to {MAX_DEDUPE_KEY_LENGTH}"),
        ("evt\n1", ValueError, "contains control or non-printable characters"),
    ],
)
def test_a_bad_dedupe_key_names_the_value_and_what_is_accepted(
    key: object, error: type[Exception], message: str
) -> None:
    client = Analytics(background=False, spool_dir=None)
    with pytest.raises(error) as info:
        client.track("webhook", dedupe_key=key)  # type: ignore[arg-type]
    assert message in str(info.value)
    client.shutdown()


@pytest.mark.parametrize("window", [0, 0.5, -1, True, "24h", float("nan"), 31 * 24 * 3600])
def test_a_bad_window_names_the_value_and_what_is_accepted(window: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Analytics(dedupe_window=window)
    assert str(info.value).startswith(f"dedupe_window={window!r} is not accepted; accepted: "
                                      "a number of seconds from 1 to 2592000")  # fmt: skip


def test_a_failing_store_keeps_the_keyed_calls_until_it_is_back(
    redis_url: str, prefix: str, clock: ManualClock
) -> None:
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}", clock.time)
    faults = Faults(store)
    faults.fail("push", times=3, error=StoreError("Redis is down (injected)"))
    client = client_on(store, clock)
    for attempt in range(3):
        client.track("webhook", dedupe_key="evt_1")
        client.track("webhook", dedupe_key=f"evt_{attempt + 2}")
        assert client.flush().error is not None
    assert client.flush().complete
    assert client.count("webhook") == 4
    client.shutdown()


def test_a_recording_counts_keyed_calls_once() -> None:
    from analytics_sdk import track
    from analytics_sdk.testing import recording

    with recording() as rec:
        for _ in range(3):
            track("webhook", dedupe_key="evt_1")
        assert rec.count("webhook") == 1


def test_keyed_calls_take_room_in_the_buffer_and_a_full_one_is_pushed_first(
    clock: ManualClock,
) -> None:
    client = Analytics(background=False, clock=clock, spool_dir=None, max_buffered_keys=10)
    for i in range(25):
        client.track("webhook", dedupe_key=f"evt_{i}")
    # The calls that found the buffer full pushed it: what they pushed is counted already.
    assert client.stats()["pushes_ok"] >= 2
    assert client.count("webhook") >= 20
    assert client.flush().complete
    assert client.count("webhook") == 25
    client.shutdown()


def test_keyed_calls_past_the_name_and_property_limits_fold_into_overflow_once(
    store: CounterStore, clock: ManualClock
) -> None:
    with client_on(store, clock, max_event_names=1, max_property_sets=1) as client:
        client.track("a")
        for _ in range(2):  # a second event name has no room; the key still counts once
            client.track("b", value=2, dedupe_key="k1")
        client.track("a", properties={"p": "1"}, dedupe_key="k2")
        for _ in range(2):  # a second property set of "a" has no room
            client.track("a", properties={"p": "2"}, value=3, dedupe_key="k3")
        assert client.flush().complete
        assert client.count("(overflow)") == 2
        assert client.count("b") == 0
        assert client.count("a", properties={"overflow": "true"}) == 3
        assert client.count("a", properties={"p": "1"}) == 1
        assert client.count("a") == 1 + 1 + 3
        stats = client.stats()
        assert (stats["event_names_overflowed"], stats["overflowed"]) == (2, 3)
