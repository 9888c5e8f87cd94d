"""Backends with faults switched on by the test: failures, hangs, lost replies.

They wrap the real memory backends, so every call that does go through does the real work.
"""

from __future__ import annotations

import threading

from analytics_sdk.backends import Batch, MemoryCounterStore, MemorySink, Push
from analytics_sdk.errors import SinkError, StoreError


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
