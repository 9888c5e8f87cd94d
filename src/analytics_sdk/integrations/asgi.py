"""ASGI middleware: ``context()`` per request and ``page_view`` by route template.

The route template is read after the app ran, from ``scope["route"]`` (set by Starlette's and
FastAPI's routers on a match, as OpenTelemetry's Starlette instrumentation and
prometheus-fastapi-instrumentator read it); any other app passes ``route=``.

At the lifespan's shutdown the client is shut down with its final flush: uvicorn, after a
graceful stop on SIGTERM, raises SIGTERM again with the default handler, so the process dies
of it and exit hooks never run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..client import Analytics
from ._request import UNMATCHED, Identity, RequestTracker, close

__all__ = ["UNMATCHED", "AnalyticsMiddleware", "Identity", "starlette_route"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def starlette_route(scope: Scope) -> str | None:
    """Return the template of the route Starlette or FastAPI matched (``/items/{item_id}``),
    with the path of the mounts it sits under, or None when no route matched."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return None
    # A Mount adds its matched prefix to root_path; the app's own root_path is not a route's.
    mounted = scope.get("root_path", "")[len(scope.get("app_root_path", "")) :]
    return mounted + path if mounted else path


class AnalyticsMiddleware:
    """Open ``context()`` from ``resolve(scope)`` around each HTTP request, and record a
    ``page_view`` (route template, method, status class) when ``page_views`` is true."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        resolve: Callable[[Scope], Identity | str | None] | None = None,
        page_views: bool = False,
        exclude_paths: Iterable[str] = (),
        route: Callable[[Scope], str | None] = starlette_route,
        client: Analytics | None = None,
    ) -> None:
        self.app = app
        self.route = route
        self.tracker: RequestTracker[Scope] = RequestTracker(
            resolve=resolve, page_views=page_views, exclude_paths=exclude_paths, client=client
        )

    def _lifespan(self, send: Send) -> Send:
        async def send_shutdown(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                # After the app's own shutdown handlers, which may still track.
                self.tracker.shutdown()
            await send(message)

        return send_shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracker = self.tracker
        if tracker.idle or scope["type"] != "http" or tracker.excluded(scope["path"]):
            if scope["type"] == "lifespan":
                send = self._lifespan(send)
            await self.app(scope, receive, send)
            return
        entered = tracker.open(scope)
        try:
            if not tracker.page_views:
                await self.app(scope, receive, send)
                return
            status = 500  # what the server answers when the app fails before responding

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                tracker.page_view(self.route, scope, scope["method"], status)
        finally:
            close(entered)
