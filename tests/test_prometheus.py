"""Prometheus export: collectors, exposition, promtool, the worker, and a real Prometheus."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import analytics_sdk as analytics
from analytics_sdk import Analytics, ConfigurationError
from analytics_sdk.backends import MemoryCounterStore, MemorySink
from analytics_sdk.prometheus import FleetCollector, make_asgi_app, make_wsgi_app, registry_for
from analytics_sdk.query import QueryEngine
from analytics_sdk.testing import ManualClock
from analytics_sdk.worker import Worker

from .faults import Faults
from .servers import _wait_for, cluster_port, prometheus_server
from .utils import redis_and_postgres, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        skip_or_fail("promtool is not installed (Debian package 'prometheus')")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=60)


# -- collectors ------------------------------------------------------------------------------


def test_nothing_touches_the_global_registry() -> None:
    with Analytics(background=False, metrics_port=0) as client:
        client.track("x")
        client.flush()
        registry_for(client, fleet=True)
    names = [
        n for n in prometheus_client.REGISTRY._names_to_collectors if n.startswith("analytics")
    ]
    assert names == []


def test_registering_never_queries_a_backend() -> None:
    class Exploding(MemoryCounterStore):
        def pending_event_totals(self):  # type: ignore[no-untyped-def]
            raise AssertionError("queried at registration")

    with Analytics(store=Exploding(), background=False) as client:
        registry = prometheus_client.CollectorRegistry(auto_describe=True)
        registry.register(FleetCollector(client._query))  # describe() only


def test_process_counters_features_and_health() -> None:
    with Analytics(background=False, prometheus_labels=["plan"]) as client:
        client.track("signup", user_id="u1", properties={"plan": "pro", "path": "/a"}, value=3)
        client.track("signup", properties={"plan": "free"})
        client.track("page_view")

        @client.track_feature("export")
        def export(fail: bool) -> None:
            if fail:
                raise ValueError("export failed")

        export(False)
        with pytest.raises(ValueError, match="export failed"):
            export(True)
        client.flush()
        s = samples(generate_latest(registry_for(client)).decode())
    assert s["analytics_events_total", (("event", "signup"), ("plan", "pro"))] == 3
    assert s["analytics_events_total", (("event", "signup"), ("plan", "free"))] == 1
    assert s["analytics_events_total", (("event", "page_view"), ("plan", ""))] == 1
    assert not any("user_id" in dict(labels) or "path" in dict(labels) for _, labels in s)
    assert s["analytics_feature_calls_total", (("feature", "export"), ("outcome", "ok"))] == 1
    assert s["analytics_feature_calls_total", (("feature", "export"), ("outcome", "error"))] == 1
    assert s["analytics_feature_duration_seconds_count", (("feature", "export"),)] == 2
    assert s["analytics_pushes_total", (("result", "ok"),)] == 1
    assert s["analytics_flushes_total", (("result", "ok"),)] == 1
    assert s["analytics_flushed_events_total", ()] == 7
    assert s["analytics_last_flush_success_timestamp_seconds", ()] > 0


def test_failures_show_in_health_metrics() -> None:
    from analytics_sdk.testing import ManualClock

    from .faults import FaultyStore

    store = FaultyStore()
    store.down = True
    clock = ManualClock()
    with Analytics(store=store, clock=clock, background=False, max_buffered_keys=2) as client:
        # e2 finds the buffer full: its push fails, the outbox keeps e0 and e1, the buffer
        # takes e2 and e3; with both full, e4 and e5 are dropped.
        for n in range(6):
            client.track(f"e{n}")
        client.flush()
        s = samples(generate_latest(registry_for(client)).decode())
        store.down = False
    assert s["analytics_pushes_total", (("result", "error"),)] == 2
    assert s["analytics_retries_total", (("operation", "push"),)] == 2
    assert s["analytics_dropped_events_total", (("reason", "buffer_full"),)] == 2
    assert s["analytics_buffer_capacity_series", ()] == 2


def test_user_id_can_never_become_a_label() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"prometheus_labels=\('user_id',\) is not accepted \(entry 'user_id'\)",
    ):
        Analytics(background=False, prometheus_labels=["user_id"])


def test_fleet_totals_are_exact_cached_and_monotonic() -> None:
    store, sink = MemoryCounterStore(), MemorySink()
    now = [0.0]
    with Analytics(store=store, sink=sink, background=False) as app:
        fleet = FleetCollector(
            QueryEngine(app.aggregator, store, sink), cache_seconds=10, clock=lambda: now[0]
        )
        app.track("x", value=5)
        app.flush()
        app.track("x", value=2)
        app.scheduler.push()  # pending in the store
        assert (
            samples(generate_latest(_registry(fleet)).decode())[
                "analytics_fleet_events_total", (("event", "x"),)
            ]
            == 7
        )
        app.track("x")
        app.scheduler.push()
        assert fleet.refreshes == 1
        generate_latest(_registry(fleet))
        assert fleet.refreshes == 1  # cached
        now[0] = 11
        text = generate_latest(_registry(fleet)).decode()
        assert fleet.refreshes == 2
        assert samples(text)["analytics_fleet_events_total", (("event", "x"),)] == 8
        store.claim()  # a lagging read (here: the claim hidden) must not lower the total
        fleet._totals["x"] = 9
        now[0] = 30
        assert (
            samples(generate_latest(_registry(fleet)).decode())[
                "analytics_fleet_events_total", (("event", "x"),)
            ]
            == 9
        )


def _registry(collector: FleetCollector) -> prometheus_client.CollectorRegistry:
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# -- exposition ------------------------------------------------------------------------------


def test_configure_metrics_port_serves_metrics_and_health_on_loopback() -> None:
    client = analytics.configure(metrics_port=0, background=False)
    server = client.metrics_server
    assert server is not None
    assert server.addr == "127.0.0.1"
    analytics.track("x")
    analytics.flush()
    status, text = get(f"{server.url}/metrics")
    assert status == 200
    assert samples(text)["analytics_events_total", (("event", "x"),)] == 1
    assert get(f"{server.url}/healthz") == (200, "ok\n")
    assert get(f"{server.url}/nope")[0] == 404
    assert promtool("check", "metrics", stdin=text).returncode == 0
    analytics.shutdown()
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(f"{server.url}/metrics", timeout=2)


def test_wsgi_and_asgi_apps() -> None:
    import asyncio
    from wsgiref.util import setup_testing_defaults

    with Analytics(background=False) as client:
        client.track("x")
        client.flush()
        registry = registry_for(client)
        environ: dict = {}  # type: ignore[type-arg]
        setup_testing_defaults(environ)
        environ["PATH_INFO"] = "/metrics"
        statuses = []
        body = b"".join(
            make_wsgi_app(registry)(environ, lambda status, headers: statuses.append(status))
        )
        assert statuses == ["200 OK"]
        assert b"analytics_events_total" in body

        sent: list[dict] = []  # type: ignore[type-arg]

        async def call(path: str) -> None:
            async def receive() -> dict:  # type: ignore[type-arg]
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict) -> None:  # type: ignore[type-arg]
                sent.append(message)

            scope = {
                "type": "http",
                "path": path,
                "method": "GET",
                "headers": [],
                "query_string": b"",
            }
            await make_asgi_app(registry, lambda: (False, "degraded"))(scope, receive, send)

        asyncio.run(call("/healthz"))
        assert sent[0]["status"] == 503
        assert sent[1]["body"] == b"degraded\n"
        sent.clear()
        asyncio.run(call("/metrics"))
        assert sent[0]["status"] == 200
        assert b"analytics_flushes_total" in b"".join(m.get("body", b"") for m in sent)


def test_alert_rules_pass_promtool() -> None:
    done = promtool("check", "rules", str(ROOT / "ops/prometheus/alerts.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_scrape_config_example_passes_promtool() -> None:
    done = promtool("check", "config", "--syntax-only", str(ROOT / "ops/prometheus/prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_grafana_dashboard_is_valid_json_with_both_sources() -> None:
    dashboard = json.loads((ROOT / "ops/grafana/analytics-dashboard.json").read_text())
    sources = {p["datasource"]["type"] for p in dashboard["panels"]}
    assert sources == {"prometheus", "grafana-postgresql-datasource"}


# -- the worker ------------------------------------------------------------------------------


@pytest.fixture
def backends() -> Iterator[tuple[str, str]]:
    with redis_and_postgres("worker", shards=1) as pair:
        yield pair


class WorkerProcess:
    def __init__(self, store_url: str, sink_url: str, flush_interval: float) -> None:
        self.port = cluster_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "analytics_sdk",
                "worker",
                "--store",
                store_url,
                "--sink",
                sink_url,
                "--metrics-addr",
                f"127.0.0.1:{self.port}",
                "--flush-interval",
                str(flush_interval),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        _wait_for(lambda: self._healthy(), "the worker did not become healthy", timeout=60)

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"worker exited: {self.process.stdout.read() if self.process.stdout else ''}"
            )
        try:
            return get(f"{self.url}/healthz")[0] == 200
        except OSError:
            return False

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = get(f"{self.url}/metrics")
        assert status == 200
        return samples(text)

    def terminate(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        return self.process.returncode, out


def push_counts(store_url: str, event: str, n: int) -> None:
    with Analytics(store=store_url, flusher=False, background=False) as app:
        app.track(event, value=n)
        assert app.flush().complete


def test_a_worker_flushes_on_sigterm_before_it_exits(backends: tuple[str, str]) -> None:
    store_url, sink_url = backends
    worker = WorkerProcess(store_url, sink_url, flush_interval=3600)  # only the final flush
    push_counts(store_url, "signup", 42)
    code, log = worker.terminate()
    assert code == 0, log
    assert "final flush of 42 counts" in log
    from analytics_sdk.backends.postgres import PostgresSink

    sink = PostgresSink.from_url(sink_url)
    assert sink.event_totals() == {"signup": 42}
    sink.close()


def test_the_worker_endpoint_passes_promtool_and_fleet_totals_survive_a_restart(
    backends: tuple[str, str],
) -> None:
    store_url, sink_url = backends
    first = WorkerProcess(store_url, sink_url, flush_interval=0.2)
    push_counts(store_url, "signup", 10)
    _wait_for(
        lambda: first.metrics().get(("analytics_fleet_events_total", (("event", "signup"),))) == 10,
        "fleet total never reached 10",
        timeout=30,
    )
    _, text = get(f"{first.url}/metrics")
    done = promtool("check", "metrics", stdin=text)
    assert done.returncode == 0, done.stdout + done.stderr
    assert first.terminate()[0] == 0
    push_counts(store_url, "signup", 5)  # while no worker runs: pending in the store
    second = WorkerProcess(store_url, sink_url, flush_interval=3600)
    try:
        # The flushed 10 and the pending 5, from the first scrape on (monotonic under racing
        # flushes: test_fleet_totals_never_go_back_when_a_flush_commits_during_a_refresh).
        assert second.metrics()[("analytics_fleet_events_total", (("event", "signup"),))] == 15
    finally:
        assert second.terminate()[0] == 0


def test_a_real_prometheus_scrapes_the_worker_and_an_app(backends: tuple[str, str]) -> None:
    store_url, sink_url = backends
    worker = WorkerProcess(store_url, sink_url, flush_interval=0.3)
    app = Analytics(store=store_url, flusher=False, push_interval=0.2, metrics_port=0)
    try:
        assert app.metrics_server is not None
        for _ in range(7):
            app.track("checkout", properties={"plan": "pro"})
        app.track("signup", value=3)
        targets = {
            "analytics-worker": f"127.0.0.1:{worker.port}",
            "analytics-app": f"127.0.0.1:{app.metrics_server.port}",
        }
        with prometheus_server(targets) as prom:

            def value(query: str) -> float | None:
                url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": query})
                result = json.loads(get(url)[1])["data"]["result"]
                return float(result[0]["value"][1]) if result else None

            _wait_for(
                lambda: value('analytics_fleet_events_total{event="checkout"}') == 7,
                "Prometheus never saw the fleet total",
                timeout=60,
            )
            _wait_for(
                lambda: value('analytics_events_total{job="analytics-app",event="checkout"}') == 7,
                "Prometheus never saw the app's counter",
                timeout=60,
            )
            assert value('analytics_fleet_events_total{event="signup"}') == 3
            assert value('sum(up{job=~"analytics-.*"})') == 2
    finally:
        app.shutdown()
        worker.terminate()


def test_a_taken_metrics_port_fails_clearly_and_leaves_no_thread() -> None:
    import threading

    with Analytics(background=False, metrics_port=0) as first:
        assert first.metrics_server is not None
        before = threading.active_count()
        with pytest.raises(OSError, match="in use"):
            Analytics(metrics_port=first.metrics_server.port)
        assert threading.active_count() == before


def test_apps_default_to_the_global_client() -> None:
    from wsgiref.util import setup_testing_defaults

    analytics.configure(background=False)
    analytics.track("global_event")
    analytics.flush()
    environ: dict = {}  # type: ignore[type-arg]
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/metrics"
    body = b"".join(make_wsgi_app()(environ, lambda status, headers: None))
    assert b'analytics_events_total{event="global_event"} 1.0' in body
    assert callable(make_asgi_app())


# -- health and fleet totals when things fail ------------------------------------------------


def wsgi_get(app: Any, path: str) -> tuple[str, str]:
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    statuses: list[str] = []
    body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
    return statuses[0], body.decode()


def test_worker_health_turns_unhealthy_while_flushes_fail_and_recovers() -> None:
    clock = ManualClock()
    sink = MemorySink(clock=clock.time)
    applies = Faults(sink)
    applies.fail("apply", times=10**6)
    worker = Worker(
        store="memory://",
        sink=sink,
        metrics_addr=None,
        flush_interval=10,
        clock=clock,  # type: ignore[arg-type]
    )
    app = make_wsgi_app(worker.registry, worker.health)
    try:
        worker.client.track("x", value=2)
        assert wsgi_get(app, "/healthz") == ("200 OK", "ok\n")  # new: within its window
        for _ in range(30):
            clock.advance(1)  # flushes at 10 s, then retries: each one fails
        assert wsgi_get(app, "/healthz") == ("200 OK", "ok\n")  # 30 s: still in the window
        clock.advance(1)
        status, reason = wsgi_get(app, "/healthz")
        failures = worker.client.stats()["flushes_failed"]
        assert failures >= 3
        assert (status, reason) == (
            "503 Service Unavailable",
            f"no successful flush for 31 s (failures: {failures})\n",
        )
        applies._rules["apply"].clear()  # the sink is back
        clock.advance(worker.client.scheduler.next_flush - clock.monotonic())
        assert wsgi_get(app, "/healthz") == ("200 OK", "ok\n")
        assert worker.client.count("x") == 2
        assert sum(sink.hourly_counts("x", None, None, ()).values()) == 2
    finally:
        assert worker.stop() == 0
    assert wsgi_get(app, "/healthz") == ("503 Service Unavailable", "shut down\n")


def test_a_worker_whose_final_flush_is_incomplete_exits_with_1(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryCounterStore()
    sink = MemorySink()
    Faults(sink).fail("apply", times=10**6)
    worker = Worker(store=store, sink=sink, metrics_addr=None, background=False)  # type: ignore[arg-type]
    worker.client.track("x", value=3)
    assert worker.stop() == 1
    [error] = [r for r in caplog.records if r.name == "analytics_sdk.worker"]
    assert error.levelname == "ERROR"
    assert "apply call 1 failed (injected)" in error.getMessage()
    assert (
        sum(sum(c.values()) for c in store.pending_hourly("x", None, None, ()).claimed.values())
        == 3
    )
    assert sink.hourly_counts("x", None, None, ()) == {}


def test_an_app_whose_scheduler_thread_stopped_is_unhealthy() -> None:
    from analytics_sdk.prometheus import _client_health

    with Analytics(clock=ManualClock()) as client:
        health = _client_health(client)
        assert health() == (True, "ok")
        assert client.scheduler.stop(timeout=5)
        assert health() == (False, "scheduler thread not running")
    assert health() == (False, "shut down")


def test_fleet_totals_stay_at_their_last_value_while_a_refresh_fails() -> None:
    store, sink = MemoryCounterStore(), MemorySink()
    reads = Faults(store)
    now = [0.0]
    with Analytics(store=store, sink=sink, background=False) as app:
        fleet = FleetCollector(app._query, cache_seconds=10, clock=lambda: now[0])

        def scrape() -> float:
            text = generate_latest(_registry(fleet)).decode()
            return samples(text)["analytics_fleet_events_total", (("event", "x"),)]

        app.track("x", value=7)
        app.flush()
        assert scrape() == 7
        app.track("x")
        app.flush()
        reads.fail("pending_event_totals")
        now[0] = 11
        assert scrape() == 7  # the refresh failed: the last totals, not an error or a gap
        assert (fleet.errors, fleet.refreshes) == (1, 1)
        assert scrape() == 8  # the next scrape tries again at once
        assert (fleet.errors, fleet.refreshes) == (1, 2)


def test_fleet_totals_are_exact_when_a_flush_commits_during_a_refresh(
    backends: tuple[str, str],
) -> None:
    store_url, sink_url = backends
    with Analytics(store=store_url, sink=sink_url, background=False) as app:
        fleet = FleetCollector(app._query, cache_seconds=0)
        app.track("x", value=10)
        assert app.flush().complete
        app.track("x", value=5)
        assert app.scheduler.push() == 5  # pending in Redis
        assert fleet.refresh() == {"x": 15}
        raw: list[dict[str, int]] = []
        query = app._query.fleet_totals
        app._query.fleet_totals = lambda: raw.append(query()) or raw[-1]  # type: ignore[method-assign]
        acks = Faults(app.store)
        acks.fail("ack")
        # Redis is read (5 live), then a flush commits those 5 in PostgreSQL and has not
        # acked them when the sink is read (15): the read notices and reads again.
        acks.then("pending_event_totals", lambda: app.scheduler.flush_now(time.monotonic() + 60))
        retries = app._query.retries
        assert fleet.refresh() == {"x": 15}
        assert raw == [{"x": 15}]  # neither 20 (counted twice) nor 10 (dropped)
        assert (acks.calls["ack"], app._query.retries) == (1, retries + 1)
        assert app.flush().complete
        assert fleet.refresh() == {"x": 15}


def test_fleet_totals_at_the_largest_values_scrape_exactly_from_redis_and_postgres() -> None:
    """Totals past 1e14 (25,000 calls at the maximum value) in the sink and pending in Redis:
    the scrape succeeds and reports the exact integer, not a rounded ``1.07e+14``."""
    from analytics_sdk.events import MAX_VALUE

    with (
        redis_and_postgres("bigmetrics") as (store_url, sink_url),
        Analytics(store=store_url, sink=sink_url, background=False) as client,
    ):
        for _ in range(25_000):
            client.track("big", value=MAX_VALUE)
        assert client.flush(timeout=30).complete  # in the sink
        with Analytics(store=store_url, flusher=False, background=False) as producer:
            for _ in range(25_000):
                producer.track("big", value=MAX_VALUE)
            producer.track("big", value=1)  # odd: a rounded float would show
            assert producer.flush(timeout=30).complete  # pending in the store
        expected = 50_000 * MAX_VALUE + 1
        assert expected > 2 * 10**14
        text = generate_latest(registry_for(client, fleet=True)).decode()
        [value] = [
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "analytics_fleet_events_total" and s.labels["event"] == "big"
        ]
        assert value == expected
        assert client.count("big") == expected
