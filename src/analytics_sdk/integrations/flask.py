"""Flask: ``init_app(app)`` opens ``context()`` per request and records ``page_view`` with the
matched rule (``request.url_rule.rule``, such as ``/items/<int:item_id>``).

The resolver gets Flask's ``request`` inside the request context, so it can read the
session, ``g`` or a login extension's current user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..client import Analytics
from ._request import UNMATCHED, Identity, RequestTracker, close

if TYPE_CHECKING:
    from flask import Flask, Request, Response

__all__ = ["UNMATCHED", "Identity", "init_app", "rule_of"]

_SCOPE_KEY = "analytics_sdk.context"


def rule_of(request: Request) -> str | None:
    """Return the rule Flask matched for ``request``, or None when none did."""
    rule = request.url_rule
    return None if rule is None else rule.rule


def init_app(
    app: Flask,
    *,
    resolve: Callable[[Request], Identity | str | None] | None = None,
    page_views: bool = False,
    exclude_paths: Iterable[str] = (),
    client: Analytics | None = None,
) -> None:
    """Install the integration's request hooks on ``app``; with nothing asked, none."""
    from flask import request

    tracker: RequestTracker[Request] = RequestTracker(
        resolve=resolve, page_views=page_views, exclude_paths=exclude_paths, client=client
    )
    if tracker.idle:
        return

    def enter() -> None:
        if not tracker.excluded(request.path):
            request.environ[_SCOPE_KEY] = tracker.open(request)

    def record(response: Response) -> Response:
        if not tracker.excluded(request.path):
            tracker.page_view(rule_of, request, request.method, response.status_code)
        return response

    def leave(_exc: BaseException | None) -> None:
        close(request.environ.pop(_SCOPE_KEY, None))

    if resolve is not None:
        # First, so a before_request hook that answers early still runs inside the context.
        funcs: dict[Any, list[Any]] = app.before_request_funcs
        funcs.setdefault(None, []).insert(0, enter)
        app.teardown_request(leave)
    if tracker.page_views:
        app.after_request(record)
