"""The dashboard's HTML pages, rendered on the server from the API's answers.

Every name, property value and user id goes through :func:`html.escape` (and every link's
query through :func:`urllib.parse.urlencode`): an event named ``<script>`` shows as text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from datetime import date, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

from .. import __version__
from ..query import GRANULARITIES
from . import svg
from .api import OVERVIEW_DAYS, BadParameter, DashboardAPI, NotAvailable, Params

__all__ = ["PAGES", "error_page", "page"]

ZONES = (
    "UTC",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Asia/Shanghai",
    "Asia/Tokyo",
    "Australia/Sydney",
)
FORMATS = {"hour": "%Y-%m-%d %H:%M", "day": "%Y-%m-%d", "week": "%Y-%m-%d", "month": "%Y-%m"}


def e(value: object) -> str:
    """Escape ``value`` for HTML text and attribute values."""
    return escape(str(value), quote=True)


def _href(path: str, **query: str | None) -> str:
    given = {k: v for k, v in query.items() if v}
    return e(path + ("?" + urlencode(given) if given else ""))


def page(title: str, body: str) -> str:
    """Return a whole HTML document around ``body``."""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · analytics_sdk</title>"
        '<link rel="icon" href="data:,">'  # no favicon request
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head><body>'
        '<header><a class="brand" href="/">analytics_sdk</a>'
        '<nav><a href="/">Events</a><a href="/api">API</a></nav>'
        f'<span class="version">{e(__version__)} · read-only</span></header>'
        f"<main>{body}</main></body></html>\n"
    )


def error_page(status: int, message: str) -> str:
    """Return the page of a refused request."""
    return page(
        f"Error {status}",
        f'<h1>Error {status}</h1><p class="error" id="error">{e(message)}</p>'
        '<p><a href="/">Back to the events</a></p>',
    )


def _unavailable(what: str, exc: NotAvailable) -> str:
    return (
        f'<p class="unavailable" data-view="{e(what)}">Not available in this version: {e(exc)}.</p>'
    )


def _refused(what: str, exc: BadParameter) -> str:
    return f'<p class="error" data-view="{e(what)}">{e(exc)}</p>'


def _label(moment: datetime, granularity: str) -> str:
    text = moment.strftime(FORMATS[granularity])
    return f"week of {text}" if granularity == "week" else text


NUMERIC = frozenset(
    ("Today", f"Last {OVERVIEW_DAYS} days", "ok", "error", "error rate", "Count", "Total", "Users")
)
"""Column headings of numbers: aligned right, as their cells."""


def _table(table_id: str, head: Sequence[str], rows: list[str]) -> str:
    cells = "".join(
        f'<th class="n">{e(h)}</th>' if h in NUMERIC else f"<th>{e(h)}</th>" for h in head
    )
    return (
        f'<table id="{e(table_id)}"><thead><tr>{cells}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _scroll(table: str) -> str:
    """A long table in a box of its own height, so that the sections below stay in view."""
    return f'<div class="scroll">{table}</div>'


def _series_rows(series: list[tuple[datetime, int]], granularity: str) -> list[str]:
    rows = [
        f'<tr data-period="{e(label.isoformat())}"><td>{e(_label(label, granularity))}</td>'
        f'<td class="n">{n:,}</td></tr>'
        for label, n in series
    ]
    total = sum(n for _, n in series)
    rows.append(
        f'<tr class="total"><td>total</td><td class="n" id="series-total">{total:,}</td></tr>'
    )
    return rows


def _tz_select(tz: str) -> str:
    zones = ZONES if tz in ZONES else (tz, *ZONES)
    options = "".join(
        f'<option value="{e(z)}"{" selected" if z == tz else ""}>{e(z)}</option>' for z in zones
    )
    return f'<label>Time zone <select name="tz">{options}</select></label>'


# -- the overview ----------------------------------------------------------------------------


def overview(api: DashboardAPI, params: Params) -> str:
    """The events with today's and the last 30 days' totals, feature outcomes, health."""
    tz = params.tz()
    today = api.today(tz)
    first = today - timedelta(days=OVERVIEW_DAYS - 1)
    window = {"from": [first.isoformat()], "to": [today.isoformat()], "tz": [tz]}
    features, health = api.submit("features", window), api.submit("health", {})
    data = api.call("overview", {"tz": [tz]})  # runs its series at once itself
    rows = []
    for name, series in data["events"].items():
        counts = [n for _, n in series]
        rows.append(
            f'<tr data-event="{e(name)}"><td><a href="{_href("/event", event=name, tz=tz)}">'
            f'{e(name)}</a></td><td class="n today">{counts[-1]:,}</td>'
            f'<td class="n last30">{sum(counts):,}</td><td>{svg.sparkline(counts)}</td></tr>'
        )
    events = (
        _table("events", ("Event", "Today", f"Last {OVERVIEW_DAYS} days", "Daily"), rows)
        if rows
        else '<p class="empty" id="events">No events yet.</p>'
    )
    hidden = data["events_not_shown"]
    if hidden:
        events += (
            f'<p class="note" id="events-not-shown">{hidden:,} more events with fewer counts '
            "are not listed; open one with /event?event=NAME, or list them all at "
            '<a href="/api/events">/api/events</a>.</p>'
        )
    return page(
        "Events",
        f'<h1>Events</h1><form class="controls" method="get" action="/">{_tz_select(tz)}'
        f'<button type="submit">Apply</button></form>'
        f'<p class="note">Today is {e(today.isoformat())} in {e(tz)}; the last {OVERVIEW_DAYS} '
        f"days run from {e(first.isoformat())}. Exact counts: the sink, the store's pending "
        "counts.</p>"
        f"{events}<h2>Feature outcomes, last {OVERVIEW_DAYS} days</h2>{_features(features)}"
        f"<h2>Pipeline</h2>{_health(health.result())}",
    )


def _features(future: Future[Any]) -> str:
    try:
        outcomes: dict[str, dict[str, int]] = future.result()
    except NotAvailable as exc:
        return _unavailable("features", exc)
    if not outcomes:
        return '<p class="empty" id="features">No feature_used events in these days.</p>'
    rows = []
    for feature, counts in outcomes.items():
        ok, error = counts["ok"], counts["error"]
        rate = f"{error / (ok + error):.1%}" if ok + error else "-"
        rows.append(
            f'<tr data-feature="{e(feature)}"><td>{e(feature)}</td><td class="n ok">{ok:,}</td>'
            f'<td class="n error">{error:,}</td><td class="n rate">{e(rate)}</td></tr>'
        )
    return _table("features", ("Feature", "ok", "error", "error rate"), rows)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _moment(iso: str | None) -> str:
    if iso is None:
        return "none yet"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S UTC")


def _claims(count: int, oldest: float | None) -> str:
    return f"{count:,}" if not count else f"{count:,} (the oldest {_seconds(oldest)} old)"


def _health(h: Mapping[str, Any]) -> str:
    errors = h["errors"]
    items = [
        ("status", "ok" if h["healthy"] else f"unhealthy: {h['message']}"),
        ("last flush", _moment(h["last_flush"])),
        ("lag (since the last flush)", _seconds(h["seconds_since_last_flush"])),
        ("pending counts", f"{h['pending_counts']:,}"),
        ("claims in flight", _claims(h["claimed_batches"], h["oldest_claim_seconds"])),
        ("flushes failed", f"{errors['flushes_failed']:,}"),
        ("pushes failed", f"{errors['pushes_failed']:,}"),
        ("counts dropped", f"{errors['dropped']:,}"),
        ("keys evicted by Redis", f"{errors['evicted_keys']:,}"),
    ]
    items += [("backend error", message) for message in errors["backend_errors"]]
    cells = "".join(
        f'<div data-health="{e(k)}"><dt>{e(k)}</dt><dd>{e(v)}</dd></div>' for k, v in items
    )
    state = "ok" if h["healthy"] else "bad"
    return f'<dl id="health" class="health {state}">{cells}</dl>'


# -- one event ------------------------------------------------------------------------------


def event(api: DashboardAPI, params: Params) -> str:
    """One event: its series, breakdown, top users and active users."""
    name = params.text("event", "an event name")
    granularity = params.choice("granularity", GRANULARITIES, "day")
    tz = params.tz()
    today = api.today(tz)
    start = params.moment("from", today - timedelta(days=OVERVIEW_DAYS - 1))
    end = params.moment("to", today)
    by = params.raw("by")
    end_day = end.date() if isinstance(end, datetime) else end
    day = params.day("day", end_day)
    window = {
        "from": [start.isoformat()],
        "to": [end.isoformat()],
        "granularity": [granularity],
        "tz": [tz],
    }
    # The page's queries run at once; each section waits for its own.
    series_f = api.submit("series", {"event": [name], **window})
    breakdown_f = api.submit("breakdown", {"event": [name], "by": [by], **window}) if by else None
    top_f = api.submit("top_users", {"event": [name], "day": [day.isoformat()], "limit": ["10"]})
    first_day, last_day = _day(start), _day(end)
    distinct_f = api.submit(
        "unique_users",
        {"event": [name], "from": [first_day.isoformat()], "to": [last_day.isoformat()]},
    )
    # Users' activity is kept by UTC day: an hourly page shows daily active users.
    active_by = "day" if granularity == "hour" else granularity
    active_f = api.submit("active_users", {"event": [name], **window, "granularity": [active_by]})
    series: list[tuple[datetime, int]] = series_f.result()
    labels = [_label(label, granularity) for label, _ in series]
    counts = [n for _, n in series]
    title = f"{name} by {granularity} ({tz})"
    body = [
        f"<h1>{e(name)}</h1>",
        _controls(name, granularity, start, end, tz, by, day),
        f'<section id="series-view"><h2>{e(title)}</h2>',
        svg.bars(labels, counts, title=title),
        _scroll(_table("series", ("Period", "Count"), _series_rows(series, granularity))),
        "</section>",
    ]
    if breakdown_f is not None and by:
        body.append(_breakdown(breakdown_f, name, by, granularity))
    body.append(_distinct_users(distinct_f, first_day, last_day))
    body.append(_top_users(top_f, day))
    body.append(_active_users(active_f, name, active_by))
    return page(name, "".join(body))


def _day(moment: date | datetime) -> date:
    return moment.date() if isinstance(moment, datetime) else moment


def _controls(
    name: str,
    granularity: str,
    start: date | datetime,
    end: date | datetime,
    tz: str,
    by: str | None,
    day: date,
) -> str:
    options = "".join(
        f'<option value="{g}"{" selected" if g == granularity else ""}>{g}</option>'
        for g in GRANULARITIES
    )
    return (
        '<form class="controls auto" method="get" action="/event">'
        f'<input type="hidden" name="event" value="{e(name)}">'
        f'<label>Granularity <select name="granularity">{options}</select></label>'
        f'<label>From <input type="text" name="from" value="{e(start.isoformat())}" size="12"></label>'
        f'<label>To <input type="text" name="to" value="{e(end.isoformat())}" size="12"></label>'
        f"{_tz_select(tz)}"
        f'<label>Breakdown by <input type="text" name="by" value="{e(by or "")}" '
        'placeholder="property key" size="12"></label>'
        f'<label>Top users on <input type="text" name="day" value="{e(day.isoformat())}" size="12"></label>'
        '<button type="submit">Apply</button></form>'
    )


def _breakdown(future: Future[Any], name: str, by: str, granularity: str) -> str:
    head = f'<section id="breakdown-view"><h2>{e(name)} by {e(by)}</h2>'
    try:
        answer: dict[str, list[tuple[datetime, int]]] = future.result()
    except NotAvailable as exc:
        return head + _unavailable("breakdown", exc) + "</section>"
    except BadParameter as exc:  # e.g. a property key track() would refuse: this view only
        return head + _refused("breakdown", exc) + "</section>"
    if not answer:
        return head + '<p class="empty">No counts in this range.</p></section>'
    first = next(iter(answer.values()))
    labels = [_label(label, granularity) for label, _ in first]
    named = [(value, [n for _, n in series]) for value, series in answer.items()]
    rows = []
    for i, (value, counts) in enumerate(named):
        color = svg.PALETTE[i % len(svg.PALETTE)]
        rows.append(
            f'<tr data-value="{e(value)}"><td><svg class="swatch" width="10" height="10">'
            f'<rect width="10" height="10" fill="{color}"/></svg>{e(value)}</td><td class="n">{sum(counts):,}</td>'
            f"<td>{svg.sparkline(counts, color=color)}</td></tr>"
        )
    return (
        head
        + svg.lines(labels, named, title=f"{name} by {by}")
        + _table("breakdown", (by, "Total", "Series"), rows)
        + "</section>"
    )


def _distinct_users(future: Future[Any], first: date, last: date) -> str:
    head = (
        f'<section id="distinct-users-view"><h2>Distinct users, {e(first.isoformat())} to '
        f"{e(last.isoformat())} (UTC days)</h2>"
    )
    try:
        n: int = future.result()
    except BadParameter as exc:
        return head + _refused("unique_users", exc) + "</section>"
    return head + f'<p class="total" id="distinct-users">{n:,}</p></section>'


def _top_users(future: Future[Any], day: date) -> str:
    top: list[tuple[str, int]] = future.result()
    head = f'<section id="top-users-view"><h2>Top users on {e(day.isoformat())} (UTC)</h2>'
    if not top:
        return head + '<p class="empty">No users on this day.</p></section>'
    rows = [
        f'<tr data-user="{e(user)}"><td>{rank}</td><td>{e(user)}</td><td class="n">{n:,}</td></tr>'
        for rank, (user, n) in enumerate(top, 1)
    ]
    return head + _table("top-users", ("#", "User", "Count"), rows) + "</section>"


def _active_users(future: Future[Any], name: str, granularity: str) -> str:
    head = f'<section id="active-users-view"><h2>Active users of {e(name)} by {e(granularity)}</h2>'
    try:
        answer: list[tuple[datetime, int]] = future.result()
    except NotAvailable as exc:
        return head + _unavailable("active_users", exc) + "</section>"
    except BadParameter as exc:  # what this view refuses leaves the others on the page
        return head + _refused("active_users", exc) + "</section>"
    labels = [_label(label, granularity) for label, _ in answer]
    counts = [n for _, n in answer]
    rows = [
        f'<tr data-period="{e(label.isoformat())}"><td>{e(_label(label, granularity))}</td>'
        f'<td class="n">{n:,}</td></tr>'
        for label, n in answer
    ]
    return (
        head
        + svg.bars(labels, counts, title=f"active users of {name}")
        + _scroll(_table("active-users", ("Period", "Users"), rows))
        + "</section>"
    )


Page = Callable[[DashboardAPI, Params], str]
PAGES: dict[str, tuple[Page, tuple[str, ...]]] = {
    "/": (overview, ("token", "tz")),
    "/event": (event, ("token", "event", "granularity", "from", "to", "tz", "by", "day")),
}
"""``{path: (render, accepted parameters)}``."""
