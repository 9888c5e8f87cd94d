"""Celery: ``instrument(celery_app)`` gives each worker process its own client and flushes it
when the process ends; optionally counts task outcomes by task name.

A prefork child ends through ``os._exit()``, which skips exit hooks, so the flush runs from
``worker_process_shutdown`` (and ``worker_shutdown`` for the solo and thread pools).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import api

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["TASK_EVENT", "instrument"]

log = logging.getLogger("analytics_sdk.integrations")

TASK_EVENT = "celery_task"
"""The event counted per finished task attempt: properties ``task`` and ``outcome``
(``success``, ``failure`` or ``retry``)."""


def instrument(
    celery_app: Celery,
    *,
    settings: Mapping[str, Any] | None = None,
    task_outcomes: bool = False,
) -> None:
    """Set up a client in each worker process (``configure(**settings)`` when given, else the
    inherited or environment-configured global client), flush it at the process's end, and
    with ``task_outcomes`` count each task attempt by name and outcome."""
    from celery import signals

    def ours(sender: Any) -> bool:
        return getattr(sender, "app", None) is celery_app

    def process_init(**_: Any) -> None:
        if settings is not None:
            api.configure(**settings)
        else:
            api.get_client()  # forked: the parent's client, started empty in this process

    def process_end(**_: Any) -> None:
        try:
            api.shutdown()
        except Exception:
            log.exception("the analytics shutdown at worker exit failed")

    def outcome(task: Any, name: str) -> None:
        try:
            api.track(TASK_EVENT, properties={"task": task.name, "outcome": name})
        except Exception:
            log.exception("counting the task outcome failed")

    def success(sender: Any = None, **_: Any) -> None:
        if ours(sender):
            outcome(sender, "success")

    def failure(sender: Any = None, **_: Any) -> None:
        if ours(sender):
            outcome(sender, "failure")

    def retry(sender: Any = None, **_: Any) -> None:
        if ours(sender):
            outcome(sender, "retry")

    # weak=False: these closures have no other reference and must live as long as the app.
    signals.worker_process_init.connect(process_init, weak=False)
    signals.worker_process_shutdown.connect(process_end, weak=False)
    signals.worker_shutdown.connect(process_end, weak=False)
    if task_outcomes:
        signals.task_success.connect(success, weak=False)
        signals.task_failure.connect(failure, weak=False)
        signals.task_retry.connect(retry, weak=False)
