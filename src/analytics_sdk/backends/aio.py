"""The asyncio twins of the Redis store and the PostgreSQL sink.

A twin is the same class as the backend it is made from, with the same settings, keys,
Lua scripts and SQL, on an asyncio driver: ``redis.asyncio`` for the store, psycopg's
``AsyncConnectionPool`` for the sink. Its methods are the synchronous ones, called by the
async API inside :func:`analytics_sdk._bridge.run`; each driver call is awaited on the event
loop through :func:`~analytics_sdk._bridge.await_io`. A twin belongs to one event loop (its
connections do): the client keeps one per loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import CoroutineType
from typing import Any

from .._bridge import await_io, run
from .postgres import PostgresSink

__all__ = ["AsyncPostgresSink", "AwaitingDriver"]

_PLAIN = frozenset({type(None), bool, int, float, str, bytes, list, tuple, dict})


class AwaitingDriver:
    """A synchronous face of an asyncio driver object (a ``redis.asyncio`` client, its
    pipelines and scripts, a psycopg ``AsyncConnection`` and its cursors).

    Calls are passed on; an awaitable result is awaited through
    :func:`~analytics_sdk._bridge.await_io`; a driver object returned (a pipeline, a
    script, a cursor) gets a face of its own, used with ``with`` and ``for`` as the sync one
    is. ``close()`` is the driver's ``aclose()``.
    """

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        if name == "close" and hasattr(self._target, "aclose"):
            name = "aclose"
        attr = getattr(self._target, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(attr(*args, **kwargs))

        return call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._target(*args, **kwargs))

    def __enter__(self) -> Any:
        return self._wrap(self._target.__aenter__())

    def __exit__(self, *exc: Any) -> Any:
        return self._wrap(self._target.__aexit__(*exc))

    def __iter__(self) -> Iterator[Any]:
        rows = self._target.__aiter__()
        while True:
            try:
                yield await_io(rows.__anext__())
            except StopAsyncIteration:
                return

    def _wrap(self, result: Any) -> Any:
        if type(result) in _PLAIN:  # most replies: nothing to await or to wrap
            return result
        if type(result) is CoroutineType or isinstance(result, asyncio.Future):
            return self._wrap(await_io(result))
        if result is self._target:
            return self
        if type(result).__module__.split(".", 1)[0] in ("redis", "psycopg") or (
            hasattr(result, "__aenter__") and not hasattr(result, "__enter__")
        ):
            return AwaitingDriver(result)  # a driver object, or an async context (COPY)
        return result

    def __repr__(self) -> str:
        return f"AwaitingDriver({self._target!r})"


class _Connection(AwaitingDriver):
    """A psycopg ``AsyncConnection`` with the synchronous connection's interface, as far as
    the sink uses it."""

    __slots__ = ()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with _entered(self._target.transaction()) as tx:
            yield tx


@contextmanager
def _entered(manager: Any) -> Iterator[Any]:
    """Enter an async context manager from synchronous code (in the bridge)."""
    value = await_io(manager.__aenter__())
    try:
        yield value
    except BaseException:
        if not await_io(manager.__aexit__(*sys.exc_info())):
            raise
    else:
        await_io(manager.__aexit__(None, None, None))


class AsyncPostgresSink(PostgresSink):
    """:class:`PostgresSink` on an ``AsyncConnectionPool``, with the settings of the sink it
    is made from (:meth:`PostgresSink.for_asyncio`); see the module docstring."""

    def __init__(self, sink: PostgresSink) -> None:  # the sink's settings, not its pool
        self.__dict__.update(sink.__dict__)
        self._pool = None
        self._opening: asyncio.Event | None = None  # set while the first caller opens the pool

    def __repr__(self) -> str:
        return f"Async{PostgresSink.__repr__(self)}"

    def for_asyncio(self) -> AsyncPostgresSink:
        return self

    def _get_pool(self) -> Any:
        # One event loop, no lock: the first caller opens the pool while the others wait for
        # it (then try themselves if it failed, to raise its error too).
        while self._pool is None:
            opening = self._opening
            if opening is None:
                self._open_pool()
            else:
                await_io(opening.wait())
        return self._pool

    def _open_pool(self) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        async def configure(conn: Any) -> None:
            await run(self._configure, _Connection(conn))

        async def check(conn: Any) -> None:
            if self._idle_long(conn):
                await AsyncConnectionPool.check_connection(conn)

        self._opening = opening = asyncio.Event()
        try:
            # A wrong host, database or password fails here at once with libpq's reason.
            conn = await_io(
                psycopg.AsyncConnection.connect(self._conninfo, **self._connect_kwargs())
            )
            await_io(conn.close())
            pool = AsyncConnectionPool(
                self._conninfo,
                kwargs=self._connect_kwargs(),
                configure=configure,
                check=check,
                open=False,
                name=f"analytics_sdk:{self.schema}:asyncio",
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._pool_timeout,
            )
            await_io(pool.open(wait=False))
            self._pool = pool
        finally:
            self._opening = None
            opening.set()

    @contextmanager
    def _borrow(self) -> Iterator[Any]:
        pool = self._get_pool()
        conn = await_io(pool.getconn())  # and putconn(), as the sync sink does
        try:
            yield _Connection(conn)
        finally:
            self._note_returned(conn)  # as the sync sink does, not in a pool callback
            await_io(pool.putconn(conn))

    def after_fork_in_child(self) -> None:
        self._pool = None  # the parent's: the child's event loop makes its own

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await_io(pool.close(timeout=5.0))
