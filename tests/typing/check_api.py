"""Checked by mypy --strict (not run): the decorator keeps the wrapped function's types."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import analytics_sdk as analytics

if TYPE_CHECKING:
    from typing_extensions import assert_type


@analytics.track_feature("export")
def export(rows: int, *, fmt: str = "csv") -> str:
    return f"{rows}.{fmt}"


@analytics.track_feature("sync")
async def sync_remote(n: int) -> int:
    return n


@analytics.track_feature
def bare(rows: int) -> str:
    return str(rows)


def check() -> None:
    assert_type(bare(1), str)
    bare("1")  # type: ignore[arg-type]  # the bare form keeps the signature too
    assert_type(export(1, fmt="json"), str)
    coroutine = assert_type(sync_remote(1), Coroutine[Any, Any, int])
    coroutine.close()
    export("1")  # type: ignore[arg-type]  # the point: a wrong argument type is caught


def check_breakdowns(client: analytics.Analytics) -> None:
    from datetime import date, datetime

    d = date(2026, 11, 26)
    series = client.breakdown("page_view", "path", d, d, granularity="day", limit=5)
    assert_type(series, dict[str, list[tuple[datetime, int]]])
    assert_type(client.top_values("page_view", "path", day=d), list[tuple[str, int]])
    client.breakdown("page_view", "path", d)  # type: ignore[call-arg]  # end is required
