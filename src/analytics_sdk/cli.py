"""The ``analytics-sdk`` command (also ``python -m analytics_sdk``)."""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from enum import Enum
from typing import Any, TextIO

from . import __version__, api
from .clock import Clock
from .errors import AnalyticsError, BackendError
from .scope import context

__all__ = ["main"]


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


def _bar(value: int, peak: int, width: int = 40) -> str:
    if peak <= 0:
        return ""
    eighths = round(value / peak * width * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; accepted: seconds, e.g. 5"
        ) from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range; accepted: more than 0, at most 3600"
        )
    return value


def _count_arg(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; accepted: {low} to {high}")
        return value

    return parse


def demo(seconds: float, threads: int, users: int, out: TextIO, err: TextIO) -> int:
    """Simulate an application for ``seconds``, flush, and print a report; return 0."""
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
    api.shutdown()
    return 0


def _report(
    client: object, day: date, truth: Counter[str], elapsed: float, flushed: bool, out: TextIO
) -> None:
    from .client import Analytics

    assert isinstance(client, Analytics)
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
        w(f"  {hour:02d}:00 {_bar(n, peak):<41}{n:>10,}\n")

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


def _when(text: str) -> date | datetime:
    """Parse --from/--to: a date (2026-11-01) or an ISO datetime with an offset."""
    try:
        if "T" in text or " " in text:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                raise argparse.ArgumentTypeError(
                    f"{text!r} has no UTC offset; accepted: a date (2026-11-01) or a datetime "
                    "with an offset (2026-11-01T09:00+00:00)"
                )
            return moment
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date; accepted: 2026-11-01 or 2026-11-01T09:00+00:00"
        ) from None


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int]) -> str:
    """Return one block character per value, scaled to the largest."""
    peak = max(values, default=0)
    if peak <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(7, round(v / peak * 7))] for v in values)


def query(args: argparse.Namespace, out: TextIO) -> int:
    """Print the series of an event from the configured sink (and store); return 0."""
    import json as json_module

    from .client import Analytics

    settings: dict[str, Any] = {"background": False, "flusher": False}
    if args.sink:
        settings["sink"] = args.sink
    if args.store:
        settings["store"] = args.store
    with Analytics(**settings) as client:
        series = client.series(
            args.event,
            args.start,
            args.end,
            granularity=args.by,
            tz=args.tz,
            properties=dict(args.property) or None,
        )
    fmt = "%Y-%m-%d %H:%M" if args.by == "hour" else "%Y-%m-%d"
    if args.format == "json":
        rows = [{"period": label.isoformat(), "count": n} for label, n in series]
        out.write(json_module.dumps(rows, indent=2) + "\n")
    elif args.format == "csv":
        out.write("period,count\n")
        for label, n in series:
            out.write(f"{label.isoformat()},{n}\n")
    else:
        counts = [n for _, n in series]
        peak = max(counts, default=0)
        out.write(f"{args.event} by {args.by} ({args.tz})  {sparkline(counts)}\n")
        for label, n in series:
            out.write(f"  {label.strftime(fmt):<16}{n:>12,}  {_bar(n, peak, 30)}\n")
        out.write(f"  {'total':<16}{sum(counts):>12,}\n")
    return 0


def migrate(sink_url: str, out: TextIO) -> int:
    """Apply the sink's schema migrations; return 0."""
    from .backends import sink_from_url
    from .backends.postgres import PostgresSink

    sink = sink_from_url(sink_url, time.time)
    try:
        if not isinstance(sink, PostgresSink):
            out.write(f"{sink!r} has no schema to migrate\n")
            return 0
        applied = sink.migrate()
    finally:
        sink.close()
    if applied:
        out.write(f"applied migrations {', '.join(map(str, applied))} to schema {sink.schema!r}\n")
    else:
        out.write(f"schema {sink.schema!r} is up to date\n")
    return 0


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not host:port; accepted: e.g. 127.0.0.1:9464"
        )
    return host.strip("[]"), int(port)


def worker(args: argparse.Namespace) -> int:
    """Run a flush worker until SIGTERM or SIGINT; return its exit code."""
    import logging

    from .worker import Worker

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    w = Worker(
        store=args.store,
        sink=args.sink,
        flush_interval=args.flush_interval,
        shutdown_timeout=args.shutdown_timeout,
        metrics_addr=None if args.no_metrics else args.metrics_addr,
    )
    return w.run()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``analytics-sdk`` command."""
    parser = argparse.ArgumentParser(
        prog="analytics-sdk", description="Product-analytics counters: demo and operations."
    )
    parser.add_argument("--version", action="version", version=f"analytics-sdk {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("demo", help="simulate an application and print a report")
    run.add_argument("--seconds", type=_positive_seconds, default=5.0, help="wall time (default 5)")
    run.add_argument(
        "--threads", type=_count_arg(1, 64), default=4, help="application threads (default 4)"
    )
    run.add_argument(
        "--users", type=_count_arg(1, 100_000), default=200, help="distinct users (default 200)"
    )

    mig = commands.add_parser("migrate", help="create or upgrade the sink's schema")
    mig.add_argument(
        "--sink", required=True, help="sink URL, e.g. postgresql://host/db?schema=analytics"
    )

    q = commands.add_parser("query", help="print an event's time series")
    q.add_argument("event", help="event name")
    q.add_argument(
        "--from", dest="start", type=_when, required=True, help="first date (or datetime)"
    )
    q.add_argument(
        "--to", dest="end", type=_when, required=True, help="last date (or datetime), included"
    )
    q.add_argument(
        "--by", choices=["hour", "day", "week", "month"], default="day", help="period (default day)"
    )
    q.add_argument("--tz", default="UTC", help="time zone of the periods (default UTC)")
    q.add_argument(
        "--property",
        type=_property,
        action="append",
        default=[],
        metavar="K=V",
        help="filter; repeatable",
    )
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--sink", help="sink URL (default: ANALYTICS_SINK)")
    q.add_argument(
        "--store", help="store URL, to include pending counts (default: ANALYTICS_STORE)"
    )

    w = commands.add_parser(
        "worker", help="flush the store into the sink, with /metrics and /healthz"
    )
    w.add_argument("--store", required=True, help="counter store URL, e.g. redis://host:6379/0")
    w.add_argument("--sink", required=True, help="sink URL, e.g. postgresql://host/db")
    w.add_argument(
        "--metrics-addr", type=_address, default=("127.0.0.1", 9464), help="default 127.0.0.1:9464"
    )
    w.add_argument("--no-metrics", action="store_true", help="serve no /metrics or /healthz")
    w.add_argument(
        "--flush-interval", type=_positive_seconds, default=10.0, help="seconds (default 10)"
    )
    w.add_argument(
        "--shutdown-timeout", type=_positive_seconds, default=30.0, help="final flush deadline"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo(args.seconds, args.threads, args.users, sys.stdout, sys.stderr)
        if args.command == "migrate":
            return migrate(args.sink, sys.stdout)
        if args.command == "query":
            return query(args, sys.stdout)
        if args.command == "worker":
            return worker(args)
    except (ValueError, TypeError, AnalyticsError) as exc:
        parser.exit(2 if not isinstance(exc, BackendError) else 1, f"analytics-sdk: error: {exc}\n")
    except OSError as exc:  # e.g. the metrics port is taken
        parser.exit(1, f"analytics-sdk: error: {exc}\n")
    raise AssertionError(args.command)  # argparse rejects unknown commands
