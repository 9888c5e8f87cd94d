from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from analytics_sdk import api
from analytics_sdk.backends import CounterStore, Sink
from analytics_sdk.testing import ManualClock

from .utils import SINKS, STORES, unique_name


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[CounterStore]:
    factory: Callable[[str, Callable[[], float]], CounterStore] = request.param
    backend = factory(unique_name("store"), clock.time)
    yield backend
    backend.close()


@pytest.fixture(params=SINKS)
def sink(request: pytest.FixtureRequest, clock: ManualClock) -> Iterator[Sink]:
    factory: Callable[[str, Callable[[], float]], Sink] = request.param
    backend = factory(unique_name("sink"), clock.time)
    yield backend
    backend.close()


@pytest.fixture(autouse=True)
def _isolated_global_client() -> Iterator[None]:
    """Each test starts without a global client and leaves none behind."""
    previous = api.set_client(None)
    yield
    leftover = api.set_client(previous)
    if leftover is not None and leftover is not previous:
        leftover.shutdown(timeout=5)
