"""The dashboard's server and JSON API: the API answers what the query methods answer, on
real Redis and PostgreSQL; parameters are validated; the token is enforced; names are
escaped; the command line, the flush worker and the demo serve it. (In a browser:
``test_dashboard_browser.py``.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from analytics_sdk import Analytics
from analytics_sdk.dashboard import DashboardServer, serve
from analytics_sdk.dashboard.api import to_json
from analytics_sdk.worker import Worker

from .dashboard_data import NOW, SCRIPT_EVENT, SCRIPT_USER, TODAY, Known, known_data
from .utils import redis_and_postgres

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def known() -> Iterator[Known]:
    with known_data("dashapi") as data:
        yield data


@pytest.fixture(scope="module")
def server(known: Known) -> Iterator[DashboardServer]:
    with serve(known.client, ("127.0.0.1", 0), token=None) as s:
        yield s


def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], str]:
    """Return (status, headers, body) without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def api(server: DashboardServer, path: str) -> Any:
    status, _, body = get(server.url + path.lstrip("/"))
    assert status == 200, body
    return json.loads(body)


def same(answer: Any) -> Any:
    """What the API returns for a query method's answer (JSON round trip)."""
    return json.loads(to_json(answer))


YESTERDAY = TODAY - timedelta(days=1)
LA_MORNING = datetime(2026, 11, 19, 9, tzinfo=timezone(timedelta(hours=-8)))

CASES: list[tuple[str, Callable[[Analytics], Any]]] = [
    ("/api/count?event=page_view", lambda c: c.count("page_view")),
    (f"/api/count?event=page_view&day={TODAY}", lambda c: c.count("page_view", day=TODAY)),
    (
        f"/api/count?event=page_view&day={TODAY}&property=path%3D/a",
        lambda c: c.count("page_view", day=TODAY, properties={"path": "/a"}),
    ),
    (
        f"/api/count?event=page_view&day={YESTERDAY}&user_id=u1",
        lambda c: c.count("page_view", day=YESTERDAY, user_id="u1"),
    ),
    (
        "/api/count?event=page_view&hour=2026-11-20T10:00%2B00:00",
        lambda c: c.count("page_view", hour=datetime(2026, 11, 20, 10, tzinfo=timezone.utc)),
    ),
    (f"/api/hourly?event=page_view&day={TODAY}", lambda c: c.hourly("page_view", day=TODAY)),
    (
        "/api/series?event=page_view&from=2026-11-01&to=2026-11-20",
        lambda c: c.series("page_view", TODAY.replace(day=1), TODAY),
    ),
    (
        "/api/series?event=page_view&from=2026-11-19&to=2026-11-20&granularity=hour"
        "&tz=America/Los_Angeles",
        lambda c: c.series(
            "page_view",
            TODAY - timedelta(days=1),
            datetime(2026, 11, 20, 23, tzinfo=_la()),
            granularity="hour",
            tz="America/Los_Angeles",
        ),
    ),
    (
        "/api/series?event=page_view&from=2026-10-01&to=2026-11-20&granularity=week&tz=Asia/Tokyo",
        lambda c: c.series(
            "page_view", TODAY.replace(month=10, day=1), TODAY, granularity="week", tz="Asia/Tokyo"
        ),
    ),
    (
        "/api/series?event=page_view&from=2026-09-01&to=2026-11-20&granularity=month",
        lambda c: c.series("page_view", TODAY.replace(month=9, day=1), TODAY, granularity="month"),
    ),
    (
        "/api/series?event=page_view&from=2026-11-19T09:00-08:00&to=2026-11-20&granularity=hour",
        lambda c: c.series(
            "page_view",
            LA_MORNING,
            datetime(2026, 11, 20, 23, tzinfo=timezone.utc),
            granularity="hour",
        ),
    ),
    (
        f"/api/top_users?event=page_view&day={TODAY}&limit=2",
        lambda c: c.top_users("page_view", day=TODAY, limit=2),
    ),
    (
        "/api/unique_users?event=page_view&from=2026-11-11&to=2026-11-20",
        lambda c: c.unique_users("page_view", TODAY - timedelta(days=9), TODAY),
    ),
    ("/api/events", lambda c: c._query.fleet_totals()),
]


def _la() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("America/Los_Angeles")


@pytest.mark.parametrize(("path", "method"), CASES, ids=[c[0] for c in CASES])
def test_the_api_answers_what_the_query_methods_answer(
    server: DashboardServer, known: Known, path: str, method: Callable[[Analytics], Any]
) -> None:
    assert api(server, path) == same(method(known.client))


def test_the_known_counts_are_what_the_api_shows(server: DashboardServer, known: Known) -> None:
    """The data set is what the tests think it is (flushed and pending counts together)."""
    series = api(server, "/api/series?event=page_view&from=2026-11-11&to=2026-11-20")
    assert [n for _, n in series] == [
        known.page_views_by_day[d] for d in sorted(known.page_views_by_day)
    ]
    assert api(server, "/api/events") == {
        "page_view": sum(known.page_views_by_day.values()),
        "feature_used": 13,
        SCRIPT_EVENT: 3,
        "signup": 2,
    }
    assert list(api(server, "/api/events")) == ["page_view", "feature_used", SCRIPT_EVENT, "signup"]


def test_the_overview_is_each_events_last_30_days(server: DashboardServer, known: Known) -> None:
    for tz in ("UTC", "America/Los_Angeles"):
        overview = api(server, f"/api/overview?tz={tz}")
        today = NOW.astimezone(_la()).date() if tz != "UTC" else TODAY
        assert overview["today"] == today.isoformat()
        assert overview["tz"] == tz
        for event, series in overview["events"].items():
            assert series == same(
                known.client.series(event, today - timedelta(days=29), today, tz=tz)
            )
    la = api(server, "/api/overview?tz=America/Los_Angeles")["events"]["page_view"]
    assert la[-1][1] == 5  # 10:00 and 14:00 UTC; 02:00 UTC was the day before there


def test_the_health_shows_pending_counts_and_the_last_flush(server: DashboardServer) -> None:
    health = api(server, "/api/health")
    assert health["pending_counts"] == 4
    assert health["pending_by_event"] == {"page_view": 4}
    assert health["claimed_batches"] == 0
    assert health["last_flush"] is not None  # the sink's ledger, whoever flushed
    assert 0 <= health["seconds_since_last_flush"] < 600
    assert health["errors"]["flushes_failed"] == 0
    assert health["healthy"] is True


def test_breakdown_and_features_are_the_breakdown_method(
    server: DashboardServer, known: Known
) -> None:
    if not hasattr(Analytics, "breakdown"):
        status, _, body = get(server.url + "api/breakdown?event=page_view&by=path")
        assert status == 501
        assert json.loads(body)["method"] == "breakdown"
        return
    path = "/api/breakdown?event=page_view&by=path&from=2026-11-11&to=2026-11-20&limit=2"
    assert api(server, path) == same(
        known.client.breakdown("page_view", "path", TODAY - timedelta(days=9), TODAY, limit=2)
    )
    assert api(server, "/api/features") == {
        "export": {"ok": 7, "error": 2},
        "checkout": {"ok": 4, "error": 0},
    }


def test_the_event_page_shows_its_distinct_users(server: DashboardServer, known: Known) -> None:
    status, _, page = get(server.url + "event?event=page_view&from=2026-11-11&to=2026-11-20")
    assert status == 200
    n = known.client.unique_users("page_view", TODAY - timedelta(days=9), TODAY)
    assert n == 4  # u0, u1, u2 and u9
    assert f'<p class="total" id="distinct-users">{n:,}</p>' in page
    assert "Distinct users, 2026-11-11 to 2026-11-20 (UTC days)" in page


def test_active_users_is_the_active_users_method(server: DashboardServer, known: Known) -> None:
    path = "/api/active_users?event=page_view&from=2026-11-11&to=2026-11-20&granularity=week"
    if not hasattr(Analytics, "active_users"):
        status, _, body = get(server.url + path.lstrip("/"))
        assert status == 501
        assert "not available in this version" in json.loads(body)["error"]
        return
    assert api(server, path) == same(
        known.client.active_users(
            TODAY - timedelta(days=9), TODAY, granularity="week", tz="UTC", events=["page_view"]
        )
    )


def test_views_without_their_method_say_so(
    server: DashboardServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(Analytics, "breakdown", raising=False)
    monkeypatch.delattr(Analytics, "active_users", raising=False)
    status, _, body = get(server.url + "api/active_users?event=page_view")
    assert (status, json.loads(body)["method"]) == (501, "active_users")
    status, _, page = get(server.url + "event?event=page_view&by=path")
    assert status == 200
    assert page.count("Not available in this version") == 2
    assert "Analytics.breakdown() is not available" in page
    assert "Analytics.active_users() is not available" in page
    _, _, overview = get(server.url)
    assert 'data-view="features"' in overview


@pytest.mark.parametrize(
    ("path", "parameter", "value", "accepted"),
    [
        (
            "series?event=page_view&granularity=year",
            "granularity",
            "year",
            "hour, day, week, month",
        ),
        ("series?event=page_view&tz=Mars/Olympus", "tz", "Mars/Olympus", "an IANA time zone"),
        ("series?event=page_view&from=yesterday", "from", "yesterday", "a date (2026-11-26)"),
        ("series?event=page_view&to=2026-11-20T10:00", "to", "2026-11-20T10:00", "with an offset"),
        ("series?from=2026-11-01", "event", None, "an event name"),
        ("series?event=page_view&colour=red", "colour", "red", "parameters token, event, from"),
        ("top_users?event=page_view&limit=0", "limit", "0", "a whole number from 1 to 1000"),
        ("count?event=page_view&property=plan", "property", "plan", "key=value"),
        (
            "count?event=page_view&hour=2026-11-20",
            "hour",
            "2026-11-20",
            "a datetime with an offset",
        ),
        (
            "series?event=page_view&from=2026-11-20&to=2026-11-01",
            "from",
            "2026-11-20",
            "is after end",
        ),
        (
            "series?event=page_view&from=2020-01-01&to=2026-11-20&granularity=hour",
            "from",
            "2020-01-01",
            "accepted: at most 10,000",
        ),
        ("series?event=&from=2026-11-01", "event", None, "an event name"),
        (
            f"count?event=page_view&day={TODAY}&hour=2026-11-20T10:00%2B00:00",
            "hour",
            "2026-11-20T10:00+00:00",
            "not both",
        ),
        ("count?event=page_view&user_id=u1&property=a%3Db", "user_id", "u1", "with day= only"),
        ("top_users?event=page_view&user_id=u1", "user_id", "u1", "parameters token, event, day"),
        ("hourly?event=page_view", "day", None, "a date, e.g. 2026-11-26"),
        ("top_users?event=page_view&day=26/11/2026", "day", "26/11/2026", "a date, e.g."),
        ("series?event=" + "x" * 300, "event", "x" * 300, "accepted: 1 to"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(
    server: DashboardServer, path: str, parameter: str, value: str | None, accepted: str
) -> None:
    status, headers, body = get(server.url + "api/" + path)
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["parameter"] == parameter
    assert answer["value"] == value
    assert accepted in answer["accepted"]
    assert accepted in answer["error"]


def test_unknown_paths_and_writes_are_refused(server: DashboardServer) -> None:
    status, _, body = get(server.url + "api/delete_everything")
    assert status == 404
    assert "accepted: events, overview, count" in json.loads(body)["error"]
    status, _, body = get(server.url + "admin")
    assert status == 404
    status, headers, body = get(server.url + "api/events", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, _, body = get(server.url + "event?event=page_view&granularity=year")
    assert status == 400
    assert "&#x27;granularity&#x27;: &#x27;year&#x27; is not accepted" in body
    index = api(server, "/api")
    assert set(index) >= {"/api/series", "/api/breakdown", "/api/active_users", "/api/health"}


def test_names_and_user_ids_are_escaped(server: DashboardServer) -> None:
    _, headers, overview = get(server.url)
    assert "<script>alert" not in overview
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in overview
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    event = urllib.request.quote(SCRIPT_EVENT)
    status, _, page = get(server.url + f"event?event={event}&day={TODAY}")
    assert status == 200
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert json.loads(get(server.url + f"api/top_users?event={event}&day={TODAY}")[2]) == [
        [SCRIPT_USER, 3]
    ]


def test_the_static_assets_ship_in_the_package(server: DashboardServer) -> None:
    status, headers, css = get(server.url + "static/dashboard.css")
    assert (status, headers["Content-Type"]) == (200, "text/css; charset=utf-8")
    assert "svg.chart" in css
    assert get(server.url + "static/dashboard.js")[0] == 200
    assert get(server.url + "static/../api.py")[0] == 404
    # Nothing on a page comes from elsewhere.
    page = get(server.url + "event?event=page_view")[2]
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_the_token_is_required_for_every_page_asset_and_call(known: Known) -> None:
    with serve(known.client, ("127.0.0.1", 0), token="s3cret") as s:
        for path in ("", "event?event=page_view", "api/events", "api", "static/dashboard.css"):
            status, headers, _ = get(s.url + path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert get(s.url + path, {"Authorization": "Bearer wrong"})[0] == 401
            assert get(s.url + path, {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(s.url + "api/events?token=s3cret")[0] == 200
        assert get(s.url + "api/events?token=s3crex")[0] == 401
        # A browser opens a page once with ?token=: it gets a cookie and the URL without it.
        status, headers, _ = get(s.url + "event?event=page_view&token=s3cret")
        assert status == 303
        assert headers["Location"] == "/event?event=page_view"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert "HttpOnly" in headers["Set-Cookie"]
        assert get(s.url + "event?event=page_view", {"Cookie": cookie})[0] == 200
        assert get(s.url + "api/events", {"Cookie": cookie.replace("s3cret", "other")})[0] == 401


def test_the_token_comes_from_the_environment(
    known: Known, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANALYTICS_DASHBOARD_TOKEN", "from-env")
    with serve(known.client, ("127.0.0.1", 0)) as s:
        assert get(s.url + "api/events")[0] == 401
        assert get(s.url + "api/events", {"Authorization": "Bearer from-env"})[0] == 200
    for bad in (" ", "s3cret token", "s3cret;token", "s3crét"):
        with pytest.raises(ValueError, match="the dashboard token is not accepted") as info:
            serve(known.client, ("127.0.0.1", 0), token=bad)
        assert bad.strip() == "" or bad not in str(info.value)  # a secret is never shown


def test_it_binds_to_loopback_by_default_and_names_a_taken_port(known: Known) -> None:
    with serve(known.client, ("127.0.0.1", 0)) as s:
        assert s.addr == "127.0.0.1"
        with pytest.raises(OSError, match=f"cannot serve the dashboard on 127.0.0.1:{s.port}"):
            serve(known.client, ("127.0.0.1", s.port))
    from analytics_sdk.dashboard import DEFAULT_ADDR

    assert DEFAULT_ADDR[0] == "127.0.0.1"


def _start(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Start the command; return it and the dashboard URL it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "analytics_sdk", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"dashboard on (http://\S+/)", line)
        if found:
            return proc, found.group(1)
    proc.wait(timeout=30)
    pytest.fail(f"no dashboard URL printed; stderr: {proc.stderr.read() if proc.stderr else ''}")


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> int:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)  # reads what is left and closes the pipes
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert "Traceback" not in err, err
    return proc.returncode


def test_the_dashboard_command_serves_the_sink_until_interrupted(known: Known) -> None:
    proc, url = _start(
        ["dashboard", "--sink", known.sink, "--store", known.store, "--addr", "127.0.0.1:0"],
        {"ANALYTICS_DASHBOARD_TOKEN": "t0ken"},
    )
    try:
        assert url.startswith("http://127.0.0.1:")
        assert get(url + "api/events")[0] == 401
        status, _, body = get(url + "api/events", {"Authorization": "Bearer t0ken"})
        assert status == 200
        assert json.loads(body)["page_view"] == sum(known.page_views_by_day.values())
    finally:
        assert _stop(proc) == 0


def test_the_dashboard_command_refuses_a_memory_sink_and_a_missing_schema(
    known: Known, capsys: pytest.CaptureFixture[str]
) -> None:
    from analytics_sdk.cli import main

    for sink, message in (
        ("memory://", "lives inside the process that tracked the counts"),
        (known.sink.replace("schema=dash", "schema=nope"), "has no analytics schema"),
    ):
        with pytest.raises(SystemExit):
            main(["dashboard", "--sink", sink, "--addr", "127.0.0.1:0"])
        assert message in capsys.readouterr().err


def test_a_worker_serves_the_dashboard_with_its_health() -> None:
    with redis_and_postgres("dashworker") as (store, sink):
        worker = Worker(store=store, sink=sink, metrics_addr=None, dashboard_addr=("127.0.0.1", 0))
        try:
            assert worker.dashboard is not None
            url = worker.dashboard.url
            with Analytics(store=store, sink=sink, background=False, flusher=False) as app:
                app.track("signup", value=3)
                app.flush(timeout=30)
            assert worker.client.flush(timeout=30).complete
            health = json.loads(get(url + "api/health")[2])
            assert (health["healthy"], health["message"]) == (True, "ok")
            assert health["process"]["counts_flushed"] == 3
            assert health["pending_counts"] == 0
            assert json.loads(get(url + "api/events")[2]) == {"signup": 3}
        finally:
            assert worker.stop() == 0
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, timeout=5)


def test_the_worker_command_has_dashboard_options() -> None:
    from analytics_sdk.cli import build_parser

    args = build_parser().parse_args(
        ["worker", "--dashboard", "--dashboard-addr", "0.0.0.0:9000", "--dashboard-token", "x"]
    )
    assert (args.dashboard, args.dashboard_addr, args.dashboard_token) == (
        True,
        ("0.0.0.0", 9000),
        "x",
    )
    assert build_parser().parse_args(["worker"]).dashboard is False


def test_the_demo_prints_the_dashboard_command(capsys: pytest.CaptureFixture[str]) -> None:
    from analytics_sdk.cli import main

    assert main(["demo", "--seconds", "0.5", "--threads", "1", "--users", "5"]) == 0
    out = capsys.readouterr().out
    assert "analytics-sdk-exact demo --seconds 0.5 --threads 1 --users 5 --dashboard\n" in out


def test_demo_dashboard_serves_the_demos_data_until_interrupted() -> None:
    proc, url = _start(
        [
            "demo",
            "--seconds",
            "1",
            "--threads",
            "1",
            "--users",
            "5",
            "--dashboard",
            "--dashboard-addr",
            "127.0.0.1:0",
        ],
        {"ANALYTICS_DASHBOARD_TOKEN": ""},
    )
    try:
        events = json.loads(get(url + "api/events")[2])
        assert events["page_view"] > 0
        assert get(url)[0] == 200
    finally:
        assert _stop(proc, signal.SIGTERM) == 0


def test_a_backend_that_does_not_answer_is_a_503_and_shows_in_the_health(known: Known) -> None:
    from analytics_sdk.errors import SinkError, StoreError

    from .faults import Faults

    with (
        Analytics(store=known.store, sink=known.sink, background=False, flusher=False) as client,
        serve(client, ("127.0.0.1", 0)) as s,
    ):
        Faults(client.sink).fail("snapshot", times=100, error=SinkError("sink down (injected)"))
        Faults(client.store).fail(
            "pending_event_totals", times=100, error=StoreError("store down (injected)")
        )
        status, _, body = get(s.url + "api/series?event=page_view")
        assert (status, json.loads(body)) == (503, {"error": "sink down (injected)"})
        status, _, page = get(s.url + "event?event=page_view")
        assert status == 503
        assert "sink down (injected)" in page
        health = json.loads(get(s.url + "api/health")[2])
        assert health["healthy"] is False
        # (The sink's ledger read is not faulted: on a loaded machine its pool may still be
        # opening, which would be a second error, not a different one.)
        assert "store down (injected)" in health["errors"]["backend_errors"]


def test_the_overview_reuses_the_event_names_for_a_while_never_the_counts() -> None:
    from analytics_sdk.dashboard import DashboardAPI
    from analytics_sdk.testing import ManualClock

    clock = ManualClock(NOW)
    with Analytics(store="memory://", sink="memory://", clock=clock, background=False) as client:
        api = DashboardAPI(client, names_cache_seconds=30)
        try:
            client.track("signup")
            client.flush()  # the event names come from the store and the sink
            assert list(api.call("overview", "")["events"]) == ["signup"]
            client.track("signup", value=2)
            client.track("page_view", value=5)
            client.flush()
            overview = api.call("overview", "")["events"]
            assert list(overview) == ["signup"]  # the new name shows within 30 s...
            assert overview["signup"][-1][1] == 3  # ...its counts at once
            clock.advance(30)
            overview = api.call("overview", "")["events"]
            assert list(overview) == ["page_view", "signup"]  # the most counts first
            assert api.call("events", "") == {"page_view": 5, "signup": 3}  # never cached
        finally:
            api.close()


def test_the_health_counts_the_claims_in_flight() -> None:
    with redis_and_postgres("dashclaim") as (store, sink):
        with Analytics(store=store, sink=sink, background=False, flusher=False) as app:
            app.sink.migrate()
            app.track("signup", value=3)
            app.flush(timeout=30)  # pushed only
        with (
            Analytics(store=store, sink=sink, background=False, flusher=False) as reader,
            serve(reader, ("127.0.0.1", 0)) as s,
        ):
            assert [b.delta.total for b in reader.store.claim()] == [
                3
            ]  # a flusher's claim, not applied
            health = json.loads(get(s.url + "api/health")[2])
            assert (health["pending_counts"], health["claimed_counts"]) == (3, 3)
            assert health["claimed_batches"] == 1
            assert 0 <= health["oldest_claim_seconds"] < 600
            assert health["last_flush"] is None
            page = get(s.url)[2]
            assert re.search(r"claims in flight</dt><dd>1 \(the oldest [\d.]+ s old\)", page)
            assert "last flush</dt><dd>none yet" in page


def test_a_worker_whose_dashboard_port_is_taken_does_not_start() -> None:
    import threading

    with (
        redis_and_postgres("dashport") as (store, sink),
        Analytics(store="memory://", sink="memory://", background=False) as other,
        serve(other, ("127.0.0.1", 0)) as taken,
    ):
        before = set(threading.enumerate())
        with pytest.raises(OSError, match=f"cannot serve the dashboard on 127.0.0.1:{taken.port}"):
            Worker(
                store=store, sink=sink, metrics_addr=None, dashboard_addr=("127.0.0.1", taken.port)
            )
        assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []


def test_the_overview_lists_the_most_counted_events_and_says_how_many_it_leaves_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from analytics_sdk.dashboard import api as dashboard_api
    from analytics_sdk.testing import ManualClock

    monkeypatch.setattr(dashboard_api, "OVERVIEW_EVENTS", 2)
    with Analytics(
        store="memory://", sink="memory://", clock=ManualClock(NOW), background=False
    ) as client:
        # All time decides which events are listed; the last 30 days, their order.
        client.track("old_but_big", value=9, timestamp=NOW - timedelta(days=60))
        client.track("recent", value=2)
        client.track("small", value=1)
        client.flush()
        with serve(client, ("127.0.0.1", 0)) as s:
            overview = api(s, "/api/overview")
            assert list(overview["events"]) == ["recent", "old_but_big"]
            assert overview["events_not_shown"] == 1
            page = get(s.url)[2]
            assert "1 more events with fewer counts are not listed" in page
            assert 'data-event="small"' not in page


def test_on_loopback_only_requests_addressed_to_loopback_are_answered(
    server: DashboardServer,
) -> None:
    """A page elsewhere whose DNS name was rebound to 127.0.0.1 cannot read the data."""
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        assert get(server.url + "api/events", {"Host": host})[0] == 200
    for host in (f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}"):
        status, _, body = get(server.url + "api/events", {"Host": host})
        assert status == 400
        assert f"Host {host.lower()!r} is not accepted; accepted: 127.0.0.1:{port}" in body
    assert get(server.url, {"Host": "evil.example"})[0] == 400


def test_a_view_that_refuses_its_parameters_leaves_the_others_on_the_page(
    server: DashboardServer,
) -> None:
    status, _, page = get(server.url + "event?event=page_view&by=" + "k" * 300)
    assert status == 200
    assert 'data-view="breakdown"' in page
    assert "by (a property key)" in page
    assert 'id="series"' in page
    assert 'id="top-users"' in page
