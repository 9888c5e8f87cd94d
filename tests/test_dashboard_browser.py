"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright): the
numbers shown are the known counts; granularity, range, time zone and breakdown switch;
the token is enforced; a ``<script>`` event name renders as text.

Screenshots of the main views go to the test's temporary directory, and also to the
directory named by ``ANALYTICS_DASHBOARD_SCREENSHOTS`` if set (``docs/images`` refreshes
the documentation's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from analytics_sdk import Analytics
from analytics_sdk.dashboard import DashboardServer, serve

from .dashboard_data import SCRIPT_EVENT, SCRIPT_USER, TODAY, Known, known_data
from .utils import skip_or_fail

pytestmark = pytest.mark.services

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed (pip install playwright)")
    if not os.path.exists(CHROMIUM):
        skip_or_fail(f"no browser at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def known() -> Iterator[Known]:
    with known_data("dashweb") as data:
        yield data


@pytest.fixture(scope="module")
def server(known: Known) -> Iterator[DashboardServer]:
    with serve(known.client, ("127.0.0.1", 0), token=None) as s:
        yield s


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    p = context.new_page()
    dialogs: list[str] = []
    errors: list[str] = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    # A refused page (400, 401) is reported on the console too; the tests check those.
    expected = ("status of 400", "status of 401")
    p.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not any(x in m.text for x in expected)
            else None
        ),
    )
    yield p
    context.close()
    assert dialogs == [], "a script ran from the data"
    assert errors == []


def shot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("ANALYTICS_DASHBOARD_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def cell(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def series_rows(page: Any, table: str = "#series") -> dict[str, str]:
    rows = page.locator(f"{table} tbody tr[data-period]")
    return {
        rows.nth(i).get_attribute("data-period"): rows.nth(i).locator("td.n").inner_text()
        for i in range(rows.count())
    }


def test_the_overview_shows_the_known_counts(
    page: Any, server: DashboardServer, known: Known, tmp_path: Path
) -> None:
    page.goto(server.url)
    last30 = sum(known.page_views_by_day.values())
    assert cell(page, '#events tr[data-event="page_view"] td.today') == "10"
    assert cell(page, '#events tr[data-event="page_view"] td.last30') == f"{last30:,}"
    assert cell(page, '#events tr[data-event="signup"] td.today') == "2"
    assert cell(page, '#events tr[data-event="feature_used"] td.last30') == "13"
    # The <script> event is a row whose name is text; nothing ran (no dialog).
    link = page.locator("#events a", has_text="alert(1)")
    assert link.inner_text() == SCRIPT_EVENT
    assert page.locator("#events svg.spark").count() == 4
    assert cell(page, '#health [data-health="pending counts"] dd') == "4"
    if hasattr(Analytics, "breakdown"):
        assert cell(page, '#features tr[data-feature="export"] td.ok') == "7"
        assert cell(page, '#features tr[data-feature="export"] td.error') == "2"
    else:
        assert "Not available in this version" in cell(page, '[data-view="features"]')
    shot(page, "dashboard-overview.png", tmp_path)

    # Another time zone: today in Los Angeles leaves out 02:00 UTC (the day before there).
    page.select_option('select[name="tz"]', "America/Los_Angeles")
    page.wait_for_url("**tz=America%2FLos_Angeles**")
    assert cell(page, '#events tr[data-event="page_view"] td.today') == "5"


def test_the_event_page_switches_granularity_range_time_zone_and_breakdown(
    page: Any, server: DashboardServer, known: Known, tmp_path: Path
) -> None:
    page.goto(server.url)
    page.click('#events a:text-is("page_view")')
    page.wait_for_url("**/event?event=page_view**")
    rows = series_rows(page)
    assert len(rows) == 30
    by_day = {
        f"{d.isoformat()}T00:00:00+00:00": f"{n:,}" for d, n in known.page_views_by_day.items()
    }
    assert {k: v for k, v in rows.items() if v != "0"} == by_day
    assert cell(page, "#series-total") == f"{sum(known.page_views_by_day.values()):,}"
    assert cell(page, "#top-users tbody tr:first-child td:nth-child(2)") == "u0"
    assert page.locator("#series-view svg.chart rect.bar").count() == 30
    shot(page, "dashboard-event.png", tmp_path)

    # Granularity: by week (ISO weeks from Monday; the select applies itself).
    page.select_option('select[name="granularity"]', "week")
    page.wait_for_url("**granularity=week**")
    weeks = series_rows(page)
    for monday in (TODAY - timedelta(days=TODAY.weekday() + 7 * w) for w in range(2)):
        expected = sum(known.page_views_by_day.get(monday + timedelta(days=i), 0) for i in range(7))
        assert weeks[f"{monday.isoformat()}T00:00:00+00:00"] == f"{expected:,}"
    assert weeks["2026-11-16T00:00:00+00:00"] == "24"  # Mon 16 to Fri 20: 5 + 4 + 3 + 2 + 10
    # Range: two days by hour in Los Angeles.
    page.select_option('select[name="granularity"]', "hour")
    page.wait_for_url("**granularity=hour**")
    page.fill('input[name="from"]', "2026-11-19")
    page.fill('input[name="to"]', "2026-11-20")
    page.select_option('select[name="tz"]', "America/Los_Angeles")
    page.wait_for_url("**tz=America%2FLos_Angeles**")
    hours = series_rows(page)
    assert len(hours) == 48
    assert {k: v for k, v in hours.items() if v != "0"} == {
        "2026-11-19T02:00:00-08:00": "2",  # 10:00 UTC on the 19th
        "2026-11-19T18:00:00-08:00": "5",  # 02:00 UTC on the 20th
        "2026-11-20T02:00:00-08:00": "1",
        "2026-11-20T06:00:00-08:00": "4",
    }

    # Breakdown by a property.
    page.fill('input[name="by"]', "path")
    page.click('form.controls button[type="submit"]')
    page.wait_for_url("**by=path**")
    if hasattr(Analytics, "breakdown"):
        assert cell(page, '#breakdown tr[data-value="/a"] td.n') == "5"
        assert cell(page, '#breakdown tr[data-value="/b"] td.n') == "2"
        assert cell(page, '#breakdown tr[data-value="/c"] td.n') == "5"
    else:
        assert "Not available in this version" in cell(page, '[data-view="breakdown"]')
    if hasattr(Analytics, "active_users"):  # by day on an hourly page: kept by UTC day
        assert page.locator("#active-users tbody tr").count() == 2
    else:
        assert "Not available in this version" in cell(page, '[data-view="active_users"]')
    shot(page, "dashboard-breakdown.png", tmp_path)


def test_a_script_event_name_and_user_id_render_as_text(
    page: Any, server: DashboardServer, tmp_path: Path
) -> None:
    page.goto(server.url + f"event?event={quote(SCRIPT_EVENT)}&day={TODAY}")
    assert page.locator("h1").inner_text() == SCRIPT_EVENT
    assert cell(page, "#top-users tbody tr td:nth-child(2)") == SCRIPT_USER
    assert page.locator("img").count() == 0
    assert cell(page, "#series-total") == "3"


def test_a_bad_parameter_shows_the_error(page: Any, server: DashboardServer) -> None:
    response = page.goto(server.url + "event?event=page_view&tz=Mars/Olympus")
    assert response.status == 400
    assert "accepted: an IANA time zone" in cell(page, "#error")


def test_the_token_is_enforced_in_the_browser(browser: Any, known: Known) -> None:
    with serve(known.client, ("127.0.0.1", 0), token="let-me-in") as s:
        context = browser.new_context()
        page = context.new_page()
        response = page.goto(s.url)
        assert response.status == 401
        assert "a token is required" in cell(page, "#error")
        response = page.goto(s.url + "event?event=page_view&token=wrong")
        assert response.status == 401
        # Opened once with the token: the cookie carries it, the address bar does not.
        response = page.goto(s.url + "event?event=page_view&token=let-me-in")
        assert response.status == 200
        assert "token" not in page.url
        assert page.locator("#series").count() == 1
        page.goto(s.url)
        assert cell(page, '#events tr[data-event="page_view"] td.today') == "10"
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
        context.close()
