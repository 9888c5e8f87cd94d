"""Faults switched on by the test: failures, hangs, lost replies.

:class:`Faults` wraps chosen methods of any backend (memory, Redis, PostgreSQL), so every
call it lets through does the real work; ``FaultyStore`` and ``FaultySink`` are memory
backends with switches that stay on (an outage) until the test turns them off.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from analytics_sdk.backends import Batch, CounterStore, MemoryCounterStore, MemorySink, Push, Sink
from analytics_sdk.errors import SinkError, StoreError

BLOCK_LIMIT = 30.0
"""Seconds a blocked call waits for its release before failing the test (never a hang)."""


class FaultyStore(MemoryCounterStore):
    """A memory store whose pushes can fail, hang, or succeed with the reply lost."""

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.down = False
        self.lose_reply = 0
        self.gate = threading.Event()
        self.gate.set()
        self.push_attempts: list[float] = []
        self.clock_for_attempts = kwargs.get("clock")

    def push(self, push: Push) -> bool:
        if self.clock_for_attempts is not None:
            self.push_attempts.append(self.clock_for_attempts())
        self.gate.wait()
        if self.down:
            raise StoreError("store is down (injected)")
        applied = super().push(push)
        if self.lose_reply:
            self.lose_reply -= 1
            raise StoreError("connection dropped after the push was applied (injected)")
        return applied


class FaultySink(MemorySink):
    """A memory sink whose applies can fail before or after the commit."""

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.down = False
        self.fail_after_commit = 0

    def apply(self, batch: Batch) -> bool:
        if self.down:
            raise SinkError("sink is down (injected)")
        applied = super().apply(batch)
        if self.fail_after_commit:
            self.fail_after_commit -= 1
            raise SinkError("connection dropped after commit (injected)")
        return applied


def _default_error(target: object, method: str, call: int) -> Exception:
    kind = SinkError if isinstance(target, Sink) else StoreError
    return kind(f"{method} call {call} failed (injected)")


@attrs.define
class Blocked:
    """A call held at its start until ``release`` is set (``entered`` tells it arrived)."""

    entered: threading.Event = attrs.field(factory=threading.Event)
    release: threading.Event = attrs.field(factory=threading.Event)


@attrs.define
class _Rule:
    nth: int
    times: int
    when: Callable[..., bool] | None
    error: Exception | None = None
    after: bool = False
    blocked: Blocked | None = None
    then: Callable[[], object] | None = None
    seen: int = 0

    def fires(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if self.when is not None and not self.when(*args, **kwargs):
            return False
        self.seen += 1
        return self.nth <= self.seen < self.nth + self.times


class Faults:
    """Faults in chosen calls of any object's methods (a real Redis or PostgreSQL backend
    too): the Nth call of a method fails before or after doing its work, waits on an event,
    or runs an action after it returns. Every other call does the real work.

    ``nth`` counts the calls made after the fault was set up (1: the next one); ``when``
    narrows which calls are counted, e.g. ``when=lambda what, *a: what == "claim"``
    on ``RedisCounterStore._call``.
    """

    def __init__(self, target: object) -> None:
        self.target = target
        self.calls: Counter[str] = Counter()
        self._rules: dict[str, list[_Rule]] = {}
        self._lock = threading.Lock()
        if isinstance(target, (CounterStore, Sink)):  # their methods are counted from the start
            for name in dir(type(target)):
                if not name.startswith("_") and callable(getattr(target, name)):
                    self._wrap(name)

    def fail(
        self,
        method: str,
        nth: int = 1,
        *,
        times: int = 1,
        after: bool = False,
        error: Exception | None = None,
        when: Callable[..., bool] | None = None,
    ) -> None:
        """Make calls ``nth`` .. ``nth + times - 1`` raise; with ``after=True`` the call does
        its work first (a reply lost after the backend committed)."""
        self._add(method, _Rule(nth, times, when, error=error, after=after))

    def block(
        self, method: str, nth: int = 1, *, when: Callable[..., bool] | None = None
    ) -> Blocked:
        """Hold call ``nth`` at its start until the returned ``release`` is set."""
        blocked = Blocked()
        self._add(method, _Rule(nth, 1, when, blocked=blocked))
        return blocked

    def then(
        self,
        method: str,
        action: Callable[[], object],
        nth: int = 1,
        *,
        when: Callable[..., bool] | None = None,
    ) -> None:
        """Run ``action`` right after call ``nth`` returns (a clock tick, a racing flush)."""
        self._add(method, _Rule(nth, 1, when, then=action))

    def _add(self, method: str, rule: _Rule) -> None:
        if method not in self._rules:
            self._wrap(method)
        self._rules[method].append(rule)

    def release_all(self) -> None:
        """Release every blocked call (a test's cleanup, so no thread is left waiting)."""
        for rules in self._rules.values():
            for rule in rules:
                if rule.blocked is not None:
                    rule.blocked.release.set()

    def _wrap(self, method: str) -> None:
        real = getattr(self.target, method)
        rules = self._rules[method] = []

        def faulty(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[method] += 1
                call = self.calls[method]
                fired = [rule for rule in rules if rule.fires(args, kwargs)]
            for rule in fired:
                if rule.blocked is not None:
                    rule.blocked.entered.set()
                    if not rule.blocked.release.wait(BLOCK_LIMIT):
                        raise AssertionError(f"{method} call {call} was never released")
                if rule.after is False and rule.then is None and rule.blocked is None:
                    raise rule.error or _default_error(self.target, method, call)
            result = real(*args, **kwargs)
            for rule in fired:
                if rule.after:
                    raise rule.error or _default_error(self.target, method, call)
                if rule.then is not None:
                    rule.then()
            return result

        setattr(self.target, method, faulty)
