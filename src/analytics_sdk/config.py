"""Configuration, in one place: keyword arguments, then ``ANALYTICS_*`` variables, then defaults."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .aggregator import MAX_PUSH_KEYS
from .backends.base import DEFAULT_MAX_BATCH_KEYS, CounterStore, Sink
from .clock import Clock, SystemClock
from .errors import ConfigurationError
from .spool import default_spool_dir

__all__ = ["ENVIRONMENT", "Config"]


def _refuse(name: str, value: Any, accepted: str, why: str = "") -> ConfigurationError:
    why = f" ({why})" if why else ""
    return ConfigurationError(f"{name}={value!r} is not accepted{why}; accepted: {accepted}")


def _is_number(value: Any) -> bool:
    # bool is an int subclass: flusher=True where a number belongs is a mistake, not 1
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_number(value) or not value > 0:
        raise _refuse(attribute.name, value, "a finite number > 0 (seconds)")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_number(value) or not value >= 0:
        raise _refuse(attribute.name, value, "a finite number >= 0")


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value < 1:
        raise _refuse(attribute.name, value, "an int >= 1")


def _bool_setting(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise _refuse(attribute.name, value, "True or False")


def _text(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _refuse(attribute.name, value, "a non-empty string")


def _clock(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, Clock):
        raise _refuse(
            attribute.name, value, "a Clock (SystemClock, or testing.ManualClock in tests)"
        )


def _backend(kind: type) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, (str, kind)) or (isinstance(value, str) and "://" not in value):
            raise ConfigurationError(
                f"{attribute.name}={_shown(value)!r} is not accepted; accepted: a URL such as "
                f"'memory://' or a {kind.__name__} instance"
            )

    return check


def _shown(value: Any) -> Any:
    """A store or sink setting as it may appear in a message: URLs and conninfo redacted."""
    from .backends import redact_url

    return redact_url(value) if isinstance(value, str) else value


_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = {"event", "user_id", "feature", "outcome", "le"}
_LABELS_ACCEPTED = (
    "a list or tuple of property names that are valid Prometheus label names, other than "
    + ", ".join(sorted(_RESERVED_LABELS))
    + ", e.g. ('plan',)"
)


def _label_tuple(value: Any) -> Any:
    # a str is iterable: "plan" must not become the labels p, l, a, n
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value  # the validator refuses it, naming the value as given


def _label_names(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise _refuse(attribute.name, value, _LABELS_ACCEPTED)
    for name in value:
        if not isinstance(name, str) or not _LABEL.match(name) or name in _RESERVED_LABELS:
            raise _refuse(attribute.name, value, _LABELS_ACCEPTED, f"entry {name!r}")
    if len(set(value)) != len(value):
        raise _refuse(attribute.name, value, _LABELS_ACCEPTED, "a name repeats")


MAX_GROUP_TYPES = 5
"""The most group types a client may configure (``group_types``)."""
_GROUP_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_GROUP_TYPES_ACCEPTED = (
    f"a list or tuple of 1 to {MAX_GROUP_TYPES} distinct group types, each a short "
    "identifier (lower-case letter, then up to 31 lower-case letters, digits or _), "
    "e.g. ('account',)"
)


def _group_types(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not 1 <= len(value) <= MAX_GROUP_TYPES:
        raise _refuse(attribute.name, value, _GROUP_TYPES_ACCEPTED)
    for name in value:
        if not isinstance(name, str) or not _GROUP_TYPE.match(name):
            raise _refuse(attribute.name, value, _GROUP_TYPES_ACCEPTED, f"entry {name!r}")
    if len(set(value)) != len(value):
        raise _refuse(attribute.name, value, _GROUP_TYPES_ACCEPTED, "a type repeats")


def _optional_hook(what: str) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not callable(value):
            raise _refuse(attribute.name, value, f"None or a callable {what}")

    return check


MAX_DEDUPE_WINDOW = 30 * 24 * 3600.0
"""Longest ``dedupe_window`` (seconds): 30 days, the time a store keeps push records."""


def _dedupe_window(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_number(value) or not 1 <= value <= MAX_DEDUPE_WINDOW:
        raise _refuse(
            attribute.name,
            value,
            f"a number of seconds from 1 to {MAX_DEDUPE_WINDOW:.0f} (30 days), e.g. 86400",
        )


def _optional_port(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or not 0 <= value <= 65535):
        raise _refuse(attribute.name, value, "a port from 0 to 65535, or None")


def _spool_dir(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _spool_dir_check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    accepted = "a directory path (created if missing), or None to turn the spool off"
    if not isinstance(value, str) or not value or "\0" in value:
        raise _refuse(attribute.name, value, accepted)
    if os.path.exists(value) and not os.path.isdir(value):
        raise _refuse(attribute.name, value, accepted, "it exists and is not a directory")


def _optional_path(text: str) -> str | None:
    return text or None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str) -> bool:
    """Read a boolean written in an environment variable or URL option."""
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("accepted: one of 1/0, true/false, yes/no, on/off (any case)")


def _number(kind: Callable[[str], Any], accepted: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text.strip())
        except ValueError:
            raise ValueError(f"accepted: {accepted}") from None

    return parse


def _labels(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


@attrs.frozen(kw_only=True)
class Config:
    """Every setting of an :class:`~analytics_sdk.Analytics` client."""

    store: str | CounterStore = attrs.field(
        default="memory://", validator=_backend(CounterStore), repr=lambda v: repr(_shown(v))
    )
    """Counter store URL (``memory://``) or instance. Env: ``ANALYTICS_STORE``."""
    sink: str | Sink = attrs.field(
        default="memory://", validator=_backend(Sink), repr=lambda v: repr(_shown(v))
    )
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
    """Distinct keys the buffer holds; the thread that adds one more pushes the buffer to the
    store first. Only while the store fails (the outbox holds as many again) are new keys
    dropped, counted and warned about."""
    max_push_keys: int = attrs.field(default=MAX_PUSH_KEYS, validator=_positive_int)
    """Counters (and calls with a dedupe key) one push carries at most; a larger buffer goes
    in several pushes. The store applies a push in one step (in Redis a script, during which
    the server answers no other client): 2,000 counters took 3 to 30 ms in the benchmark,
    100,000 took 270 to 390 ms."""
    max_property_sets: int = attrs.field(default=1_000, validator=_positive_int)
    """Distinct property sets per event before the excess folds into ``{"overflow": "true"}``."""
    max_event_names: int = attrs.field(default=1_000, validator=_positive_int)
    """Distinct event names per process; counts of further names fold into the event
    ``"(overflow)"`` (without properties) and are counted."""
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
    max_batch_keys: int = attrs.field(default=DEFAULT_MAX_BATCH_KEYS, validator=_positive_int)
    """Counters one claimed batch holds at most: each batch is one sink transaction, so this
    bounds its duration (keep it well inside PostgreSQL's ``statement_timeout``) and the
    flusher's memory."""
    prometheus_labels: tuple[str, ...] = attrs.field(
        default=(), converter=_label_tuple, validator=_label_names
    )
    """Properties that become labels of ``analytics_events_total`` (``user_id`` never does).
    Env: comma-separated."""
    group_types: tuple[str, ...] = attrs.field(
        default=("account",), converter=_label_tuple, validator=_group_types
    )
    """Group types ``track(groups=...)`` accepts (at most 5 short identifiers), e.g.
    ``("account", "workspace")``. Env: ``ANALYTICS_GROUP_TYPES``, comma-separated."""
    metrics_port: int | None = attrs.field(default=None, validator=_optional_port)
    """If set, serve ``/metrics`` and ``/healthz`` for this client on this port."""
    metrics_addr: str = attrs.field(default="127.0.0.1", validator=_text)
    """Address the metrics server binds to; all interfaces need an explicit ``"0.0.0.0"``."""
    flusher: bool = attrs.field(default=True, validator=_bool_setting)
    """Flush the store into the sink (on the timer and in ``flush()``); set false in
    application processes when a worker process does the flushing."""
    background: bool = attrs.field(default=True, validator=_bool_setting)
    """Run the scheduler thread; if false, counts move only on ``flush()``."""
    spool_dir: str | None = attrs.field(
        factory=default_spool_dir, converter=_spool_dir, validator=_spool_dir_check
    )
    """Directory where counts the store cannot take at exit (or during a long outage) wait
    on disk until the next start or a worker replays them; ``None`` (env: empty) turns the
    spool off. Default: per user, e.g. ``~/.local/state/analytics_sdk/spool``."""
    spool_after: float = attrs.field(default=60.0, validator=_positive)
    """Seconds of failing pushes after which the buffer is spooled to disk, keeping memory
    bounded through a long outage."""
    enabled: bool = attrs.field(default=True, validator=_bool_setting)
    """``False`` makes the client a no-op: ``track()`` and ``track_feature`` record nothing
    (their arguments are not even checked), no thread starts, no connection opens (the
    ``store`` and ``sink`` are not used), and queries answer from empty memory backends (0,
    empty lists). Env: ``ANALYTICS_ENABLED=0``."""
    on_error: Callable[[BaseException, str], object] | None = attrs.field(
        default=None, validator=_optional_hook("on_error(exc, operation)")
    )
    """Called as ``on_error(exc, operation)`` for every backend failure, besides the log;
    ``operation`` is ``"push"``, ``"flush"``, ``"replay"``, ``"spool"`` or ``"query"``. It
    runs in the thread that met the failure, with no lock of the SDK held; what it raises
    is logged and ignored. No environment variable."""
    before_track: (
        Callable[
            [str, str | None, dict[str, str | int | bool]],
            tuple[str, str | None, Mapping[str, str | int | bool] | None] | None,
        ]
        | None
    ) = attrs.field(
        default=None, validator=_optional_hook("before_track(event, user_id, properties)")
    )
    """Called as ``before_track(event, user_id, properties)`` for every ``track()`` (and
    ``feature_used``), with the context's user and properties merged in; it returns
    ``(event, user_id, properties)`` to count, or ``None`` to drop the call; if it raises or
    returns something else, the call is dropped and logged. The contract is on the docs page
    "Hooks and dedupe keys". No environment variable."""
    dedupe_window: float = attrs.field(default=86400.0, validator=_dedupe_window)
    """Seconds during which calls with the same ``dedupe_key`` count once (default 24 h)."""
    clock: Clock = attrs.field(factory=SystemClock, validator=_clock)
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
        fields = attrs.fields_dict(cls)
        for name, (variable, parse) in ENVIRONMENT.items():
            if name in values or variable not in environ:
                continue
            text = environ[variable]
            try:
                values[name] = parse(text)
                field = fields[name]
                converter: Any = field.converter
                if converter is not None:
                    values[name] = converter(values[name])
                if field.validator is not None:
                    field.validator(None, field, values[name])
            except ValueError as exc:  # ConfigurationError included
                # name the variable as written, then the validator's reason
                detail = str(exc)
                if name in values:
                    detail = detail.removeprefix(f"{name}={values[name]!r} is not accepted")
                else:
                    detail = f"; {detail}"
                raise ConfigurationError(
                    f"{variable}={_shown(text)!r} (setting {name}) is not accepted{detail}"
                ) from None
        return cls(**values)


_FLOAT = _number(float, "a number, e.g. 2.5")
_INT = _number(int, "a whole number, e.g. 10")

ENVIRONMENT: dict[str, tuple[str, Callable[[str], Any]]] = {
    "store": ("ANALYTICS_STORE", str),
    "sink": ("ANALYTICS_SINK", str),
    "push_interval": ("ANALYTICS_PUSH_INTERVAL", _FLOAT),
    "flush_interval": ("ANALYTICS_FLUSH_INTERVAL", _FLOAT),
    "shutdown_timeout": ("ANALYTICS_SHUTDOWN_TIMEOUT", _FLOAT),
    "max_buffered_keys": ("ANALYTICS_MAX_BUFFERED_KEYS", _INT),
    "max_push_keys": ("ANALYTICS_MAX_PUSH_KEYS", _INT),
    "max_property_sets": ("ANALYTICS_MAX_PROPERTY_SETS", _INT),
    "max_event_names": ("ANALYTICS_MAX_EVENT_NAMES", _INT),
    "max_properties": ("ANALYTICS_MAX_PROPERTIES", _INT),
    "backoff_initial": ("ANALYTICS_BACKOFF_INITIAL", _FLOAT),
    "backoff_max": ("ANALYTICS_BACKOFF_MAX", _FLOAT),
    "schedule_jitter": ("ANALYTICS_SCHEDULE_JITTER", _FLOAT),
    "claim_lease": ("ANALYTICS_CLAIM_LEASE", _FLOAT),
    "max_batch_keys": ("ANALYTICS_MAX_BATCH_KEYS", _INT),
    "prometheus_labels": ("ANALYTICS_PROMETHEUS_LABELS", _labels),
    "group_types": ("ANALYTICS_GROUP_TYPES", _labels),
    "metrics_port": ("ANALYTICS_METRICS_PORT", _INT),
    "metrics_addr": ("ANALYTICS_METRICS_ADDR", str),
    "flusher": ("ANALYTICS_FLUSHER", parse_bool),
    "background": ("ANALYTICS_BACKGROUND", parse_bool),
    "spool_dir": ("ANALYTICS_SPOOL_DIR", _optional_path),
    "spool_after": ("ANALYTICS_SPOOL_AFTER", _FLOAT),
    "enabled": ("ANALYTICS_ENABLED", parse_bool),
    "dedupe_window": ("ANALYTICS_DEDUPE_WINDOW", _FLOAT),
}
"""Setting name -> (environment variable, parser); every setting but ``clock`` and the hooks
(``on_error``, ``before_track``) has one."""
