"""Processes for the multi-process tests: producers that track, flushers that flush.

Each writes a JSON report (its ground truth, or what its sink committed) for the test to
add up. Run in processes started with the "spawn" method.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

from analytics_sdk import Analytics
from analytics_sdk.keys import day_of, hour_of

EVENTS = ["checkout:step:2", "page|view", "日本語のイベント", "{tagged}", "plain", "a=b,c"]
USERS = [f"user:{n}|é" for n in range(40)]


def _base() -> datetime:
    """Yesterday's UTC midnight: timestamps around it cross hour and day boundaries."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


def _pick(rng: random.Random, mode: str) -> tuple[str, dict[str, str]]:
    """An event and its properties: random names, a few overlapping keys, or rare keys."""
    if mode == "overlap":  # every producer hits the same handful of keys
        return rng.choice(EVENTS[:2]), {"k": rng.choice("ab")}
    if mode == "rare":  # the seed's race: keys that are incremented once or twice, ever
        return f"rare:{rng.randrange(10**9)}", {}
    return rng.choice(EVENTS), {"k": rng.choice("ab")}


def produce(
    store_url: str,
    seed: int,
    threads: int,
    calls: int,
    report: str,
    mode: str = "random",
    pace: float = 0.0,
) -> None:
    """Track ``threads`` x ``calls`` events with ``threads`` threads, pausing ``pace`` seconds
    every 20 calls; report the truth."""
    # In "rare" mode almost every call is a new event name: no name may fold into overflow.
    client = Analytics(
        store=store_url, flusher=False, push_interval=0.05, max_event_names=threads * calls
    )
    base = _base()
    truths: list[tuple[Counter[str], Counter[str]]] = []

    def work(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        hourly: Counter[str] = Counter()
        users: Counter[str] = Counter()
        for i in range(calls):
            if pace and i % 20 == 0:
                time.sleep(pace)
            event, properties = _pick(rng, mode)
            when = base + timedelta(minutes=rng.uniform(-150, 150))
            value = rng.choice((1, 1, 1, 2, 5))
            user = rng.choice(USERS) if rng.random() < 0.7 else None
            client.track(event, user_id=user, value=value, timestamp=when, properties=properties)
            hourly[json.dumps([event, hour_of(when)])] += value
            if user is not None:
                users[json.dumps([event, user, day_of(when.date())])] += value
        truths.append((hourly, users))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    result = client.shutdown(timeout=30)
    assert result.complete, result
    hourly_total: Counter[str] = Counter()
    users_total: Counter[str] = Counter()
    for h, u in truths:
        hourly_total.update(h)
        users_total.update(u)
    with open(report, "w") as f:
        json.dump({"hourly": hourly_total, "users": users_total}, f)


def flush_until(
    store_url: str, stop_file: str, report: str, sink_url: str = "memory://", interval: float = 0.05
) -> None:
    """Flush every ``interval`` s until ``stop_file`` exists; report what this process's sink
    holds (a memory sink: this process's share; a shared sink: only its stats)."""
    import os

    client = Analytics(store=store_url, sink=sink_url, flush_interval=interval, push_interval=0.05)
    with open(report + ".ready", "w"):
        pass
    while not os.path.exists(stop_file):
        time.sleep(0.02)
    client.shutdown(timeout=30)
    if sink_url != "memory://":
        with open(report, "w") as f:
            json.dump({"stats": client.stats()}, f)
        return
    sink = client.sink
    hourly: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for event in EVENTS:
        for hour, n in sink.hourly_counts(event, None, None, ()).items():
            hourly[json.dumps([event, hour])] += n
        for day_offset in (-2, -1, 0, 1):
            day = day_of(_base().date()) + day_offset
            for user, n in sink.user_counts(event, day, day + 1, None).items():
                users[json.dumps([event, user, day])] += n
    with open(report, "w") as f:
        json.dump({"hourly": hourly, "users": users, "stats": client.stats()}, f)


def flush_and_die(store_url: str, sink_url: str, step: str) -> None:
    """Flush once and SIGKILL this process at ``step``: after_claim, during_apply (in the
    middle of the COPY, transaction open) or after_commit (before the ack)."""
    import os
    import signal

    from analytics_sdk.backends import postgres

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    client = Analytics(store=store_url, sink=sink_url, background=False)
    if step == "after_claim":
        claim_batches = client.store.claim_batches

        def claim_then_die(max_keys):  # type: ignore[no-untyped-def]
            list(claim_batches(max_keys))  # every live counter claimed, none applied
            die()

        client.store.claim_batches = claim_then_die  # type: ignore[method-assign]
    elif step == "during_apply":
        hourly_rows = postgres._hourly_rows

        def rows_then_die(batch):  # type: ignore[no-untyped-def]
            rows, sets = hourly_rows(batch)

            def dying():  # type: ignore[no-untyped-def]
                for n, row in enumerate(rows):
                    if n == 10:  # the COPY is under way, the transaction open
                        die()
                    yield row

            return dying(), sets

        postgres._hourly_rows = rows_then_die  # type: ignore[assignment]
    elif step == "after_commit":
        client.store.ack = lambda batch_id: die()  # type: ignore[method-assign]
    else:
        raise ValueError(step)
    client.flush(timeout=60)
    raise AssertionError(f"the flush should have died at {step}")


def finish(producers: list, flushers: list, stop_file: Path) -> None:  # type: ignore[type-arg]
    """Wait for the producers, then tell the flushers to stop and wait for them; each must
    exit cleanly."""
    for p in producers:
        p.join(300)
        assert p.exitcode == 0
    stop_file.touch()
    for p in flushers:
        p.join(300)
        assert p.exitcode == 0


def read_truth(reports: list[Path]) -> tuple[Counter[str], Counter[str]]:
    """Add up the ground truth the producers reported: (hourly, per-user)."""
    hourly: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for path in reports:
        report = json.loads(path.read_text())
        hourly.update(report["hourly"])
        users.update(report["users"])
    return hourly, users
