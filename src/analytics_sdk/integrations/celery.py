"""Celery: ``instrument(celery_app)`` gives each worker process its own client and flushes it
when the process ends; carries the caller's ``context()`` into its tasks; optionally counts
task outcomes by task name, once per task id with ``dedupe_outcomes``.

The context (user id and properties) of the code that sends a task travels in the message's
``analytics_context`` header (``before_task_publish``) and is opened around the task in the
worker (``task_prerun`` / ``task_postrun``), so ``track()`` inside the task gets the user.

A prefork child ends through ``os._exit()``, which skips exit hooks, so the flush runs from
``worker_process_shutdown`` (and ``worker_shutdown`` for the solo and thread pools).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import api
from ..scope import context, current_scope

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["CONTEXT_HEADER", "TASK_EVENT", "instrument", "task_dedupe_key"]

log = logging.getLogger("analytics_sdk.integrations")

TASK_EVENT = "celery_task"
"""The event counted per finished task attempt: properties ``task`` and ``outcome``
(``success``, ``failure`` or ``retry``)."""
CONTEXT_HEADER = "analytics_context"
"""The message header carrying the sender's context: ``{"user_id": ..., "properties": ...}``."""


def task_dedupe_key(task_id: str, what: str = "") -> str:
    """Return a ``dedupe_key`` for ``track()`` calls of one task (retries and redeliveries
    keep the id): ``celery:<task id>[:<what>]``."""
    return f"celery:{task_id}:{what}" if what else f"celery:{task_id}"


def _sent_context() -> dict[str, Any] | None:
    scope = current_scope()
    if scope is None or (scope.user_id is None and not scope.properties):
        return None
    return {"user_id": scope.user_id, "properties": dict(scope.properties)}


def _received_context(task: Any) -> dict[str, Any] | None:
    request = getattr(task, "request", None)
    value = getattr(request, CONTEXT_HEADER, None)
    if value is None:  # some Celery versions keep custom headers apart
        headers = getattr(request, "headers", None) or {}
        value = headers.get(CONTEXT_HEADER) if isinstance(headers, dict) else None
    return value if isinstance(value, dict) else None


def instrument(
    celery_app: Celery,
    *,
    settings: Mapping[str, Any] | None = None,
    task_outcomes: bool = False,
    dedupe_outcomes: bool = False,
    propagate_context: bool = True,
) -> None:
    """Set up a client in each worker process (``configure(**settings)`` when given, else the
    inherited or environment-configured global client), flush it at the process's end, carry
    the sender's ``context()`` into tasks (``propagate_context``), and with ``task_outcomes``
    count each task attempt by name and outcome; with ``dedupe_outcomes`` too, each outcome
    counts once per task id (a retried or redelivered task's success counts once, its
    retries once), using the task id as ``dedupe_key``."""
    from celery import signals

    for name, flag in (
        ("task_outcomes", task_outcomes),
        ("dedupe_outcomes", dedupe_outcomes),
        ("propagate_context", propagate_context),
    ):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}={flag!r} is not accepted; accepted: True or False")
    opened: dict[str, Any] = {}  # task id -> the context() opened around it

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
            key = None
            task_id = getattr(getattr(task, "request", None), "id", None)
            if dedupe_outcomes and isinstance(task_id, str):
                key = task_dedupe_key(task_id, f"outcome:{name}")
            api.track(TASK_EVENT, properties={"task": task.name, "outcome": name}, dedupe_key=key)
        except Exception:
            log.exception("counting the task outcome failed")

    def publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is None:
            return
        try:
            sent = _sent_context()
        except Exception:
            log.exception("reading the analytics context to send failed")
            return
        if sent is not None:
            headers[CONTEXT_HEADER] = sent

    def prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task_id is None or not ours(task):
            return
        received = _received_context(task)
        if received is None:
            return
        try:
            scope = context(user_id=received.get("user_id"), properties=received.get("properties"))
            scope.__enter__()
        except Exception:
            log.exception("opening the analytics context of task %s failed", task_id)
            return
        opened[task_id] = scope

    def postrun(task_id: str | None = None, **_: Any) -> None:
        scope = opened.pop(task_id, None) if task_id is not None else None
        if scope is not None:
            try:
                scope.__exit__(None, None, None)
            except Exception:  # closed in another context: nothing left to undo
                log.debug("closing the analytics context of task %s failed", task_id)

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
    if propagate_context:
        signals.before_task_publish.connect(publish, weak=False)
        signals.task_prerun.connect(prerun, weak=False)
        signals.task_postrun.connect(postrun, weak=False)
    if task_outcomes:
        signals.task_success.connect(success, weak=False)
        signals.task_failure.connect(failure, weak=False)
        signals.task_retry.connect(retry, weak=False)
