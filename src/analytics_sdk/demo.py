"""The demo: a simulated application tracking one compressed day, then a report.

``analytics-sdk-exact demo`` runs it on the embedded memory store and sink; the report compares
what the simulated users did (counted by the simulation itself) with what the SDK counted.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from typing import TextIO

from . import __version__, api
from .charts import bar
from .client import Analytics
from .clock import Clock
from .scope import context

__all__ = ["DemoClock", "DemoEvent", "demo"]


class DemoEvent(str, Enum):
    """The events of the simulated application."""

    PAGE_VIEW = "page_view"
    SIGNUP = "signup"
    FEATURE_USED = "feature_used"


PATHS = ("/", "/pricing", "/docs", "/dashboard", "/settings", "/blog/launch")
PLANS = ("free", "free", "free", "pro", "team")


class DemoClock(Clock):
    """Real monotonic time for the scheduler; event time runs through one day in the run."""

    def __init__(self, day: date, seconds: float) -> None:
        self._start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()
        self._speed = 86_400.0 / seconds
        self._t0 = time.monotonic()

    def time(self) -> float:
        return self._start + min(time.monotonic() - self._t0, 86_399.0 / self._speed) * self._speed


def _activity(hour: float) -> float:
    """Share of simulated visits that happen at this hour of the day: a daily curve."""
    return 0.15 + 0.85 * max(0.0, 1 - abs(hour - 14.5) / 10.5)


class PaymentDeclined(Exception):
    """A simulated failure inside a feature."""


def _simulate(
    worker: int,
    users: int,
    clock: DemoClock,
    stop: threading.Event,
    truth: Counter[str],
    truth_lock: threading.Lock,
) -> None:
    rng = random.Random(worker)

    @api.track_feature("export")
    def export(rows: int) -> int:
        return rows * 2

    @api.track_feature("checkout")
    def checkout(amount: int) -> int:
        if rng.random() < 0.1:
            raise PaymentDeclined(amount)
        return amount

    local: Counter[str] = Counter()
    while not stop.is_set():
        hour = (clock.time() % 86_400) / 3600
        if rng.random() > _activity(hour):
            stop.wait(0.0001)  # quiet hours: fewer visits per simulated minute
            continue
        # A few heavy users and a long tail, as in real products.
        user = f"user-{min(int(rng.paretovariate(1.5)) - 1, users - 1):03d}"
        plan = PLANS[hash(user) % len(PLANS)]
        with context(user_id=user, properties={"plan": plan}):
            for _ in range(rng.randint(1, 4)):
                api.track(DemoEvent.PAGE_VIEW, properties={"path": rng.choice(PATHS)})
                local["page_view"] += 1
            roll = rng.random()
            if roll < 0.2:
                export(10)
                local["feature_used"] += 1
            elif roll < 0.3:
                try:
                    checkout(42)
                except PaymentDeclined:
                    pass
                local["feature_used"] += 1
            elif roll < 0.32:
                api.track(DemoEvent.SIGNUP)
                local["signup"] += 1
    with truth_lock:
        truth.update(local)


def _progress(out: TextIO, seconds: float, total: Callable[[], int], stop: threading.Event) -> None:
    started = time.monotonic()
    tty = out.isatty()
    next_line = 0.0
    while not stop.wait(0.1 if tty else 0.25):
        elapsed = time.monotonic() - started
        share = min(1.0, elapsed / seconds)
        bar = "#" * int(share * 30)
        line = f"simulating [{bar:<30}] {share:4.0%}  {total():>12,} events pushed to the store"
        if tty:
            out.write("\r" + line)
            out.flush()
        elif elapsed >= next_line:
            out.write(line + "\n")
            next_line += max(1.0, seconds / 4)
    if tty:
        out.write("\r" + " " * 80 + "\r")


def track_rate(calls: int = 200_000) -> float:
    """Calls per second of ``track()`` alone on one thread, on a client of its own (the
    demo's own rate includes the simulated users' work and quiet hours)."""
    probe = Analytics(store="memory://", sink="memory://", background=False)
    track = probe.track
    started = time.perf_counter()
    for _ in range(calls):
        track("page_view")
    elapsed = time.perf_counter() - started
    probe.shutdown()
    return calls / elapsed


def demo(
    seconds: float,
    threads: int,
    users: int,
    out: TextIO,
    err: TextIO,
    *,
    dashboard: tuple[str, int] | None = None,
) -> int:
    """Simulate an application for ``seconds``, flush, and print a report; return 0.

    With ``dashboard`` (an address), then serve the dashboard on the demo's data until
    SIGINT or SIGTERM."""
    day = datetime.now(timezone.utc).date() - timedelta(days=1)
    clock = DemoClock(day, seconds)
    client = api.configure(
        store="memory://", sink="memory://", clock=clock, flush_interval=max(0.5, seconds / 4)
    )
    truth: Counter[str] = Counter()
    truth_lock = threading.Lock()
    stop, done = threading.Event(), threading.Event()
    out.write(
        f"analytics_sdk {__version__} demo: {threads} threads, {users} users, {seconds:g} s "
        f"of wall time = one simulated day ({day.isoformat()} UTC), memory:// store and sink\n"
    )
    workers = [
        threading.Thread(target=_simulate, args=(i, users, clock, stop, truth, truth_lock))
        for i in range(threads)
    ]

    def tracked_so_far() -> int:
        return client.scheduler.stats.counts_pushed

    progress = threading.Thread(target=_progress, args=(err, seconds, tracked_so_far, done))
    started = time.perf_counter()
    progress.start()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    done.set()
    progress.join()
    result = client.flush(timeout=30)
    _report(client, day, truth, elapsed, result.complete, out)
    rate = track_rate()
    out.write(
        f"  track() alone   {rate:>12,.0f} calls/s on one thread ({1e6 / rate:.2f} µs per call; "
        f"the rate above is the simulated application's, {threads} threads sharing the GIL "
        f"with its users' work and quiet hours)\n"
    )
    if dashboard is None:
        out.write(
            "\nThese counts live in this process's memory and end with it. To browse the same "
            "run in a web dashboard:\n"
            f"  analytics-sdk-exact demo --seconds {seconds:g} --threads {threads} "
            f"--users {users} --dashboard\n"
            "(or, on your own data: analytics-sdk-exact dashboard --sink postgresql://host/db)\n"
        )
    else:
        from .dashboard import serve_until_stopped

        serve_until_stopped(client, dashboard, out=out)
    api.shutdown()
    return 0


def _report(
    client: Analytics, day: date, truth: Counter[str], elapsed: float, flushed: bool, out: TextIO
) -> None:
    w = out.write
    events = ["page_view", "feature_used", "signup"]
    totals = {e: client.count(e, day=day) for e in events}
    w(f"\nDaily totals, {day.isoformat()} (UTC)\n")
    for e in events:
        w(f"  {e:<14}{totals[e]:>12,}\n")
    for feature in ("export", "checkout"):
        ok = client.count("feature_used", day=day, properties={"feature": feature, "outcome": "ok"})
        bad = client.count(
            "feature_used", day=day, properties={"feature": feature, "outcome": "error"}
        )
        w(f"    {feature:<12}{ok:>12,} ok  {bad:>8,} error\n")

    hourly = client.hourly("page_view", day=day)
    peak = max(hourly.values())
    w("\nHourly page views (UTC)\n")
    for hour, n in hourly.items():
        w(f"  {hour:02d}:00 {bar(n, peak):<41}{n:>10,}\n")

    w("\nTop users by page views\n")
    for rank, (user, n) in enumerate(client.top_users("page_view", day=day, limit=5), 1):
        w(f"  {rank}. {user:<10}{n:>12,}\n")
    w("\nUnique users\n")
    for e in events:
        w(f"  {e:<14}{client.unique_users(e, day, day):>12,}\n")

    tracked = sum(truth.values())
    counted = sum(totals.values())
    verdict = "exact" if truth == Counter({e: totals[e] for e in events}) else "MISMATCH"
    stats = client.stats()
    w("\nPipeline\n")
    w(
        f"  absorbed        {tracked:>12,} events in {elapsed:.2f} s = {tracked / elapsed:,.0f} events/s\n"
    )
    w(f"  tracked/counted {tracked:>12,} / {counted:,} ({verdict})\n")
    w(
        f"  pushes          {stats['pushes_ok']:>12,} ok, {stats['pushes_failed']} failed; "
        f"flushes {stats['flushes_ok']} ok, {stats['flushes_failed']} failed; "
        f"final flush {'complete' if flushed else 'INCOMPLETE'}\n"
    )
