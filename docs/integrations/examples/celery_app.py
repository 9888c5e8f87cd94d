"""A Celery app whose tasks track events, with task outcomes counted by task name."""

from __future__ import annotations

import os

from celery import Celery, Task

import analytics_sdk
from analytics_sdk.integrations.celery import instrument

REDIS = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("example", broker=REDIS, backend=REDIS)
keys = {"global_keyprefix": os.environ.get("CELERY_KEY_PREFIX", "")}
app.conf.broker_transport_options = app.conf.result_backend_transport_options = keys
app.conf.task_default_queue = os.environ.get("CELERY_QUEUE", "celery")

# Each worker process gets its client (store and sink from ANALYTICS_STORE and
# ANALYTICS_SINK) and flushes it when it ends; task attempts are counted as celery_task.
instrument(app, task_outcomes=True)


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
