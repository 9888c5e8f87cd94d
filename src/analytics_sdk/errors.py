"""The errors a caller may need to handle.

Bad arguments to ``track()`` and the query methods raise the built-in ``ValueError`` or
``TypeError`` in the caller; everything that comes from a backend or from configuration is
one of the classes below.
"""

from __future__ import annotations

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


class BackendError(AnalyticsError):
    """A counter store or sink failed; the counts involved are kept and retried."""


class StoreError(BackendError):
    """The counter store failed."""


class SinkError(BackendError):
    """The sink failed."""
