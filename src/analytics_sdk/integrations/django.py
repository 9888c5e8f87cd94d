"""Django: ``AnalyticsMiddleware`` opens ``context()`` per request and records ``page_view``
with the matched route (``request.resolver_match.route``, such as ``/items/<int:item_id>``).

Configured by the ``ANALYTICS_SDK`` setting, a dict::

    ANALYTICS_SDK = {
        "RESOLVE": "myproject.analytics.resolve",   # a function of the HttpRequest, or its path
        "PAGE_VIEWS": True,
        "EXCLUDE_PATHS": ["/health", "/static"],
    }

Put the middleware after ``AuthenticationMiddleware`` so the resolver can read ``request.user``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ._request import UNMATCHED, Identity, RequestTracker, close

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase

__all__ = ["SETTINGS", "UNMATCHED", "AnalyticsMiddleware", "Identity", "route_of"]

SETTINGS = frozenset(("RESOLVE", "PAGE_VIEWS", "EXCLUDE_PATHS"))
"""The keys the ``ANALYTICS_SDK`` setting accepts."""


def route_of(request: HttpRequest) -> str | None:
    """Return the route Django resolved for ``request`` with a leading ``/``, or None."""
    match = request.resolver_match
    route: str | None = None if match is None else match.route
    if not route:
        return None
    return route if route.startswith("/") else "/" + route


def _tracker() -> RequestTracker[HttpRequest]:
    from django.conf import settings
    from django.utils.module_loading import import_string

    options: dict[str, Any] = dict(getattr(settings, "ANALYTICS_SDK", None) or {})
    unknown = set(options) - SETTINGS
    if unknown:
        raise ConfigurationError(
            f"ANALYTICS_SDK has unknown keys {sorted(unknown)}; accepted: {sorted(SETTINGS)}"
        )
    resolve = options.get("RESOLVE")
    if isinstance(resolve, str):
        resolve = import_string(resolve)
    return RequestTracker(
        resolve=resolve,
        page_views=options.get("PAGE_VIEWS", False),
        exclude_paths=options.get("EXCLUDE_PATHS", ()),
    )


class AnalyticsMiddleware:
    """Django middleware over :class:`RequestTracker`, configured by ``settings.ANALYTICS_SDK``."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response
        self.tracker = _tracker()

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        tracker = self.tracker
        if tracker.idle or tracker.excluded(request.path_info):
            return self.get_response(request)
        entered = tracker.open(request)
        try:
            response = self.get_response(request)
            if tracker.page_views:
                tracker.page_view(route_of, request, request.method or "GET", response.status_code)
            return response
        finally:
            close(entered)
