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
