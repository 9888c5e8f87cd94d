"""Helpers for testing code that tracks events, without patching.

``recording()`` (``arecording()`` in async code) installs a synchronous client on memory backends as the global client and
restores the previous one afterwards; :class:`ManualClock` lets a test move time by hand so
the scheduler's timers fire without sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from typing import Any

import attrs

from . import api
from .client import Analytics
from .clock import Clock
from .keys import Groups, Properties, hour_start

__all__ = ["ManualClock", "Recorded", "Recorder", "arecording", "recording"]


@attrs.frozen(kw_only=True)
class Recorded:
    """One accepted ``track()`` (or feature use), after validation and context merging."""

    event: str
    properties: dict[str, str]
    user_id: str | None
    value: int
    hour: datetime
    """The UTC hour bucket the count went into."""
    groups: dict[str, str] = attrs.field(factory=dict)
    """The call's groups (``track(groups=...)`` and the context's), by group type."""


class Recorder:
    """The client a ``recording()`` block installed, plus every count it accepted."""

    def __init__(self, client: Analytics) -> None:
        self.client = client
        self.events: list[Recorded] = []
        self._clients = [client]
        self._watch(client)

    def _watch(self, client: Analytics) -> None:
        add = client._add

        def recording_add(
            event: str, properties: Properties, hour: int, user_id: str | None, value: int
        ) -> None:
            add(event, properties, hour, user_id, value)
            self.events.append(
                Recorded(
                    event=event,
                    properties=dict(properties),
                    user_id=user_id,
                    value=value,
                    hour=hour_start(hour),
                )
            )

        add_grouped = client._add_grouped

        def recording_add_grouped(
            event: str,
            properties: Properties,
            hour: int,
            user_id: str | None,
            value: int,
            groups: Groups,
        ) -> None:
            add_grouped(event, properties, hour, user_id, value, groups)
            self.events.append(
                Recorded(
                    event=event,
                    properties=dict(properties),
                    user_id=user_id,
                    value=value,
                    hour=hour_start(hour),
                    groups=dict(groups),
                )
            )

        client._add = recording_add
        client._add_grouped = recording_add_grouped

    def _configure(self, settings: dict[str, Any]) -> Analytics:
        """``configure()`` from the code under test: a client with its settings, on the
        recording's backends and synchronous, which the recorder follows from now on."""
        previous = self.client
        client = Analytics(
            **{
                **settings,
                "store": previous.store,
                "sink": previous.sink,
                "background": False,
                "metrics_port": None,
                "clock": previous.config.clock,  # a test's ManualClock stays in charge
            }
        )
        previous.flush()  # what it buffered reaches the shared store and sink
        self._watch(client)
        self._clients.append(client)
        self.client = client
        api.set_client(client)
        return client

    def _close(self) -> None:
        for client in self._clients:
            client.shutdown()

    def count(self, event: str, **query: Any) -> int:
        """Return :meth:`Analytics.count <analytics_sdk.Analytics.count>` on the client
        (calls made with a ``dedupe_key`` are pushed first: queries count them once the
        store has decided whether their key was seen)."""
        if self.client.aggregator.holds_deduped():
            self.client.scheduler.push_through()
        return self.client.count(event, **query)

    async def acount(self, event: str, **query: Any) -> int:
        """Return :meth:`Analytics.acount <analytics_sdk.Analytics.acount>` on the client."""
        return await self.client.acount(event, **query)

    def __getattr__(self, name: str) -> Any:
        # hourly, series, breakdown, top_values, unique_users, top_users, flush, ... of the
        # recording client.
        return getattr(self.client, name)

    def clear(self) -> None:
        """Forget the recorded calls (the counts stay in the client)."""
        self.events.clear()

    def of(self, event: str, properties: Mapping[str, str] | None = None) -> list[Recorded]:
        """Return the recorded calls of ``event`` whose properties contain ``properties``."""
        wanted = dict(properties or {})
        return [
            r
            for r in self.events
            if r.event == event and all(r.properties.get(k) == v for k, v in wanted.items())
        ]


@contextmanager
def recording(**settings: Any) -> Iterator[Recorder]:
    """Install a global client on memory backends, synchronous (no thread), for the block.

    ``settings`` override the test defaults (``store="memory://"``, ``sink="memory://"``,
    ``background=False``). The previous global client is restored on exit.

    ``analytics_sdk.configure(**app_settings)`` called inside the block (an app factory)
    creates a client with those settings except ``store``, ``sink``, ``background``,
    ``metrics_port`` and ``clock``: it records on this block's memory backends, synchronously, and the
    recorder follows it (counts tracked before it stay visible).
    """
    settings = {"store": "memory://", "sink": "memory://", "background": False, **settings}
    client = Analytics(**settings)
    recorder = Recorder(client)
    previous = api.set_client(client)
    hook, api._configure_hook = api._configure_hook, recorder._configure
    try:
        yield recorder
    finally:
        api._configure_hook = hook
        api.set_client(previous)
        recorder._close()


@asynccontextmanager
async def arecording(**settings: Any) -> AsyncIterator[Recorder]:
    """:func:`recording` for async code: ``async with arecording() as recorder:``.

    The same recording client and recorder; code under test may ``await`` its queries
    (``await recorder.acount(...)``, ``await analytics_sdk.aflush()``). On exit the asyncio
    connections the block opened on the running loop are closed (with settings naming a
    Redis store or a PostgreSQL sink), then the clients shut down.
    """
    with recording(**settings) as recorder:
        try:
            yield recorder
        finally:
            for client in recorder._clients:
                await client.aclose_connections()


class ManualClock(Clock):
    """A clock that moves only when told: ``advance(seconds)``.

    A scheduler thread sleeping on it wakes when time reaches its deadline; ``advance()``
    returns only once every such thread has done its work and gone back to sleep, so a test
    can assert right after it.
    """

    def __init__(self, start: datetime | None = None, settle_timeout: float = 30.0) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._wall = start.timestamp()
        self._elapsed = 0.0
        self._cond = threading.Condition()
        self._generation = 0
        self._threads: dict[int, int] = {}  # attached thread -> generation it sleeps at (-1 awake)
        self._settle_timeout = settle_timeout

    def time(self) -> float:
        return self._wall + self._elapsed

    def monotonic(self) -> float:
        return self._elapsed

    def attach(self) -> None:
        with self._cond:
            self._threads[threading.get_ident()] = -1

    def detach(self) -> None:
        with self._cond:
            self._threads.pop(threading.get_ident(), None)
            self._cond.notify_all()

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        me = threading.get_ident()
        with self._cond:
            deadline = self._elapsed + seconds
            while not wake.is_set() and self._elapsed < deadline:
                if me in self._threads:
                    self._threads[me] = self._generation
                    self._cond.notify_all()
                self._cond.wait()
            if me in self._threads:
                self._threads[me] = -1

    def interrupt(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def advance(self, seconds: float) -> None:
        """Move time forward and wait until the attached threads have caught up."""
        with self._cond:
            self._elapsed += seconds
            self._generation += 1
            generation = self._generation
            self._cond.notify_all()
            settled = self._cond.wait_for(
                lambda: all(g == generation for g in self._threads.values()),
                timeout=self._settle_timeout,
            )
        if not settled:
            raise RuntimeError(
                f"a thread on the clock did not settle within {self._settle_timeout} s"
            )
