from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from analytics_sdk import api
from analytics_sdk.backends import CounterStore, Sink
from analytics_sdk.testing import ManualClock

from .servers import Proxy
from .utils import (
    SINKS,
    STORES,
    delete_redis_prefix,
    make_sink,
    make_store,
    redis_url_or_skip,
    skip_or_fail,
    unique_name,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[CounterStore]:
    with make_store(request.param, request, clock.time) as backend:
        yield backend


@pytest.fixture(params=SINKS)
def sink(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[Sink]:
    with make_sink(request.param, request, clock.time) as backend:
        yield backend


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real 3-master Redis Cluster, started from redis-server for this test session."""
    from .servers import redis_cluster

    try:
        cluster = redis_cluster()
        url = cluster.__enter__()
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"cannot start a Redis Cluster: {exc}")
        raise
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture(autouse=True, scope="session")
def _session_spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What a test's clients spool goes to the session's temporary directory, never to the
    user's own spool (subprocesses inherit it)."""
    previous = os.environ.get("ANALYTICS_SPOOL_DIR")
    os.environ["ANALYTICS_SPOOL_DIR"] = str(tmp_path_factory.mktemp("spool"))
    yield
    if previous is None:
        os.environ.pop("ANALYTICS_SPOOL_DIR", None)
    else:
        os.environ["ANALYTICS_SPOOL_DIR"] = previous


@pytest.fixture(autouse=True)
def _isolated_global_client() -> Iterator[None]:
    """Each test starts without a global client and leaves none behind."""
    previous = api.set_client(None)
    yield
    leftover = api.set_client(previous)
    if leftover is not None and leftover is not previous:
        leftover.shutdown(timeout=5)


@pytest.fixture
def redis_url() -> str:
    """The test Redis URL (skips, or fails under ANALYTICS_REQUIRE_SERVICES, without one)."""
    return redis_url_or_skip()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix no other test uses, deleted afterwards."""
    name = unique_name("test")
    yield name
    delete_redis_prefix(redis_url, name)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[Proxy]:
    """A :class:`~tests.servers.Proxy` in front of the test Redis."""
    parts = urlsplit(redis_url)
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield p
    p.close()
