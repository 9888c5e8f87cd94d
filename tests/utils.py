"""The backend matrix: every contract test runs against each entry.

A backend joins the matrix by adding its name to ``STORES`` or ``SINKS`` and a branch to
``make_store`` / ``make_sink``; each backend gets a unique key prefix or schema, so tests
never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from analytics_sdk.backends import CounterStore, MemoryCounterStore, MemorySink, Sink

REQUIRE_SERVICES = os.environ.get("ANALYTICS_REQUIRE_SERVICES", "") not in ("", "0")
"""Set by CI: a test that needs a real server fails instead of skipping."""

STORES = ["memory", "redis", "redis-cluster"]
SINKS = ["memory"]


def skip_or_fail(reason: str) -> None:
    """Skip the test on a machine without the service; fail under ANALYTICS_REQUIRE_SERVICES."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (ANALYTICS_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(reason)


def unique_name(prefix: str = "t") -> str:
    """Return a name no other test uses (a key prefix or schema)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def redis_url_or_skip() -> str:
    """Return the test Redis URL, or skip/fail when no server answers there."""
    from .servers import REDIS_URL, redis_answers

    if not redis_answers():
        skip_or_fail(f"no Redis server answers at {REDIS_URL}")
    return REDIS_URL


@contextmanager
def make_store(
    kind: str, request: pytest.FixtureRequest, clock: Callable[[], float]
) -> Iterator[CounterStore]:
    """Yield a fresh, isolated store of ``kind``; clean up after it."""
    if kind == "memory":
        yield MemoryCounterStore(clock=clock)
        return
    from analytics_sdk.backends.redis import RedisCounterStore

    prefix = unique_name("test")
    if kind == "redis":
        url = redis_url_or_skip()
        store = RedisCounterStore.from_url(f"{url}?prefix={prefix}&shards=3", clock)
    elif kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
        store = RedisCounterStore.from_url(f"{url}?prefix={prefix}&shards=6", clock)
    else:
        raise AssertionError(kind)
    try:
        yield store
    finally:
        if kind == "redis":
            client = store._redis
            keys = list(client.scan_iter(match=f"{{{prefix}:*", count=1000))
            if keys:
                client.delete(*keys)
        store.close()


@contextmanager
def make_sink(
    kind: str, request: pytest.FixtureRequest, clock: Callable[[], float]
) -> Iterator[Sink]:
    """Yield a fresh, isolated sink of ``kind``; clean up after it."""
    if kind == "memory":
        yield MemorySink(clock=clock)
        return
    raise AssertionError(kind)
