"""``track_feature(name)``: a decorator (sync or async) and a context manager (``with`` or
``async with``) that records ``feature_used`` with ``{"feature": name, "outcome": ...}``.

The outcome is ``"ok"``, or ``"error"`` when an exception leaves the call (it still
propagates). The duration is measured with ``time.perf_counter`` and handed to the client.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from .events import validate_event_name
from .keys import Properties

__all__ = ["FEATURE_EVENT", "FeatureRecorder", "FeatureTracker", "feature_name"]

FEATURE_EVENT = "feature_used"
P = ParamSpec("P")
R = TypeVar("R")


NO_NAME: Any = object()
"""The default of ``track_feature(name)``: called with nothing, it says how to write it."""


def no_name_given() -> TypeError:
    """The error of ``@track_feature()``: empty parentheses name no feature."""
    return TypeError(
        'track_feature() needs a feature name: write @track_feature("name"), or a bare '
        "@track_feature without parentheses to take the function's name"
    )


def feature_name(func: Callable[..., Any]) -> str:
    """The feature name of a bare ``@track_feature``: the function's ``__name__``."""
    name = getattr(func, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        raise TypeError(
            f"track_feature needs a feature name for {func!r}: write "
            f'@track_feature("name") (a bare @track_feature takes the function\'s name)'
        )
    return name


class FeatureRecorder(Protocol):
    """What a tracker records into: a client (this module never imports one)."""

    def _record_feature(
        self, name: str, outcome: Properties, ok: bool, duration: float
    ) -> None: ...


class FeatureTracker:
    """Records one feature's use; see :func:`analytics_sdk.track_feature`."""

    __slots__ = ("_client", "_outcomes", "_starts", "name")

    def __init__(self, name: str, client: Callable[[], FeatureRecorder]) -> None:
        """``client`` returns the client to record into at each call (the global one may
        change)."""
        if callable(name) and not isinstance(name, str):
            raise TypeError(
                f"track_feature got the function {name!r} where a name belongs: write "
                f'@track_feature("name"), or a bare @track_feature to use the function\'s name'
            )
        self.name = validate_event_name(name)
        self._client = client
        self._outcomes: dict[bool, Properties] = {
            ok: (("feature", self.name), ("outcome", "ok" if ok else "error"))
            for ok in (True, False)
        }
        # A stack per context, so one tracker may be entered by several threads or tasks.
        self._starts: ContextVar[tuple[float, ...]] = ContextVar("feature_starts", default=())

    def __repr__(self) -> str:
        return f"track_feature({self.name!r})"

    def _record(self, ok: bool, started: float) -> None:
        duration = time.perf_counter() - started
        self._client()._record_feature(self.name, self._outcomes[ok], ok, duration)

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Wrap ``func`` (sync or async), keeping its signature, to record each call."""
        if inspect.iscoroutinefunction(func):
            coroutine = cast(Callable[..., Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    result = await coroutine(*args, **kwargs)
                except BaseException:
                    self._record(False, started)
                    raise
                self._record(True, started)
                return result

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException:
                self._record(False, started)
                raise
            self._record(True, started)
            return result

        return wrapper

    def __enter__(self) -> FeatureTracker:
        self._starts.set((*self._starts.get(), time.perf_counter()))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        *rest, started = self._starts.get()
        self._starts.set(tuple(rest))
        self._record(exc_type is None, started)

    async def __aenter__(self) -> FeatureTracker:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
