"""The errors a caller may need to handle.

Bad arguments to ``track()`` and the query methods raise the built-in ``ValueError`` or
``TypeError`` in the caller; everything that comes from a backend or from configuration is
one of the classes below.
"""

from __future__ import annotations

import logging

__all__ = [
    "AnalyticsError",
    "BackendError",
    "ConfigurationError",
    "SinkError",
    "StoreError",
]


class AnalyticsError(Exception):
    """Base class of every error analytics_sdk raises on its own behalf."""


class ConfigurationError(AnalyticsError, ValueError):
    """A setting (keyword argument, ``ANALYTICS_*`` variable or URL) is not accepted."""


# Secrets of the configured URLs: a driver's message may quote the connection string, so
# backend errors replace them before anyone sees the text. Short ones would mangle messages.
_SECRETS: set[str] = set()
_MIN_SECRET = 4


def remember_secret(secret: str) -> None:
    """Have every later backend error, and log line of ours or of the drivers, hide ``secret``."""
    if len(secret) >= _MIN_SECRET:
        _SECRETS.add(secret)
        for name in _SCRUBBED_LOGGERS:
            logger = logging.getLogger(name)
            if _SCRUB_FILTER not in logger.filters:
                logger.addFilter(_SCRUB_FILTER)


class _ScrubSecrets(logging.Filter):
    """Replaces remembered secrets in a record's message (e.g. a libpq error that quotes the
    connection string, logged by psycopg_pool while it retries)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if scrub(text) != text:
                record.exc_info, record.exc_text = None, scrub(text)
        return True


_SCRUB_FILTER = _ScrubSecrets()
# a logger's filters see only the records logged on it, not on its children
_SCRUBBED_LOGGERS = ("analytics_sdk", "analytics_sdk.worker", "psycopg.pool", "psycopg")


def scrub(text: str) -> str:
    """Return ``text`` with every remembered secret replaced by ``***``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class BackendError(AnalyticsError):
    """A counter store or sink failed; the counts involved are kept and retried."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub(a) if isinstance(a, str) else a for a in args))


class StoreError(BackendError):
    """The counter store failed."""


class SinkError(BackendError):
    """The sink failed."""
