"""The backend matrix: every contract test runs against each entry.

A backend joins the matrix by adding one ``pytest.param`` to ``STORES`` or ``SINKS``; the
factory receives a unique name the backend uses as its key prefix or schema, so tests never
see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

from analytics_sdk.backends import CounterStore, MemoryCounterStore, MemorySink, Sink

REQUIRE_SERVICES = os.environ.get("ANALYTICS_REQUIRE_SERVICES", "") not in ("", "0")
"""Set by CI: a test that needs a real server fails instead of skipping."""


def skip_or_fail(reason: str) -> None:
    """Skip the test on a machine without the service; fail under ANALYTICS_REQUIRE_SERVICES."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (ANALYTICS_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(reason)


def unique_name(prefix: str = "t") -> str:
    """Return a name no other test uses (a key prefix or schema)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


StoreFactory = Callable[[str, Callable[[], float]], CounterStore]
SinkFactory = Callable[[str, Callable[[], float]], Sink]

STORES = [
    pytest.param(lambda name, clock: MemoryCounterStore(clock=clock), id="store=memory"),
]
SINKS = [
    pytest.param(lambda name, clock: MemorySink(clock=clock), id="sink=memory"),
]
