"""Backends chosen by URL scheme: ``memory://`` now; drivers are imported only when used.

A scheme maps to a factory ``(url, clock) -> backend``. Third-party backends register theirs
with :func:`register_store` or :func:`register_sink`.
"""

from __future__ import annotations

import difflib
import importlib
import math
import re
from collections.abc import Callable, Iterable
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

from ..errors import ConfigurationError, remember_secret
from .base import Batch, CounterStore, Deduped, Delta, Pending, Push, Sink
from .memory import MemoryCounterStore, MemorySink

__all__ = [
    "Batch",
    "CounterStore",
    "Deduped",
    "Delta",
    "MemoryCounterStore",
    "MemorySink",
    "OptionRule",
    "Pending",
    "Push",
    "Sink",
    "check_option_values",
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


def _memory(url: str, kind: str, backend: B) -> B:
    """A memory backend takes no options: one given is a mistake (a wrong scheme?)."""
    given = [name for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)]
    check_url_options(url, kind, given, (), "", ())
    return backend


def _redis_store(url: str, clock: Clock) -> CounterStore:
    _require(url, "store", "redis", "redis")
    from .redis import RedisCounterStore

    return RedisCounterStore.from_url(url, clock)


def _postgres_sink(url: str, clock: Clock) -> Sink:
    _require(url, "sink", "postgres", "psycopg", "psycopg_pool")
    from .postgres import PostgresSink

    return PostgresSink.from_url(url, clock)


_STORES: dict[str, StoreFactory] = {
    "memory": lambda url, clock: _memory(url, "store", MemoryCounterStore(clock=clock)),
    "redis": _redis_store,
    "rediss": _redis_store,
    "redis+cluster": _redis_store,
}
_SINKS: dict[str, SinkFactory] = {
    "memory": lambda url, clock: _memory(url, "sink", MemorySink(clock=clock)),
    "postgresql": _postgres_sink,
    "postgres": _postgres_sink,
}


def is_secret(option: str) -> bool:
    """Whether a URL or conninfo option carries a secret (``password``, ``sslpassword``...)."""
    name = option.lower()
    return any(word in name for word in ("password", "secret", "token")) or name in (
        "scram_client_key",
        "scram_server_key",
    )


# libpq key=value conninfo: a value is a single-quoted string (with \\ escapes) or a word
_CONNINFO_PAIR = re.compile(r"([A-Za-z_]+)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']*)")
_QUERY_PAIR = re.compile(r"(^|[&;])([^&;=]*)=([^&;]*)")


def redact_url(url: str, also: Iterable[str] = ()) -> str:
    """Return ``url`` with every secret replaced by ``***``, safe for logs and messages.

    Covers ``user:password@``, secret query options (``?password=``, ``?sslpassword=``...),
    the options named in ``also`` (e.g. unknown ones, which may be misspelled secrets), and
    libpq ``key=value`` conninfo strings.
    """
    hide = {name.lower() for name in also}

    def secret(name: str) -> bool:
        return is_secret(name) or unquote_plus(name).lower() in hide

    if "://" not in url:  # a libpq conninfo string, or something else entirely
        return _CONNINFO_PAIR.sub(
            lambda m: m.group(0) if not secret(m.group(1)) else f"{m.group(1)}{m.group(2)}***",
            url,
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if port is not None:
            host = f"{host}:{port}"
        netloc = f"{parts.username or ''}:***@{host}"
    query = _QUERY_PAIR.sub(
        lambda m: (
            m.group(0) if not secret(unquote_plus(m.group(2))) else f"{m.group(1)}{m.group(2)}=***"
        ),
        parts.query,
    )
    # by hand: urlunsplit would turn "memory://" into "memory:"
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return shown + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def url_secrets(url: str) -> list[str]:
    """Return the secret values written in ``url`` (or a conninfo string), decoded."""
    found: list[str] = []
    if "://" not in url:
        for m in _CONNINFO_PAIR.finditer(url):
            if is_secret(m.group(1)):
                value = m.group(3)
                if value.startswith("'"):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                found.append(value)
        return found
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    if parts.password:
        found += [parts.password, unquote(parts.password)]
    for name, value in parse_qsl(parts.query):
        if is_secret(name):
            found.append(value)
    return found


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
    accepted = ", ".join(sorted(ours)) or "none"
    if theirs:
        accepted += f"; and the {driver} options {', '.join(sorted(theirs))}"
    raise ConfigurationError(
        f"{kind} URL {redact_url(url, also=unknown)!r}: unknown option(s) "
        f"{', '.join(unknown)}{hint}; accepted: {accepted}"
    )


OptionRule = tuple[Callable[[str], bool], str]
"""Whether a URL option's value is accepted, and what is accepted (said when it is not)."""


def integers(low: int, high: int | None = None) -> OptionRule:
    """Accept an integer from ``low`` (to ``high``)."""

    def ok(value: str) -> bool:
        try:
            n = int(value)
        except ValueError:
            return False
        return low <= n and (high is None or n <= high)

    return (
        ok,
        f"an integer from {low} to {high}" if high is not None else f"an integer, {low} or more",
    )


def floats(low: float, *, above: bool = False) -> OptionRule:
    """Accept a finite number of at least ``low`` (more than ``low`` with ``above``)."""

    def ok(value: str) -> bool:
        try:
            n = float(value)
        except ValueError:
            return False
        return math.isfinite(n) and (n > low if above else n >= low)

    return ok, f"a number more than {low:g}" if above else f"a number, {low:g} or more"


def one_of(*values: str) -> OptionRule:
    """Accept one of ``values`` exactly."""
    return (lambda value: value in values), f"one of {', '.join(values)}"


def each(rule: OptionRule, accepted: str, *, blank: bool = False) -> OptionRule:
    """Accept a comma-separated list whose items ``rule`` accepts (blank ones too with
    ``blank``); ``accepted`` says what such a list holds."""
    ok = rule[0]
    return (lambda value: all((blank and not item) or ok(item) for item in value.split(","))), (
        f"a comma-separated list of {accepted}" + (" (blank for the default)" if blank else "")
    )


def check_option_values(
    url: str, kind: str, query: dict[str, str], rules: dict[str, OptionRule], by: str = ""
) -> None:
    """Refuse a query option of ``url`` whose value its rule does not accept, naming the
    option, the value and what is accepted (a value the driver would only refuse at the first
    connection, or on every call, is better refused at ``configure()``)."""
    for name, value in query.items():
        rule = rules.get(name)
        if rule is not None and not rule[0](value):
            raise ConfigurationError(
                f"{kind} URL {redact_url(url)!r}: {name}={value!r} is not accepted"
                f"{f' by {by}' if by else ''}; accepted: {rule[1]}"
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
    for value in url_secrets(url):
        remember_secret(value)  # driver messages may quote it: errors scrub it out
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
