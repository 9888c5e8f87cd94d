"""Process life: every client's counts survive interpreter exit, ``fork()`` and
multiprocessing children.

Clients register here when they are created. At exit each one runs ``shutdown()``; around a
``fork()`` the parent keeps its buffer and the child starts empty with fresh locks and
threads. A multiprocessing child leaves through ``os._exit()``, which skips ``atexit``: there
the same flush runs from multiprocessing's own exit hook (a ``Finalize`` with an exit
priority, run before ``os._exit()``), and a child terminated with SIGTERM (``terminate()``,
leaving a ``with Pool()`` block) flushes before it dies of that signal. This module knows
clients only through the small :class:`Lifecycle` protocol, so it imports nothing of the
pipeline.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Protocol

__all__ = ["Lifecycle", "exiting", "register", "wait_for_stop"]

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
    _hook_multiprocessing()
    if _armed_pid != os.getpid() and _in_multiprocessing_child():
        _arm_child_exit()  # created after the child's start-up hooks ran


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


# -- commands that run until stopped ------------------------------------------------------------

STOP_POLL = 0.2
"""Seconds between two looks at whether a stop signal arrived (a command's stop latency)."""


def wait_for_stop(stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
    """Block the main thread until ``stop`` is set (by another thread) or SIGTERM or SIGINT
    arrives; call ``ready`` once the handlers are in place (then a stop signal is heard).

    The handlers only set a flag. A handler runs in the main thread between two bytecodes,
    possibly while that thread holds ``stop``'s internal lock inside ``stop.wait()``: one
    that called ``stop.set()`` would wait for that lock forever (a worker that SIGTERM left
    hanging instead of flushing)."""
    signalled = [False]

    def handler(signum: int, frame: FrameType | None) -> None:
        signalled[0] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready()
        while not signalled[0] and not stop.wait(STOP_POLL):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- multiprocessing children ------------------------------------------------------------------

# Finalizers run in this order at a child's end, highest first: the flush before the
# process's own resources (queues, managers) are finalized; dying of SIGTERM after them all.
_FLUSH_PRIORITY = 100
_LAST_PRIORITY = -(2**31)
_armed_pid: int | None = None
_terminated = False


class _Hook:
    """The object multiprocessing keeps (weakly) for our after-fork hook."""


_HOOK = _Hook()
_hooked = False


def _hook_multiprocessing() -> None:
    """Have every multiprocessing child (fork, spawn, forkserver) arm its exit flush when it
    starts; nothing is imported if the application does not use multiprocessing."""
    global _hooked
    if _hooked or "multiprocessing.util" not in sys.modules:
        return
    from multiprocessing import util

    # Run by a child's start-up after it has cleared the finalizers it inherited.
    util.register_after_fork(_HOOK, lambda _: _arm_child_exit())
    _hooked = True


def _in_multiprocessing_child() -> bool:
    process = sys.modules.get("multiprocessing.process")
    if process is None:
        return False
    # A spawned child imports the application before its start-up, while it "inherits";
    # and its start-up runs no after-fork hooks, nor clears the finalizers armed meanwhile.
    inheriting = getattr(process.current_process(), "_inheriting", False)
    return process.parent_process() is not None or bool(inheriting)


def _arm_child_exit() -> None:
    """Flush every client when this multiprocessing child ends, however it leaves."""
    global _armed_pid, _terminated
    from multiprocessing import util

    _armed_pid, _terminated = os.getpid(), False
    util.Finalize(None, _flush_child, exitpriority=_FLUSH_PRIORITY)
    util.Finalize(None, _die_if_terminated, exitpriority=_LAST_PRIORITY)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) in (signal.SIG_DFL, _on_sigterm, _defer_sigterm):  # never replace the app's own
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM in a multiprocessing child: leave through its normal end, whose exit hooks
    flush, instead of dying with the buffer; then die of the signal all the same."""
    global _terminated
    util = sys.modules.get("multiprocessing.util")
    if util is not None and getattr(util, "_exiting", False):
        _terminated = True  # already on its way out: the exit hooks flush, then it dies
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    if not _CLIENTS:
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _terminated = True
    raise SystemExit(128 + signum)


def _flush_child() -> None:
    """The child's exit flush. A SIGTERM meanwhile (``terminate()`` racing a worker's normal
    end) waits until the flush is done, which ``shutdown_timeout`` bounds."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(
        signal.SIGTERM
    ) in (signal.SIG_DFL, _on_sigterm):
        signal.signal(signal.SIGTERM, _defer_sigterm)
    _shutdown_all()


def _defer_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminated
    _terminated = True


def _die_if_terminated() -> None:
    if _terminated:  # keep the exit status of a terminated process (-SIGTERM)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


# -- fork --------------------------------------------------------------------------------------

_forking: list[Lifecycle] = []


def _before_fork() -> None:
    _hook_multiprocessing()
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
_hook_multiprocessing()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
