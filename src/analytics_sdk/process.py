"""Process life: every client's counts survive interpreter exit, ``fork()`` and
multiprocessing children.

Clients register here when they are created. At exit each one runs ``shutdown()``; around a
``fork()`` the parent keeps its buffer and the child starts empty with fresh locks and
threads. This module knows clients only through the small :class:`Lifecycle` protocol, so it
imports nothing of the pipeline.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import Protocol

__all__ = ["Lifecycle", "exiting", "register"]

logger = logging.getLogger("analytics_sdk")


class Lifecycle(Protocol):
    """What this module calls on a client."""

    def shutdown(self, timeout: float | None = None) -> object: ...
    def _before_fork(self) -> None: ...
    def _after_fork_in_parent(self) -> None: ...
    def _after_fork_in_child(self) -> None: ...


_CLIENTS: weakref.WeakSet[Lifecycle] = weakref.WeakSet()
_exiting = False


def register(client: Lifecycle) -> None:
    """Flush ``client`` at exit and carry it across forks (kept after its ``shutdown()`` too:
    the exit hook flushes counts tracked later)."""
    _CLIENTS.add(client)


def exiting() -> bool:
    """Whether the exit flush has begun: from then on, start no thread (Python 3.12 and later
    refuse to start one at interpreter shutdown)."""
    return _exiting


def _shutdown_all() -> None:
    for client in list(_CLIENTS):  # closed ones too: late counts may wait in buffer or store
        try:
            client.shutdown()
        except Exception:  # at exit, one client's failure must not stop the others
            logger.exception("analytics shutdown at exit failed")


def _at_exit() -> None:
    global _exiting
    _exiting = True
    _shutdown_all()


_forking: list[Lifecycle] = []


def _before_fork() -> None:
    _forking[:] = list(_CLIENTS)
    for client in _forking:
        client._before_fork()


def _after_fork_in_parent() -> None:
    for client in _forking:
        client._after_fork_in_parent()
    _forking.clear()


def _after_fork_in_child() -> None:
    for client in _forking:
        client._after_fork_in_child()
    _forking.clear()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
