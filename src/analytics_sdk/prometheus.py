"""Prometheus export: collectors, and ``/metrics`` + ``/healthz`` over WSGI, ASGI or a thread.

Nothing registers on a registry by itself, and nothing touches the global registry: build a
``CollectorRegistry`` with :func:`registry_for`, or register :class:`ClientCollector` and
:class:`FleetCollector` on a registry of your own. ``describe()`` is implemented, so
registering never queries a backend. A scrape reads copies of in-process counters and takes
no lock that the scheduler holds; the fleet totals are cached, so a scrape costs at most one
query of the store and the sink per ``cache_seconds``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry
from prometheus_client import make_asgi_app as _prometheus_asgi_app
from prometheus_client import make_wsgi_app as _prometheus_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .aggregator import OVERFLOW_EVENT
from .current import global_client
from .errors import BackendError
from .query import QueryEngine
from .stats import DURATION_BUCKETS, HistogramSnapshot

if TYPE_CHECKING:
    from .client import Analytics

__all__ = [
    "ClientCollector",
    "FleetCollector",
    "MetricsServer",
    "make_asgi_app",
    "make_wsgi_app",
    "registry_for",
    "start_http_server",
]

Health = Callable[[], tuple[bool, str]]


def _histogram(name: str, documentation: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=labels, unit="")


def _add_histogram(
    family: HistogramMetricFamily, labels: list[str], snap: HistogramSnapshot
) -> None:
    cumulative, buckets = 0, []
    for bound, count in zip((*DURATION_BUCKETS, float("inf")), snap.buckets, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    family.add_metric(labels, buckets, snap.total)


class ClientCollector(Collector):
    """This process's counters and the pipeline's health, for one client."""

    def __init__(self, client: Analytics) -> None:
        self.client = client

    def _families(self) -> dict[str, Any]:  # name -> CounterMetricFamily, Gauge..., Histogram...
        labels = list(self.client.event_totals.labels)
        return {
            "events": CounterMetricFamily(
                "analytics_events",
                "Events tracked in this process (sum of values), counted when the buffer is drained.",
                labels=["event", *labels],
            ),
            "feature_calls": CounterMetricFamily(
                "analytics_feature_calls",
                "Calls of functions and blocks under track_feature.",
                labels=["feature", "outcome"],
            ),
            "feature_duration": _histogram(
                "analytics_feature_duration_seconds",
                "Duration of calls under track_feature.",
                ["feature"],
            ),
            "pushes": CounterMetricFamily(
                "analytics_pushes",
                "Pushes of the buffer to the counter store, by result.",
                labels=["result"],
            ),
            "push_duration": _histogram(
                "analytics_push_duration_seconds", "Duration of pushes to the store.", []
            ),
            "flushes": CounterMetricFamily(
                "analytics_flushes",
                "Flushes of the store into the sink, by result.",
                labels=["result"],
            ),
            "flush_duration": _histogram(
                "analytics_flush_duration_seconds", "Duration of flushes into the sink.", []
            ),
            "retries": CounterMetricFamily(
                "analytics_retries",
                "Failed pushes and flushes, each retried with backoff.",
                labels=["operation"],
            ),
            "pushed": CounterMetricFamily(
                "analytics_pushed_events", "Counts pushed to the counter store."
            ),
            "flushed": CounterMetricFamily(
                "analytics_flushed_events", "Counts this process committed into the sink."
            ),
            "batches": CounterMetricFamily(
                "analytics_flushed_batches", "Batches this process committed into the sink."
            ),
            "dropped": CounterMetricFamily(
                "analytics_dropped_events", "Counts not buffered, by reason.", labels=["reason"]
            ),
            "overflowed": CounterMetricFamily(
                "analytics_overflowed_events",
                "Counts folded into an overflow series: an event's overflow=true series "
                "(property_sets) or the (overflow) event (event_names).",
                labels=["reason"],
            ),
            "evicted": CounterMetricFamily(
                "analytics_store_evicted_keys",
                "Keys the store's server evicted since this process first used it (counts "
                "may be lost: run Redis with maxmemory-policy noeviction); read at each flush.",
            ),
            "spooled": CounterMetricFamily(
                "analytics_spooled_events",
                "Counts written to the local spool because the store could not take them.",
            ),
            "replayed": CounterMetricFamily(
                "analytics_replayed_events",
                "Counts this process replayed from the local spool into the store.",
            ),
            "buffered": GaugeMetricFamily(
                "analytics_buffered_series", "Distinct counters in the buffer now."
            ),
            "capacity": GaugeMetricFamily(
                "analytics_buffer_capacity_series",
                "Distinct counters the buffer holds before dropping.",
            ),
            "last_push": GaugeMetricFamily(
                "analytics_last_push_success_timestamp_seconds",
                "Unix time of the last successful push.",
            ),
            "last_flush": GaugeMetricFamily(
                "analytics_last_flush_success_timestamp_seconds",
                "Unix time of the last successful flush.",
            ),
        }

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        client = self.client
        f = self._families()
        for (event, values), total in client.event_totals.snapshot().items():
            f["events"].add_metric([event, *values], total)
        calls, durations = client.features.snapshot()
        for (feature, outcome), n in calls.items():
            f["feature_calls"].add_metric([feature, outcome], n)
        for feature, snap in durations.items():
            _add_histogram(f["feature_duration"], [feature], snap)
        s = client.scheduler.stats
        f["pushes"].add_metric(["ok"], s.pushes_ok)
        f["pushes"].add_metric(["error"], s.pushes_failed)
        f["flushes"].add_metric(["ok"], s.flushes_ok)
        f["flushes"].add_metric(["error"], s.flushes_failed)
        f["retries"].add_metric(["push"], s.pushes_failed)
        f["retries"].add_metric(["flush"], s.flushes_failed)
        _add_histogram(f["push_duration"], [], s.push_durations.snapshot())
        _add_histogram(f["flush_duration"], [], s.flush_durations.snapshot())
        f["pushed"].add_metric([], s.counts_pushed)
        f["flushed"].add_metric([], s.counts_flushed)
        f["batches"].add_metric([], s.batches_flushed)
        f["dropped"].add_metric(["buffer_full"], client.aggregator.dropped)
        f["overflowed"].add_metric(["property_sets"], client.aggregator.overflowed)
        f["overflowed"].add_metric(["event_names"], client.aggregator.names_overflowed)
        f["evicted"].add_metric([], client.store.evicted_keys)
        f["spooled"].add_metric([], client.scheduler.counts_spooled)
        f["replayed"].add_metric([], client.scheduler.counts_replayed)
        f["buffered"].add_metric([], client.aggregator.buffered_keys)
        f["capacity"].add_metric([], client.config.max_buffered_keys)
        f["last_push"].add_metric([], s.last_push_success or 0.0)
        f["last_flush"].add_metric([], s.last_flush_success or 0.0)
        return list(f.values())


class FleetCollector(Collector):
    """``analytics_fleet_events_total{event}``: every count that reached the store or the
    sink, from all processes and across restarts; monotonic; cached for ``cache_seconds``.

    At most ``max_events`` events get a series of their own (the largest first, and an event
    keeps its series once it has one); the counts of the others are summed under
    ``"(overflow)"``, so a fleet with many event names cannot flood ``/metrics``."""

    def __init__(
        self,
        engine: QueryEngine,
        cache_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = 1_000,
    ) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self.max_events = max_events
        self._clock = clock
        self._lock = threading.Lock()  # one refresh at a time; never held by the scheduler
        self._pid = os.getpid()
        self._totals: dict[str, int] = {}
        self._exported: set[str] = set()  # events with a series of their own
        self._expires = float("-inf")
        self.refreshes = 0
        self.errors = 0

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily(
            "analytics_fleet_events",
            "Events of all processes that reached the store or the sink (all time).",
            labels=["event"],
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def refresh(self) -> dict[str, int]:
        """Query now; each total only grows (a read racing a flush may lag, never drop)."""
        fresh = self.engine.fleet_totals()
        totals = dict(self._totals)
        overflow = 0
        for event, n in sorted(fresh.items(), key=lambda item: -item[1]):
            if event not in self._exported and event != OVERFLOW_EVENT:
                if len(self._exported) >= self.max_events:
                    overflow += n
                    continue
                self._exported.add(event)
            if event == OVERFLOW_EVENT:
                overflow += n
            else:
                totals[event] = max(n, totals.get(event, 0))
        if overflow:
            totals[OVERFLOW_EVENT] = max(overflow, totals.get(OVERFLOW_EVENT, 0))
        self._totals = totals
        self._expires = self._clock() + self.cache_seconds
        self.refreshes += 1
        return totals

    def collect(self) -> Iterable[Metric]:
        if self._pid != os.getpid():
            # A forked child: the parent's refresh may have held the lock at the fork.
            self._lock, self._pid = threading.Lock(), os.getpid()
        if self._clock() >= self._expires and self._lock.acquire(blocking=False):
            try:
                self.refresh()
            except BackendError:
                self.errors += 1  # serve the last known totals; never fail the scrape
            finally:
                self._lock.release()
        family = self._family()
        for event, n in sorted(self._totals.items()):
            family.add_metric([event], n)
        return [family]


def registry_for(
    client: Analytics, *, fleet: bool = False, cache_seconds: float = 10.0
) -> CollectorRegistry:
    """Return a new registry with the client's collector (and the fleet totals if asked)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ClientCollector(client))
    if fleet:
        registry.register(
            FleetCollector(
                client._query,
                cache_seconds=cache_seconds,
                max_events=client.config.max_event_names,
            )
        )
    return registry


def _client_health(client: Analytics) -> Health:
    def health() -> tuple[bool, str]:
        if client.closed:
            return False, "shut down"
        if not client.scheduler.running and client.config.background:
            return False, "scheduler thread not running"
        return True, "ok"

    return health


def _default(
    registry: CollectorRegistry | None, health: Health | None
) -> tuple[CollectorRegistry, Health | None]:
    """The global client's registry and health, when no registry is given."""
    if registry is not None:
        return registry, health
    client = global_client()
    return registry_for(client), health or _client_health(client)


def make_wsgi_app(
    registry: CollectorRegistry | None = None, health: Health | None = None
) -> Callable[..., Any]:
    """Return a WSGI app serving ``/metrics`` and ``/healthz`` (default: the global client)."""
    registry, health = _default(registry, health)
    metrics = _prometheus_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            ok, reason = health() if health else (True, "ok")
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [reason.encode() + b"\n"]
        if path in ("/metrics", "/"):
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    return app


def make_asgi_app(
    registry: CollectorRegistry | None = None, health: Health | None = None
) -> Callable[..., Any]:
    """Return an ASGI app serving ``/metrics`` and ``/healthz`` (default: the global client)."""
    registry, health = _default(registry, health)
    metrics = _prometheus_asgi_app(registry)

    async def app(
        scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope.get("type") == "http" and scope.get("path") == "/healthz":
            ok, reason = health() if health else (True, "ok")
            await send(
                {
                    "type": "http.response.start",
                    "status": 200 if ok else 503,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": reason.encode() + b"\n"})
            return
        await metrics(scope, receive, send)

    return app


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class MetricsServer:
    """A ``/metrics`` and ``/healthz`` HTTP server on a daemon thread."""

    def __init__(self, app: Callable[..., Any], port: int, addr: str = "127.0.0.1") -> None:
        try:
            self._server = make_server(
                addr, port, app, _ThreadingServer, handler_class=_QuietHandler
            )
        except OSError as exc:  # the bare errno text names no address
            where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
            raise OSError(
                exc.errno, f"cannot serve /metrics on {where}: {exc.strerror or exc}"
            ) from exc
        self._pid = os.getpid()  # the process whose thread serves
        host, self.port = self._server.server_address[:2]
        self.addr = host.decode() if isinstance(host, bytes) else host
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="analytics-sdk-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://addr:port``."""
        return f"http://{self.addr}:{self.port}"

    def close(self) -> None:
        """Stop serving; in a forked child, only let go of the inherited socket (the serving
        thread, and the port, belong to the parent: waiting for that thread would hang)."""
        if self._pid == os.getpid():
            self._server.shutdown()
        self._server.server_close()


def start_http_server(
    port: int,
    addr: str = "127.0.0.1",
    *,
    client: Analytics | None = None,
    registry: CollectorRegistry | None = None,
    health: Health | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` (loopback unless told otherwise).

    Exports ``registry``, or else a registry for ``client`` (default: the global client).
    Port 0 picks a free port; read it from the returned server's ``port``.
    """
    if registry is None and client is not None:
        registry, health = registry_for(client), health or _client_health(client)
    return MetricsServer(make_wsgi_app(registry, health), port, addr)
