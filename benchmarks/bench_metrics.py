"""Scrape cost: the time to collect and render /metrics with 1,000 event series.

Prints the median time of ``generate_latest`` for the client's registry with N series of
``analytics_events_total`` (plus the health metrics), next to a prometheus_client Counter
with the same N label values in the same run; and the fleet totals' cost, cached and
refreshed (against the store and sink given, memory by default).

    python benchmarks/bench_metrics.py [--series 1000] [--store URL] [--sink URL]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, generate_latest

from analytics_sdk import Analytics
from analytics_sdk.prometheus import FleetCollector, registry_for


def median_ms(func: Callable[[], object], repeat: int = 21) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--store", default="memory://")
    parser.add_argument("--sink", default="memory://")
    args = parser.parse_args()

    client = Analytics(store=args.store, sink=args.sink, background=False)
    for n in range(args.series):
        client.track(f"event_{n}", value=n + 1)
    client.flush()
    registry = registry_for(client)
    ours = median_ms(lambda: generate_latest(registry))
    text = generate_latest(registry).decode()
    series = sum(1 for line in text.splitlines() if line.startswith("analytics_events_total{"))

    peer_registry = CollectorRegistry()
    peer = Counter("peer_events_total", "Events.", ["event"], registry=peer_registry)
    for n in range(args.series):
        peer.labels(f"event_{n}").inc(n + 1)
    theirs = median_ms(lambda: generate_latest(peer_registry))

    fleet = FleetCollector(client._query, cache_seconds=3600)
    fleet_registry = CollectorRegistry(auto_describe=False)
    fleet_registry.register(fleet)
    refresh = median_ms(fleet.refresh, repeat=7)
    cached = median_ms(lambda: generate_latest(fleet_registry))
    print(f"/metrics with {series:,} analytics_events_total series (+ health metrics)")
    print(f"  analytics_sdk registry, generate_latest     {ours:8.2f} ms median")
    print(f"  prometheus_client Counter, same series      {theirs:8.2f} ms median")
    print(f"  ratio                                       {ours / theirs:8.2f}x")
    print(
        f"fleet totals ({args.store} + {args.sink}): refresh {refresh:.2f} ms, cached scrape {cached:.2f} ms"
    )
    client.shutdown()


if __name__ == "__main__":
    main()
