"""The dashboard's JSON API: query-string parameters in, the query methods' answers out.

Each endpoint validates its parameters (a :class:`BadParameter` names the parameter, the
value and what is accepted), calls the client's query methods, and returns their answer
unchanged; the pages render the same answers. :func:`to_json` turns an answer into JSON
(``datetime`` and ``date`` as ISO 8601 text, tuples as arrays).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from ..errors import BackendError
from ..feature import FEATURE_EVENT
from ..query import DAY_GRANULARITIES, GRANULARITIES, resolve_tz
from .health import pipeline_health

if TYPE_CHECKING:
    from ..client import Analytics

__all__ = [
    "ENDPOINTS",
    "BadParameter",
    "DashboardAPI",
    "NotAvailable",
    "Params",
    "to_json",
]

OVERVIEW_DAYS = 30
"""Days of the overview's totals and sparklines (today included)."""
OVERVIEW_EVENTS = 100
"""Events the overview shows at most: those with the most counts of all time."""
MAX_LIMIT = 1000


class BadParameter(ValueError):
    """A query-string parameter that is missing or not accepted (an HTTP 400)."""

    def __init__(
        self, parameter: str, value: str | None, accepted: str, message: str | None = None
    ) -> None:
        self.parameter, self.value, self.accepted = parameter, value, accepted
        given = "missing" if value is None else f"{value!r} is not accepted"
        super().__init__(message or f"parameter {parameter!r}: {given}; accepted: {accepted}")

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON body of the 400 answer."""
        return {
            "error": str(self),
            "parameter": self.parameter,
            "value": self.value,
            "accepted": self.accepted,
        }


class NotAvailable(Exception):
    """A view whose query method this version of the SDK does not have (an HTTP 501)."""

    def __init__(self, method: str) -> None:
        self.method = method
        super().__init__(f"Analytics.{method}() is not available in this version of analytics_sdk")


def to_json(answer: Any) -> str:
    """Return ``answer`` as JSON text (dates and datetimes in ISO 8601)."""

    def default(value: object) -> Any:
        if isinstance(value, (date, datetime)):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    return json.dumps(answer, default=default, ensure_ascii=False)


class Params:
    """The parameters of one request, read and validated one by one."""

    def __init__(self, query: str | Mapping[str, list[str]], accepted: tuple[str, ...]) -> None:
        self._values = (
            parse_qs(query, keep_blank_values=True) if isinstance(query, str) else dict(query)
        )
        for name in self._values:
            if name not in accepted:
                raise BadParameter(
                    name, self._values[name][0], f"parameters {', '.join(accepted) or '(none)'}"
                )

    def raw(self, name: str) -> str | None:
        """Return the parameter's value (the last one given), or None; blank is None."""
        values = self._values.get(name)
        return values[-1] if values and values[-1] != "" else None

    def all(self, name: str) -> list[str]:
        """Return every value given for a repeatable parameter."""
        return [v for v in self._values.get(name, []) if v != ""]

    def text(self, name: str, accepted: str) -> str:
        """Return a required text parameter."""
        value = self.raw(name)
        if value is None:
            raise BadParameter(name, None, accepted)
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        """Return one of ``choices``."""
        value = self.raw(name)
        if value is None:
            return default
        if value not in choices:
            raise BadParameter(name, value, ", ".join(choices))
        return value

    def day(self, name: str, default: date | None = None) -> date:
        """Return a date given as ``YYYY-MM-DD``."""
        value = self.raw(name)
        if value is None:
            if default is None:
                raise BadParameter(name, None, "a date, e.g. 2026-11-26")
            return default
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise BadParameter(name, value, "a date, e.g. 2026-11-26") from None

    def moment(self, name: str, default: date) -> date | datetime:
        """Return a date, or a datetime with a UTC offset."""
        value = self.raw(name)
        if value is None:
            return default
        accepted = "a date (2026-11-26) or a datetime with an offset (2026-11-26T09:00+00:00)"
        try:
            if "T" in value or " " in value:
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    raise BadParameter(name, value, accepted)
                return moment
            return date.fromisoformat(value)
        except ValueError:
            raise BadParameter(name, value, accepted) from None

    def tz(self) -> str:
        """Return a known IANA time zone name (default UTC)."""
        value = self.raw("tz") or "UTC"
        try:
            resolve_tz(value)
        except ValueError:
            raise BadParameter("tz", value, "an IANA time zone, e.g. UTC, Europe/Paris") from None
        return value

    def integer(self, name: str, low: int, high: int, default: int) -> int:
        """Return a whole number in ``[low, high]``."""
        value = self.raw(name)
        if value is None:
            return default
        if not value.isdigit() or not low <= int(value) <= high:
            raise BadParameter(name, value, f"a whole number from {low} to {high}")
        return int(value)

    def properties(self) -> dict[str, str] | None:
        """Return the ``property=key=value`` filters (repeatable), or None."""
        found: dict[str, str] = {}
        for item in self.all("property"):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise BadParameter("property", item, "key=value, e.g. property=plan=pro")
            found[key] = value
        return found or None


Endpoint = Callable[["DashboardAPI", Params], Any]
ENDPOINTS: dict[str, tuple[tuple[str, ...], str]] = {}
"""``{name: (accepted parameters, what it returns)}``, the API's index (``GET /api``)."""
_HANDLERS: dict[str, Endpoint] = {}


def _endpoint(*accepted: str) -> Callable[[Endpoint], Endpoint]:
    def register(handler: Endpoint) -> Endpoint:
        name = handler.__name__
        ENDPOINTS[name] = (("token", *accepted), (handler.__doc__ or "").strip())
        _HANDLERS[name] = handler
        return handler

    return register


def _inclusive_end(end: date | datetime, granularity: str, tz: str) -> date | datetime:
    """``to`` is included: with hours, a date stands for its last hour too."""
    if granularity == "hour" and not isinstance(end, datetime):
        return datetime(end.year, end.month, end.day, 23, tzinfo=resolve_tz(tz))
    return end


class DashboardAPI:
    """The dashboard's views over one client's query methods."""

    def __init__(
        self,
        client: Analytics,
        *,
        health: Callable[[], tuple[bool, str]] | None = None,
        names_cache_seconds: float = 30.0,
        workers: int = 4,
    ) -> None:
        """``names_cache_seconds``: how long the overview reuses the list of event names
        (their counts are always read afresh); ``workers``: queries a page runs at once
        (the PostgreSQL sink's pool holds 4 connections by default)."""
        self.client = client
        self.worker_health = health
        self.names_cache_seconds = names_cache_seconds
        self._monotonic = client.config.clock.monotonic
        self._names: tuple[float, list[str]] | None = None
        self._names_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="analytics-sdk-dashboard")

    def close(self) -> None:
        """Stop the threads that run a page's queries."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, name: str, query: str | Mapping[str, list[str]]) -> Future[Any]:
        """Start :meth:`call` on a worker thread: a page runs its queries at once."""
        return self._executor.submit(self.call, name, query)

    def event_names(self) -> list[str]:
        """Return the names of every event in the store or the sink, the most counted of
        all time first (cached for ``names_cache_seconds``: an event seen for the first time
        shows within that)."""
        with self._names_lock:
            now = self._monotonic()
            if self._names is None or now >= self._names[0]:
                totals = self.client._query.fleet_totals()
                names = sorted(totals, key=lambda name: (-totals[name], name))
                self._names = (now + self.names_cache_seconds, names)
            return self._names[1]

    def call(self, name: str, query: str | Mapping[str, list[str]]) -> Any:
        """Validate ``query`` for endpoint ``name`` and return its answer."""
        if name not in _HANDLERS:
            raise KeyError(name)
        params = Params(query, ENDPOINTS[name][0])
        try:
            return _HANDLERS[name](self, params)
        except (BadParameter, NotAvailable, BackendError):
            raise
        except (ValueError, TypeError) as exc:
            # What the query methods refuse (too many periods, start after end, a bad event
            # name...): their message names the value and what is accepted.
            name = _culprit(exc, ENDPOINTS[name][0])
            raise BadParameter(name, params.raw(name), str(exc), message=str(exc)) from exc

    def today(self, tz: str) -> date:
        """Return today's date in ``tz`` by the client's clock."""
        now = datetime.fromtimestamp(self.client.config.clock.time(), timezone.utc)
        return now.astimezone(resolve_tz(tz)).date()

    def _range(
        self, p: Params, granularity: str, tz: str
    ) -> tuple[date | datetime, date | datetime]:
        today = self.today(tz)
        start = p.moment("from", today - timedelta(days=OVERVIEW_DAYS - 1))
        end = p.moment("to", today)
        return start, _inclusive_end(end, granularity, tz)

    # -- endpoints, one per query method (and the overview and health built on them) --------

    @_endpoint()
    def events(self, p: Params) -> dict[str, int]:
        """{event: all-time count} of every event that reached the store or the sink, largest first."""
        totals = self.client._query.fleet_totals()
        return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))

    @_endpoint("tz")
    def overview(self, p: Params) -> dict[str, Any]:
        """Each event's daily series over the last 30 days in tz (today last), the events with the most counts in those days first: {"today", "tz", "events": {event: [[day, n], ...]}, "events_not_shown": n} (the 100 events with the most counts of all time are shown)."""
        tz = p.tz()
        today = self.today(tz)
        first = today - timedelta(days=OVERVIEW_DAYS - 1)
        names = self.event_names()
        futures = {
            name: self._executor.submit(
                self.client.series, name, first, today, granularity="day", tz=tz
            )
            for name in names[:OVERVIEW_EVENTS]
        }
        series = {name: future.result() for name, future in futures.items()}
        ranked = sorted(series, key=lambda name: (-sum(n for _, n in series[name]), name))
        return {
            "today": today,
            "tz": tz,
            "events": {name: series[name] for name in ranked},
            "events_not_shown": max(0, len(names) - OVERVIEW_EVENTS),
        }

    @_endpoint("event", "day", "hour", "property", "user_id")
    def count(self, p: Params) -> int:
        """Analytics.count(event, day=, hour=, properties=, user_id=)."""
        event = p.text("event", "an event name")
        hour = p.raw("hour")
        when: dict[str, Any] = {}
        if p.raw("day") is not None:
            when["day"] = p.day("day")
        if hour is not None:
            moment = p.moment("hour", date.min)
            if not isinstance(moment, datetime):
                raise BadParameter(
                    "hour", hour, "a datetime with an offset, e.g. 2026-11-26T09:00+00:00"
                )
            when["hour"] = moment
        if len(when) == 2:
            raise BadParameter("hour", hour, "day= or hour=, not both")
        user_id = p.raw("user_id")
        if user_id is not None and (hour is not None or p.all("property")):
            raise BadParameter(
                "user_id",
                user_id,
                "user_id= with day= only (per-user counts are daily, not split by properties)",
            )
        return self.client.count(event, properties=p.properties(), user_id=user_id, **when)

    @_endpoint("event", "day", "property")
    def hourly(self, p: Params) -> dict[int, int]:
        """Analytics.hourly(event, day=, properties=): {hour: n} for hours 0-23 (UTC)."""
        event = p.text("event", "an event name")
        return self.client.hourly(event, day=p.day("day"), properties=p.properties())

    @_endpoint("event", "from", "to", "granularity", "tz", "property")
    def series(self, p: Params) -> list[tuple[datetime, int]]:
        """Analytics.series(event, from, to, granularity=, tz=, properties=): [[period start, n], ...]."""
        event = p.text("event", "an event name")
        granularity = p.choice("granularity", GRANULARITIES, "day")
        tz = p.tz()
        start, end = self._range(p, granularity, tz)
        return self.client.series(
            event, start, end, granularity=granularity, tz=tz, properties=p.properties()
        )

    @_endpoint("event", "by", "from", "to", "granularity", "tz", "property", "limit")
    def breakdown(self, p: Params) -> dict[str, list[tuple[datetime, int]]]:
        """Analytics.breakdown(event, by, from, to, granularity=, tz=, properties=, limit=): {value: [[period start, n], ...]}."""
        event = p.text("event", "an event name")
        by = p.text("by", "a property key, e.g. by=path")
        granularity = p.choice("granularity", GRANULARITIES, "day")
        tz = p.tz()
        start, end = self._range(p, granularity, tz)
        limit = p.integer("limit", 1, MAX_LIMIT, 10)
        method = getattr(self.client, "breakdown", None)
        if method is None:
            raise NotAvailable("breakdown")
        answer: dict[str, list[tuple[datetime, int]]] = method(
            event,
            by,
            start,
            end,
            granularity=granularity,
            tz=tz,
            properties=p.properties(),
            limit=limit,
        )
        return answer

    @_endpoint("event", "day", "limit")
    def top_users(self, p: Params) -> list[tuple[str, int]]:
        """Analytics.top_users(event, day=, limit=): [[user id, n], ...], most first."""
        event = p.text("event", "an event name")
        day = p.day("day", self.today("UTC"))
        return self.client.top_users(event, day=day, limit=p.integer("limit", 1, MAX_LIMIT, 10))

    @_endpoint("event", "from", "to")
    def unique_users(self, p: Params) -> int:
        """Analytics.unique_users(event, from, to): distinct users over UTC days from..to."""
        event = p.text("event", "an event name")
        today = self.today("UTC")
        start = p.day("from", today - timedelta(days=OVERVIEW_DAYS - 1))
        return self.client.unique_users(event, start, p.day("to", today))

    @_endpoint("event", "from", "to", "granularity", "tz")
    def active_users(self, p: Params) -> list[tuple[datetime, int]]:
        """Analytics.active_users(from, to, granularity=, tz=, events=): [[period start, distinct users], ...] by day, week or month (users' activity is kept by UTC day); event is repeatable (none: every event)."""
        events = p.all("event") or None
        granularity = p.choice("granularity", DAY_GRANULARITIES, "day")
        tz = p.tz()
        start, end = self._range(p, granularity, tz)
        method = getattr(self.client, "active_users", None)
        if method is None:
            raise NotAvailable("active_users")
        answer: list[tuple[datetime, int]] = method(
            start, end, granularity=granularity, tz=tz, events=events
        )
        return answer

    @_endpoint("from", "to", "tz")
    def features(self, p: Params) -> dict[str, dict[str, int]]:
        """feature_used outcomes from..to: {feature: {"ok": n, "error": n}}, through Analytics.breakdown by "feature"."""
        tz = p.tz()
        start, end = self._range(p, "day", tz)
        method = getattr(self.client, "breakdown", None)
        if method is None:
            raise NotAvailable("breakdown")
        outcomes: dict[str, dict[str, int]] = {}
        for outcome in ("ok", "error"):
            by_feature = method(
                FEATURE_EVENT,
                "feature",
                start,
                end,
                granularity="month",
                tz=tz,
                properties={"outcome": outcome},
                limit=MAX_LIMIT,
            )
            for feature, series in by_feature.items():
                counts = outcomes.setdefault(feature, {"ok": 0, "error": 0})
                counts[outcome] = sum(n for _, n in series)
        return dict(sorted(outcomes.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))

    @_endpoint()
    def health(self, p: Params) -> dict[str, Any]:
        """The pipeline's health: last flush, lag, pending counts, errors."""
        return pipeline_health(self.client, self.worker_health)


def _culprit(exc: Exception, accepted: tuple[str, ...]) -> str:
    """Name the parameter a query method's error is about: its message starts with the
    argument's name (``start``, ``event name``, ``limit``...), that of the parameter."""
    first = str(exc).split(" ", 1)[0]
    names = {"start": "from", "end": "to", "series": "from", "user": "user_id"}
    name = names.get(first, first)
    return name if name in accepted else "event"
