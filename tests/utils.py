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
SINKS = ["memory", "postgres"]


def skip_or_fail(reason: str) -> None:
    """Skip the test on a machine without the service; fail under ANALYTICS_REQUIRE_SERVICES."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (ANALYTICS_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(reason)


def unique_name(prefix: str = "t") -> str:
    """Return a name no other test uses (a key prefix or schema)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


POSTGRES_URL = os.environ.get(
    "ANALYTICS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_url_or_skip() -> str:
    """Return the test PostgreSQL URL, or skip/fail when no server answers there."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        skip_or_fail(f"no PostgreSQL server answers at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


def drop_schema(url: str, schema: str) -> None:
    """Drop a test schema and everything in it."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def delete_redis_prefix(url: str, prefix: str) -> None:
    """Delete every key a store with ``prefix`` wrote at ``url`` (a single Redis)."""
    import redis

    client = redis.Redis.from_url(url.split("?", 1)[0])
    keys = list(client.scan_iter(match=f"{{{prefix}[:}}]*", count=1000))  # shards and meta
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()


@contextmanager
def redis_and_postgres(tag: str, shards: int = 3) -> Iterator[tuple[str, str]]:
    """Yield a store URL (Redis) and a sink URL (PostgreSQL) private to the caller."""
    redis_url, pg_url = redis_url_or_skip(), postgres_url_or_skip()
    prefix, schema = unique_name(tag), unique_name(tag)
    try:
        yield (
            f"{redis_url}?prefix={prefix}&shards={shards}",
            f"{pg_url}?schema={schema}&application_name={schema}",
        )
    finally:
        delete_redis_prefix(redis_url, prefix)
        drop_schema(pg_url, schema)


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
        store.close()
        if kind == "redis":
            delete_redis_prefix(url, prefix)


@contextmanager
def make_sink(
    kind: str, request: pytest.FixtureRequest, clock: Callable[[], float]
) -> Iterator[Sink]:
    """Yield a fresh, isolated sink of ``kind``; clean up after it."""
    if kind == "memory":
        yield MemorySink(clock=clock)
        return
    if kind != "postgres":
        raise AssertionError(kind)
    from analytics_sdk.backends.postgres import PostgresSink

    url = postgres_url_or_skip()
    schema = unique_name("test")
    sink = PostgresSink.from_url(f"{url}?schema={schema}", clock)
    try:
        yield sink
    finally:
        sink.close()
        drop_schema(url, schema)
