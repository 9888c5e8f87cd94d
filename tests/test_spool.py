"""The local spool: a store down at exit or through a long outage loses nothing, counts nothing
twice, and a torn file or a second replayer never hurts.

"Down" is a TCP proxy in front of the real Redis that refuses connections; "back up" lets them
through, so the store's address (and the spool's key) stays the same.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client import generate_latest

from analytics_sdk import Analytics
from analytics_sdk.backends import Delta, MemoryCounterStore, Push
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.errors import ConfigurationError
from analytics_sdk.prometheus import registry_for
from analytics_sdk.spool import Spool, SpoolError, decode, default_spool_dir, encode
from analytics_sdk.testing import ManualClock
from analytics_sdk.worker import Worker

from .faults import Faults
from .servers import Proxy
from .utils import postgres_url_or_skip, unique_name

HOUR = 494_000  # an hour bucket in 2026


@pytest.fixture
def store_url(redis_url: str, proxy: Proxy, prefix: str) -> str:
    """A Redis store URL through the proxy, on a prefix of this test's own."""
    db = urlsplit(redis_url).path.lstrip("/") or "0"
    return (
        f"redis://127.0.0.1:{proxy.port}/{db}?prefix={prefix}&shards=2"
        "&socket_timeout=2&socket_connect_timeout=1"
    )


@pytest.fixture
def direct_url(redis_url: str, prefix: str) -> str:
    """The same prefix, read straight from Redis (whatever the proxy does)."""
    return f"{redis_url}?prefix={prefix}&shards=2"


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The spool directory, given the way a deployment gives it: ANALYTICS_SPOOL_DIR."""
    path = tmp_path / "spool"
    monkeypatch.setenv("ANALYTICS_SPOOL_DIR", str(path))
    return path


def spool_files(root: Path, suffix: str = ".spool") -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}"))


def live_total(direct_url: str, event: str) -> int:
    """What the store holds of ``event`` (live and claimed), read directly."""
    store = RedisCounterStore.from_url(direct_url)
    try:
        p = store.pending_hourly(event, None, None, ())
        return sum(p.live.values()) + sum(sum(c.values()) for c in p.claimed.values())
    finally:
        store.close()


def restarted(store_url: str, **settings: object) -> Analytics:
    """A new process's client: it pushes, never flushes, so counts stay readable in Redis."""
    return Analytics(store=store_url, sink="memory://", flusher=False, background=False, **settings)


APP = textwrap.dedent(
    """
    import sys
    import analytics_sdk as analytics

    store, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    analytics.configure(
        store=store,
        sink="memory://",
        flusher=False,
        push_interval=0 if mode == "write-through" else 3600,
        shutdown_timeout=2 if mode == "hung" else 5,
    )
    for i in range(n):
        analytics.track(
            "spooled", user_id=f"u{i % 7}", properties={"plan": ("free", "pro")[i % 2]}
        )
    if mode == "shutdown-then-exit":
        analytics.shutdown()
    # then a normal exit: the at-exit hook runs
    """
)


def run_app(tmp_path: Path, store_url: str, n: int, mode: str) -> str:
    script = tmp_path / "app.py"
    script.write_text(APP)
    done = subprocess.run(
        [sys.executable, str(script), store_url, str(n), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize("mode", ["exit", "shutdown-then-exit", "write-through", "hung"])
def test_exit_with_the_store_down_then_a_restart_with_it_up_is_exact(
    tmp_path: Path, proxy: Proxy, store_url: str, direct_url: str, spool_dir: Path, mode: str
) -> None:
    n = 1_000
    if mode == "hung":
        # Redis answers nothing: the exit flush times out (2 s) with a push still waiting on
        # its socket (30 s); the spool takes the counts from under it.
        proxy.stall = True
        stderr = run_app(
            tmp_path, store_url.replace("socket_timeout=2", "socket_timeout=30"), n, mode
        )
        assert "no answer within the shutdown timeout" in stderr
    else:
        proxy.refuse = True
        stderr = run_app(tmp_path, store_url, n, mode)

    # One warning, saying how many counts went where.
    spooled = [line for line in stderr.splitlines() if "spooled to" in line]
    assert len(spooled) == 1, stderr
    assert f"could not take {n} counts" in spooled[0]
    assert str(spool_dir) in spooled[0]
    assert "shutdown flush incomplete" not in stderr
    assert len(spool_files(spool_dir)) == 1
    assert live_total(direct_url, "spooled") == 0  # nothing reached the store

    proxy.refuse = proxy.stall = False
    proxy.drop()  # the hung connection of the exited process
    with restarted(store_url) as client:
        result = client.flush()
        assert result.replayed == n
        assert client.count("spooled") == n
        assert client.count("spooled", properties={"plan": "pro"}) == n // 2
        assert sum(client.count("spooled", user_id=f"u{u}") for u in range(7)) == n
    assert spool_files(spool_dir) == []
    assert live_total(direct_url, "spooled") == n

    with restarted(store_url) as again:  # a second start finds nothing left to replay
        assert again.flush().replayed == 0
    assert live_total(direct_url, "spooled") == n


def test_a_replay_of_pushes_the_store_already_applied_counts_nothing_twice(
    tmp_path: Path, store_url: str, direct_url: str
) -> None:
    store = RedisCounterStore.from_url(store_url)
    spool = Spool(str(tmp_path), store.identity())
    first = Push(producer="p", sequence=7, delta=Delta(hourly={("e", (), HOUR): 3}))
    second = Push(producer="p", sequence=8, delta=Delta(hourly={("e", (), HOUR): 4}))
    path = spool.write([first, second])
    data = Path(path).read_bytes()
    store.push(first)  # applied at exit, but its reply was lost: the process spooled it too

    replayed = spool.replay(store)
    assert (replayed.files, replayed.pushes, replayed.counts) == (1, 2, 4)  # only the second
    assert live_total(direct_url, "e") == 7
    Path(path).write_bytes(data)  # the same file again (a replayer died before the delete)
    again = spool.replay(store)
    assert (again.files, again.pushes, again.counts) == (1, 2, 0)
    assert live_total(direct_url, "e") == 7
    store.close()


def test_a_spool_is_replayed_only_into_its_own_store(tmp_path: Path, redis_url: str) -> None:
    one = RedisCounterStore.from_url(f"{redis_url}?prefix={unique_name('a')}")
    other = RedisCounterStore.from_url(f"{redis_url}?prefix={unique_name('b')}")
    assert one.identity() != other.identity()
    credentials = RedisCounterStore.from_url("redis://user:secret@127.0.0.1:6379/0")
    assert "secret" not in credentials.identity()
    Spool(str(tmp_path), one.identity()).write(
        [Push(producer="p", sequence=1, delta=Delta(hourly={("e", (), HOUR): 1}))]
    )
    assert Spool(str(tmp_path), other.identity()).files() == []
    for s in (one, other, credentials):
        s.close()


# -- torn files ----------------------------------------------------------------------------


def test_every_truncation_and_a_flipped_byte_are_rejected_as_spool_errors() -> None:
    pushes = [
        Push(
            producer="p",
            sequence=1,
            delta=Delta(hourly={("e", (("k", "v"),), HOUR): 2}, users={("e", "u1", 20_000): 2}),
        )
    ]
    data = encode("redis:x/y", pushes, 0.0)
    assert decode(data) == ("redis:x/y", pushes)
    for cut in range(len(data)):
        with pytest.raises(SpoolError):
            decode(data[:cut])
    flipped = bytearray(data)
    flipped[data.index(b'"e"') + 1] = ord("f")
    with pytest.raises(SpoolError, match="checksum"):
        decode(bytes(flipped))


def test_a_torn_spool_file_is_set_aside_with_a_warning_and_start_up_goes_on(
    store_url: str, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisCounterStore.from_url(store_url)
    spool = Spool(str(spool_dir), store.identity())
    store.close()
    spool.write([Push(producer="good", sequence=1, delta=Delta(hourly={("e", (), HOUR): 3}))])
    torn = Path(
        spool.write([Push(producer="torn", sequence=1, delta=Delta(hourly={("e", (), HOUR): 5}))])
    )
    torn.write_bytes(torn.read_bytes()[:40])  # a crash in the middle of a write
    garbage = Path(spool.directory) / "0-garbage.spool"
    garbage.write_bytes(b"\x00\xff not a spool file")
    newer = Path(spool.directory) / "1-newer.spool"
    newer.write_bytes(b"analytics-sdk-spool 99\nwhatever a later version writes\n")

    with (
        caplog.at_level(logging.WARNING, logger="analytics_sdk"),
        restarted(store_url) as client,  # never raises
    ):
        assert client.flush().replayed == 3
        assert client.count("e") == 3
        client.flush()  # a second replay warns about nothing new
    assert [p.name for p in spool_files(spool_dir, ".corrupt")] == sorted(
        [f"{torn.name}.corrupt", f"{garbage.name}.corrupt"]
    )
    assert newer.exists()  # left for the version that wrote it
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreadable" in m for m in messages) == 2
    assert sum("left alone" in m for m in messages) == 1


def test_a_spool_dir_that_is_a_file_or_not_a_path_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(ConfigurationError, match=r"spool_dir=.*not a directory"):
        Analytics(spool_dir=str(a_file), background=False)
    with pytest.raises(ConfigurationError, match="spool_dir=3"):
        Analytics(spool_dir=3, background=False)
    with pytest.raises(ConfigurationError, match="spool_after=0"):
        Analytics(spool_after=0, background=False)
    monkeypatch.setenv("ANALYTICS_SPOOL_DIR", "")
    with Analytics(background=False) as off:
        assert off.config.spool_dir is None
    monkeypatch.setenv("ANALYTICS_SPOOL_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("ANALYTICS_SPOOL_AFTER", "12.5")
    with Analytics(background=False) as on:
        assert (on.config.spool_dir, on.config.spool_after) == (str(tmp_path / "s"), 12.5)
    with Analytics(spool_dir=tmp_path / "p", background=False) as pathlike:
        assert pathlike.config.spool_dir == str(tmp_path / "p")


def test_the_default_spool_dir_is_per_user_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/srv/state")
    assert default_spool_dir() == "/srv/state/analytics_sdk/spool"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", "/home/someone")
    assert default_spool_dir() == "/home/someone/.local/state/analytics_sdk/spool"


# -- concurrent replayers --------------------------------------------------------------------

REPLAYER = textwrap.dedent(
    """
    import sys
    from analytics_sdk import Analytics

    client = Analytics(store=sys.argv[1], sink="memory://", flusher=False, background=False)
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start replaying together
    result = client.flush(timeout=60)
    print(result.replayed, result.error, flush=True)
    client.shutdown()
    """
)


def write_spool(spool: Spool, files: int) -> int:
    total = 0
    for f in range(files):
        pushes = [
            Push(
                producer=f"producer{f}",
                sequence=s,
                delta=Delta(
                    hourly={("e", (("f", str(f)),), HOUR): f + s},
                    users={("e", f"u{f}", HOUR // 24): f + s},
                ),
            )
            for s in (1, 2, 3)
        ]
        total += sum(p.delta.total for p in pushes)
        spool.write(pushes)
    return total


def test_two_processes_replaying_at_once_count_every_file_once(
    tmp_path: Path, store_url: str, direct_url: str, spool_dir: Path
) -> None:
    store = RedisCounterStore.from_url(store_url)
    total = write_spool(Spool(str(spool_dir), store.identity()), 60)
    store.close()
    script = tmp_path / "replayer.py"
    script.write_text(REPLAYER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), store_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    replies = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [error for _, error in replies] == ["None", "None"]
    assert sum(int(replayed) for replayed, _ in replies) == total  # each file by one of them
    assert live_total(direct_url, "e") == total
    assert spool_files(spool_dir) == []


def test_a_file_another_replayer_holds_is_skipped_until_it_lets_go(
    tmp_path: Path, store_url: str, direct_url: str
) -> None:
    import fcntl

    store = RedisCounterStore.from_url(store_url)
    spool = Spool(str(tmp_path), store.identity())
    write_spool(spool, 2)
    held, free = spool.files()
    with open(held, "rb") as other:
        fcntl.flock(other, fcntl.LOCK_EX)  # another process is in the middle of replaying it
        first = spool.replay(store)
        assert (first.files, Path(held).exists(), Path(free).exists()) == (1, True, False)
    assert spool.replay(store).files == 1
    assert live_total(direct_url, "e") == (1 + 2 + 3) + (2 + 3 + 4)
    store.close()


# -- the worker ------------------------------------------------------------------------------


def test_the_worker_replays_what_exited_processes_spooled(
    tmp_path: Path, proxy: Proxy, store_url: str, spool_dir: Path
) -> None:
    from analytics_sdk.backends.postgres import PostgresSink

    from .utils import drop_schema

    pg = postgres_url_or_skip()
    schema = unique_name("spool")
    sink_url = f"{pg}?schema={schema}"
    n = 321
    proxy.refuse = True
    run_app(tmp_path, store_url, n, "exit")
    assert len(spool_files(spool_dir)) == 1
    proxy.refuse = False
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "analytics_sdk",
            "worker",
            "--store",
            store_url,
            "--sink",
            sink_url,
            "--no-metrics",
            "--flush-interval",
            "3600",
            "--spool-dir",
            str(spool_dir),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "ANALYTICS_SPOOL_DIR"},
    )
    try:
        assert worker.stderr is not None
        for line in worker.stderr:
            if "worker started" in line:
                break
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr
        sink = PostgresSink.from_url(sink_url)
        assert sum(sink.hourly_counts("spooled", None, None, ()).values()) == n
        assert sum(sink.user_counts("spooled", None, None, None).values()) == n
        sink.close()
        assert spool_files(spool_dir) == []
    finally:
        if worker.poll() is None:
            worker.kill()
        drop_schema(pg, schema)


def test_a_running_worker_replays_spool_files_at_each_flush(
    store_url: str, spool_dir: Path
) -> None:
    clock = ManualClock()
    worker = Worker(
        store=store_url,
        sink="memory://",
        metrics_addr=None,
        flush_interval=10,
        schedule_jitter=0,
        clock=clock,
    )
    client = worker.client
    try:
        client.flush()  # served by the worker's thread: it is up and on the clock
        assert client.scheduler.spool is not None
        total = write_spool(client.scheduler.spool, 3)  # an application exits meanwhile
        clock.advance(10)  # a flush, then the replay behind it
        assert spool_files(spool_dir) == []
        clock.advance(10)
        assert sum(client.sink.hourly_counts("e", None, None, ()).values()) == total
        assert client.scheduler.counts_replayed == total
    finally:
        assert worker.stop() == 0


# -- a long outage ---------------------------------------------------------------------------


def test_a_long_outage_spools_the_buffer_and_a_recovery_replays_it_exactly(
    proxy: Proxy, store_url: str, direct_url: str, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    client = restarted(
        store_url,
        clock=clock,
        push_interval=1,
        schedule_jitter=0,
        backoff_initial=1,
        backoff_max=5,
        spool_after=30,
    )
    scheduler = client.scheduler
    scheduler._rng = random.Random(7)  # the backoff's jitter, fixed

    def tick(seconds: float) -> None:
        for _ in range(int(seconds)):
            clock.advance(1)
            scheduler.run_pending()

    proxy.refuse = True
    with caplog.at_level(logging.WARNING, logger="analytics_sdk"):
        for u in range(10):
            client.track("outage", user_id=f"u{u}")
        tick(5)
        assert scheduler.push_failures
        assert spool_files(spool_dir) == []
        tick(30)  # past spool_after: outbox and buffer go to disk
        assert len(spool_files(spool_dir)) == 1
        assert client.aggregator.is_empty()
        assert client.aggregator.buffered_keys == 0
        producer = client.aggregator._producer
        for u in range(5):
            client.track("outage", user_id=f"v{u}")
        tick(35)  # the outage goes on: spooled again, without another warning
        assert len(spool_files(spool_dir)) == 2
        assert client.aggregator._producer != producer  # spooled pushes keep their producer
        for _ in range(7):
            client.track("outage")
    warnings = [r.getMessage() for r in caplog.records if "spooled to" in r.getMessage()]
    assert len(warnings) == 1
    assert "10 counts spooled" in warnings[0]
    assert scheduler.counts_spooled == 15

    proxy.refuse = False
    tick(5)  # the fresh producer's push lands first, then the replay: nothing is skipped
    assert scheduler.push_failures == 0
    assert spool_files(spool_dir) == []
    assert live_total(direct_url, "outage") == 22
    assert (client.stats()["counts_spooled"], client.stats()["counts_replayed"]) == (15, 15)
    text = generate_latest(registry_for(client)).decode()
    assert "analytics_spooled_events_total 15.0" in text
    assert "analytics_replayed_events_total 15.0" in text
    assert client.count("outage") == 22
    assert client.count("outage", user_id="v3") == 1
    client.shutdown()
    assert live_total(direct_url, "outage") == 22


# -- files that must not be replayed, writes the disk refuses ----------------------------------


def signed(body: bytes, version: int = 2) -> bytes:
    """A spool file around ``body`` with a correct header and checksum."""
    import hashlib

    digest = hashlib.sha256(body).hexdigest().encode()
    return b"analytics-sdk-spool %d\n%s\nsha256 %s\n" % (version, body, digest)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"store":"s","producer":"p","pushes":[]}', "no pushes"),
        (b'{"store":7,"producer":"p","pushes":[]}', "expected a string, found 7"),
        (
            b'{"store":"s","producer":"p","pushes":[{"sequence":1,"hourly":[["e",[],"494000",1]],"users":[]}]}',
            "expected an integer, found '494000'",
        ),
        (
            b'{"store":"s","producer":"p","pushes":[{"sequence":true,"hourly":[],"users":[]}]}',
            "expected an integer, found True",
        ),
        (
            b'{"store":"s","producer":"p","pushes":[{"sequence":1,"hourly":[],"users":[],"dedupe_window":"60"}]}',
            "expected a number, found '60'",
        ),
        (b'{"store":"s","producer":"p"}', "unreadable contents: KeyError"),
    ],
)
def test_a_signed_spool_file_with_wrong_contents_is_refused_naming_the_value(
    body: bytes, message: str, tmp_path: Path
) -> None:
    with pytest.raises(SpoolError, match=message):
        decode(signed(body))
    # Replayed, such a file is set aside and nothing of it is counted.
    spool = Spool(str(tmp_path), "s")
    os.makedirs(spool.directory)
    bad = Path(spool.directory) / "0-bad.spool"
    bad.write_bytes(signed(body))
    store = MemoryCounterStore()
    assert spool.replay(store).files == 0
    assert (bad.exists(), Path(f"{bad}.corrupt").exists()) == (False, True)
    assert store.claim() == []


def test_a_spool_file_of_another_store_is_left_alone_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    theirs = Spool(str(tmp_path), "redis:theirs")
    one = Push(producer="p", sequence=1, delta=Delta(hourly={("e", (), HOUR): 4}))
    path = Path(theirs.write([one]))
    ours = Spool(str(tmp_path), "redis:ours")
    os.makedirs(ours.directory)
    copied = Path(ours.directory) / path.name  # a spool directory copied by hand
    copied.write_bytes(path.read_bytes())
    store = MemoryCounterStore()
    with caplog.at_level(logging.WARNING, logger="analytics_sdk"):
        assert ours.replay(store).files == 0
        assert ours.replay(store).files == 0
    assert copied.exists()
    assert store.claim() == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "belongs to store 'redis:theirs', not 'redis:ours'" in warnings[0]
    assert theirs.replay(store).counts == 4  # its own store replays it


def test_a_replay_past_its_deadline_leaves_the_files_for_the_next_one(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), "s")
    total = write_spool(spool, 2)
    store = MemoryCounterStore()
    clock = ManualClock()
    ticking = Faults(store)
    ticking.then("push", lambda: clock.advance(10), nth=3)  # the first file's last push
    first = spool.replay(store, deadline=5, monotonic=clock.monotonic)
    assert (first.files, first.pushes, len(spool.files())) == (1, 3, 1)
    second = spool.replay(store, deadline=15, monotonic=clock.monotonic)
    assert (second.files, first.counts + second.counts, spool.files()) == (1, total, [])
    assert sum(c for b in store.claim() for c in b.delta.hourly.values()) == total


def test_stale_temporary_files_of_a_crashed_write_are_removed_and_fresh_ones_kept(
    tmp_path: Path,
) -> None:
    spool = Spool(str(tmp_path), "s")
    write_spool(spool, 1)
    stale = Path(spool.directory) / ".tmp-crashed"
    fresh = Path(spool.directory) / ".tmp-being-written"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"half a file")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert spool.replay(MemoryCounterStore()).files == 1
    assert (stale.exists(), fresh.exists()) == (False, True)


def test_a_spill_the_disk_refuses_keeps_the_outbox_and_the_buffer_in_memory(
    store_url: str,
    direct_url: str,
    spool_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with restarted(store_url) as client:
        Faults(client.store).fail("push")
        client.track("e", value=2, user_id="u")
        assert client.flush().error is not None  # refused: the 2 wait in the outbox
        client.track("e", value=3, user_id="u")  # and the 3 in the buffer

        def disk_full(fd: int) -> None:
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as patched, caplog.at_level(logging.ERROR, "analytics_sdk"):
            patched.setattr(os, "fsync", disk_full)
            assert client.scheduler.spill() is None
        # The half-written file is gone; the counts are where they were.
        assert [p for p in spool_dir.rglob("*") if p.is_file()] == []
        [error] = [r.getMessage() for r in caplog.records]
        assert "cannot write to the spool" in error
        assert "No space left on device" in error
        assert (client.count("e"), client.count("e", user_id="u")) == (5, 5)
        result = client.flush()
        assert (result.error, result.pushed, result.replayed) == (None, 5, 0)
        assert live_total(direct_url, "e") == 5
