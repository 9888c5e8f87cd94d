"""Validation of what ``track()`` accepts, done once per distinct value.

Each check raises ``TypeError`` or ``ValueError`` in the caller with a message that names the
bad value and what would be accepted. Names, property sets and user ids that passed once are
remembered (up to a bound), so the hot path pays a dictionary lookup, not a validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from .keys import Groups, Properties

__all__ = [
    "MAX_DEDUPE_KEY_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_PROPERTY_KEY_LENGTH",
    "MAX_PROPERTY_VALUE_LENGTH",
    "MAX_USER_ID_LENGTH",
    "MAX_VALUE",
    "MIN_TIMESTAMP",
    "Validator",
    "validate_group",
    "validate_groups",
    "validate_property_key",
]

MAX_NAME_LENGTH = 200
MAX_PROPERTY_KEY_LENGTH = 100
MAX_PROPERTY_VALUE_LENGTH = 500
MAX_USER_ID_LENGTH = 256
MAX_DEDUPE_KEY_LENGTH = 200
MAX_VALUE = 2**32 - 1
MIN_TIMESTAMP = datetime(2000, 1, 1, tzinfo=timezone.utc)
"""The earliest event time accepted (and queried): older ones are bugs, such as a timestamp
of 0 (1970-01-01) or a mistyped year, not product events."""
FUTURE_TOLERANCE = timedelta(minutes=5)
"""How far ahead of the client's clock an explicit timestamp may be (clock skew)."""
CACHE_LIMIT = 10_000
"""How many distinct validated values each cache remembers; a full cache is emptied when the
buffer is drained, so it follows the values in use now."""


def _check_text(what: str, text: str, limit: int) -> None:
    if not text or len(text) > limit:
        raise ValueError(f"{what} {text!r} has {len(text)} characters; accepted: 1 to {limit}")
    if not text.isprintable():
        raise ValueError(
            f"{what} {text!r} contains control or non-printable characters; "
            "accepted: printable characters only"
        )


def _as_text(what: str, value: object) -> str:
    """Return ``value`` as ``str`` if it is a ``str`` or a ``str``-valued ``Enum``."""
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        raise TypeError(
            f"{what} {value!r} is of type {type(value).__name__}; "
            "accepted: str or a str-valued Enum"
        )
    return str.__str__(value)


def validate_event_name(event: object) -> str:
    """Return the event name of ``event`` (a ``str`` or ``str``-valued ``Enum``) or raise."""
    name = _as_text("event name", event)
    _check_text("event name", name, MAX_NAME_LENGTH)
    if name != name.strip():
        raise ValueError(
            f"event name {name!r} has leading or trailing whitespace; "
            "accepted: printable characters without surrounding spaces"
        )
    return name


def validate_value(value: object) -> int:
    """Return ``value`` if it is a positive ``int`` (not ``bool``) within bounds, or raise."""
    if type(value) is not int:
        raise TypeError(
            f"value {value!r} is of type {type(value).__name__}; "
            f"accepted: an int from 1 to {MAX_VALUE} (bool is not accepted)"
        )
    if not 1 <= value <= MAX_VALUE:
        raise ValueError(f"value {value!r} is out of range; accepted: an int from 1 to {MAX_VALUE}")
    return value


def validate_timestamp(timestamp: object, now: float) -> datetime:
    """Return ``timestamp`` if it is an aware datetime from 2000 on, not far in the future,
    or raise."""
    if not isinstance(timestamp, datetime):
        raise TypeError(
            f"timestamp {timestamp!r} is of type {type(timestamp).__name__}; "
            "accepted: a timezone-aware datetime"
        )
    if timestamp.utcoffset() is None:
        raise ValueError(
            f"timestamp {timestamp.isoformat()} is naive; accepted: a timezone-aware datetime "
            "(e.g. datetime.now(timezone.utc))"
        )
    if timestamp < MIN_TIMESTAMP:
        raise ValueError(
            f"timestamp {timestamp.isoformat()} is before {MIN_TIMESTAMP.isoformat()}; "
            f"accepted: from {MIN_TIMESTAMP.date()} UTC to {FUTURE_TOLERANCE.total_seconds():.0f} "
            "s ahead of the clock"
        )
    ahead = timestamp.timestamp() - now
    if ahead > FUTURE_TOLERANCE.total_seconds():
        raise ValueError(
            f"timestamp {timestamp.isoformat()} is {ahead:.0f} s in the future; accepted: up to "
            f"{FUTURE_TOLERANCE.total_seconds():.0f} s ahead of the clock"
        )
    return timestamp


def validate_dedupe_key(key: object) -> str:
    """Return ``key`` if it is an acceptable ``dedupe_key`` (printable ``str``), or raise."""
    if not isinstance(key, str):
        raise TypeError(
            f"dedupe_key {key!r} is of type {type(key).__name__}; accepted: str "
            "(e.g. the webhook's event id, or f'webhook-{id}')"
        )
    text = str.__str__(key)
    _check_text("dedupe_key", text, MAX_DEDUPE_KEY_LENGTH)
    return text


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` if it is an acceptable ``str``, or raise."""
    if not isinstance(user_id, str):
        raise TypeError(
            f"user_id {user_id!r} is of type {type(user_id).__name__}; accepted: str "
            "(convert ids with str(user_id))"
        )
    text = str.__str__(user_id)
    _check_text("user_id", text, MAX_USER_ID_LENGTH)
    return text


def validate_groups(groups: object, types: tuple[str, ...] | None) -> Groups:
    """Return ``groups`` (a mapping of group type to group id) as sorted pairs, or raise:
    each type one of ``types`` (any identifier-like text if None: ``context()`` does not know
    the client's types), each id a valid user id."""
    if not isinstance(groups, Mapping):
        raise TypeError(
            f"groups {groups!r} is of type {type(groups).__name__}; accepted: a mapping of "
            "group type to group id, e.g. {'account': 'acme'}"
        )
    pairs = []
    for group_type, group_id in groups.items():
        pairs.append(_group_pair(group_type, group_id, types))
    return tuple(sorted(pairs))


def _group_pair(
    group_type: object, group_id: object, types: tuple[str, ...] | None
) -> tuple[str, str]:
    check_group_type(group_type, types)
    assert isinstance(group_type, str)
    if not isinstance(group_id, str):
        raise TypeError(
            f"group id {group_id!r} (group type {group_type!r}) is of type "
            f"{type(group_id).__name__}; accepted: str (convert ids with str(group_id))"
        )
    text = str.__str__(group_id)
    _check_text(f"group id (group type {group_type!r})", text, MAX_USER_ID_LENGTH)
    return str.__str__(group_type), text


def check_group_type(group_type: object, types: tuple[str, ...] | None) -> str:
    """Return ``group_type`` if it is one of ``types`` (a short text if None), or raise."""
    if types is not None:
        if group_type not in types or type(group_type) is not str:
            raise ValueError(
                f"group type {group_type!r} is not configured; accepted: "
                f"{', '.join(map(repr, types))} (the group_types setting)"
            )
        return group_type
    if not isinstance(group_type, str):
        raise TypeError(
            f"group type {group_type!r} is of type {type(group_type).__name__}; accepted: str"
        )
    _check_text("group type", group_type, 32)
    return str.__str__(group_type)


def validate_group(group: object, types: tuple[str, ...]) -> tuple[str, str]:
    """Return a query's ``group=`` as ``(group_type, group_id)``, or raise."""
    if not isinstance(group, tuple) or len(group) != 2:
        raise TypeError(
            f"group {group!r} is not accepted; accepted: a tuple (group type, group id), "
            f"e.g. ({types[0]!r}, 'acme'), with the type one of {', '.join(map(repr, types))}"
        )
    return _group_pair(group[0], group[1], types)


def _property_value(key: str, value: object) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        text = str.__str__(value)
        if len(text) > MAX_PROPERTY_VALUE_LENGTH or not text.isprintable():
            raise ValueError(
                f"property {key!r} has value {text!r}; accepted: up to "
                f"{MAX_PROPERTY_VALUE_LENGTH} printable characters"
            )
        return text
    raise TypeError(
        f"property {key!r} has value {value!r} of type {type(value).__name__}; "
        "accepted: str, int or bool (properties are a flat mapping)"
    )


def validate_property_key(key: object, what: str = "property key") -> str:
    """Return ``key`` if it is a property key ``track()`` accepts (a non-empty printable
    ``str`` of at most ``MAX_PROPERTY_KEY_LENGTH`` characters), or raise."""
    if not isinstance(key, str):
        raise TypeError(
            f"{what} {key!r} is of type {type(key).__name__}; accepted: str (a property key)"
        )
    text = str.__str__(key)
    _check_text(what, text, MAX_PROPERTY_KEY_LENGTH)
    return text


def validate_properties(properties: object, max_properties: int) -> Properties:
    """Return ``properties`` as sorted ``(key, str value)`` pairs, or raise."""
    if not isinstance(properties, Mapping):
        raise TypeError(
            f"properties {properties!r} is of type {type(properties).__name__}; "
            "accepted: a mapping of str to str, int or bool"
        )
    if len(properties) > max_properties:
        raise ValueError(
            f"properties has {len(properties)} entries ({sorted(map(str, properties))}); "
            f"accepted: at most {max_properties}"
        )
    pairs: list[tuple[str, str]] = []
    for key, value in properties.items():
        if not isinstance(key, str):
            raise TypeError(f"property key {key!r} is of type {type(key).__name__}; accepted: str")
        _check_text("property key", key, MAX_PROPERTY_KEY_LENGTH)
        pairs.append((str.__str__(key), _property_value(key, value)))
    pairs.sort()
    return tuple(pairs)


class Validator:
    """Validates ``track()`` arguments, remembering what already passed."""

    def __init__(self, max_properties: int, group_types: tuple[str, ...] = ("account",)) -> None:
        self.max_properties = max_properties
        self.group_types = group_types
        self.group_sets: dict[tuple[tuple[Any, Any], ...], Groups] = {}
        self.names: dict[Any, str] = {}
        self.property_sets: dict[tuple[tuple[Any, Any], ...], Properties] = {}
        self.user_ids: dict[str, str] = {}

    def event_name(self, event: object) -> str:
        """Return the validated name of ``event``, remembering it."""
        name = validate_event_name(event)
        if len(self.names) < CACHE_LIMIT:
            self.names[event] = name
        return name

    def properties(self, properties: object) -> Properties:
        """Return ``properties`` validated and normalised, remembering plain-``str`` sets."""
        normalised = validate_properties(properties, self.max_properties)
        assert isinstance(properties, Mapping)
        raw = tuple(properties.items())
        # Only sets whose values are all plain str are remembered by their raw items: an int
        # or bool value compares equal to another type (1 == True) and would alias.
        if len(self.property_sets) < CACHE_LIMIT and all(type(v) is str for _, v in raw):
            self.property_sets[raw] = normalised
        return normalised

    def prune(self) -> None:
        """Empty each full cache (called when the buffer is drained): memory stays bounded
        and the caches learn the values in use now, not the first ones ever seen."""
        for cache in (self.names, self.property_sets, self.user_ids, self.group_sets):
            if len(cache) >= CACHE_LIMIT:
                cache.clear()  # the same dict: the client holds references to it

    def user_id(self, user_id: object) -> str:
        """Return the validated ``user_id``, remembering it."""
        text = validate_user_id(user_id)
        if len(self.user_ids) < CACHE_LIMIT and type(user_id) is str:
            self.user_ids[text] = text
        return text

    def groups(self, groups: object) -> Groups:
        """Return ``groups`` validated against the configured group types, remembering
        plain-``str`` mappings."""
        pairs = validate_groups(groups, self.group_types)
        assert isinstance(groups, Mapping)
        raw = tuple(groups.items())
        if len(self.group_sets) < CACHE_LIMIT and all(type(v) is str for _, v in raw):
            self.group_sets[raw] = pairs
        return pairs
