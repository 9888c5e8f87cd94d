"""Backends chosen by URL scheme: ``memory://`` now; drivers are imported only when used.

A scheme maps to a factory ``(url, clock) -> backend``. Third-party backends register theirs
with :func:`register_store` or :func:`register_sink`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigurationError
from .base import Batch, CounterStore, Delta, Pending, Push, Sink
from .memory import MemoryCounterStore, MemorySink

__all__ = [
    "Batch",
    "CounterStore",
    "Delta",
    "MemoryCounterStore",
    "MemorySink",
    "Pending",
    "Push",
    "Sink",
    "check_url_options",
    "redact_url",
    "register_sink",
    "register_store",
    "sink_from_url",
    "store_from_url",
]

Clock = Callable[[], float]
StoreFactory = Callable[[str, Clock], CounterStore]
SinkFactory = Callable[[str, Clock], Sink]
B = TypeVar("B")


def _require(url: str, kind: str, extra: str, *modules: str) -> None:
    """Import a driver that is an extra, or say which extra to install."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"{kind} URL {redact_url(url)!r} needs {module}: pip install 'analytics-sdk-exact[{extra}]'"
            ) from exc


def _redis_store(url: str, clock: Clock) -> CounterStore:
    _require(url, "store", "redis", "redis")
    from .redis import RedisCounterStore

    return RedisCounterStore.from_url(url, clock)


def _postgres_sink(url: str, clock: Clock) -> Sink:
    _require(url, "sink", "postgres", "psycopg", "psycopg_pool")
    from .postgres import PostgresSink

    return PostgresSink.from_url(url, clock)


_STORES: dict[str, StoreFactory] = {
    "memory": lambda url, clock: MemoryCounterStore(clock=clock),
    "redis": _redis_store,
    "rediss": _redis_store,
    "redis+cluster": _redis_store,
}
_SINKS: dict[str, SinkFactory] = {
    "memory": lambda url, clock: MemorySink(clock=clock),
    "postgresql": _postgres_sink,
    "postgres": _postgres_sink,
}


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def check_url_options(
    url: str,
    kind: str,
    given: Iterable[str],
    ours: Iterable[str],
    driver: str,
    theirs: Iterable[str],
) -> None:
    """Refuse query options of ``url`` that neither the backend nor its driver accept.

    A misspelled option would otherwise reach the driver, which fails on every call (or
    ignores it): better a clear error at ``configure()`` than a stalled pipeline.
    """
    ours, theirs = set(ours), set(theirs)
    unknown = sorted(set(given) - ours - theirs)
    if not unknown:
        return
    close = [m for name in unknown for m in difflib.get_close_matches(name, ours | theirs, 1)]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigurationError(
        f"{kind} URL {redact_url(url)!r}: unknown option(s) {', '.join(unknown)}{hint}; "
        f"accepted: {', '.join(sorted(ours))}; and the {driver} options "
        f"{', '.join(sorted(theirs))}"
    )


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Make ``scheme://`` URLs create counter stores with ``factory(url, clock)``."""
    _STORES[scheme] = factory


def register_sink(scheme: str, factory: SinkFactory) -> None:
    """Make ``scheme://`` URLs create sinks with ``factory(url, clock)``."""
    _SINKS[scheme] = factory


def _from_url(
    kind: str, registry: dict[str, Callable[[str, Clock], B]], url: str, clock: Clock
) -> B:
    if not isinstance(url, str):
        raise ConfigurationError(f"{kind} {url!r} is not a URL; accepted: a URL string or instance")
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    factory = registry.get(scheme)
    if factory is None:
        accepted = ", ".join(f"{s}://" for s in sorted(registry))
        raise ConfigurationError(
            f"{kind} URL {redact_url(url)!r} has an unknown scheme {scheme!r}; accepted: {accepted}"
        )
    return factory(url, clock)


def store_from_url(url: str, clock: Clock) -> CounterStore:
    """Return the counter store that ``url`` names (e.g. ``memory://``)."""
    return _from_url("store", _STORES, url, clock)


def sink_from_url(url: str, clock: Clock) -> Sink:
    """Return the sink that ``url`` names (e.g. ``memory://``)."""
    return _from_url("sink", _SINKS, url, clock)
