"""pytest plugin (entry point ``pytest11``): the ``analytics_recorder`` fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import Recorder, recording


@pytest.fixture
def analytics_recorder() -> Iterator[Recorder]:
    """A :class:`~analytics_sdk.testing.Recorder` installed as the global client for the test."""
    with recording() as recorder:
        yield recorder
