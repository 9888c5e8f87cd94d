"""The helpers users test with: recording(), the pytest fixture, ManualClock."""

from __future__ import annotations

import threading

import pytest

import analytics_sdk as analytics
from analytics_sdk import api
from analytics_sdk.testing import ManualClock, Recorder, recording


@analytics.track_feature("export")
def export() -> None:
    pass


def test_recording_swaps_the_global_client_and_restores_it() -> None:
    outer = analytics.configure(background=False)
    with recording() as rec:
        assert analytics.get_client() is rec.client
        assert not rec.client.scheduler.running  # synchronous: no thread
        export()
        analytics.track("signup", user_id="u1")
        assert rec.count("feature_used", properties={"feature": "export"}) == 1
        assert rec.count("signup", user_id="u1") == 1
        assert [r.event for r in rec.events] == ["feature_used", "signup"]
        assert rec.flush().complete
    assert analytics.get_client() is outer
    assert outer.count("signup") == 0  # nothing leaked into the real client
    assert rec.client.closed


def test_recording_restores_even_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), recording():
        raise RuntimeError
    assert api._client is None


def test_the_pytest_fixture_is_installed_by_the_plugin(analytics_recorder: Recorder) -> None:
    analytics.track("from_fixture", properties={"k": "v"})
    assert analytics_recorder.count("from_fixture") == 1
    assert analytics_recorder.of("from_fixture", {"k": "v"})[0].value == 1
    analytics_recorder.clear()
    assert analytics_recorder.events == []


def test_manual_clock_wakes_a_sleeper_at_its_deadline_and_waits_for_it() -> None:
    clock = ManualClock()
    woke: list[float] = []
    wake = threading.Event()

    def sleeper() -> None:
        clock.attach()
        try:
            for _ in range(2):
                clock.sleep(5, wake)
                woke.append(clock.monotonic())
        finally:
            clock.detach()

    t = threading.Thread(target=sleeper)
    t.start()
    clock.advance(4)
    assert woke == []
    clock.advance(1)
    assert woke == [5]  # advance() returned only after the sleeper ran
    clock.advance(5)
    t.join(5)
    assert woke == [5, 10]


def test_the_manual_clock_example_of_the_docs() -> None:
    from analytics_sdk import Analytics

    clock = ManualClock()
    client = Analytics(clock=clock, push_interval=1, flush_interval=10, schedule_jitter=0)
    client.track("x")
    clock.advance(10)
    assert client.stats()["flushes_ok"] == 1
    assert sum(client.sink.hourly_counts("x", None, None, ()).values()) == 1
    client.shutdown()


def create_app() -> dict[str, object]:
    """An application factory that configures the SDK itself, as production code does."""
    analytics.configure(
        store="redis://127.0.0.1:1/0",
        sink="postgresql://app@127.0.0.1:1/app",
        prometheus_labels=["plan"],
        flush_interval=5,
        metrics_port=9464,
    )
    return {"name": "shop"}


def test_the_fixture_sees_counts_of_an_app_that_configures_itself(
    analytics_recorder: Recorder,
) -> None:
    analytics.track("before_app")
    first = analytics_recorder.client
    create_app()
    client = analytics.get_client()
    assert client is analytics_recorder.client
    assert client is not first
    # the app's own settings apply; the backends stay the recording's, in memory, synchronous
    assert client.config.prometheus_labels == ("plan",)
    assert client.config.flush_interval == 5
    assert client.store is first.store
    assert client.sink is first.sink
    assert not client.scheduler.running
    assert client.metrics_server is None
    analytics.track("signup", user_id="u1", properties={"plan": "pro"})
    export()
    assert analytics_recorder.count("before_app") == 1
    assert analytics_recorder.count("signup", properties={"plan": "pro"}) == 1
    assert analytics_recorder.count("feature_used", properties={"feature": "export"}) == 1
    assert [r.event for r in analytics_recorder.events] == ["before_app", "signup", "feature_used"]
    assert analytics_recorder.flush().complete
    assert analytics_recorder.count("before_app") == 1  # flushed once, counted once


def test_configure_inside_recording_keeps_the_tests_clock_and_restores_everything() -> None:
    clock = ManualClock()
    with recording(clock=clock) as rec:
        app_client = analytics.configure(flush_interval=5)
        assert app_client.config.clock is clock
        analytics.track("x")
        assert rec.count("x") == 1
    assert api._client is None
    assert api._configure_hook is None
    assert app_client.closed
    real = analytics.configure(background=False)  # outside: a real configure again
    assert analytics.get_client() is real


@analytics.track_feature
def bare_export() -> None:
    pass


@analytics.track_feature
async def bare_async_export() -> int:
    return 7


def test_a_bare_track_feature_is_named_after_the_function(analytics_recorder: Recorder) -> None:
    import asyncio

    bare_export()
    assert asyncio.run(bare_async_export()) == 7
    assert bare_export.__name__ == "bare_export"  # signature and name kept
    client = analytics_recorder.client

    @client.track_feature
    def on_the_client() -> None:
        pass

    on_the_client()
    for name in ("bare_export", "bare_async_export", "on_the_client"):
        assert analytics_recorder.count("feature_used", properties={"feature": name}) == 1


def test_track_feature_with_empty_parentheses_says_how_to_write_it() -> None:
    message = (
        r'track_feature\(\) needs a feature name: write @track_feature\("name"\), or a bare '
        r"@track_feature without parentheses"
    )
    with pytest.raises(TypeError, match=message):
        analytics.track_feature()  # type: ignore[call-overload]  # as in @track_feature()
    with analytics.Analytics(background=False) as client, pytest.raises(TypeError, match=message):
        client.track_feature()  # type: ignore[call-overload]


def test_track_feature_without_a_usable_name_says_how_to_write_it() -> None:
    from analytics_sdk.feature import FeatureTracker

    with pytest.raises(TypeError, match=r'write @track_feature\("name"\)'):
        analytics.track_feature(lambda: None)
    with pytest.raises(TypeError, match=r'write @track_feature\("name"\), or a bare'):
        FeatureTracker(bare_export, analytics.get_client)  # type: ignore[arg-type]
