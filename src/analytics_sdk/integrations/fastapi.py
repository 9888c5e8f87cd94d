"""FastAPI and Starlette: ``instrument(app)`` adds the ASGI middleware, which reads the route
template (``/items/{item_id}``) the router matched."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..client import Analytics
from ._request import UNMATCHED, Identity
from .asgi import AnalyticsMiddleware, Scope

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["UNMATCHED", "AnalyticsMiddleware", "Identity", "instrument"]


def instrument(
    app: Starlette,
    *,
    resolve: Callable[[Scope], Identity | str | None] | None = None,
    page_views: bool = False,
    exclude_paths: Iterable[str] = (),
    client: Analytics | None = None,
) -> None:
    """Add :class:`~analytics_sdk.integrations.asgi.AnalyticsMiddleware` to ``app``."""
    app.add_middleware(
        AnalyticsMiddleware,
        resolve=resolve,
        page_views=page_views,
        exclude_paths=exclude_paths,
        client=client,
    )
