"""The hooks on configure(): the kill switch (enabled=False), on_error and before_track."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import analytics_sdk as analytics
from analytics_sdk import Analytics, context
from analytics_sdk.backends import MemoryCounterStore, MemorySink
from analytics_sdk.backends.redis import RedisCounterStore
from analytics_sdk.errors import SinkError, StoreError
from analytics_sdk.spool import Spool
from analytics_sdk.testing import ManualClock

from .faults import Faults
from .utils import make_sink, postgres_url_or_skip

DAY = date(2026, 1, 1)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record (and refuse) every attempt to open a connection."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> None:
        if self.family == socket.AF_UNIX:
            real_connect(self, address)
            return
        attempts.append(address)
        raise OSError("connection attempted while analytics is disabled")

    def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        attempts.append(address)
        raise OSError("connection attempted while analytics is disabled")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


# -- enabled=False ----------------------------------------------------------------------------


def test_disabled_starts_no_thread_opens_no_connection_and_answers_zero(
    no_network: list[object],
) -> None:
    port = closed_port()
    before = set(threading.enumerate())
    client = Analytics(
        enabled=False,
        store=f"redis://127.0.0.1:{port}/0",
        sink=f"postgresql://127.0.0.1:{port}/app",
        metrics_port=0,
        push_interval=0,
    )
    for i in range(100):
        client.track("page_view", user_id=f"u{i}", properties={"path": "/"}, dedupe_key=str(i))
    client.track(42)  # type: ignore[arg-type]  # not even checked: it costs nothing
    with context(user_id="u1", properties={"plan": "pro"}):
        client.track("signup")

    @client.track_feature("export")
    def export() -> None:
        pass

    export()
    with client.track_feature("import"):
        pass
    assert client.count("page_view") == 0
    assert client.count("page_view", day=DAY, user_id="u1") == 0
    assert client.hourly("page_view", day=DAY) == dict.fromkeys(range(24), 0)
    assert client.unique_users("page_view", DAY, DAY) == 0
    assert client.top_users("page_view", day=DAY) == []
    assert client.series("page_view", DAY, DAY) == [(datetime(2026, 1, 1, tzinfo=timezone.utc), 0)]
    assert client.flush().complete
    assert client.shutdown().complete
    assert set(threading.enumerate()) == before
    assert no_network == []
    assert client.metrics_server is None


def test_the_environment_turns_the_global_client_off(
    no_network: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYTICS_ENABLED", "0")
    monkeypatch.setenv("ANALYTICS_STORE", f"redis://127.0.0.1:{closed_port()}/0")
    before = set(threading.enumerate())
    analytics.track("page_view", user_id="u1")
    client = analytics.get_client()
    assert not client.config.enabled
    assert client.count("page_view") == 0
    analytics.flush()
    analytics.shutdown()
    assert set(threading.enumerate()) == before
    assert no_network == []


def test_integrations_run_with_analytics_off(no_network: list[object]) -> None:
    from analytics_sdk.integrations.asgi import AnalyticsMiddleware as AsgiMiddleware
    from analytics_sdk.integrations.wsgi import AnalyticsMiddleware as WsgiMiddleware

    before = set(threading.enumerate())
    client = Analytics(enabled=False, store=f"redis://127.0.0.1:{closed_port()}/0")
    seen: list[str | None] = []

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        scope = analytics.scope.current_scope()
        seen.append(None if scope is None else scope.user_id)
        client.track("wsgi_call")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    wsgi = WsgiMiddleware(wsgi_app, resolve=lambda e: "u1", page_views=True, client=client)
    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/items/1", "wsgi.url_scheme": "http"}
    body = wsgi(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert b"".join(body) == b"ok"
    getattr(body, "close", lambda: None)()
    assert statuses == ["200 OK"]

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        client.track("asgi_call")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    asgi = AsgiMiddleware(asgi_app, resolve=lambda s: "u2", page_views=True, client=client)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""}
    asyncio.run(asgi(scope, receive, send))
    assert sent[0]["status"] == 204
    assert seen == ["u1"]
    assert client.count("page_view") == client.count("asgi_call") == 0
    client.shutdown()
    assert set(threading.enumerate()) == before
    assert no_network == []


def test_celery_tasks_run_with_analytics_off(no_network: list[object]) -> None:
    celery = pytest.importorskip("celery")
    from analytics_sdk.integrations.celery import instrument

    before = set(threading.enumerate())
    analytics.configure(enabled=False, store=f"redis://127.0.0.1:{closed_port()}/0")
    app = celery.Celery("off", broker="memory://", backend="cache+memory://")
    app.conf.task_always_eager = True
    instrument(app, task_outcomes=True, dedupe_outcomes=True)

    @app.task
    def work(n: int) -> int:
        analytics.track("work_done")
        return n + 1

    with context(user_id="u1"):
        assert work.delay(1).get() == 2
    assert analytics.get_client().count("celery_task") == 0
    analytics.shutdown()
    assert {t for t in threading.enumerate() if t not in before} == set()
    assert no_network == []


# -- on_error ---------------------------------------------------------------------------------


class Errors:
    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, str]] = []
        self.threads: list[str] = []

    def __call__(self, exc: BaseException, operation: str) -> None:
        self.calls.append((exc, operation))

    @property
    def operations(self) -> list[str]:
        return [op for _, op in self.calls]


def test_on_error_hears_of_push_failures_against_a_closed_port(clock: ManualClock) -> None:
    errors = Errors()
    store = RedisCounterStore.from_url(
        f"redis://127.0.0.1:{closed_port()}/0?socket_connect_timeout=0.5", clock.time
    )
    client = Analytics(
        store=store, sink=MemorySink(), background=False, spool_dir=None, on_error=errors
    )
    client.track("x")
    result = client.flush()
    assert result.error is not None
    assert errors.operations == ["push"]
    assert isinstance(errors.calls[0][0], StoreError)
    # the count is kept: the store comes back (swapped for one that answers), it lands
    client.store = client.scheduler.store = client._query.store = MemoryCounterStore()
    assert client.flush().complete
    assert client.count("x") == 1
    client.shutdown()


def test_on_error_hears_of_flush_failures_of_postgres(
    request: pytest.FixtureRequest, redis_url: str, prefix: str, clock: ManualClock
) -> None:
    postgres_url_or_skip()
    errors = Errors()
    with make_sink("postgres", request, clock.time) as sink:
        store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}", clock.time)
        faults = Faults(sink)
        faults.fail("apply", error=SinkError("the database refused (injected)"))
        client = Analytics(store=store, sink=sink, background=False, clock=clock, on_error=errors)
        client.track("x", value=3)
        assert client.flush().error is not None
        assert errors.operations == ["flush"]
        assert isinstance(errors.calls[0][0], SinkError)
        assert client.flush().complete  # the claim is applied once the sink takes it
        assert sink.hourly_counts("x", None, None, ()) != {}
        assert client.count("x") == 3
        client.shutdown()


def test_on_error_hears_of_query_failures(redis_url: str, prefix: str, clock: ManualClock) -> None:
    errors = Errors()
    store = RedisCounterStore.from_url(f"{redis_url}?prefix={prefix}", clock.time)
    faults = Faults(store)
    client = Analytics(store=store, background=False, clock=clock, on_error=errors)
    client.track("x")
    faults.fail("pending_hourly", error=StoreError("Redis read failed (injected)"))
    with pytest.raises(StoreError, match="injected"):
        client.count("x")
    assert errors.operations == ["query"]
    assert client.count("x") == 1
    client.shutdown()


def test_on_error_hears_of_replay_and_spool_failures(
    redis_url: str, prefix: str, clock: ManualClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors = Errors()
    url = f"{redis_url}?prefix={prefix}"
    # A process exits while its store refuses pushes: the counts go to the spool.
    down = RedisCounterStore.from_url(url, clock.time)
    Faults(down).fail("push", times=100)
    first = Analytics(
        store=down, background=False, clock=clock, spool_dir=str(tmp_path), on_error=errors
    )
    first.track("x", value=2)
    assert first.shutdown().spooled == 2
    assert errors.operations == ["push", "push"]  # the final flush, then the last try
    errors.calls.clear()
    # The next start replays them into a store that fails the replay: on_error hears of it.
    store = RedisCounterStore.from_url(url, clock.time)
    faults = Faults(store)
    faults.fail("push")
    second = Analytics(
        store=store, background=False, clock=clock, spool_dir=str(tmp_path), on_error=errors
    )
    assert second.flush().error is not None
    assert errors.operations == ["replay"]
    assert second.flush().replayed == 2
    assert second.count("x") == 2
    # A spool the disk refuses: on_error hears of it (the counts stay in memory).
    errors.calls.clear()

    def refuse(self: Spool, pushes: object) -> str:
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(Spool, "write", refuse)
    Faults(store).fail("push", times=100)
    second.track("y")
    result = second.shutdown()
    assert not result.complete
    assert "spool" in errors.operations
    assert isinstance(errors.calls[errors.operations.index("spool")][0], OSError)


def test_an_on_error_that_raises_is_logged_and_breaks_nothing(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def explode(exc: BaseException, operation: str) -> None:
        calls.append(operation)
        raise RuntimeError("the alerting service is down too")

    store = MemoryCounterStore(clock=clock.time)
    faults = Faults(store)
    faults.fail("push", times=2)
    client = Analytics(store=store, background=False, clock=clock, on_error=explode)
    client.track("x")
    with caplog.at_level(logging.ERROR, logger="analytics_sdk"):
        assert client.flush().error is not None
    assert calls == ["push"]
    assert "on_error raised while told of a push failure" in caplog.text
    # the timer's push (and a write-through track) report the same way
    client.scheduler._timed("push")
    assert calls == ["push", "push"]
    client.track("x")
    assert client.flush().complete
    assert client.count("x") == 2
    client.shutdown()


def test_on_error_runs_with_no_lock_held_so_it_may_track(clock: ManualClock) -> None:
    store = MemoryCounterStore(clock=clock.time)
    faults = Faults(store)
    faults.fail("push")
    client: Analytics

    def count_failures(exc: BaseException, operation: str) -> None:
        client.track("analytics_failure", properties={"operation": operation})

    client = Analytics(store=store, push_interval=0, clock=clock, on_error=count_failures)
    client.track("x")  # write-through: the push fails in this thread, which reports it
    assert client.flush().complete
    assert client.count("x") == 1
    assert client.count("analytics_failure", properties={"operation": "push"}) == 1
    client.shutdown()


# -- before_track -----------------------------------------------------------------------------


def test_before_track_sees_the_context_merged_and_may_rewrite(clock: ManualClock) -> None:
    seen: list[tuple[str, str | None, dict[str, Any]]] = []

    def scrub(event: str, user_id: str | None, properties: dict[str, Any]) -> Any:
        seen.append((event, user_id, dict(properties)))
        properties.pop("email", None)
        return event, user_id, properties

    client = Analytics(background=False, clock=clock, before_track=scrub)
    with context(user_id="u1", properties={"plan": "pro"}):
        client.track("signup", properties={"email": "a@example.com", "beta": True})
    assert seen == [("signup", "u1", {"beta": "true", "email": "a@example.com", "plan": "pro"})]
    assert client.count("signup", properties={"plan": "pro", "beta": "true"}) == 1
    assert client.count("signup", properties={"email": "a@example.com"}) == 0
    assert client.count("signup", day=clock_day(clock), user_id="u1") == 1
    client.shutdown()


def clock_day(clock: ManualClock) -> date:
    return datetime.fromtimestamp(clock.time(), timezone.utc).date()


def test_before_track_drops_samples_and_renames(clock: ManualClock) -> None:
    kept = iter(range(10**6))

    def sample(event: str, user_id: str | None, properties: dict[str, Any]) -> Any:
        if event == "noise":
            return None
        if event == "debug" and next(kept) % 10:
            return None  # keep one in ten
        return event.replace("legacy_", ""), None, properties  # and forget users

    client = Analytics(background=False, clock=clock, before_track=sample)
    for _ in range(100):
        client.track("noise")
        client.track("debug", user_id="u1")
    client.track("legacy_signup", user_id="u1", value=3)

    @client.track_feature("export")
    def export() -> None:
        pass

    export()
    assert client.count("noise") == 0
    assert client.count("debug") == 10
    assert client.count("signup") == 3
    assert client.count("legacy_signup") == 0
    assert client.unique_users("signup", clock_day(clock), clock_day(clock)) == 0
    assert client.count("feature_used", properties={"feature": "export"}) == 1
    client.shutdown()


@pytest.mark.parametrize(
    ("returned", "logged"),
    [
        ("signup", "before_track returned 'signup'; accepted: None (drop the call) or a tuple"),
        (
            ("signup", None),
            "accepted: None (drop the call) or a tuple (event, user_id, properties)",
        ),
        (("", None, None), "event name '' has 0 characters"),
        (("signup", 7, None), "user_id 7 is of type int"),
        (("signup", None, {"a": [1]}), "accepted"),
    ],
)
def test_a_before_track_output_that_is_no_call_drops_it_and_says_why(
    returned: object, logged: str, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    client = Analytics(background=False, clock=clock, before_track=lambda *a: returned)
    with caplog.at_level(logging.DEBUG, logger="analytics_sdk"):
        client.track("signup")
    assert client.count("signup") == 0
    assert "before_track failed on 'signup'" in caplog.text
    assert logged in caplog.text
    client.shutdown()


def test_a_before_track_that_raises_drops_the_call_and_logs_once(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: str, user_id: str | None, properties: dict[str, Any]) -> Any:
        if event == "bad":
            raise KeyError("email")
        return event, user_id, properties

    client = Analytics(background=False, clock=clock, before_track=broken)
    with caplog.at_level(logging.WARNING, logger="analytics_sdk"):
        for _ in range(5):
            client.track("bad")  # never raises into the caller
        client.track("good")
    errors = [r for r in caplog.records if "before_track failed" in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert client.count("bad") == 0
    assert client.count("good") == 1
    client.shutdown()


def test_before_track_arguments_are_checked_before_it_runs(clock: ManualClock) -> None:
    calls: list[object] = []
    client = Analytics(background=False, clock=clock, before_track=lambda *a: calls.append(a))
    with pytest.raises(ValueError, match="event name"):
        client.track("")
    with pytest.raises(TypeError, match="dedupe_key 5 is of type int"):
        client.track("x", dedupe_key=5)  # type: ignore[arg-type]
    assert calls == []
    client.shutdown()
