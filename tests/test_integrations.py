"""Web integrations in process: context per request, page views by route template, status
class and method, excluded paths, and nothing done when nothing is asked."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import analytics_sdk
from analytics_sdk.errors import ConfigurationError
from analytics_sdk.integrations import asgi, wsgi
from analytics_sdk.integrations._request import Identity, RequestTracker, status_class
from analytics_sdk.testing import Recorder, recording


def page_views(rec: Recorder) -> Counter[tuple[str, str, str, str | None]]:
    return Counter(
        (e.properties["route"], e.properties["method"], e.properties["status"], e.user_id)
        for e in rec.events
        if e.event == "page_view"
    )


def tracked(rec: Recorder, event: str) -> Counter[str | None]:
    return Counter(e.user_id for e in rec.events if e.event == event)


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 200, 204, 302, 404, 500, 599, 0, 700)] == [
        "1xx", "2xx", "2xx", "3xx", "4xx", "5xx", "5xx", "5xx", "5xx"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ("/health", "expected a list of paths"),
        (["health"], "'health': expected a path starting with '/'"),
        ([None], "None: expected a path starting with '/'"),
    ],
)
def test_bad_excluded_paths_are_refused(paths: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RequestTracker(exclude_paths=paths, page_views=True)


def test_a_resolver_that_is_not_callable_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="resolve='user': expected a function"):
        RequestTracker(resolve="user")  # type: ignore[arg-type]


def test_excluded_paths_cover_the_path_and_below_it_only() -> None:
    tracker: RequestTracker[None] = RequestTracker(
        exclude_paths=["/health", "/static/"], page_views=True
    )
    assert tracker.excluded("/health")
    assert tracker.excluded("/static/app.css")
    assert tracker.excluded("/static")
    assert not tracker.excluded("/healthz")
    assert not tracker.excluded("/")


# --- ASGI ---------------------------------------------------------------------------------


def asgi_app(routes: dict[str, str]) -> asgi.ASGIApp:
    """A tiny router: a path in ``routes`` answers 200 (its template in scope["route"]),
    "/boom" raises before responding, anything else is a 404; the handler tracks "hit"."""

    class Route:
        def __init__(self, path: str) -> None:
            self.path = path

    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        analytics_sdk.track("hit")
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        template = routes.get(scope["path"])
        if template is not None:
            scope["route"] = Route(template)
        status = 200 if template is not None else 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def call_asgi(app: asgi.ASGIApp, path: str, method: str = "GET", user: str = "") -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "method": method,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"x-user", user.encode())],
    }
    statuses = []

    async def receive() -> asgi.Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: asgi.Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    asyncio.run(app(scope, receive, send))
    return statuses[0]


def user_header(scope: asgi.Scope) -> str | None:
    value = dict(scope["headers"]).get(b"x-user", b"").decode()
    return value or None


def test_asgi_records_route_templates_status_classes_and_users() -> None:
    routes = {"/items/1": "/items/{item_id}", "/items/2": "/items/{item_id}", "/": "/"}
    app = asgi.AnalyticsMiddleware(
        asgi_app(routes), resolve=user_header, page_views=True, exclude_paths=["/health"]
    )
    with recording() as rec:
        assert call_asgi(app, "/items/1", user="u1") == 200
        assert call_asgi(app, "/items/2", "POST", user="u1") == 200
        assert call_asgi(app, "/", user="u2") == 200
        assert call_asgi(app, "/nope/42") == 404
        assert call_asgi(app, "/items/1", "BREW") == 200
        assert call_asgi(app, "/health") == 404
        with pytest.raises(RuntimeError):
            call_asgi(app, "/boom", user="u2")
    assert page_views(rec) == {
        ("/items/{item_id}", "GET", "2xx", "u1"): 1,
        ("/items/{item_id}", "POST", "2xx", "u1"): 1,
        ("/", "GET", "2xx", "u2"): 1,
        ("(unmatched)", "GET", "4xx", None): 1,
        ("/items/{item_id}", "OTHER", "2xx", None): 1,
        ("(unmatched)", "GET", "5xx", "u2"): 1,
    }
    # track() inside the handler got the resolved user; the excluded path ran without one
    assert tracked(rec, "hit") == {"u1": 2, "u2": 2, None: 3}


def test_asgi_with_nothing_configured_passes_requests_through() -> None:
    app = asgi.AnalyticsMiddleware(asgi_app({"/": "/"}))
    assert app.tracker.idle
    with recording() as rec:
        assert call_asgi(app, "/", user="u1") == 200
    assert [e.event for e in rec.events] == ["hit"]
    assert rec.events[0].user_id is None


def test_asgi_context_without_page_views() -> None:
    app = asgi.AnalyticsMiddleware(
        asgi_app({"/": "/"}), resolve=lambda s: Identity(user_id="u9", properties={"plan": "pro"})
    )
    with recording() as rec:
        call_asgi(app, "/")
    assert [(e.event, e.user_id, e.properties) for e in rec.events] == [
        ("hit", "u9", {"plan": "pro"})
    ]


def test_a_failing_resolver_is_logged_and_the_request_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(scope: asgi.Scope) -> str:
        raise KeyError("session")

    app = asgi.AnalyticsMiddleware(asgi_app({"/": "/"}), resolve=broken, page_views=True)
    with recording() as rec, caplog.at_level(logging.ERROR, "analytics_sdk.integrations"):
        assert call_asgi(app, "/") == 200
        app2 = asgi.AnalyticsMiddleware(asgi_app({"/": "/"}), resolve=lambda s: "x" * 10_000)
        assert call_asgi(app2, "/") == 200
    assert page_views(rec) == {("/", "GET", "2xx", None): 1}
    assert tracked(rec, "hit") == {None: 2}
    assert caplog.text.count("the analytics resolver failed") == 2


def test_asgi_leaves_websockets_and_lifespan_alone() -> None:
    seen = []

    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        seen.append(scope["type"])

    wrapped = asgi.AnalyticsMiddleware(app, resolve=lambda s: "u1", page_views=True)
    with recording() as rec:
        for kind in ("websocket", "lifespan"):
            asyncio.run(wrapped({"type": kind, "path": "/"}, None, None))  # type: ignore[arg-type]
    assert seen == ["websocket", "lifespan"]
    assert rec.events == []


def test_asgi_lifespan_shutdown_flushes_the_client() -> None:
    """uvicorn dies of a re-raised SIGTERM after a graceful stop, so exit hooks never run:
    the lifespan's end is the last chance to flush."""

    async def app(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                analytics_sdk.track("closing")  # an app's own shutdown handler
                await send({"type": "lifespan.shutdown.complete"})
                return

    client = analytics_sdk.Analytics(store="memory://", sink="memory://", background=False)
    wrapped = asgi.AnalyticsMiddleware(app, client=client)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> asgi.Message:
        return next(messages)

    async def send(message: asgi.Message) -> None:
        sent.append(message["type"])
        if message["type"] == "lifespan.shutdown.complete":
            hours = client.sink.hourly_counts("closing", None, None, ())
            assert sum(hours.values()) == 1  # flushed into the sink before the server exits

    with recording():  # the global client, which track() in the app uses, is this one's
        analytics_sdk.api.set_client(client)
        asyncio.run(wrapped({"type": "lifespan"}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# --- WSGI ---------------------------------------------------------------------------------


def wsgi_app(environ: wsgi.Environ, start_response: wsgi.StartResponse) -> list[bytes]:
    analytics_sdk.track("hit")
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path.startswith("/items/"):
        environ[wsgi.ROUTE_KEY] = "/items/<id>"
        start_response("201 Created", [])
    else:
        start_response("404 Not Found", [])
    return [b"ok"]


def streamed_app(environ: wsgi.Environ, start_response: wsgi.StartResponse) -> Any:
    def body() -> Any:
        start_response("302 Found", [])  # a generator sets the status on its first step
        yield b"late"

    return body()


def call_wsgi(app: Any, path: str, user: str = "", method: str = "GET") -> str:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "HTTP_X_USER": user}
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    body = app(environ, start_response)
    try:
        b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return statuses[0]


def test_wsgi_records_route_templates_status_classes_and_users() -> None:
    app = wsgi.AnalyticsMiddleware(
        wsgi_app,
        resolve=lambda environ: environ["HTTP_X_USER"] or None,
        page_views=True,
        exclude_paths=["/static"],
    )
    with recording() as rec:
        assert call_wsgi(app, "/items/1", "u1") == "201 Created"
        assert call_wsgi(app, "/items/2", "u2", "DELETE") == "201 Created"
        assert call_wsgi(app, "/missing") == "404 Not Found"
        assert call_wsgi(app, "/static/app.css", "u3") == "404 Not Found"
        with pytest.raises(RuntimeError):
            call_wsgi(app, "/boom", "u1")
        assert (
            call_wsgi(wsgi.AnalyticsMiddleware(streamed_app, page_views=True), "/") == "302 Found"
        )
    assert page_views(rec) == {
        ("/items/<id>", "GET", "2xx", "u1"): 1,
        ("/items/<id>", "DELETE", "2xx", "u2"): 1,
        ("(unmatched)", "GET", "4xx", None): 1,
        ("(unmatched)", "GET", "5xx", "u1"): 1,
        ("(unmatched)", "GET", "3xx", None): 1,
    }
    assert tracked(rec, "hit") == {"u1": 2, "u2": 1, None: 2}  # no user on the excluded path


def test_wsgi_with_nothing_configured_passes_requests_through() -> None:
    app = wsgi.AnalyticsMiddleware(wsgi_app)
    environ = {"PATH_INFO": "/items/1", "REQUEST_METHOD": "GET"}
    with recording() as rec:
        body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    assert body == [b"ok"]  # the app's own body, not a wrapper
    assert [e.event for e in rec.events] == ["hit"]


# --- FastAPI / Starlette, Flask, Django -----------------------------------------------------


def test_fastapi_records_the_router_template() -> None:
    fastapi = pytest.importorskip("fastapi")
    from analytics_sdk.integrations.fastapi import instrument

    app = fastapi.FastAPI()
    sub = fastapi.FastAPI()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        analytics_sdk.track("hit")
        return {"id": item_id}

    @app.get("/fail")
    def fail() -> None:
        raise RuntimeError("fail")

    @sub.get("/users/{name}")
    def user(name: str) -> str:
        return name

    app.mount("/v2", sub)
    instrument(app, resolve=user_header, page_views=True, exclude_paths=["/health"])
    with recording() as rec:
        for n in range(3):
            assert call_asgi(app, f"/items/{n}", user="u1") == 200
        assert call_asgi(app, "/items/x", user="u2") == 422
        assert call_asgi(app, "/items/1", "POST") == 405
        assert call_asgi(app, "/nothing/here") == 404
        assert call_asgi(app, "/health") == 404
        with pytest.raises(RuntimeError):  # the server answers 500 and logs it
            call_asgi(app, "/fail")
        assert call_asgi(app, "/v2/users/ann") == 200
    assert page_views(rec) == {
        ("/items/{item_id}", "GET", "2xx", "u1"): 3,
        ("/items/{item_id}", "GET", "4xx", "u2"): 1,
        ("/items/{item_id}", "POST", "4xx", None): 1,
        ("(unmatched)", "GET", "4xx", None): 1,
        ("/fail", "GET", "5xx", None): 1,
        ("/v2/users/{name}", "GET", "2xx", None): 1,
    }
    assert tracked(rec, "hit") == {"u1": 3}


def test_flask_init_app_records_the_url_rule() -> None:
    flask = pytest.importorskip("flask")
    from analytics_sdk.integrations.flask import init_app

    app = flask.Flask("t")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        analytics_sdk.track("hit")
        return str(item_id)

    @app.get("/fail")
    def fail() -> str:
        raise RuntimeError("fail")

    @app.get("/health")
    def health() -> str:
        return "ok"

    init_app(
        app,
        resolve=lambda request: request.headers.get("x-user"),
        page_views=True,
        exclude_paths=["/health"],
    )
    http = app.test_client()
    with recording() as rec:
        for n in range(3):
            assert http.get(f"/items/{n}", headers={"x-user": "u1"}).status_code == 200
        assert http.get("/items/x", headers={"x-user": "u2"}).status_code == 404
        assert http.delete("/items/1").status_code == 405
        assert http.get("/fail", headers={"x-user": "u3"}).status_code == 500
        assert http.get("/health", headers={"x-user": "u3"}).status_code == 200
    assert page_views(rec) == {
        ("/items/<int:item_id>", "GET", "2xx", "u1"): 3,
        ("(unmatched)", "GET", "4xx", "u2"): 1,
        ("(unmatched)", "DELETE", "4xx", None): 1,
        ("/fail", "GET", "5xx", "u3"): 1,
    }
    assert tracked(rec, "hit") == {"u1": 3}


def test_flask_with_nothing_configured_installs_no_hook() -> None:
    flask = pytest.importorskip("flask")
    from analytics_sdk.integrations.flask import init_app

    app = flask.Flask("t")
    before = (dict(app.before_request_funcs), dict(app.after_request_funcs))
    init_app(app)
    assert (dict(app.before_request_funcs), dict(app.after_request_funcs)) == before


EXAMPLES = Path(__file__).parent.parent / "docs" / "integrations" / "examples"


def load_example(name: str) -> Any:
    """Import a docs example app (once per process, as a server would)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_django_middleware_records_the_resolved_route() -> None:
    pytest.importorskip("django")
    with recording() as rec:
        load_example("django_app")
        from django.test import Client

        http = Client()
        for n in range(3):
            assert http.get(f"/items/{n}", headers={"x-user": "u1"}).status_code == 200
        assert http.post("/signup", headers={"x-user": "u2"}).status_code == 201
        assert http.get("/items/x", headers={"x-user": "u2"}).status_code == 404
        assert http.get("/health", headers={"x-user": "u3"}).status_code == 200
    assert page_views(rec) == {
        ("/items/<int:item_id>", "GET", "2xx", "u1"): 3,
        ("/signup", "POST", "2xx", "u2"): 1,
        ("(unmatched)", "GET", "4xx", "u2"): 1,
    }
    assert tracked(rec, "signup") == {"u2": 1}


def test_django_refuses_unknown_settings() -> None:
    pytest.importorskip("django")
    load_example("django_app")
    from django.test import override_settings

    from analytics_sdk.integrations.django import AnalyticsMiddleware

    with (
        override_settings(ANALYTICS_SDK={"PAGEVIEWS": True}),
        pytest.raises(ConfigurationError, match=r"unknown keys \['PAGEVIEWS'\]"),
    ):
        AnalyticsMiddleware(lambda request: None)  # type: ignore[arg-type,return-value]
