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

from analytics_sdk import Analytics
from analytics_sdk.keys import day_of, hour_of

EVENTS = ["checkout:step:2", "page|view", "日本語のイベント", "{tagged}", "plain", "a=b,c"]
USERS = [f"user:{n}|é" for n in range(40)]


def _base() -> datetime:
    """Yesterday's UTC midnight: timestamps around it cross hour and day boundaries."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


def produce(store_url: str, seed: int, threads: int, calls: int, report: str) -> None:
    """Track ``threads`` x ``calls`` random events with ``threads`` threads; report the truth."""
    client = Analytics(store=store_url, flusher=False, push_interval=0.05)
    base = _base()
    truths: list[tuple[Counter[str], Counter[str]]] = []

    def work(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        hourly: Counter[str] = Counter()
        users: Counter[str] = Counter()
        for _ in range(calls):
            event = rng.choice(EVENTS)
            when = base + timedelta(minutes=rng.uniform(-150, 150))
            value = rng.choice((1, 1, 1, 2, 5))
            user = rng.choice(USERS) if rng.random() < 0.7 else None
            client.track(
                event, user_id=user, value=value, timestamp=when, properties={"k": rng.choice("ab")}
            )
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


def flush_until(store_url: str, stop_file: str, report: str) -> None:
    """Flush every 50 ms until ``stop_file`` exists; report what this process's sink holds."""
    import os

    client = Analytics(store=store_url, flush_interval=0.05, push_interval=0.05)
    while not os.path.exists(stop_file):
        time.sleep(0.02)
    client.shutdown(timeout=30)
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
