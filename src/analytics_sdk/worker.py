"""The flush worker: a process that flushes the store into the sink and exports metrics.

Application processes push to the store (``flusher=False``); one or more workers claim and
apply. Several workers may run at once: claims are disjoint and the ledger makes a batch
applied twice count once. On SIGTERM or SIGINT a worker flushes a last time within its
deadline, then exits. A worker checks that its store and sink answer before it starts, and
fails with their error otherwise (a supervisor restarts it).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import attrs

from .backends import sink_from_url, store_from_url
from .backends.base import CounterStore, Sink
from .client import Analytics
from .config import Config
from .process import wait_for_stop
from .prometheus import MetricsServer, make_wsgi_app, registry_for

if TYPE_CHECKING:
    from .dashboard import DashboardServer

__all__ = ["Worker"]

logger = logging.getLogger("analytics_sdk.worker")


class Worker:
    """A flusher with ``/metrics`` (pipeline health and fleet totals) and ``/healthz``, and,
    with ``dashboard_addr``, the read-only web dashboard (``dashboard_token`` then required,
    if given)."""

    def __init__(
        self,
        *,
        store: str | CounterStore,
        sink: str | Sink,
        flush_interval: float = 10.0,
        shutdown_timeout: float = 30.0,
        metrics_addr: tuple[str, int] | None = ("127.0.0.1", 9464),
        fleet_cache_seconds: float = 10.0,
        dashboard_addr: tuple[str, int] | None = None,
        dashboard_token: str | None = None,
        **settings: Any,
    ) -> None:
        config = Config.load(
            store=store,
            sink=sink,
            flush_interval=flush_interval,
            shutdown_timeout=shutdown_timeout,
            **settings,
        )
        # Both backends must answer before the worker says it started (or /healthz says ok).
        opened_store, opened_sink = _open_checked(config)
        self.client = Analytics(attrs.evolve(config, store=opened_store, sink=opened_sink))
        self.client.scheduler.on_flush = self._log_flush
        self._now = self.client.config.clock.time  # the clock the flush timestamps use
        self.started = self._now()
        self.stop_requested = threading.Event()
        self.registry = registry_for(self.client, fleet=True, cache_seconds=fleet_cache_seconds)
        self.server: MetricsServer | None = None
        if metrics_addr is not None:
            self.server = MetricsServer(
                make_wsgi_app(self.registry, self.health), metrics_addr[1], metrics_addr[0]
            )
        self.dashboard: DashboardServer | None = None
        if dashboard_addr is not None:
            from .dashboard import DashboardServer

            try:
                self.dashboard = DashboardServer(
                    self.client, dashboard_addr, token=dashboard_token, health=self.health
                )
            except BaseException:
                if self.server is not None:
                    self.server.close()
                self.client.shutdown(timeout=1.0)
                raise

    def _log_flush(self, moved: tuple[int, int], seconds: float) -> None:
        counts, batches = moved
        if batches:
            logger.info(
                "flushed %d counts in %d batches in %.1f ms", counts, batches, seconds * 1000
            )

    def health(self) -> tuple[bool, str]:
        """Healthy while flushes go round: the last success, or the last flush that tried
        every batch (one failing batch is an alert, not a reason to restart), is recent."""
        if self.client.closed:
            return False, "shut down"
        stats = self.client.scheduler.stats
        window = max(3 * self.client.config.flush_interval, 30.0)
        last = max(stats.last_flush_success or 0.0, stats.last_flush_round or 0.0) or self.started
        age = self._now() - last
        if age > window:
            return False, f"no successful flush for {age:.0f} s (failures: {stats.flushes_failed})"
        return True, "ok"

    def request_stop(self) -> None:
        """Ask the worker to stop, from another thread (SIGTERM and SIGINT stop it too)."""
        self.stop_requested.set()

    def run(self) -> int:
        """Run until SIGTERM, SIGINT or :meth:`request_stop`; flush a last time; return the
        exit code."""
        where = f" with metrics on {self.server.url}" if self.server else ""
        if self.dashboard is not None:
            where += f", dashboard on {self.dashboard.url}"

        def started() -> None:  # once a stop signal is heard
            logger.info("worker started: %r%s", self.client, where)

        wait_for_stop(self.stop_requested, started)
        return self.stop()

    def stop(self) -> int:
        """Flush a last time within the shutdown deadline and stop serving; 0 if complete."""
        result = self.client.shutdown()
        if self.server is not None:
            self.server.close()
        if self.dashboard is not None:
            self.dashboard.close()
        if result.complete:
            logger.info("worker stopped after a final flush of %d counts", result.flushed)
            return 0
        if result.timed_out:
            why = f"did not finish within {self.client.config.shutdown_timeout:g} s"
        else:
            why = f"failed: {result.error}"
        logger.error(
            "worker stopped: its final flush %s after flushing %d counts; whatever it did not "
            "move stays in the store for the next flusher",
            why,
            result.flushed,
        )
        return 1


def _open_checked(config: Config) -> tuple[CounterStore, Sink]:
    """Return the config's store and sink, both checked to answer; raise with the cause if
    one does not (closing what was opened)."""
    store = config.store
    sink = config.sink
    opened: list[CounterStore | Sink] = []
    try:
        if isinstance(store, str):
            store = store_from_url(store, config.clock.time)
        opened.append(store)
        if isinstance(sink, str):
            sink = sink_from_url(sink, config.clock.time)
        opened.append(sink)
        store.check()
        sink.check()
    except BaseException:
        for backend in opened:
            backend.close()
        raise
    return store, sink
