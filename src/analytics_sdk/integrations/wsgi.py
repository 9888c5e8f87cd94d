"""WSGI middleware: ``context()`` per request and ``page_view`` by route template.

WSGI has no router of its own: pass ``route=`` (a function of the environ), or let a
framework adapter put the matched template in ``environ["analytics_sdk.route"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from ..client import Analytics
from ..scope import current_scope
from ._request import UNMATCHED, Identity, RequestTracker, close

__all__ = ["ROUTE_KEY", "UNMATCHED", "AnalyticsMiddleware", "Identity", "environ_route"]

ROUTE_KEY = "analytics_sdk.route"
"""The environ key where an app or adapter leaves the matched route template."""

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class StartResponse(Protocol):
    """The WSGI ``start_response`` callable."""

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def environ_route(environ: Environ) -> str | None:
    """Return the template an app left in ``environ["analytics_sdk.route"]``, or None."""
    route = environ.get(ROUTE_KEY)
    return route if isinstance(route, str) else None


class _Body:
    """The app's response body; records the page view when the server closes it (streamed
    bodies set their status late)."""

    __slots__ = ("_body", "_done")

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self._body, self._done = body, done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close_body = getattr(self._body, "close", None)
            if close_body is not None:
                close_body()
        finally:
            self._done()


class AnalyticsMiddleware:
    """Open ``context()`` from ``resolve(environ)`` around each request, and record a
    ``page_view`` (route template, method, status class) when ``page_views`` is true."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        resolve: Callable[[Environ], Identity | str | None] | None = None,
        page_views: bool = False,
        exclude_paths: Iterable[str] = (),
        route: Callable[[Environ], str | None] = environ_route,
        client: Analytics | None = None,
    ) -> None:
        self.app = app
        self.route = route
        self.tracker: RequestTracker[Environ] = RequestTracker(
            resolve=resolve, page_views=page_views, exclude_paths=exclude_paths, client=client
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        tracker = self.tracker
        if tracker.idle or tracker.excluded(environ.get("PATH_INFO") or "/"):
            return self.app(environ, start_response)
        entered = tracker.open(environ)
        try:
            if not tracker.page_views:
                return self.app(environ, start_response)
            status = 500  # what the server answers when the app fails before responding
            within = current_scope()

            def start(
                line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
            ) -> Callable[[bytes], object]:
                nonlocal status
                try:
                    status = int(line[:3])
                except ValueError:
                    pass
                return start_response(line, headers, exc_info)

            def done() -> None:
                tracker.page_view(self.route, environ, environ["REQUEST_METHOD"], status, within)

            try:
                body = self.app(environ, start)
            except BaseException:
                done()
                raise
            return _Body(body, done)
        finally:
            close(entered)
