"""Hot-path cost of track(), next to prometheus_client and the OpenTelemetry SDK, same run.

Prints the median ns per call over several repeats for each case and the ratios. Run:

    python benchmarks/bench_track.py [--number 200000] [--repeat 7]

Targets (DESIGN.md): track("x") <= 1 us, not slower than prometheus_client's
Counter.labels("x").inc(), and >= 5x faster than OpenTelemetry's Counter.add(1, {...}).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import timeit
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, Counter

import analytics_sdk as analytics


def median_ns(func: Callable[[], object], number: int, repeat: int) -> float:
    """Return the median over ``repeat`` runs of the mean ns per call of ``func``."""
    runs = timeit.repeat(func, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per repeat")
    parser.add_argument("--repeat", type=int, default=7, help="repeats (median taken)")
    args = parser.parse_args()

    # The SDK as an application runs it: default memory backends, scheduler thread on.
    analytics.configure()
    track = analytics.track

    @analytics.track_feature("export")
    def export() -> None:
        pass

    registry = CollectorRegistry()
    prom = Counter("bench_events_total", "Events.", ["event"], registry=registry)
    reader = InMemoryMetricReader()
    otel = MeterProvider(metric_readers=[reader]).get_meter("bench").create_counter("events")
    attributes = {"event": "x"}
    props = {"plan": "pro", "path": "/home"}
    groups = {"account": "acme"}

    cases: dict[str, Callable[[], object]] = {
        'track("x")': lambda: track("x"),
        'track("x", user_id, 2 properties)': lambda: track("x", user_id="u1", properties=props),
        'track("x", user_id, groups={"account": ...})': lambda: track(
            "x", user_id="u1", groups=groups
        ),
        "@track_feature call": export,
        'prometheus_client labels("x").inc()': lambda: prom.labels("x").inc(),
        'OpenTelemetry Counter.add(1, {"event": "x"})': lambda: otel.add(1, attributes),
    }
    # Calling through a lambda adds the same small cost to every case; measure and subtract it.
    baseline = median_ns(lambda: None, args.number, args.repeat)
    results = {name: median_ns(f, args.number, args.repeat) - baseline for name, f in cases.items()}

    print(
        f"python {platform.python_version()} on {platform.machine()}, {args.repeat} repeats x {args.number:,} calls, median ns/call"
    )
    for name, ns in results.items():
        print(f"  {name:<50}{ns:>9.0f} ns")
    ours = results['track("x")']
    prom_ns = results['prometheus_client labels("x").inc()']
    otel_ns = results['OpenTelemetry Counter.add(1, {"event": "x"})']
    print("ratios")
    print(f'  prometheus_client / track("x")   {prom_ns / ours:5.2f}x  (target >= 1)')
    print(f'  OpenTelemetry / track("x")       {otel_ns / ours:5.2f}x  (target >= 5)')
    print(f'  track("x") <= 1000 ns             {"yes" if ours <= 1000 else "NO"}')
    analytics.shutdown()


if __name__ == "__main__":
    main()
