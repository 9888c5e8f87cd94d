"""Process life: fork() neither loses nor re-counts a buffer; exit runs a final flush."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from analytics_sdk import Analytics

from .utils import delete_redis_prefix, redis_and_postgres, redis_url_or_skip, unique_name


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_empty_and_the_parent_keeps_its_buffer() -> None:
    client = Analytics(push_interval=3600, flush_interval=3600)
    client.track("y")
    client.flush()  # the parent's metrics are not zero at the fork
    client.track_feature("f")(lambda: None)()
    client.track("x", value=5, user_id="parent")
    # A thread hammering the buffer while we fork: the child must not inherit a held lock.
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            client.track("noise")

    t = threading.Thread(target=hammer)
    t.start()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read)
            inherited = (
                client.scheduler.stats.counts_pushed,
                client.event_totals.snapshot(),
                client.features.snapshot()[0],
            )
            client.track("x", value=3, user_id="child")
            result = client.flush(timeout=5)
            report = {
                "x": client.count("x"),
                "users": client.top_users("x", day=_today(), limit=5),
                "complete": result.complete,
                "thread": client.scheduler.running,
                "noise_buffered": client.aggregator.local_counts().buffer.total,
                "inherited_stats": repr(inherited),
            }
            os.write(write, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write)
    stop.set()
    t.join()
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert child["x"] == 3  # the parent's buffered 5 were not re-counted in the child
    assert child["users"] == [["child", 3]]
    assert child["complete"]
    assert child["thread"]  # the child has its own scheduler thread
    assert child["noise_buffered"] == 0
    assert child["inherited_stats"] == repr((0, {}, {}))  # its metrics start at zero too
    assert client.flush(timeout=5).complete
    assert client.count("x") == 5  # ...and the parent did not lose them
    assert client.count("x", user_id="parent") == 5
    client.shutdown()


def _today():  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).date()


AT_EXIT = textwrap.dedent(
    """
    import json, sys
    import analytics_sdk as analytics
    from analytics_sdk.backends import MemorySink

    class FileSink(MemorySink):
        # A sink that also writes what it commits, so the parent test can read it.
        def apply(self, batch):
            applied = super().apply(batch)
            with open(sys.argv[1], "a") as f:
                f.write(json.dumps({"event_totals": batch.delta.total}) + "\\n")
            return applied

    analytics.configure(sink=FileSink(), push_interval=3600, flush_interval=3600)
    for _ in range(1234):
        analytics.track("at_exit")
    # no flush(), no shutdown(): the interpreter exits with everything still buffered
    """
)


def test_exit_runs_a_final_flush(tmp_path: Path) -> None:
    out = tmp_path / "committed.jsonl"
    script = tmp_path / "app.py"
    script.write_text(AT_EXIT)
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=60)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(line["event_totals"] for line in lines) == 1234


# An app that tracks and exits without flush() or shutdown(). Before Python 3.12, the
# interpreter still lets atexit hooks start threads; the guard makes it refuse, as 3.12 and
# later do, so this test proves on every version that the exit path starts no thread.
EXIT_TO_POSTGRES = textwrap.dedent(
    """
    import sys, threading
    import analytics_sdk as analytics

    store, sink = sys.argv[1:3]
    analytics.configure(store=store, sink=sink, push_interval=3600, flush_interval=3600)
    for _ in range(5):
        analytics.track("exit_flush", user_id="u1")

    def refuse_threads(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    def guard():  # registered last, so it runs first at exit
        threading.Thread.start = refuse_threads

    if sys.version_info < (3, 12):
        import atexit
        atexit.register(guard)
    """
)


@pytest.mark.services
@pytest.mark.parametrize("store_kind", ["memory", "redis"])
def test_the_exit_flush_reaches_postgres_without_starting_a_thread(
    tmp_path: Path, store_kind: str
) -> None:
    from analytics_sdk.backends.postgres import PostgresSink
    from analytics_sdk.backends.redis import RedisCounterStore

    script = tmp_path / "app.py"
    script.write_text(EXIT_TO_POSTGRES)
    with redis_and_postgres("exit") as (redis_url, sink_url):
        store_url = "memory://" if store_kind == "memory" else redis_url
        done = subprocess.run(
            [sys.executable, str(script), store_url, sink_url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "can't create new thread" not in done.stderr
        assert "incomplete" not in done.stderr
        sink = PostgresSink.from_url(sink_url)
        try:
            assert sum(sink.hourly_counts("exit_flush", None, None, ()).values()) == 5
            assert sink.user_counts("exit_flush", None, None, None) == {"u1": 5}
        finally:
            sink.close()
        if store_kind == "redis":
            store = RedisCounterStore.from_url(redis_url)
            try:
                assert store.claimed() == []  # no orphan claim waiting for its lease
                assert store.pending_event_totals().live == {}
            finally:
                store.close()


# An app whose own exit hook (it runs before the SDK's) is the first to track: the global
# client is created during interpreter shutdown, when no thread may start.
CLIENT_CREATED_AT_EXIT = textwrap.dedent(
    """
    import atexit, sys, threading
    import analytics_sdk as analytics

    def goodbye():
        analytics.track("created_at_exit", user_id="u1")  # store and sink: env

    def refuse_threads(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    def guard():
        threading.Thread.start = refuse_threads

    atexit.register(goodbye)
    if sys.version_info < (3, 12):
        atexit.register(guard)  # registered last, so it runs first
    """
)


@pytest.mark.services
def test_a_client_created_at_exit_flushes_without_a_thread(tmp_path: Path) -> None:
    from analytics_sdk.backends.postgres import PostgresSink

    script = tmp_path / "app.py"
    script.write_text(CLIENT_CREATED_AT_EXIT)
    with redis_and_postgres("exit") as (_, sink_url):
        env = {**os.environ, "ANALYTICS_STORE": "memory://", "ANALYTICS_SINK": sink_url}
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # no error, no incomplete flush
        sink = PostgresSink.from_url(sink_url)
        try:
            assert sink.user_counts("created_at_exit", None, None, None) == {"u1": 1}
        finally:
            sink.close()


# -- a fork at each moment a lock is held or a thread runs ------------------------------------

FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def in_forked_child(work: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run ``work()`` in a forked child and return its JSON result; a child that has not
    answered within ``timeout`` seconds is killed and fails the test (a hang, not a stuck
    suite)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 1
        try:
            os.close(read)
            os.write(write, json.dumps(work()).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked child hung: no answer within {timeout} s")
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed (see its stderr)"
    return json.loads(b"".join(chunks))


class HangingProxy:
    """A TCP proxy to ``target`` that, when told, holds the next request it receives (the
    caller waits for a reply mid-round-trip) until :meth:`release`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.hang_next = False
        self.holding = threading.Event()  # set once a request is held
        self._released = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)  # a held request may wait longer than the connect
            for source, sink, hold in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, hold), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                if requests and self.hang_next:
                    self.hang_next = False
                    self.holding.set()
                    self._released.wait()
                sink.sendall(data)
        for s in (source, sink):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def release(self) -> None:
        """Forward the held request and carry on."""
        self._released.set()

    def close(self) -> None:
        self.release()
        self.listener.close()


@contextmanager
def redis_through_hanging_proxy() -> Iterator[tuple[HangingProxy, str]]:
    """A hanging proxy in front of the test Redis and a store URL through it."""
    url = urlsplit(redis_url_or_skip())
    proxy = HangingProxy((url.hostname or "127.0.0.1", url.port or 6379))
    prefix = unique_name("fork")
    try:
        yield proxy, f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&socket_timeout=120"
    finally:
        proxy.close()
        delete_redis_prefix(redis_url_or_skip(), prefix)


def _driver_locks(store: Any) -> list[Any]:
    """The locks redis-py takes while a thread checks a connection out or in (a single
    server's pool and the event dispatcher it notifies while holding its lock; a cluster's
    node manager and every node's pool and dispatcher)."""
    client = store._redis
    manager = getattr(client, "nodes_manager", None)
    if manager is None:
        pools = [client.connection_pool]
        locks = []
    else:
        nodes = [n.redis_connection for n in manager.nodes_cache.values() if n.redis_connection]
        pools = [n.connection_pool for n in nodes]
        locks = [manager._lock]
    for pool in pools:
        locks.append(pool._lock)
        dispatcher = getattr(pool, "_event_dispatcher", None)  # redis-py 6 and later
        if dispatcher is not None:
            locks.append(dispatcher._lock)
    return locks


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.services
@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_a_child_forked_while_another_thread_holds_the_driver_s_locks_does_not_hang(
    kind: str, request: pytest.FixtureRequest
) -> None:
    # Another thread of the parent (a flusher, a query) is inside redis-py, holding a pool's
    # lock, at the moment of the fork: the child must not wait on it.
    base = redis_url_or_skip() if kind == "redis" else request.getfixturevalue("redis_cluster_url")
    prefix = unique_name("forklock")
    client = Analytics(
        store=f"{base}{'&' if '?' in base else '?'}prefix={prefix}",
        push_interval=0,
        flush_interval=3600,
        background=False,
    )
    try:
        client.track("forked")  # connections made, so the pools hold state to reset
        locks = _driver_locks(client.store)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            for lock in locks:
                lock.acquire()
            held.set()
            release.wait(60)
            for lock in reversed(locks):
                lock.release()

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(10)

        def child() -> list[int]:
            client.track("forked", value=2)  # write-through: pushed before it returns
            return [client.scheduler.stats.counts_pushed, client.count("forked")]

        try:
            assert in_forked_child(child, timeout=30) == [2, 3]
        finally:
            release.set()
            holder.join(10)
        assert client.count("forked") == 3
    finally:
        client.shutdown(timeout=5)
        if kind == "redis":  # the private cluster goes away with the test session
            delete_redis_prefix(base, prefix)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.services
def test_a_child_forked_while_the_redis_layout_check_waits_on_the_network_does_not_hang() -> None:
    with redis_through_hanging_proxy() as (proxy, store_url):
        client = Analytics(store=store_url, push_interval=0, flush_interval=3600, background=False)
        proxy.hang_next = True
        first_use = threading.Thread(target=client.count, args=("forked",))
        first_use.start()  # the layout check: its request is held by the proxy
        assert proxy.holding.wait(10)

        def child() -> list[int]:
            client.track("forked", value=2)  # write-through: pushed before it returns
            pushed = client.scheduler.stats.counts_pushed
            return [pushed, client.count("forked")]

        try:
            assert in_forked_child(child) == [2, 2]
        finally:
            proxy.release()
            first_use.join(10)
        assert client.count("forked") == 2  # the parent sees what the child pushed
        client.shutdown(timeout=5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_forked_child_with_a_metrics_server_shuts_down_and_the_parent_keeps_serving() -> None:
    import urllib.request

    client = Analytics(push_interval=3600, flush_interval=3600, metrics_port=0)
    assert client.metrics_server is not None
    url = client.metrics_server.url

    def child() -> list[Any]:
        client.track("in_child", value=3)
        result = client.shutdown(timeout=5)
        return [result.complete, client.count("in_child")]

    assert in_forked_child(child) == [True, 3]
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        assert response.status == 200  # the parent's server was not touched by the child
    client.shutdown(timeout=5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.services
def test_a_child_forked_while_the_fleet_collector_refreshes_gets_fresh_totals() -> None:
    from analytics_sdk.prometheus import FleetCollector

    with redis_through_hanging_proxy() as (proxy, store_url):
        client = Analytics(store=store_url, push_interval=3600, flush_interval=3600)
        client.track("fleet", value=4)
        assert client.flush(timeout=10).complete
        collector = FleetCollector(client._query, cache_seconds=0.0)
        proxy.hang_next = True
        refresh = threading.Thread(target=collector.collect)
        refresh.start()  # holds the collector's lock while its read waits on the proxy
        assert proxy.holding.wait(10)

        def child() -> dict[str, float]:
            return {s.labels["event"]: s.value for m in collector.collect() for s in m.samples}

        try:
            assert in_forked_child(child) == {"fleet": 4}
        finally:
            proxy.release()
            refresh.join(10)
        client.shutdown(timeout=5)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_child_forked_while_the_global_client_is_created_can_create_its_own() -> None:
    from analytics_sdk import api

    def child() -> bool:
        client = api.get_client()  # the lock the parent held is not inherited held
        client.shutdown(timeout=5)
        return client is not None

    with api._lock:  # another thread creating the global client at the moment of fork()
        assert in_forked_child(child) is True


# -- multiprocessing children -----------------------------------------------------------------

# An application in the shape users write: the client is configured when the module is
# imported (in the parent, and again in every spawn or forkserver child, which re-imports it),
# the children track, and nobody calls flush() or shutdown().
MULTIPROCESSING_APP = textwrap.dedent(
    """
    import concurrent.futures, multiprocessing, sys
    import analytics_sdk as analytics

    # Store and sink come from the environment. Children push; the parent also flushes
    # (fork children inherit its client, so they flush too).
    analytics.configure(
        push_interval=3600, flush_interval=3600, flusher=__name__ == "__main__"
    )

    def track_many(event, n):
        for _ in range(n):
            analytics.track(event)

    def one(event):
        analytics.track(event)
        return 1

    if __name__ == "__main__":
        ctx = multiprocessing.get_context(sys.argv[1])
        children = [ctx.Process(target=track_many, args=("mp_process", 200)) for _ in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join()
        assert [child.exitcode for child in children] == [0] * 2
        pool = ctx.Pool(2)
        assert sum(pool.map(one, ["mp_pool"] * 200)) == 200
        pool.close()
        pool.join()
        pool = ctx.Pool(2, maxtasksperchild=10)  # each worker is replaced after 10 tasks
        assert sum(pool.map(one, ["mp_pool_recycled"] * 30, chunksize=1)) == 30
        pool.close()
        pool.join()
        with ctx.Pool(2) as pool:  # leaving the block terminates the workers (SIGTERM)
            assert sum(pool.map(one, ["mp_pool_terminated"] * 200)) == 200
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as executor:
            assert sum(executor.map(one, ["mp_executor"] * 200)) == 200
    """
)

MULTIPROCESSING_EXPECTED = {
    "mp_process": 400,
    "mp_pool": 200,
    "mp_pool_recycled": 30,
    "mp_pool_terminated": 200,
    "mp_executor": 200,
}


@pytest.mark.services
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_multiprocessing_children_flush_their_counts_when_they_end(
    tmp_path: Path, method: str
) -> None:
    import multiprocessing

    from analytics_sdk.backends.postgres import PostgresSink
    from analytics_sdk.backends.redis import RedisCounterStore

    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method on this platform")
    script = tmp_path / "app.py"
    script.write_text(MULTIPROCESSING_APP)
    with redis_and_postgres("mp") as (store_url, sink_url):
        env = {**os.environ, "ANALYTICS_STORE": store_url, "ANALYTICS_SINK": sink_url}
        done = subprocess.run(
            [sys.executable, str(script), method],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        sink = PostgresSink.from_url(sink_url)
        store = RedisCounterStore.from_url(store_url)
        try:
            in_sink = {
                e: sum(sink.hourly_counts(e, None, None, ()).values())
                for e in MULTIPROCESSING_EXPECTED
            }
            pending = store.pending_event_totals()
        finally:
            sink.close()
            store.close()
        assert in_sink == MULTIPROCESSING_EXPECTED, done.stderr
        assert (pending.live, pending.claimed) == ({}, {})
