"""The flush worker and first-use failures: causes surface at once, once, with what is known.

The worker's metrics and signals are covered in test_prometheus.py.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from analytics_sdk import Analytics, SinkError, StoreError
from analytics_sdk.cli import main
from analytics_sdk.testing import ManualClock
from analytics_sdk.worker import Worker

from .faults import FaultySink, FaultyStore
from .utils import postgres_url_or_skip, redis_url_or_skip, unique_name


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def missing_database() -> str:
    """A URL of the test PostgreSQL server naming a database that does not exist."""
    parts = urlsplit(postgres_url_or_skip())
    return urlunsplit(parts._replace(path=f"/{unique_name('missing')}"))


def test_migrate_on_a_missing_database_says_so_once_and_at_once(
    missing_database: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["migrate", "--sink", missing_database])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    name = missing_database.rsplit("/", 1)[1]
    assert f'database "{name}" does not exist' in err
    assert "couldn't get a connection" not in err
    assert err.count("does not exist") == 1
    assert not [r for r in caplog.records if r.name.startswith("psycopg")]  # no pool retries


def test_an_app_on_a_missing_database_reports_the_cause(missing_database: str) -> None:
    name = missing_database.rsplit("/", 1)[1]
    with Analytics(sink=missing_database, background=False) as client:
        client.track("e")
        result = client.flush(timeout=3)
        assert not result.complete
        assert not result.timed_out
        assert result.error is not None
        assert f'database "{name}" does not exist' in result.error
        with pytest.raises(SinkError, match=f'database "{name}" does not exist'):
            client.count("e")
        started = time.monotonic()
    assert time.monotonic() - started < 5  # the exit flush fails at once too, with the cause


def test_a_refused_postgresql_connection_names_the_refusal() -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    with Analytics(sink=url, background=False) as client, pytest.raises(SinkError) as info:
        client.count("e")
    assert "refused" in str(info.value).lower()


def test_a_worker_checks_its_backends_before_it_starts(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    store = f"redis://127.0.0.1:{closed_port()}/0"
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", "--store", store, "--sink", "memory://", "--no-metrics"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "refused" in err.lower()
    assert f"Redis {store}" in err
    assert not [r for r in caplog.records if "worker started" in r.getMessage()]


@pytest.mark.parametrize("broken", ["ANALYTICS_STORE", "ANALYTICS_SINK"])
def test_a_worker_takes_its_store_and_sink_from_the_environment(
    broken: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # each variable names a server that refuses: the start-up check names the one read
    store = f"redis://127.0.0.1:{closed_port()}/0"
    sink = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    monkeypatch.setenv("ANALYTICS_STORE", store if broken == "ANALYTICS_STORE" else "memory://")
    monkeypatch.setenv("ANALYTICS_SINK", sink if broken == "ANALYTICS_SINK" else "memory://")
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", "--no-metrics"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert (f"Redis {store}" if broken == "ANALYTICS_STORE" else f"PostgreSQL {sink}") in err
    assert "refused" in err.lower()
    assert time.monotonic() - started < 10


def test_a_worker_given_only_the_variables_flushes_the_store_into_the_sink() -> None:
    import os
    import signal
    import subprocess
    import sys
    from datetime import datetime, timezone
    from pathlib import Path

    import analytics_sdk

    from .utils import delete_redis_prefix, drop_schema

    redis_url, pg_url = redis_url_or_skip(), postgres_url_or_skip()
    prefix, schema = unique_name("wenv"), unique_name("wenv")
    store, sink = f"{redis_url}?prefix={prefix}", f"{pg_url}?schema={schema}"
    when = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
    src = str(Path(analytics_sdk.__file__).parent.parent)
    env = {**os.environ, "ANALYTICS_STORE": store, "ANALYTICS_SINK": sink, "PYTHONPATH": src}
    try:
        with Analytics(store=store, sink="memory://", flusher=False) as app:
            app.track("signup", timestamp=when, value=3)
            app.flush(timeout=10)  # pushed to Redis; no flusher here
        worker = subprocess.Popen(
            [sys.executable, "-m", "analytics_sdk", "worker", "--no-metrics"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert worker.stderr is not None
        lines = []
        for line in worker.stderr:  # the worker logs its start, or fails and exits
            lines.append(line)
            if "worker started" in line:
                break
        worker.send_signal(signal.SIGTERM)  # its final flush moves the counts
        _, rest = worker.communicate(timeout=30)
        log = "".join(lines) + rest
        assert worker.returncode == 0, log
        assert "final flush of 3 counts" in log
        with Analytics(store="memory://", sink=sink, background=False) as reader:
            assert reader.count("signup", day=when.date()) == 3
    finally:
        delete_redis_prefix(redis_url, prefix)
        drop_schema(pg_url, schema)


def test_a_worker_on_a_missing_database_does_not_start(missing_database: str) -> None:
    redis_url_or_skip()
    with pytest.raises(SinkError, match="does not exist"):
        Worker(store="memory://", sink=missing_database, metrics_addr=None)


def test_a_worker_on_a_down_redis_fails_with_the_cause() -> None:
    with pytest.raises(StoreError, match=r"(?i)refused"):
        Worker(store=f"redis://127.0.0.1:{closed_port()}/0", sink="memory://", metrics_addr=None)


def test_a_redis_db_out_of_range_is_reported_with_its_cause_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = redis_url_or_skip().split("?")[0].rsplit("/", 1)[0]
    store = f"{url}/99?prefix={unique_name('db')}"  # the server has 16 databases
    with Analytics(store=store, background=False, spool_dir=None) as client:
        client.track("e")
        result = client.flush(timeout=3)
        assert result.error is not None
        assert result.error.endswith("read failed: DB index is out of range")
        with pytest.raises(StoreError, match="DB index is out of range"):
            client.count("e")
    assert "cannot read maxmemory-policy" not in caplog.text


@pytest.fixture
def worker_parts() -> Iterator[tuple[Worker, FaultyStore, FaultySink, ManualClock]]:
    clock = ManualClock()
    store, sink = FaultyStore(clock=clock.time), FaultySink(clock=clock.time)
    worker = Worker(
        store=store, sink=sink, metrics_addr=None, clock=clock, shutdown_timeout=5, push_interval=1
    )
    yield worker, store, sink, clock
    sink.down = False
    worker.client.shutdown(timeout=5)


def test_the_last_message_of_a_worker_says_what_it_knows(
    worker_parts: tuple[Worker, FaultyStore, FaultySink, ManualClock],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, store, sink, _ = worker_parts
    with Analytics(store=store, flusher=False, background=False) as app:
        app.track("signup", value=5)
    sink.down = True
    with caplog.at_level(logging.INFO, logger="analytics_sdk"):
        assert worker.stop() == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "analytics_sdk.worker"]
    assert len(messages) == 1
    assert messages[0].startswith("worker stopped: its final flush failed: ")
    assert "sink is down (injected)" in messages[0]
    assert "whatever it did not move stays in the store for the next flusher" in messages[0]
    assert "counts left in the store" not in messages[0]
    sink.down = False
    assert worker.client.flush(timeout=5).complete
    assert sink.event_totals() == {"signup": 5}


class _Times(logging.Handler):
    """Records the manual clock's time of each flush-failure warning."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(logging.WARNING)
        self.clock = clock
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "flush failed" in record.getMessage():
            self.seen.append((self.clock.monotonic(), record.getMessage()))


def test_repeated_failures_are_logged_once_a_minute_with_the_count(
    worker_parts: tuple[Worker, FaultyStore, FaultySink, ManualClock],
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker, store, sink, clock = worker_parts
    with Analytics(store=store, flusher=False, background=False) as app:
        app.track("signup", value=2)
    sink.down = True
    times = _Times(clock)
    logging.getLogger("analytics_sdk").addHandler(times)
    try:
        for _ in range(10 * 60):
            clock.advance(1)
    finally:
        logging.getLogger("analytics_sdk").removeHandler(times)
    failures = worker.client.scheduler.flush_failures
    assert failures >= 12
    assert times.seen[0][1].startswith("flush failed (1 in a row)")
    gaps = [b[0] - a[0] for a, b in zip(times.seen, times.seen[1:], strict=False)]
    assert gaps
    assert all(60 <= gap <= 60 + 60 for gap in gaps[1:])  # once a minute, never silent longer
    counts = [int(m.split("(", 1)[1].split(" ", 1)[0]) for _, m in times.seen]
    assert counts == sorted(counts)
    assert counts[-1] > len(counts)  # failures in between went to debug, counted
    sink.down = False
    with caplog.at_level(logging.INFO, logger="analytics_sdk"):
        clock.advance(60)
    assert any("flush recovered after" in r.getMessage() for r in caplog.records)
    assert sink.event_totals() == {"signup": 2}


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung Redis)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize("push_interval", [0.01, 0], ids=["buffered", "write-through"])
def test_a_query_against_a_hung_redis_fails_after_one_timeout(
    silent_server: int, push_interval: float
) -> None:
    # The scheduler thread is pushing into the hung server too: the query must not queue
    # behind it, nor retry, so it fails after its own one socket_timeout.
    url = f"redis://127.0.0.1:{silent_server}/0?socket_timeout=2"
    client = Analytics(store=url, push_interval=push_interval, flusher=False)
    client.track("e")
    started = time.monotonic()
    with pytest.raises(StoreError, match="Timeout reading from"):
        client.count("e")
    assert (
        time.monotonic() - started < 3.5
    )  # one timeout and slack for a loaded machine; two would be 4
    client.shutdown(timeout=1)


def test_a_stop_signal_landing_while_the_wait_holds_its_lock_still_stops_it() -> None:
    # A signal handler runs in the main thread, maybe while it holds the stop event's lock
    # inside wait(): a handler that set the event would wait for that lock forever.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, signal, threading, time
        from analytics_sdk.process import wait_for_stop

        stop = threading.Event()

        def ready():
            with stop._cond:  # held, as inside stop.wait(), when the signal lands
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)

        wait_for_stop(stop, ready)
        print("stopped")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=20
    )
    assert (done.returncode, done.stdout) == (0, "stopped\n"), done.stderr
