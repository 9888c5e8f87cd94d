"""Configuration, in one place: keyword arguments, then ``ANALYTICS_*`` variables, then defaults."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .backends.base import CounterStore, Sink
from .clock import Clock, SystemClock
from .errors import ConfigurationError

__all__ = ["ENVIRONMENT", "Config"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{attribute.name}={value!r} is not accepted; accepted: a number > 0"
        )


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigurationError(
            f"{attribute.name}={value!r} is not accepted; accepted: a number >= 0"
        )


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ConfigurationError(
            f"{attribute.name}={value!r} is not accepted; accepted: an int >= 1"
        )


def _backend(kind: type) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, (str, kind)):
            raise ConfigurationError(
                f"{attribute.name}={value!r} is not accepted; accepted: a URL such as "
                f"'memory://' or a {kind.__name__} instance"
            )

    return check


_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = {"event", "user_id", "feature", "outcome", "le"}


def _label_names(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for name in value:
        if not isinstance(name, str) or not _LABEL.match(name) or name in _RESERVED_LABELS:
            raise ConfigurationError(
                f"prometheus_labels entry {name!r} is not accepted; accepted: property names that "
                f"are valid Prometheus label names, other than {', '.join(sorted(_RESERVED_LABELS))}"
            )


def _optional_port(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or not 0 <= value <= 65535):
        raise ConfigurationError(
            f"{attribute.name}={value!r} is not accepted; accepted: a port from 0 to 65535, or None"
        )


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


@attrs.frozen(kw_only=True)
class Config:
    """Every setting of an :class:`~analytics_sdk.Analytics` client."""

    store: str | CounterStore = attrs.field(default="memory://", validator=_backend(CounterStore))
    """Counter store URL (``memory://``) or instance. Env: ``ANALYTICS_STORE``."""
    sink: str | Sink = attrs.field(default="memory://", validator=_backend(Sink))
    """Sink URL (``memory://``) or instance. Env: ``ANALYTICS_SINK``."""
    push_interval: float = attrs.field(default=1.0, validator=_non_negative)
    """Seconds between pushes of the in-process buffer to the store; ``0`` is write-through:
    every ``track()`` reaches the store before it returns (the buffer takes over while the
    store is failing)."""
    flush_interval: float = attrs.field(default=60.0, validator=_positive)
    """Seconds between flushes of the store into the sink."""
    shutdown_timeout: float = attrs.field(default=10.0, validator=_positive)
    """Deadline of the final flush at exit."""
    max_buffered_keys: int = attrs.field(default=100_000, validator=_positive_int)
    """Distinct keys the buffer holds before it counts new keys as dropped."""
    max_property_sets: int = attrs.field(default=1_000, validator=_positive_int)
    """Distinct property sets per event before the excess folds into ``{"overflow": "true"}``."""
    max_properties: int = attrs.field(default=16, validator=_positive_int)
    """Properties one ``track()`` call may carry."""
    backoff_initial: float = attrs.field(default=1.0, validator=_positive)
    """First retry delay after a failed push or flush; it doubles per failure."""
    backoff_max: float = attrs.field(default=60.0, validator=_positive)
    """Longest retry delay."""
    schedule_jitter: float = attrs.field(default=0.1, validator=_non_negative)
    """Each push and flush interval varies by up to this fraction, at random, so processes
    started together (a deploy) do not push and flush in lockstep."""
    claim_lease: float = attrs.field(default=300.0, validator=_positive)
    """Age after which another flusher's unacknowledged claim counts as orphaned."""
    prometheus_labels: tuple[str, ...] = attrs.field(
        default=(), converter=tuple, validator=_label_names
    )
    """Properties that become labels of ``analytics_events_total`` (``user_id`` never does).
    Env: comma-separated."""
    metrics_port: int | None = attrs.field(default=None, validator=_optional_port)
    """If set, serve ``/metrics`` and ``/healthz`` for this client on this port."""
    metrics_addr: str = attrs.field(
        default="127.0.0.1", validator=attrs.validators.instance_of(str)
    )
    """Address the metrics server binds to; all interfaces need an explicit ``"0.0.0.0"``."""
    flusher: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    """Flush the store into the sink (on the timer and in ``flush()``); set false in
    application processes when a worker process does the flushing."""
    background: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    """Run the scheduler thread; if false, counts move only on ``flush()``."""
    clock: Clock = attrs.field(factory=SystemClock, validator=attrs.validators.instance_of(Clock))
    """Time source (tests pass :class:`~analytics_sdk.testing.ManualClock`)."""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Config:
        """Return the config from ``kwargs``, then ``ANALYTICS_*`` variables, then defaults."""
        environ = os.environ if environ is None else environ
        names = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s) {', '.join(unknown)}; accepted: {', '.join(sorted(names))}"
            )
        values = dict(kwargs)
        for name, (variable, parse) in ENVIRONMENT.items():
            if name in values or variable not in environ:
                continue
            try:
                values[name] = parse(environ[variable])
            except ValueError as exc:
                raise ConfigurationError(
                    f"{variable}={environ[variable]!r} is not accepted: {exc}"
                ) from None
        return cls(**values)


ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "store": ("ANALYTICS_STORE", str),
    "sink": ("ANALYTICS_SINK", str),
    "push_interval": ("ANALYTICS_PUSH_INTERVAL", float),
    "flush_interval": ("ANALYTICS_FLUSH_INTERVAL", float),
    "shutdown_timeout": ("ANALYTICS_SHUTDOWN_TIMEOUT", float),
    "max_buffered_keys": ("ANALYTICS_MAX_BUFFERED_KEYS", int),
    "max_property_sets": ("ANALYTICS_MAX_PROPERTY_SETS", int),
    "max_properties": ("ANALYTICS_MAX_PROPERTIES", int),
    "backoff_initial": ("ANALYTICS_BACKOFF_INITIAL", float),
    "backoff_max": ("ANALYTICS_BACKOFF_MAX", float),
    "schedule_jitter": ("ANALYTICS_SCHEDULE_JITTER", float),
    "claim_lease": ("ANALYTICS_CLAIM_LEASE", float),
    "prometheus_labels": (
        "ANALYTICS_PROMETHEUS_LABELS",
        lambda text: tuple(n.strip() for n in text.split(",") if n.strip()),
    ),
    "metrics_port": ("ANALYTICS_METRICS_PORT", int),
    "metrics_addr": ("ANALYTICS_METRICS_ADDR", str),
    "flusher": ("ANALYTICS_FLUSHER", _bool),
    "background": ("ANALYTICS_BACKGROUND", _bool),
}
"""Setting name -> (environment variable, parser)."""
