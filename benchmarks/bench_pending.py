"""Pending reads at scale: queries against a Redis holding a large unflushed backlog.

Fills a real Redis with USERS per-user daily counters of one event (over DAYS days) and
HOURLY hourly counters (EVENTS events x HOURS hours x SETS property sets), nothing flushed,
then times, through the SDK's query engine (memory sink: nothing durable, so every count
comes from Redis):

- ``count(event, day=d, user_id="u5")``: one user's count of a day;
- ``count(event, hour=h)``: one hour of one event;
- ``top_users(event, day=d)`` and ``unique_users(event, d, d)``: one day's users;

for this version's key layout and, in the same run and the same Redis, for the layout of
an earlier version (its store module read from git, ``--baseline``). For each phase it
prints the longest single command or script Redis ran for the benchmark's own clients,
from ``SLOWLOG`` (``slowlog-log-slower-than`` set to 0 for the run, then restored): the
time every other client of the server waited behind it. Then it claims and acknowledges
the whole backlog (as a flush does, without a sink) and prints the longest CLAIM step.

Last, a client buffers ``--buffer`` (100,000) distinct keys and its scheduler pushes them:
in pushes of at most ``max_push_keys`` (default 2,000) counters, and, in the same run, in one push
(``max_push_keys`` set to the buffer's size, as every push was before pushes were split);
it prints the pushes, their total time and the longest script.

    python benchmarks/bench_pending.py [--url redis://127.0.0.1:6379/0] [--users 300000]
        [--days 3] [--events 10] [--hours 500] [--sets 10] [--repeat 21]
        [--baseline 5b5bcb6] [--no-baseline] [--buffer 100000]

Targets (issue 10): a single-user count under 5 ms with 300,000 users pending; no script
that holds Redis for long (the earlier layout's reads took 280 ms and 712 ms).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import redis

from analytics_sdk import Analytics
from analytics_sdk.aggregator import MAX_PUSH_KEYS
from analytics_sdk.backends import CounterStore, Delta, Push
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.keys import day_of
from analytics_sdk.query import QueryEngine

FIRST_DAY = date(2026, 3, 1)
USER_EVENT = "visit"
PUSH_KEYS = 10_000
BASELINE = "5b5bcb6"
"""The last commit with one hash per event (pending reads read the whole event)."""


def earlier_store_class(rev: str) -> Any:
    """The RedisCounterStore of commit ``rev``, loaded from git as a module of the package."""
    root = Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{rev}:src/analytics_sdk/backends/redis.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = "analytics_sdk.backends._redis_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    module.__package__ = "analytics_sdk.backends"
    sys.modules[name] = module
    exec(compile(source, f"{rev}:redis.py", "exec"), module.__dict__)
    store_class = module.RedisCounterStore
    # Methods the store contract gained since that commit: not used by this benchmark.
    missing = dict.fromkeys(getattr(store_class, "__abstractmethods__", ()), _not_measured)
    return type("EarlierRedisCounterStore", (store_class,), missing) if missing else store_class


def _not_measured(*args: object, **kwargs: object) -> Any:
    raise NotImplementedError("not in the earlier store")


def fill(store: Any, args: argparse.Namespace) -> list[float]:
    """Push the backlog in pushes of PUSH_KEYS keys; return each push's seconds."""
    first = day_of(FIRST_DAY)
    keys: list[tuple[str, Any]] = []
    per_day = args.users // args.days
    for d in range(args.days):
        keys += [("u", (USER_EVENT, f"u{n}", first + d)) for n in range(per_day)]
    for e in range(args.events):
        event = USER_EVENT if e == 0 else f"event_{e}"
        for h in range(args.hours):
            hour = first * 24 + h
            keys += [("h", (event, (("set", str(s)),), hour)) for s in range(args.sets)]
    times = []
    producer = f"bench-{uuid.uuid4().hex[:8]}"
    for sequence, start in enumerate(range(0, len(keys), PUSH_KEYS), 1):
        delta = Delta()
        for kind, key in keys[start : start + PUSH_KEYS]:
            (delta.users if kind == "u" else delta.hourly)[key] = 1 + hash(key) % 5
        began = time.perf_counter()
        store.push(Push(producer=producer, sequence=sequence, delta=delta))
        times.append(time.perf_counter() - began)
    return times


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Slowlog:
    """The longest command Redis ran for clients named ``name``, per phase."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        config = r.config_get("slowlog-*")
        self.saved = {k: config[k] for k in ("slowlog-log-slower-than", "slowlog-max-len")}
        r.config_set("slowlog-max-len", 100_000)
        r.config_set("slowlog-log-slower-than", 0)
        r.slowlog_reset()

    def longest(self, name: str) -> tuple[float, str]:
        """Milliseconds and command of the longest entry of ``name`` since the last call."""
        entries = [e for e in self.r.slowlog_get(100_000) if _text(e.get("client_name")) == name]
        self.r.slowlog_reset()
        if not entries:
            return 0.0, ""
        top = max(entries, key=lambda e: e["duration"])
        return top["duration"] / 1000, _text(top["command"])[:40]

    def restore(self) -> None:
        for key, value in self.saved.items():
            self.r.config_set(key, value)


def median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def measure(
    label: str, store: Any, args: argparse.Namespace, slowlog: Slowlog, name: str
) -> dict[str, tuple[float, float]]:
    """Fill ``store``, time the reads, claim everything; return {phase: (ms, longest ms)}."""
    out: dict[str, tuple[float, float]] = {}
    began = time.perf_counter()
    pushes = fill(store, args)
    longest, what = slowlog.longest(name)
    print(
        f"[{label}] filled in {time.perf_counter() - began:.1f} s: {len(pushes)} pushes of "
        f"{PUSH_KEYS:,} keys, median {statistics.median(pushes) * 1000:.1f} ms; longest "
        f"command {longest:.1f} ms ({what})"
    )
    out["push of 10,000 keys"] = (statistics.median(pushes) * 1000, longest)
    client = Analytics(sink="memory://", background=False)
    client._sync_query = QueryEngine(client.aggregator, store, client.sink)
    day = FIRST_DAY + timedelta(days=args.days // 2)
    hour = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=timezone.utc)
    hour += timedelta(hours=args.hours // 2)
    reads: list[tuple[str, Callable[[], object], int]] = [
        ("count(day, user_id)", lambda: client.count(USER_EVENT, day=day, user_id="u5"), 1),
        ("count(hour)", lambda: client.count(USER_EVENT, hour=hour), 1),
        ("top_users(day)", lambda: client.top_users(USER_EVENT, day=day, limit=10), 3),
        ("unique_users(day)", lambda: client.unique_users(USER_EVENT, day, day), 3),
    ]
    for read_name, run, cost in reads:
        run()  # warm: scripts loaded, connections open
        slowlog.longest(name)
        ms = median_ms(run, max(3, args.repeat // cost))
        longest, what = slowlog.longest(name)
        out[read_name] = (ms, longest)
        print(f"[{label}] {read_name:<22} {ms:9.2f} ms median; longest command {longest:7.2f} ms")
    client.shutdown()
    began = time.perf_counter()
    batches = 0
    for batch in store.claim_batches():
        store.ack(batch.id)
        batches += 1
    longest, what = slowlog.longest(name)
    out["claim + ack of the backlog"] = ((time.perf_counter() - began) * 1000, longest)
    print(
        f"[{label}] claimed and acknowledged {batches} batches in "
        f"{time.perf_counter() - began:.1f} s; longest command {longest:.1f} ms ({what})"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--hours", type=int, default=500)
    parser.add_argument("--sets", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--buffer", type=int, default=100_000)
    args = parser.parse_args()
    r = redis.Redis.from_url(args.url, decode_responses=True)
    hourly = args.events * args.hours * args.sets
    print(
        f"pending: {args.users:,} per-user counters of {USER_EVENT!r} over {args.days} days, "
        f"{hourly:,} hourly counters ({args.events} events x {args.hours} hours x "
        f"{args.sets} sets); Redis {r.info('server')['redis_version']}"
    )
    layouts: list[tuple[str, Callable[[str], CounterStore]]] = [
        ("this version", lambda url: RedisCounterStore.from_url(url))
    ]
    if not args.no_baseline:
        earlier = earlier_store_class(args.baseline)
        layouts.append((f"layout of {args.baseline}", lambda url: earlier.from_url(url)))
    slowlog = Slowlog(r)
    results: dict[str, dict[str, tuple[float, float]]] = {}
    prefixes = []
    try:
        for label, make in layouts:
            prefix = f"bench_pending_{uuid.uuid4().hex[:8]}"
            prefixes.append(prefix)
            name = f"bench_pending_{len(prefixes)}"
            store = make(f"{args.url}?prefix={prefix}&shards=1&client_name={name}")
            results[label] = measure(label, store, args, slowlog, name)
            store.close()
    finally:
        slowlog.restore()
        for prefix in prefixes:
            delete_prefix(r, prefix)
    print()
    labels = list(results)
    header = f"{'':<28}" + "".join(f"{label:>34}" for label in labels)
    print(header)
    print(f"{'':<28}" + "".join(f"{'median ms / longest cmd ms':>34}" for _ in labels))
    for phase in results[labels[0]]:
        row = f"{phase:<28}"
        for label in labels:
            ms, longest = results[label][phase]
            row += f"{ms:>20.2f} / {longest:>11.2f}"
        print(row)
    if len(labels) == 2:
        for phase in ("count(day, user_id)", "count(hour)", "top_users(day)", "unique_users(day)"):
            ratio = results[labels[1]][phase][0] / results[labels[0]][phase][0]
            print(f"{phase}: {ratio:,.1f}x faster than the earlier layout")
    single = results[labels[0]]["count(day, user_id)"][0]
    print(f"single-user count: {single:.2f} ms (target < 5 ms)")
    print()
    slowlog = Slowlog(r)
    try:
        for max_push_keys in (MAX_PUSH_KEYS, args.buffer + 1):  # + 1: the users' hourly key
            pushes, seconds, longest = buffer_push(args.url, r, slowlog, args.buffer, max_push_keys)
            print(
                f"a buffer of {args.buffer:,} keys, max_push_keys={max_push_keys:,}: {pushes} "
                f"push{'es' if pushes > 1 else ''}, {seconds * 1000:,.0f} ms in all, longest "
                f"script {longest:.1f} ms"
            )
    finally:
        slowlog.restore()


def buffer_push(
    url: str, r: redis.Redis, slowlog: Slowlog, keys: int, max_push_keys: int
) -> tuple[int, float, float]:
    """Buffer ``keys`` distinct keys in a client, push them; return the pushes, the seconds
    they took and the longest script (ms)."""
    prefix = f"bench_pending_{uuid.uuid4().hex[:8]}"
    name = f"{prefix}_push"
    client = Analytics(
        store=f"{url}?prefix={prefix}&client_name={name}",
        background=False,
        flusher=False,
        max_buffered_keys=keys + 1,
    )
    try:
        client.aggregator.max_push_keys = max_push_keys
        when = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=timezone.utc)
        for n in range(keys // 2):  # a user's count and a property set's: two keys each
            client.track(USER_EVENT, user_id=f"u{n}", timestamp=when)
            client.track(f"e{n % 100}", properties={"path": f"/p{n}"}, timestamp=when)
        buffered = client.aggregator.buffered_keys
        sizes: list[int] = []
        push = client.store.push

        def counted(p: Push) -> bool:
            sizes.append(p.delta.keys)
            return push(p)

        client.store.push = counted  # type: ignore[method-assign,assignment]
        slowlog.longest(name)
        started = time.perf_counter()
        client.scheduler.push()
        seconds = time.perf_counter() - started
        longest, _ = slowlog.longest(name)
        assert client.aggregator.buffered_keys == 0, "the buffer was not pushed whole"
        assert sum(sizes) == buffered, (buffered, sizes)
        assert max(sizes) <= max_push_keys, sizes
        return len(sizes), seconds, longest
    finally:
        client.shutdown()
        delete_prefix(r, prefix)


def delete_prefix(r: redis.Redis, prefix: str) -> None:
    """Delete every key of the store prefix ``prefix``."""
    keys = list(r.scan_iter(match=f"{{{prefix}[:}}]*", count=1000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])


if __name__ == "__main__":
    main()
