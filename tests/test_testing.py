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
