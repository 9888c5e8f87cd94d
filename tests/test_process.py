"""Process life: fork() neither loses nor re-counts a buffer; exit runs a final flush."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from analytics_sdk import Analytics

from .utils import redis_and_postgres


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
            timeout=60,
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
