"""Exactness under real concurrency: processes x threads tracking into Redis while several
flusher processes run; the sinks plus the store equal the ground truth exactly."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

from analytics_sdk.backends.redis import RedisCounterStore

from . import workloads
from .utils import delete_redis_prefix, redis_url_or_skip, unique_name

PRODUCERS, THREADS, CALLS, FLUSHERS = 4, 4, 3000, 2


def test_processes_and_threads_into_redis_with_two_flushers(tmp_path: Path) -> None:
    url = f"{redis_url_or_skip()}?prefix={unique_name('exact')}&shards=4"
    spawn = multiprocessing.get_context("spawn")
    stop = tmp_path / "stop"
    flushers = [
        spawn.Process(
            target=workloads.flush_until, args=(url, str(stop), str(tmp_path / f"flusher{n}.json"))
        )
        for n in range(FLUSHERS)
    ]
    producers = [
        spawn.Process(
            target=workloads.produce,
            args=(url, n, THREADS, CALLS, str(tmp_path / f"producer{n}.json")),
        )
        for n in range(PRODUCERS)
    ]
    for p in flushers + producers:
        p.start()
    workloads.finish(producers, flushers, stop)
    truth_hourly, truth_users = workloads.read_truth(
        [tmp_path / f"producer{n}.json" for n in range(PRODUCERS)]
    )
    assert sum(truth_hourly.values()) > PRODUCERS * THREADS * CALLS  # values > 1 included

    seen_hourly: Counter[str] = Counter()
    seen_users: Counter[str] = Counter()
    flushed_by = []
    for n in range(FLUSHERS):
        report = json.loads((tmp_path / f"flusher{n}.json").read_text())
        seen_hourly.update(report["hourly"])
        seen_users.update(report["users"])
        flushed_by.append(report["stats"]["counts_flushed"])
    store = RedisCounterStore.from_url(url)
    pending_total = 0
    try:
        for event in workloads.EVENTS:  # whatever is still pending in the store counts too
            pending = store.pending_hourly(event, None, None, ())
            for counts in [pending.live, *pending.claimed.values()]:
                for hour, n in counts.items():
                    seen_hourly[json.dumps([event, hour])] += n
                    pending_total += n
            users = store.pending_users(event, None, None, None)
            assert not users.live, "per-user counts left unflushed"
    finally:
        store.close()
        delete_redis_prefix(url, store.prefix)

    assert seen_hourly == truth_hourly  # per event, per hour: exact
    assert seen_users == truth_users  # per event, per user, per day: exact
    # Which flusher wins the claims is the scheduler's business (on an idle machine one may
    # take them all); what each reports flushing must add up to what reached the sink.
    assert sum(flushed_by) == sum(truth_hourly.values()) - pending_total, flushed_by
