"""Per-request cost of the ASGI middleware, next to the bare app and OpenTelemetry's ASGI
instrumentation, same run.

Each case runs the same minimal ASGI app (one route, a 200 with a small body) through a
prepared scope, in one event loop, without a server or sockets, so the figures are the
middleware's own cost. Prints the median µs per request and the overhead over the bare app.

    python benchmarks/bench_middleware.py [--number 20000] [--repeat 7]

Target (issue 12): the page-view middleware costs less per request than OpenTelemetry's ASGI
instrumentation with its SDK configured.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import analytics_sdk as analytics
from analytics_sdk.integrations.asgi import AnalyticsMiddleware


class Discard(SpanExporter):
    """Ends every span's journey at the exporter: no memory growth across repeats."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Route:
    path = "/items/{item_id}"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["route"] = Route  # what Starlette's router leaves on a match
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def user(scope: dict[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-user":
            return value.decode()
    return None


def make_scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "method": "GET",
        "path": "/items/42",
        "raw_path": b"/items/42",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"bench"), (b"x-user", b"u1")],
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, Any]) -> None:
    pass


def per_request_us(asgi: Callable[..., Any], number: int, repeat: int) -> float:
    """Median over ``repeat`` runs of the mean µs per request through ``asgi``."""

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(number):
            await asgi(make_scope(), receive, send)
        return time.perf_counter() - start

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())  # warm up
        runs = [loop.run_until_complete(run()) for _ in range(repeat)]
    finally:
        loop.close()
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="requests per repeat")
    parser.add_argument("--repeat", type=int, default=7, help="repeats (median taken)")
    args = parser.parse_args()

    # The SDK as an application runs it: default memory backends, scheduler thread on.
    analytics.configure()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Discard()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])

    cases: dict[str, Callable[..., Any]] = {
        "bare app": app,
        "AnalyticsMiddleware, nothing asked": AnalyticsMiddleware(app),
        "AnalyticsMiddleware(resolve=...)": AnalyticsMiddleware(app, resolve=user),
        "AnalyticsMiddleware(resolve=..., page_views=True)": AnalyticsMiddleware(
            app, resolve=user, page_views=True
        ),
        "OpenTelemetryMiddleware, API only (no SDK)": OpenTelemetryMiddleware(app),
        "OpenTelemetryMiddleware, SDK (spans exported, metrics)": OpenTelemetryMiddleware(
            app, tracer_provider=tracer_provider, meter_provider=meter_provider
        ),
    }
    print(f"Python {platform.python_version()} on {platform.machine()}, "
          f"{args.number} requests x {args.repeat} repeats, median µs per request")  # fmt: skip
    bare = None
    for name, asgi in cases.items():
        us = per_request_us(asgi, args.number, args.repeat)
        bare = us if bare is None else bare
        print(f"  {name:<58} {us:8.2f} µs   overhead {us - bare:+7.2f} µs")
    analytics.shutdown()


if __name__ == "__main__":
    main()
