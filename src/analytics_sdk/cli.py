"""The ``analytics-sdk-exact`` command (alias ``analytics-sdk``; also ``python -m analytics_sdk``)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .backends.base import CounterStore, Sink
from .charts import bar, sparkline
from .errors import AnalyticsError, BackendError, ConfigurationError
from .query import MAX_RETENTION_PERIODS, MAX_VALUES

if TYPE_CHECKING:
    from .client import Analytics

__all__ = ["main"]

# the distribution's name on PyPI (the import name is analytics_sdk); also the command's name
PROG = "analytics-sdk-exact"
DASHBOARD_ADDR = ("127.0.0.1", 8050)


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


def _group(text: str) -> tuple[str, str]:
    group_type, sep, group_id = text.partition("=")
    if not sep or not group_type or not group_id:
        raise argparse.ArgumentTypeError(f"{text!r} is not TYPE=ID (e.g. account=acme)")
    return group_type, group_id


def _url(given: str | None, variable: str, option: str) -> str:
    """Return the URL given on the command line, else the environment's, else fail."""
    url = given or os.environ.get(variable)
    if not url:
        raise ConfigurationError(
            f"no URL given; accepted: {option} URL, or the {variable} variable"
        )
    return url


def _readable_sink(url: str) -> Sink:
    """Return the sink at ``url`` after checking, changing nothing, that it can be read."""
    from .backends import MemorySink, sink_from_url

    sink = sink_from_url(url, time.time)
    if isinstance(sink, MemorySink):
        raise ConfigurationError(
            f"sink {url!r} lives inside the process that tracked the counts and is empty here; "
            "accepted: the URL of the sink your application or worker flushes into, "
            "e.g. postgresql://host/db"
        )
    try:
        sink.check_readable()
    except BaseException:
        sink.close()
        raise
    return sink


def _readable_store(url: str) -> CounterStore:
    """Return the store at ``url`` after checking, changing nothing, that it can be read."""
    from .backends import store_from_url

    store = store_from_url(url, time.time)
    try:
        store.check_readable()
    except BaseException:
        store.close()
        raise
    return store


@contextmanager
def _reader(args: argparse.Namespace) -> Iterator[Analytics]:
    """Yield a client that reads the sink of ``--sink`` and the store of ``--store`` (both
    checked to be readable first, writing nothing), and neither pushes nor flushes."""
    from .client import Analytics

    sink = _readable_sink(_url(args.sink, "ANALYTICS_SINK", "--sink"))
    try:
        store = _readable_store(args.store or os.environ.get("ANALYTICS_STORE") or "memory://")
    except BaseException:
        sink.close()
        raise
    with Analytics(store=store, sink=sink, background=False, flusher=False) as client:
        yield client


def query(args: argparse.Namespace, out: TextIO) -> int:
    """Print the series of an event, or its breakdown by a property, from the configured
    sink (and store); return 0."""
    from .events import validate_property_key
    from .query import GRANULARITIES, periods, resolve_tz

    granularity, by = args.granularity, args.by
    if granularity is None:
        # --by hour|day|week|month is the older spelling of --granularity.
        granularity, by = (by, None) if by in GRANULARITIES else ("day", by)
    if args.limit is not None and by is None:
        raise ValueError(f"--limit {args.limit} is not accepted without --by PROPERTY")
    if by is not None:
        validate_property_key(by, "--by")
    tz = resolve_tz(args.tz)
    end = args.end
    if granularity == "hour" and not isinstance(end, datetime):
        # --to is included: a date stands for its last hour too.
        end = datetime(end.year, end.month, end.day, 23, tzinfo=tz)
    spans = periods(args.start, end, granularity, tz)
    next(spans)  # a bad range fails before any connection
    properties = dict(args.property) or None
    with _reader(args) as client:
        if by is None:
            series = client.series(
                args.event,
                args.start,
                end,
                granularity=granularity,
                tz=args.tz,
                properties=properties,
            )
        else:
            breakdown = client.breakdown(
                args.event,
                by,
                args.start,
                end,
                granularity=granularity,
                tz=args.tz,
                properties=properties,
                limit=10 if args.limit is None else args.limit,
            )
    fmt = "%Y-%m-%d %H:%M" if granularity == "hour" else "%Y-%m-%d"
    if by is not None:
        _print_breakdown(args, granularity, by, breakdown, fmt, out)
    elif args.format == "json":
        rows = [{"period": label.isoformat(), "count": n} for label, n in series]
        out.write(json.dumps(rows, indent=2) + "\n")
    elif args.format == "csv":
        out.write("period,count\n")
        for label, n in series:
            out.write(f"{label.isoformat()},{n}\n")
    else:
        counts = [n for _, n in series]
        peak = max(counts, default=0)
        out.write(f"{args.event} by {granularity} ({args.tz})  {sparkline(counts)}\n")
        for label, n in series:
            out.write(f"  {label.strftime(fmt):<16}{n:>12,}  {bar(n, peak, 30)}\n")
        out.write(f"  {'total':<16}{sum(counts):>12,}\n")
    return 0


def active(args: argparse.Namespace, out: TextIO) -> int:
    """Print the active users of each period (of some events, or of any); return 0."""
    from .query import day_periods, resolve_tz

    day_periods(args.start, args.end, args.granularity, resolve_tz(args.tz))  # fail early
    events = args.event or None
    with _reader(args) as client:
        series = client.active_users(
            args.start,
            args.end,
            granularity=args.granularity,
            tz=args.tz,
            events=events,
            group=args.group,
        )
    if args.format == "json":
        rows = [{"period": label.isoformat(), "active_users": n} for label, n in series]
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if args.format == "csv":
        out.write("period,active_users\n")
        for label, n in series:
            out.write(f"{label.isoformat()},{n}\n")
        return 0
    counts = [n for _, n in series]
    peak = max(counts, default=0)
    which = ", ".join(args.event) if args.event else "any event"
    if args.group is not None:
        which += f", {args.group[0]} {args.group[1]}"
    out.write(f"active users by {args.granularity} ({args.tz}, {which})  {sparkline(counts)}\n")
    for label, n in series:
        out.write(f"  {label.strftime('%Y-%m-%d'):<16}{n:>12,}  {bar(n, peak, 30)}\n")
    return 0


def retention(args: argparse.Namespace, out: TextIO) -> int:
    """Print first-time retention: each cohort's size and the share of it that came back in
    each following period; return 0."""
    from .query import day_periods, resolve_tz

    day_periods(args.start, args.end, args.period, resolve_tz(args.tz), name="--period")
    with _reader(args) as client:
        cohorts = client.retention(
            args.start,
            args.end,
            cohort_event=args.cohort_event,
            return_event=args.return_event,
            period=args.period,
            periods=args.periods,
            tz=args.tz,
        )
    if args.format == "json":
        rows = [
            {"cohort": c.start.isoformat(), "size": c.size, "retained": c.retained} for c in cohorts
        ]
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["cohort", "size", "period", "retained"])
        for c in cohorts:
            writer.writerows((c.start.isoformat(), c.size, k, n) for k, n in enumerate(c.retained))
        return 0
    first = args.cohort_event or "any event"
    back = args.return_event or "any event"
    out.write(
        f"retention by {args.period} ({args.tz}): first {first}, then {back}; "
        f"share of each cohort in period k after its own\n"
    )
    heads = "".join(f"{k:>8}" for k in range(args.periods))
    out.write(f"  {'cohort':<12}{'users':>10}{heads}\n")
    for c in cohorts:
        shares = "".join(f"{n / c.size:>8.0%}" if c.size else f"{'-':>8}" for n in c.retained)
        out.write(f"  {c.start.strftime('%Y-%m-%d'):<12}{c.size:>10,}{shares}\n")
    return 0


VALUE_WIDTH = 40
"""Characters of a value the breakdown table shows (longer ones end in an ellipsis)."""


def _print_breakdown(
    args: argparse.Namespace,
    granularity: str,
    by: str,
    breakdown: dict[str, list[tuple[datetime, int]]],
    fmt: str,
    out: TextIO,
) -> None:
    """Print a breakdown as a table (a row per value), or as csv/json rows per value and
    period."""
    if args.format == "json":
        rows = [
            {"period": label.isoformat(), "value": value, "count": n}
            for value, series in breakdown.items()
            for label, n in series
        ]
        out.write(json.dumps(rows, indent=2) + "\n")
        return
    if args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["period", "value", "count"])
        for value, series in breakdown.items():
            writer.writerows((label.isoformat(), value, n) for label, n in series)
        return
    totals = {value: sum(n for _, n in series) for value, series in breakdown.items()}
    grand = sum(totals.values())
    names = {v: v if len(v) <= VALUE_WIDTH else v[: VALUE_WIDTH - 1] + "\u2026" for v in breakdown}
    width = max([len("value"), len("total"), *map(len, names.values())])
    out.write(f"{args.event} by {by}, by {granularity} ({args.tz})\n")
    labels = [label for label, _ in next(iter(breakdown.values()), [])]
    span = f"{labels[0].strftime(fmt)} .. {labels[-1].strftime(fmt)}" if labels else ""
    out.write(f"  {'value':<{width}}{'total':>12}  {'share':>6}  {span}\n")
    for value, series in breakdown.items():
        share = f"{totals[value] / grand:.1%}"
        spark = sparkline([n for _, n in series])
        out.write(f"  {names[value]:<{width}}{totals[value]:>12,}  {share:>6}  {spark}\n")
    out.write(f"  {'total':<{width}}{grand:>12,}\n")


def migrate(sink_url: str | None, out: TextIO) -> int:
    """Apply the sink's schema migrations; return 0."""
    from .backends import sink_from_url
    from .backends.postgres import PostgresSink

    sink = sink_from_url(_url(sink_url, "ANALYTICS_SINK", "--sink"), time.time)
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


def dashboard(args: argparse.Namespace, out: TextIO) -> int:
    """Serve the read-only dashboard on the sink (and store) until interrupted; return 0."""
    from .dashboard import serve_until_stopped

    with _reader(args) as client:
        serve_until_stopped(client, args.addr, token=args.token, out=out)
    return 0


def worker(args: argparse.Namespace) -> int:
    """Run a flush worker until SIGTERM or SIGINT; return its exit code."""
    import logging

    from .worker import Worker

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spool = {} if args.spool_dir is None else {"spool_dir": args.spool_dir}
    w = Worker(
        store=_url(args.store, "ANALYTICS_STORE", "--store"),
        sink=_url(args.sink, "ANALYTICS_SINK", "--sink"),
        flush_interval=args.flush_interval,
        shutdown_timeout=args.shutdown_timeout,
        metrics_addr=None if args.no_metrics else args.metrics_addr,
        dashboard_addr=args.dashboard_addr if args.dashboard else None,
        dashboard_token=args.dashboard_token,
        **spool,
    )
    return w.run()


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``analytics-sdk-exact`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Product-analytics counters: demo and operations."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("demo", help="simulate an application and print a report")
    run.add_argument("--seconds", type=_positive_seconds, default=5.0, help="wall time (default 5)")
    run.add_argument(
        "--threads", type=_count_arg(1, 64), default=4, help="application threads (default 4)"
    )
    run.add_argument(
        "--users", type=_count_arg(1, 100_000), default=200, help="distinct users (default 200)"
    )
    run.add_argument(
        "--dashboard",
        action="store_true",
        help="after the report, serve the dashboard on the demo's data until interrupted",
    )
    run.add_argument(
        "--dashboard-addr", type=_address, default=DASHBOARD_ADDR, help="default 127.0.0.1:8050"
    )

    mig = commands.add_parser("migrate", help="create or upgrade the sink's schema")
    mig.add_argument(
        "--sink",
        help="sink URL, e.g. postgresql://host/db?schema=analytics (default: ANALYTICS_SINK)",
    )

    q = commands.add_parser(
        "query", help="print an event's time series, or its breakdown by a property"
    )
    q.add_argument("event", help="event name")
    _range_options(q)
    q.add_argument(
        "--granularity",
        choices=["hour", "day", "week", "month"],
        help="period (default day; --by hour|day|week|month also sets it when this is not given)",
    )
    q.add_argument(
        "--by",
        metavar="PROPERTY",
        help="break the series down by this property's values (the top --limit, (other), (none))",
    )
    q.add_argument(
        "--limit",
        type=_count_arg(1, MAX_VALUES),
        help="values listed on their own with --by (default 10)",
    )
    q.add_argument(
        "--property",
        type=_property,
        action="append",
        default=[],
        metavar="K=V",
        help="filter; repeatable",
    )
    _reading_options(q)

    a = commands.add_parser("active", help="print daily, weekly or monthly active users")
    _range_options(a)
    a.add_argument(
        "--granularity", choices=["day", "week", "month"], default="day", help="(default day)"
    )
    a.add_argument(
        "--event",
        action="append",
        default=[],
        help="count users of this event only; repeatable (default: any event)",
    )
    a.add_argument(
        "--group",
        type=_group,
        metavar="TYPE=ID",
        help="count the users of one group only, e.g. account=acme",
    )
    _reading_options(a)

    r = commands.add_parser("retention", help="print first-time retention by cohort")
    _range_options(r, "first cohort's date", "last cohort's date, included")
    r.add_argument(
        "--period", choices=["day", "week", "month"], default="week", help="(default week)"
    )
    r.add_argument(
        "--periods",
        type=_count_arg(1, MAX_RETENTION_PERIODS),
        default=8,
        help="periods followed from each cohort's own (default 8)",
    )
    r.add_argument(
        "--cohort-event", help="the event whose first time makes the cohort (default: any)"
    )
    r.add_argument("--return-event", help="the event that counts as a return (default: any)")
    _reading_options(r)

    w = commands.add_parser(
        "worker", help="flush the store into the sink, with /metrics and /healthz"
    )
    w.add_argument(
        "--store", help="counter store URL, e.g. redis://host:6379/0 (default: ANALYTICS_STORE)"
    )
    w.add_argument("--sink", help="sink URL, e.g. postgresql://host/db (default: ANALYTICS_SINK)")
    w.add_argument(
        "--metrics-addr", type=_address, default=("127.0.0.1", 9464), help="default 127.0.0.1:9464"
    )
    w.add_argument("--no-metrics", action="store_true", help="serve no /metrics or /healthz")
    w.add_argument(
        "--dashboard", action="store_true", help="also serve the read-only web dashboard"
    )
    w.add_argument(
        "--dashboard-addr", type=_address, default=DASHBOARD_ADDR, help="default 127.0.0.1:8050"
    )
    w.add_argument(
        "--dashboard-token",
        help="token the dashboard requires (default: ANALYTICS_DASHBOARD_TOKEN; none: open)",
    )
    w.add_argument(
        "--flush-interval", type=_positive_seconds, default=10.0, help="seconds (default 10)"
    )
    w.add_argument(
        "--shutdown-timeout",
        type=_positive_seconds,
        default=30.0,
        help="seconds the final flush may take when the worker stops (default 30)",
    )
    w.add_argument(
        "--spool-dir",
        help="spool directory to replay into the store (default: ANALYTICS_SPOOL_DIR, or "
        "the per-user default)",
    )

    d = commands.add_parser(
        "dashboard", help="serve the read-only web dashboard (pages and a JSON API)"
    )
    d.add_argument("--sink", help="sink URL, e.g. postgresql://host/db (default: ANALYTICS_SINK)")
    d.add_argument(
        "--store", help="store URL, to include pending counts (default: ANALYTICS_STORE)"
    )
    d.add_argument(
        "--addr", type=_address, default=DASHBOARD_ADDR, help="host:port (default 127.0.0.1:8050)"
    )
    d.add_argument(
        "--token",
        help="bearer token every page and API call must carry (default: "
        "ANALYTICS_DASHBOARD_TOKEN; none: open)",
    )
    return parser


def _range_options(
    command: argparse.ArgumentParser,
    first: str = "first date (or datetime)",
    last: str = "last date (or datetime), included",
) -> None:
    """Add the required ``--from`` and ``--to`` of a command reading a range."""
    command.add_argument("--from", dest="start", type=_when, required=True, help=first)
    command.add_argument("--to", dest="end", type=_when, required=True, help=last)


def _reading_options(command: argparse.ArgumentParser) -> None:
    """Add the options every command reading the sink takes after its own."""
    command.add_argument("--tz", default="UTC", help="time zone of the periods (default UTC)")
    command.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="(default table)"
    )
    command.add_argument("--sink", help="sink URL (default: ANALYTICS_SINK)")
    command.add_argument(
        "--store", help="store URL, to include pending counts (default: ANALYTICS_STORE)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import demo

            return demo(
                args.seconds,
                args.threads,
                args.users,
                sys.stdout,
                sys.stderr,
                dashboard=args.dashboard_addr if args.dashboard else None,
            )
        if args.command == "migrate":
            return migrate(args.sink, sys.stdout)
        if args.command == "query":
            return query(args, sys.stdout)
        if args.command == "active":
            return active(args, sys.stdout)
        if args.command == "retention":
            return retention(args, sys.stdout)
        if args.command == "worker":
            return worker(args)
        if args.command == "dashboard":
            return dashboard(args, sys.stdout)
    except (ValueError, TypeError, AnalyticsError) as exc:
        parser.exit(2 if not isinstance(exc, BackendError) else 1, f"{PROG}: error: {exc}\n")
    except OSError as exc:  # e.g. the metrics port is taken
        parser.exit(1, f"{PROG}: error: {exc}\n")
    raise AssertionError(args.command)  # argparse rejects unknown commands
