"""Running the synchronous query code on asyncio drivers, without threads.

The async queries (``acount()``, ``aseries()``, ...) run the very code of the synchronous
ones: validation, planning, the tier merge and its retries. That code runs in a greenlet
started by :func:`run`; where it does network I/O, the backend it calls is a twin built on
an asyncio driver (``redis.asyncio``, psycopg's ``AsyncConnectionPool``) whose calls go
through :func:`await_io`: the greenlet switches back to the coroutine that started it, which
awaits the driver's coroutine on the event loop, then switches back in with the reply (or
throws the error in). So only the I/O differs between a query and its awaitable twin, and the
event loop runs other coroutines while one waits for its server.

A cancelled coroutine (``asyncio.timeout``, a client that went away) throws
``CancelledError`` into the greenlet at the I/O it was waiting for: the code's ``finally``
blocks and context managers run there (a transaction rolled back, a connection returned to
its pool), awaiting the driver as they go, and the error then leaves the coroutine.
"""

from __future__ import annotations

import contextvars
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

R = TypeVar("R")

__all__ = ["await_io", "current_id", "in_bridge", "run"]


_greenlet_module: Any = None  # the greenlet module, once the async API has run


def _greenlet() -> Any:
    global _greenlet_module
    if _greenlet_module is None:
        try:
            _greenlet_module = importlib.import_module("greenlet")  # untyped: Any
        except ImportError as exc:  # pragma: no cover - greenlet is a dependency
            raise ImportError(
                "the async API needs greenlet: pip install 'analytics-sdk-exact[asyncio]'"
            ) from exc
    return _greenlet_module


_Bridge: Any = None


def _bridge_class() -> Any:
    global _Bridge
    if _Bridge is None:
        greenlet = _greenlet()

        class Bridge(greenlet.greenlet):  # type: ignore[misc,name-defined]
            """A greenlet running synchronous code for a coroutine (its ``driver``)."""

            driver: Any

        _Bridge = Bridge
    return _Bridge


def in_bridge() -> bool:
    """Whether the caller runs inside :func:`run` (its I/O may go through :func:`await_io`)."""
    if _Bridge is None:
        return False
    return isinstance(_greenlet_module.getcurrent(), _Bridge)


def current_id() -> int:
    """An id of the running greenlet, unique among those alive (callers in :func:`run`)."""
    return id(_greenlet().getcurrent())


def await_io(awaitable: Awaitable[R]) -> R:
    """Return the result of ``awaitable``, awaited by the coroutine that runs the caller's
    greenlet (see :func:`run`); raise what it raises."""
    current = _greenlet_module.getcurrent() if _Bridge is not None else None
    if current is None or not isinstance(current, _Bridge):
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # never awaited: no "coroutine was never awaited" warning
        raise RuntimeError(
            "an asyncio backend was called outside the async API (its awaitable methods, "
            "such as acount())"
        )
    result: R = current.driver.switch(awaitable)
    return result


async def run(
    function: Callable[..., R],
    *args: Any,
    context: contextvars.Context | None = None,
    **kwargs: Any,
) -> R:
    """Run ``function(*args, **kwargs)`` in a greenlet, awaiting here each awaitable it
    passes to :func:`await_io`; return its result.

    ``context`` is the contextvars context it runs in (default: a copy of the caller's).
    """
    greenlet = _greenlet()
    bridge = _bridge_class()(function, greenlet.getcurrent())
    bridge.driver = greenlet.getcurrent()
    bridge.gr_context = context if context is not None else contextvars.copy_context()
    step: Any = bridge.switch(*args, **kwargs)
    while not bridge.dead:
        try:
            value = await step
        except BaseException:  # CancelledError included: the code's finally blocks run
            step = bridge.throw(*sys.exc_info())
        else:
            step = bridge.switch(value)
    result: R = step
    return result
