"""The module-level API over the global client: track, context, track_feature, lifecycle."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from enum import Enum
from typing import get_type_hints

import pytest

import analytics_sdk as analytics
from analytics_sdk.testing import Recorder


class EventType(str, Enum):
    SIGNUP = "signup"


def test_import_creates_no_client() -> None:
    # A fresh interpreter: in this one the test fixtures reset the global client anyway.
    probe = (
        "import threading, analytics_sdk, analytics_sdk.api as api; "
        "from analytics_sdk import process; "
        "print(api._client is None, len(process._CLIENTS), threading.active_count())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "0", "1"]


def test_get_client_creates_the_default_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANALYTICS_FLUSH_INTERVAL", "30")
    monkeypatch.setenv("ANALYTICS_BACKGROUND", "false")
    client = analytics.get_client()
    assert client is analytics.get_client()
    assert client.config.flush_interval == 30
    assert repr(client) == "Analytics(store=MemoryCounterStore(), sink=MemorySink())"


def test_configure_replaces_and_flushes_the_previous_client() -> None:
    first = analytics.configure(background=False)
    analytics.track("x")
    second = analytics.configure(background=False)
    assert analytics.get_client() is second
    assert first.closed
    assert first.count("x") == 1  # the previous client's final flush moved it to its sink
    assert sum(first.sink.hourly_counts("x", None, None, ()).values()) == 1


def test_track_flush_and_shutdown_on_the_global_client() -> None:
    client = analytics.configure(background=False)
    analytics.track("page_view", user_id="u1", properties={"path": "/home"})
    analytics.track(EventType.SIGNUP)
    result = analytics.flush()
    assert result.complete
    assert result.pushed == result.flushed == 2
    assert client.count("page_view", properties={"path": "/home"}) == 1
    assert client.count("signup") == 1
    assert analytics.shutdown().complete
    assert client.closed


def test_the_analytics_class_works_alone() -> None:
    with analytics.Analytics(background=False) as a, analytics.Analytics(background=False) as b:
        a.track("x")
        assert (a.count("x"), b.count("x")) == (1, 0)
    assert a.closed
    assert b.closed


def test_context_supplies_user_and_properties(analytics_recorder: Recorder) -> None:
    with analytics.context(user_id="u1", properties={"plan": "pro"}):
        analytics.track("v")
        analytics.track("v", properties={"plan": "free", "path": "/"})  # explicit wins
        analytics.track("v", user_id="u2")
        with analytics.context(properties={"team": "core"}):
            analytics.track("v")
    analytics.track("v")
    calls = [(r.user_id, r.properties) for r in analytics_recorder.events]
    assert calls == [
        ("u1", {"plan": "pro"}),
        ("u1", {"plan": "free", "path": "/"}),
        ("u2", {"plan": "pro"}),
        ("u1", {"plan": "pro", "team": "core"}),
        (None, {}),
    ]
    assert analytics_recorder.count("v", user_id="u1") == 3


def test_context_flows_across_await_and_into_tasks(analytics_recorder: Recorder) -> None:
    async def handler(user: str) -> None:
        async with analytics.context(user_id=user):
            await asyncio.sleep(0)
            analytics.track("req")
            await asyncio.gather(asyncio.create_task(child()), child())

    async def child() -> None:
        await asyncio.sleep(0)
        analytics.track("child")

    async def main() -> None:
        await asyncio.gather(*(handler(f"u{i}") for i in range(5)))

    asyncio.run(main())
    for i in range(5):
        assert analytics_recorder.count("req", user_id=f"u{i}") == 1
        assert analytics_recorder.count("child", user_id=f"u{i}") == 2
    assert all(r.user_id is not None for r in analytics_recorder.events)


def test_context_validates_eagerly() -> None:
    with pytest.raises(TypeError, match="user_id 5 is of type int"):
        analytics.context(user_id=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="accepted: str, int or bool"):
        analytics.context(properties={"a": 1.5})  # type: ignore[dict-item]


@analytics.track_feature("export")
def export(rows: int, *, fmt: str = "csv") -> str:
    """Export rows."""
    if rows < 0:
        raise ValueError("negative")
    return f"{rows}.{fmt}"


@analytics.track_feature("sync")
async def sync_remote(n: int) -> int:
    await asyncio.sleep(0)
    if n == 0:
        raise RuntimeError("remote down")
    return n * 2


def test_the_decorator_keeps_signature_name_and_hints() -> None:
    assert export.__name__ == "export"
    assert export.__doc__ == "Export rows."
    assert list(inspect.signature(export).parameters) == ["rows", "fmt"]
    assert inspect.signature(export) == inspect.signature(export.__wrapped__)  # type: ignore[attr-defined]
    assert get_type_hints(export) == {"rows": int, "fmt": str, "return": str}
    assert inspect.iscoroutinefunction(sync_remote)


def test_feature_outcomes_are_recorded_and_errors_propagate(analytics_recorder: Recorder) -> None:
    assert export(3, fmt="json") == "3.json"
    with pytest.raises(ValueError, match="negative"):
        export(-1)
    assert asyncio.run(sync_remote(2)) == 4
    with pytest.raises(RuntimeError, match="remote down"):
        asyncio.run(sync_remote(0))
    rec = analytics_recorder
    assert rec.count("feature_used", properties={"feature": "export", "outcome": "ok"}) == 1
    assert rec.count("feature_used", properties={"feature": "export", "outcome": "error"}) == 1
    assert rec.count("feature_used", properties={"feature": "sync", "outcome": "ok"}) == 1
    assert rec.count("feature_used", properties={"feature": "sync", "outcome": "error"}) == 1


def test_feature_context_managers_sync_async_and_nested(analytics_recorder: Recorder) -> None:
    tracker = analytics.track_feature("report")
    with tracker, tracker:  # the same tracker, nested
        pass
    with pytest.raises(KeyError), analytics.track_feature("report"):
        raise KeyError("x")

    async def run() -> None:
        async with analytics.track_feature("report"):
            await asyncio.sleep(0)

    asyncio.run(run())
    assert analytics_recorder.count("feature_used", properties={"outcome": "ok"}) == 3
    assert analytics_recorder.count("feature_used", properties={"outcome": "error"}) == 1


def test_feature_uses_the_context_user(analytics_recorder: Recorder) -> None:
    with analytics.context(user_id="u9", properties={"plan": "team"}):
        export(1)
    [event] = analytics_recorder.of("feature_used")
    assert event.user_id == "u9"
    assert event.properties == {"feature": "export", "outcome": "ok", "plan": "team"}


def test_feature_names_are_validated_when_declared() -> None:
    with pytest.raises(ValueError, match="event name '' has 0 characters"):
        analytics.track_feature("")


def test_track_after_shutdown_keeps_counting_and_flush_still_works() -> None:
    client = analytics.configure()
    client.shutdown()
    analytics.track("late")
    assert client.count("late") == 1
    assert analytics.flush().complete
    assert sum(client.sink.hourly_counts("late", None, None, ()).values()) == 1


def test_counts_tracked_during_and_after_shutdown_are_not_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import threading

    from analytics_sdk.backends import MemoryCounterStore, MemorySink
    from analytics_sdk.process import _shutdown_all
    from analytics_sdk.testing import ManualClock

    from .faults import BLOCK_LIMIT, Faults

    clock = ManualClock()
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    faults = Faults(store)
    client = analytics.Analytics(
        store=store, sink=sink, clock=clock, push_interval=1, flush_interval=10
    )
    client.track("x", value=1)
    final_apply = Faults(sink).block("apply")
    results: list[analytics.FlushResult] = []
    shutting = threading.Thread(target=lambda: results.append(client.shutdown(timeout=BLOCK_LIMIT)))
    shutting.start()
    try:
        assert final_apply.entered.wait(BLOCK_LIMIT)  # the final flush pushed, now applies
        client.track("x", value=2)  # tracked while the final flush runs: left in the buffer
    finally:
        final_apply.release.set()
        shutting.join(BLOCK_LIMIT)
    assert not shutting.is_alive()
    [result] = results
    assert not client.scheduler.running
    # shutdown() flushed a second time, in its caller, once the thread had stopped.
    assert result.complete, result
    assert (result.pushed, result.flushed) == (3, 3)
    assert faults.calls["push"] == 2
    assert sum(client.sink.hourly_counts("x", None, None, ()).values()) == 3
    client.track("x", value=4)  # after shutdown(): pushed from this thread
    assert faults.calls["push"] == 3
    assert sum("after shutdown()" in r.getMessage() for r in caplog.records) == 1
    _shutdown_all()  # the interpreter's exit hook flushes what was pushed late
    assert sum(client.sink.hourly_counts("x", None, None, ()).values()) == 7


def test_the_exit_hook_carries_on_after_one_client_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from analytics_sdk.process import _shutdown_all

    broken = analytics.Analytics(background=False)
    healthy = analytics.Analytics(background=False)
    healthy.track("x", value=5)

    def fail(timeout: float | None = None) -> analytics.FlushResult:
        raise RuntimeError("a bug in shutdown")

    broken.shutdown = fail  # type: ignore[method-assign]
    try:
        _shutdown_all()
        assert sum(healthy.sink.hourly_counts("x", None, None, ()).values()) == 5
        assert healthy.closed
        [record] = [r for r in caplog.records if r.exc_info is not None]
        assert record.getMessage() == "analytics shutdown at exit failed"
        assert "a bug in shutdown" in str(record.exc_info[1])
    finally:
        del broken.shutdown
        broken.shutdown()


def test_shutdown_s_second_flush_stops_at_the_deadline_and_keeps_the_counts() -> None:
    import threading

    from analytics_sdk.backends import MemoryCounterStore, MemorySink
    from analytics_sdk.process import _shutdown_all
    from analytics_sdk.testing import ManualClock

    from .faults import BLOCK_LIMIT, Faults

    clock = ManualClock()
    store, sink = MemoryCounterStore(clock=clock.time), MemorySink(clock=clock.time)
    client = analytics.Analytics(
        store=store, sink=sink, clock=clock, push_interval=1, flush_interval=10
    )
    client.track("x", value=1)
    final_apply = Faults(sink).block("apply")
    pushes = Faults(store)
    results: list[analytics.FlushResult] = []
    shutting = threading.Thread(target=lambda: results.append(client.shutdown(timeout=5)))
    shutting.start()
    try:
        assert final_apply.entered.wait(BLOCK_LIMIT)  # the thread's final flush applies
        client.track("x", value=2)  # left in the buffer for shutdown's second flush
        # That flush's push hangs past the deadline (a backend answering after 10 s).
        pushes.then("push", lambda: clock.advance(10))
    finally:
        final_apply.release.set()
        shutting.join(BLOCK_LIMIT)
    assert not shutting.is_alive()
    [result] = results
    assert (result.timed_out, result.complete) == (True, False)
    assert sum(sink.hourly_counts("x", None, None, ()).values()) == 1
    assert client.count("x") == 3  # the 2 wait in the store, counted once
    _shutdown_all()  # the exit hook finishes the job
    assert sum(sink.hourly_counts("x", None, None, ()).values()) == 3
