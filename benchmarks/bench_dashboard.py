"""The dashboard's page loads, measured in a real browser, on the query benchmark's data set.

Generates the data set of ``bench_queries.py`` inside PostgreSQL (90 days x 20 events x 200
property sets by hour, and 30 days x 100,000 users a day for ``event_0``; ``--small`` for a
quick run; ``--keep SCHEMA`` to reuse or keep it), serves the dashboard on it with the
clock on the data's last day, and loads each page in headless chromium (Playwright,
``/usr/bin/chromium``). Prints, per page, the median and slowest load (navigation start to
the load event, from the browser's Navigation Timing), and, as the peer measured in the same
run, the median time of the same query calls made directly in Python (no HTTP, no HTML).

    python benchmarks/bench_dashboard.py [--url postgresql://postgres@127.0.0.1:5432/test]
        [--small] [--repeat 15] [--keep SCHEMA]

Target (issue 14): a page load under 300 ms on the full data set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).parent))
import bench_queries

from analytics_sdk import Analytics
from analytics_sdk.dashboard import DashboardServer
from analytics_sdk.testing import ManualClock

TARGET_MS = 300.0
CHROMIUM = "/usr/bin/chromium"


def load_ms(page: Any, url: str) -> float:
    """Load ``url``; return navigation start to the end of the load event, in ms."""
    response = page.goto(url)
    if response is None or response.status != 200:
        raise RuntimeError(f"{url}: {response and response.status}")
    timing = page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return n.loadEventEnd - n.startTime; }"
    )
    return float(timing)


def direct_ms(run: Callable[[], Any], repeat: int) -> float:
    run()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def report(label: str, loads: list[float], queries: float) -> None:
    median = statistics.median(loads)
    verdict = "ok" if median < TARGET_MS else "MISSED"
    print(f"{label:<66} {median:>6.0f}ms {max(loads):>6.0f}ms {queries:>6.0f}ms {verdict:>8}")


def event_page(
    api: Any, event: str, window: str, first: date, last: date, day: date
) -> Callable[[], Any]:
    """The queries an event page makes, called directly: its series, its top users of a
    day, its distinct users over the range's days and its active users (by day on an
    hourly page)."""
    daily = window.replace("granularity=hour", "granularity=day")
    calls = [
        ("series", f"event={event}{window}"),
        ("top_users", f"event={event}&day={day}"),
        ("unique_users", f"event={event}&from={first}&to={last}"),
        ("active_users", f"event={event}{daily}"),
    ]
    return lambda: [api.call(name, query) for name, query in calls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--small", action="store_true", help="a quick run on a small data set")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--keep", metavar="SCHEMA", help="reuse (or keep) this schema's data")
    args = parser.parse_args()
    sizes = (14, 5, 50, 7, 10_000) if args.small else (90, 20, 200, 30, 100_000)
    for name, value in zip(("days", "events", "sets", "user_days", "users"), sizes, strict=True):
        setattr(args, name, value)

    from playwright.sync_api import sync_playwright

    schema = args.keep or f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regnamespace(%s)", [f'"{schema}"']).fetchone()
    if args.keep and exists and exists[0] is not None:
        print(f"reusing schema {schema}")
    else:
        seconds = bench_queries.generate(args.url, schema, args)
        print(
            f"generated {args.days} days x 24 h x {args.events} events x {args.sets} property "
            f"sets, and {args.user_days} days x {args.users:,} users, in {seconds:.0f} s"
        )
    last = bench_queries.FIRST_DAY + timedelta(days=args.days - 1)
    user_last = bench_queries.FIRST_DAY + timedelta(days=args.user_days - 1)
    try:
        clock = ManualClock(datetime(last.year, last.month, last.day, 12, tzinfo=timezone.utc))
        sink = f"{args.url}?schema={schema}"
        with (
            Analytics(sink=sink, clock=clock, background=False, flusher=False) as client,
            DashboardServer(client, ("127.0.0.1", 0)) as server,
            sync_playwright() as p,
        ):
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            api = server.api
            pages: list[tuple[str, str, Callable[[], Any]]] = [
                (
                    f"overview: {args.events} events x 30 days, features, health",
                    "",
                    lambda: (api.call("overview", ""), api.call("health", "")),
                ),
                (
                    "event_1 by day, 30 days (with top and distinct users)",
                    "event?event=event_1",
                    event_page(api, "event_1", "", last - timedelta(days=29), last, last),
                ),
                (
                    "event_1 by hour, 7 days, America/New_York",
                    f"event?event=event_1&granularity=hour&from={last - timedelta(days=6)}"
                    "&tz=America/New_York",
                    event_page(
                        api,
                        "event_1",
                        f"&granularity=hour&from={last - timedelta(days=6)}&tz=America/New_York",
                        last - timedelta(days=6),
                        last,
                        last,
                    ),
                ),
                (
                    f"event_0, top users of a day of {args.users:,} users",
                    f"event?event=event_0&from={user_last - timedelta(days=29)}&to={user_last}",
                    event_page(
                        api,
                        "event_0",
                        f"&from={user_last - timedelta(days=29)}&to={user_last}",
                        user_last - timedelta(days=29),
                        user_last,
                        user_last,
                    ),
                ),
            ]
            print(
                f"\nmedian and slowest of {args.repeat} loads in headless chromium "
                "(navigation start to load event); peer: the same queries called directly\n"
            )
            print(f"{'page':<66} {'median':>8} {'max':>8} {'queries':>8} {'target':>8}")
            for label, path, direct in pages:
                for cached in (True, False) if path == "" else (True,):
                    # The overview reuses the list of event names for 30 s: measured with
                    # it and, as on a first load, with the fleet totals read each time.
                    api.names_cache_seconds = 30.0 if cached else 0.0
                    name = label if cached else "overview, event names not cached"
                    load_ms(page, server.url + path)  # warm-up
                    loads = [load_ms(page, server.url + path) for _ in range(args.repeat)]
                    queries = direct_ms(direct, args.repeat)
                    report(name, loads, queries)
            browser.close()
    finally:
        if not args.keep:
            with psycopg.connect(args.url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
