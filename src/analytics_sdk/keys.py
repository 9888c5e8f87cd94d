"""The identity of a count, and a text encoding of it that no character can break.

An hourly counter is ``(event, properties, hour)`` where ``properties`` is a sorted tuple of
``(key, value)`` string pairs and ``hour`` counts hours since the Unix epoch (UTC). A per-user
counter is ``(event, user_id, day)`` with ``day`` counting days since the epoch; a per-group
counter is ``(event, group_type, group_id, user_id or None, day)``. Backends
that need text (Redis fields, log lines) use :func:`encode_hour_key` and
:func:`encode_user_key`, which escape every separator so that names containing ``:``, ``|``,
``{``, ``}``, ``=``, ``,`` or newlines can neither corrupt a key nor collide with another.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

__all__ = [
    "GroupKey",
    "Groups",
    "HourKey",
    "Properties",
    "UserKey",
    "day_of",
    "decode_hour_key",
    "decode_properties",
    "decode_user_key",
    "encode_hour_key",
    "encode_properties",
    "encode_user_key",
    "escape",
    "hour_of",
    "hour_start",
    "unescape",
]

Properties = tuple[tuple[str, str], ...]
"""Property pairs sorted by key; values normalised to ``str``."""
HourKey = tuple[str, Properties, int]
"""``(event, properties, hours since the epoch)``."""
UserKey = tuple[str, str, int]
"""``(event, user_id, days since the epoch)``."""
GroupKey = tuple[str, str, str, str | None, int]
"""``(event, group_type, group_id, user_id or None, days since the epoch)``: the counts of
one group on a day, per user (``None``: calls without a user)."""
Groups = tuple[tuple[str, str], ...]
"""``(group_type, group_id)`` pairs sorted by type, one per type."""

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EPOCH_DATE = EPOCH.date()

_RESERVED = "%|=,:{}\n\r"
_ESCAPES = {ord(c): f"%{ord(c):02X}" for c in _RESERVED}
_ESCAPED = re.compile(r"%([0-9A-F]{2})")


def escape(text: str) -> str:
    """Return ``text`` with every separator character percent-escaped."""
    return text.translate(_ESCAPES)


def unescape(text: str) -> str:
    """Return the text that :func:`escape` turned into ``text``."""
    if "%" not in text:  # most names: nothing escaped
        return text
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)


def encode_properties(properties: Properties) -> str:
    """Return ``properties`` as ``k=v,k=v`` text with every part escaped."""
    return ",".join(f"{escape(k)}={escape(v)}" for k, v in properties)


def decode_properties(text: str) -> Properties:
    """Return the property pairs that :func:`encode_properties` turned into ``text``."""
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"malformed property pair {item!r}; expected 'key=value'")
        pairs.append((unescape(key), unescape(value)))
    return tuple(pairs)


def encode_hour_key(key: HourKey) -> str:
    """Return the text form ``event|properties|hour`` of an hourly counter key."""
    event, properties, hour = key
    return f"{escape(event)}|{encode_properties(properties)}|{hour}"


def decode_hour_key(text: str) -> HourKey:
    """Return the hourly counter key that :func:`encode_hour_key` turned into ``text``."""
    parts = text.split("|")
    if len(parts) != 3:
        raise ValueError(f"malformed hourly key {text!r}; expected 'event|properties|hour'")
    return unescape(parts[0]), decode_properties(parts[1]), int(parts[2])


def encode_user_key(key: UserKey) -> str:
    """Return the text form ``event|user_id|day`` of a per-user counter key."""
    event, user_id, day = key
    return f"{escape(event)}|{escape(user_id)}|{day}"


def decode_user_key(text: str) -> UserKey:
    """Return the per-user counter key that :func:`encode_user_key` turned into ``text``."""
    parts = text.split("|")
    if len(parts) != 3:
        raise ValueError(f"malformed user key {text!r}; expected 'event|user_id|day'")
    return unescape(parts[0]), unescape(parts[1]), int(parts[2])


def hour_of(moment: datetime) -> int:
    """Return the hour bucket (hours since the epoch, UTC) that an aware datetime falls in."""
    return int((moment - EPOCH) // timedelta(hours=1))


def day_of(day: date) -> int:
    """Return the day bucket (days since the epoch) of a calendar date."""
    return (day - EPOCH_DATE).days


def hour_start(hour: int) -> datetime:
    """Return the aware UTC datetime at which hour bucket ``hour`` starts."""
    return EPOCH + timedelta(hours=hour)
