"""A real Celery worker (prefork, two processes) on the Redis broker runs 1,000 tasks that
track, fail and retry (some tracking with the task id as dedupe key, the sender's user carried
in the message); after a warm shutdown (SIGTERM) the counts are exact in PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import analytics_sdk
from analytics_sdk import Analytics
from analytics_sdk.backends.postgres import PostgresSink

from .utils import redis_and_postgres, redis_url_or_skip, unique_name

pytestmark = pytest.mark.services

EXAMPLES = Path(__file__).parent.parent / "docs" / "integrations" / "examples"
SDK_ROOT = str(Path(analytics_sdk.__file__).resolve().parent.parent)
TASKS = int(os.environ.get("ANALYTICS_TEST_CELERY_TASKS", "1000"))
NAMES = ("send_invoice", "broken", "flaky", "charge")


def test_task_counts_are_exact_after_a_warm_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("celery")
    broker = redis_url_or_skip()
    prefix = unique_name("celery")
    env_celery = {
        "CELERY_BROKER_URL": broker,
        "CELERY_KEY_PREFIX": f"{prefix}:",
        "CELERY_QUEUE": prefix,
    }
    for name, value in env_celery.items():  # read by the example app this process imports
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "celery_app", raising=False)
    import celery_app

    plan = [NAMES[i % 4] for i in range(TASKS)]
    users = [f"u{i % 5}" for i in range(TASKS)]
    with redis_and_postgres("celery") as (store_url, sink_url):
        path = os.pathsep.join([SDK_ROOT, str(EXAMPLES), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, **env_celery, "PYTHONPATH": path,
               "ANALYTICS_STORE": store_url, "ANALYTICS_SINK": sink_url,
               "ANALYTICS_PUSH_INTERVAL": "3600", "ANALYTICS_FLUSH_INTERVAL": "3600"}  # fmt: skip
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool",
                 "prefork", "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip",
                 "--without-mingle", "--without-heartbeat"],
                cwd=EXAMPLES, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                results = []
                for i, (name, user) in enumerate(zip(plan, users, strict=True)):
                    if name == "charge":  # the user travels in the message, not the arguments
                        with analytics_sdk.context(user_id=user):
                            results.append(celery_app.charge.delay(f"order-{i}"))
                    else:
                        results.append(getattr(celery_app, name).delay(user))
                for name, result in zip(plan, results, strict=True):
                    result.get(timeout=120, propagate=False)
                    assert result.successful() == (name != "broken"), log.read_text()
                # Nothing was pushed yet (push_interval is an hour): every count waits in a
                # worker process's buffer, and only the flush at the process's end saves it.
                reader = Analytics(store=store_url, sink=sink_url, background=False)
                try:
                    assert reader.count("celery_task") == 0
                finally:
                    reader.shutdown()
            finally:
                worker.send_signal(signal.SIGTERM)  # warm shutdown
                code = worker.wait(timeout=60)
        assert code == 0, log.read_text()
        flusher = Analytics(store=store_url, sink=sink_url, background=False)
        try:
            assert flusher.flush().complete
        finally:
            flusher.shutdown()
        client = Analytics(store="memory://", sink=sink_url, background=False)
        try:
            n = {name: plan.count(name) for name in NAMES}
            outcomes = [
                ("celery_app.send_invoice", "success", n["send_invoice"]),
                ("celery_app.broken", "failure", n["broken"]),
                ("celery_app.flaky", "retry", n["flaky"]),
                ("celery_app.flaky", "success", n["flaky"]),
                # two retries of one task id: its retry outcome counts once
                ("celery_app.charge", "retry", n["charge"]),
                ("celery_app.charge", "success", n["charge"]),
            ]
            for task, outcome, count in outcomes:
                props = {"task": task, "outcome": outcome}
                assert client.count("celery_task", properties=props) == count, props
            assert client.count("celery_task") == TASKS + n["flaky"] + n["charge"]
            # three attempts per charge, the charge itself once per task id
            assert client.count("charge_attempt") == 3 * n["charge"]
            assert client.count("order_charged") == n["charge"]
        finally:
            client.shutdown()
        sink = PostgresSink.from_url(sink_url)
        try:
            sent: dict[str, int] = {}
            for name, user in zip(plan, users, strict=True):
                if name in ("send_invoice", "flaky"):
                    sent[user] = sent.get(user, 0) + 1
            assert sink.user_counts("invoice_sent", None, None, None) == sent
            charged: dict[str, int] = {}
            for name, user in zip(plan, users, strict=True):
                if name == "charge":
                    charged[user] = charged.get(user, 0) + 1
            assert sink.user_counts("order_charged", None, None, None) == charged
            attempts = {user: 3 * count for user, count in charged.items()}
            assert sink.user_counts("charge_attempt", None, None, None) == attempts
        finally:
            sink.close()
    import redis

    r = redis.Redis.from_url(broker)
    keys = list(r.scan_iter(match=f"{prefix}:*"))
    if keys:
        r.delete(*keys)
    r.close()
