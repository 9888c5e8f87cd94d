"""A Celery app whose tasks track events, with task outcomes counted by task name (once per
task id), the sender's user carried into tasks, and a retried charge counted once."""

from __future__ import annotations

import os

from celery import Celery, Task

import analytics_sdk
from analytics_sdk.integrations.celery import instrument, task_dedupe_key

REDIS = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("example", broker=REDIS, backend=REDIS)
keys = {"global_keyprefix": os.environ.get("CELERY_KEY_PREFIX", "")}
app.conf.broker_transport_options = app.conf.result_backend_transport_options = keys
app.conf.task_default_queue = os.environ.get("CELERY_QUEUE", "celery")

# Each worker process gets its client (store and sink from ANALYTICS_STORE and
# ANALYTICS_SINK) and flushes it when it ends; task outcomes are counted as celery_task, each
# once per task id; the sender's context() (its user) is open while the task runs.
instrument(app, task_outcomes=True, dedupe_outcomes=True)


@app.task
def send_invoice(user_id: str) -> None:
    analytics_sdk.track("invoice_sent", user_id=user_id)


@app.task
def broken(user_id: str) -> None:
    raise ValueError(f"no account for {user_id}")


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def flaky(self: Task, user_id: str) -> None:
    if self.request.retries == 0:
        raise self.retry()  # counted as a retry, then a success
    analytics_sdk.track("invoice_sent", user_id=user_id)


@app.task(bind=True, max_retries=2, default_retry_delay=0)
def charge(self: Task, order_id: str) -> None:
    # Sent inside `with analytics_sdk.context(user_id=...)`: the user comes with the task.
    analytics_sdk.track("charge_attempt")  # every attempt
    # The task id survives retries and redeliveries: the charge counts once.
    analytics_sdk.track("order_charged", dedupe_key=task_dedupe_key(self.request.id, "charged"))
    if self.request.retries < 2:
        raise self.retry()
