"""What every web integration does per request: skip excluded paths, open ``context()``
from the resolver, and record one ``page_view`` by route template, method and status class.

Framework modules only say where the path, the route template and the status come from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

import attrs

from .. import api
from ..client import Analytics
from ..errors import ConfigurationError
from ..scope import _SCOPE, Scope, context

__all__ = ["UNMATCHED", "Identity", "RequestTracker", "close", "status_class"]

log = logging.getLogger("analytics_sdk.integrations")

UNMATCHED = "(unmatched)"
"""The route recorded for a request that no route matched (404s of scanners, typos)."""

PAGE_VIEW = "page_view"

_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}
# Any other method a client sends is recorded as "OTHER", so it cannot add values.
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
)

Req = TypeVar("Req")
T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Identity:
    """Who made a request: the user id and properties ``context()`` gets for it."""

    user_id: str | None = None
    properties: Mapping[str, str | int | bool] | None = None


def status_class(status: int) -> str:
    """Return ``"2xx"`` for 200..299 and so on; anything outside 100..599 is ``"5xx"``."""
    return _STATUS_CLASSES.get(status // 100, "5xx")


def _prefixes(exclude_paths: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if isinstance(exclude_paths, str):
        raise ConfigurationError(
            f"exclude_paths={exclude_paths!r}: expected a list of paths such as ['/health', '/static'], not a single string"
        )
    exact, prefixes = [], []
    for path in exclude_paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                f"exclude_paths entry {path!r}: expected a path starting with '/', such as '/health' or '/static'"
            )
        stem = path.rstrip("/")
        exact.append(stem or "/")
        if stem:  # "/static" excludes "/static/app.css" too; "/" alone excludes only "/"
            prefixes.append(stem + "/")
    return tuple(exact), tuple(prefixes)


class RequestTracker(Generic[Req]):
    """The per-request work of a web integration, configured once per app."""

    __slots__ = ("_client", "_exact", "_prefixes", "event", "idle", "page_views", "resolve")

    def __init__(
        self,
        *,
        resolve: Callable[[Req], Identity | str | None] | None = None,
        page_views: bool = False,
        exclude_paths: Iterable[str] = (),
        client: Analytics | None = None,
        event: str = PAGE_VIEW,
    ) -> None:
        if resolve is not None and not callable(resolve):
            raise ConfigurationError(
                f"resolve={resolve!r}: expected a function of the request returning an Identity, a user id or None"
            )
        if client is not None and not isinstance(client, Analytics):
            raise ConfigurationError(
                f"client={client!r}: expected an analytics_sdk.Analytics, or None for the global client"
            )
        self.resolve = resolve
        self.page_views = bool(page_views)
        self._exact, self._prefixes = _prefixes(exclude_paths)
        self._client = client
        self.event = event
        # Nothing to do per request: the middleware passes every request straight through.
        self.idle = resolve is None and not self.page_views

    def excluded(self, path: str) -> bool:
        """Return whether ``path`` is one the integration leaves alone."""
        return path in self._exact or path.startswith(self._prefixes)

    def open(self, request: Req) -> context | None:
        """Return the entered ``context()`` for the request's identity, or None.

        A resolver that raises or returns a bad user id is logged and the request goes on
        without a user: analytics never fails a request."""
        resolve = self.resolve
        if resolve is None:
            return None
        try:
            found = resolve(request)
            if found is None:
                return None
            if isinstance(found, str):
                scope = context(user_id=found)
            else:
                scope = context(user_id=found.user_id, properties=found.properties)
            scope.__enter__()
        except Exception:
            log.exception("the analytics resolver failed; the request goes on without a user")
            return None
        return scope

    def page_view(
        self,
        route_of: Callable[[T], str | None],
        request: T,
        method: str,
        status: int,
        within: Scope | None = None,
    ) -> None:
        """Record one page view, its route from ``route_of(request)``, in the request's
        context ``within`` (a WSGI body closes after the context did); never raises into the
        request."""
        token = None
        if within is not None:
            token = _SCOPE.set(within)
        try:
            route = route_of(request)
            track = api.track if self._client is None else self._client.track
            track(
                self.event,
                properties={
                    "route": UNMATCHED if route is None else route,
                    "method": method if method in _METHODS else "OTHER",
                    "status": status_class(status),
                },
            )
        except Exception:
            log.exception("recording the page view failed")
        finally:
            if token is not None:
                _SCOPE.reset(token)

    def shutdown(self) -> None:
        """Shut the client down with its final flush (the server is stopping); never raises."""
        try:
            (api.shutdown if self._client is None else self._client.shutdown)()
        except Exception:
            log.exception("the analytics shutdown at server stop failed")


def close(scope: context | None) -> None:
    """Leave a context ``RequestTracker.open`` entered."""
    if scope is not None:
        scope.__exit__(None, None, None)
