"""Module-level functions over one global :class:`~analytics_sdk.Analytics` client.

Nothing is created at import: the global client appears on the first ``track()`` (configured
from ``ANALYTICS_*`` variables and defaults) or on ``configure()``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, overload

from . import current
from .client import Analytics
from .feature import NO_NAME, FeatureTracker, feature_name, no_name_given
from .scheduler import FlushResult

__all__ = [
    "aflush",
    "ashutdown",
    "configure",
    "flush",
    "get_client",
    "shutdown",
    "track",
    "track_feature",
]

P = ParamSpec("P")
R = TypeVar("R")

_client: Analytics | None = None
_lock = threading.Lock()
# Set by testing.recording(): configure() called by the code under test (an app factory)
# must not replace the recording client with one the test cannot see.
_configure_hook: Callable[[dict[str, Any]], Analytics] | None = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(**settings: Any) -> Analytics:
    """Create the global client from ``settings`` (see :class:`~analytics_sdk.config.Config`)
    and return it; a previous global client is flushed and shut down first.

    Inside :func:`analytics_sdk.testing.recording` (and the ``analytics_recorder`` fixture)
    the new client keeps ``settings`` but records on the recording's memory backends."""
    hook = _configure_hook
    if hook is not None:
        return hook(settings)
    client = Analytics(**settings)
    previous = set_client(client)
    if previous is not None:
        previous.shutdown()
    return client


def get_client() -> Analytics:
    """Return the global client, creating it from the environment on first use."""
    global _client
    client = _client
    if client is None:
        with _lock:
            if _client is None:
                _client = Analytics()
            client = _client
    return client


def set_client(client: Analytics | None) -> Analytics | None:
    """Install ``client`` as the global client and return the previous one (not shut down)."""
    global _client
    with _lock:
        previous, _client = _client, client
    return previous


current.install(get_client)


def track(
    event: str,
    *,
    user_id: str | None = None,
    properties: Mapping[str, str | int | bool] | None = None,
    value: int = 1,
    timestamp: datetime | None = None,
    dedupe_key: str | None = None,
    groups: Mapping[str, str] | None = None,
) -> None:
    """Count ``value`` occurrences of ``event`` on the global client (see
    :meth:`Analytics.track <analytics_sdk.Analytics.track>`); with ``dedupe_key``, once per
    key within ``dedupe_window``; with ``groups``, for each group too."""
    client = _client
    if client is None:
        client = get_client()
    if dedupe_key is None and groups is None:
        client.track(
            event, user_id=user_id, properties=properties, value=value, timestamp=timestamp
        )
    else:
        client.track(
            event,
            user_id=user_id,
            properties=properties,
            value=value,
            timestamp=timestamp,
            dedupe_key=dedupe_key,
            groups=groups,
        )


@overload
def track_feature(name: str) -> FeatureTracker: ...


@overload
def track_feature(name: Callable[P, R]) -> Callable[P, R]: ...


def track_feature(name: str | Callable[P, R] = NO_NAME) -> FeatureTracker | Callable[P, R]:
    """Return a decorator / context manager that records ``feature_used`` for ``name`` on
    whichever client is global when the feature runs.

    Bare, ``@track_feature`` over a function names the feature after the function
    (its ``__name__``)."""
    if name is NO_NAME:
        raise no_name_given()
    if callable(name) and not isinstance(name, str):
        return FeatureTracker(feature_name(name), get_client)(name)
    return FeatureTracker(name, get_client)


def flush(timeout: float = 10.0) -> FlushResult:
    """Push the global client's buffer and flush its store into the sink now."""
    return get_client().flush(timeout)


def shutdown(timeout: float | None = None) -> FlushResult:
    """Shut the global client down with a final flush (also done at exit)."""
    client = _client
    if client is None:
        return FlushResult(complete=True)
    return client.shutdown(timeout)


async def aflush(timeout: float = 10.0) -> FlushResult:
    """Awaitable :func:`flush` (see :meth:`Analytics.aflush
    <analytics_sdk.Analytics.aflush>`)."""
    return await get_client().aflush(timeout)


async def ashutdown(timeout: float | None = None) -> FlushResult:
    """Awaitable :func:`shutdown` (see :meth:`Analytics.ashutdown
    <analytics_sdk.Analytics.ashutdown>`)."""
    client = _client
    if client is None:
        return FlushResult(complete=True)
    return await client.ashutdown(timeout)
