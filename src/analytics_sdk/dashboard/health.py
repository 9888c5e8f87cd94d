"""The pipeline's health as the dashboard shows it: last flush, lag, pending counts, errors.

Read from three places: the sink's flush ledger (when the last batch committed, whoever
flushed it), the store (counts pushed but not yet in the sink, and the claims in flight),
and this process's scheduler (its own pushes and flushes, and their failures: in a flush
worker, the worker's).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..backends.base import Sink
from ..errors import BackendError

if TYPE_CHECKING:
    from ..client import Analytics

__all__ = ["last_committed", "pipeline_health"]


def last_committed(sink: Sink) -> float | None:
    """Return when the sink last committed a batch (UNIX seconds), or None if it cannot
    tell (an empty ledger, or a sink without one)."""
    from ..backends.memory import MemorySink

    if isinstance(sink, MemorySink):
        return None
    try:
        from ..backends.postgres import PostgresSink
    except ImportError:  # pragma: no cover - the postgres extra is not installed
        return None
    if not isinstance(sink, PostgresSink):
        return None
    from psycopg import sql

    query = sql.SQL("SELECT max(applied_at) FROM {}.flush_ledger").format(
        sql.Identifier(sink.schema)
    )
    # Read-only: the dashboard never migrates (the ledger table exists from version 1).
    with sink._connection("flush ledger read", migrate_first=False) as conn:
        row = conn.execute(query).fetchone()
    moment: datetime | None = row[0] if row else None
    return None if moment is None else moment.timestamp()


def _iso(seconds: float | None) -> str | None:
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def pipeline_health(
    client: Analytics, worker_health: Callable[[], tuple[bool, str]] | None = None
) -> dict[str, Any]:
    """Return the pipeline's health as a JSON-able dict (see ``docs/dashboard.md``)."""
    now = client.config.clock.time()
    stats = client.stats()
    errors: list[str] = []
    # (when, seconds ago): the sink's ledger is stamped by the database's clock, so its age
    # is taken on the wall clock; this process's flushes are on the client's clock.
    flushes: list[tuple[float, float]] = []
    try:
        committed = last_committed(client.sink)
    except BackendError as exc:
        errors.append(str(exc))
    else:
        if committed is not None:
            flushes.append((committed, time.time() - committed))
    ours = stats["last_flush_success"]
    if ours:
        flushes.append((ours, now - ours))
    last, age = min(flushes, key=lambda f: f[1], default=(None, None))
    pending_live: dict[str, int] = {}
    pending_claimed = 0
    claims: dict[str, float] = {}
    try:
        pending = client.store.pending_event_totals()
        pending_live = dict(sorted(pending.live.items()))
        pending_claimed = sum(sum(c.values()) for c in pending.claimed.values())
        claims = client.store.claimed_ids()
    except BackendError as exc:
        errors.append(str(exc))
    oldest_claim = min(claims.values(), default=None)
    if worker_health is not None:
        healthy, message = worker_health()
    else:
        healthy, message = not errors, "ok" if not errors else "a backend did not answer"
    return {
        "healthy": healthy,
        "message": message,
        "now": _iso(now),
        "last_flush": _iso(last),
        "seconds_since_last_flush": None if age is None else round(age, 3),
        "pending_counts": sum(pending_live.values()) + pending_claimed,
        "pending_by_event": pending_live,
        "claimed_batches": len(claims),
        "claimed_counts": pending_claimed,
        "oldest_claim_seconds": None if oldest_claim is None else round(now - oldest_claim, 3),
        "errors": {
            "flushes_failed": stats["flushes_failed"],
            "pushes_failed": stats["pushes_failed"],
            "dropped": stats["dropped"],
            "evicted_keys": client.store.evicted_keys,
            "backend_errors": errors,
        },
        "process": stats,
    }
