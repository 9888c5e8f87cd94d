"""analytics_sdk: product-analytics counters with exact, exactly-once delivery.

``track()`` aggregates in process; the scheduler pushes to a counter store and flushes the
store into a sink exactly once; queries merge all three tiers.
"""

from __future__ import annotations

from .api import aflush, ashutdown, configure, flush, get_client, shutdown, track, track_feature
from .client import Analytics
from .config import Config
from .errors import AnalyticsError, BackendError, ConfigurationError, SinkError, StoreError
from .scheduler import FlushResult
from .scope import context

__all__ = [
    "Analytics",
    "AnalyticsError",
    "BackendError",
    "Config",
    "ConfigurationError",
    "FlushResult",
    "SinkError",
    "StoreError",
    "__version__",
    "aflush",
    "ashutdown",
    "configure",
    "context",
    "flush",
    "get_client",
    "shutdown",
    "track",
    "track_feature",
]

__version__ = "0.1.0"
